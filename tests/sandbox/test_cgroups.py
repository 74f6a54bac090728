"""cgroup detection for v2, v1 and neither, on real directory trees shaped like /sys/fs/cgroup."""

from __future__ import annotations

from pathlib import Path

from argosy.sandbox import cgroups
from argosy.sandbox.limits import Limits


def test_v2_with_controllers(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    s = cgroups.detect(tmp_path)
    assert s.version == "v2" and s.controllers == ("memory", "pids", "cpu")
    g = cgroups.RunCgroup(s, "run1")
    g.create(Limits(1000, 64, 0.5, 10, 32, 8))
    d = tmp_path / cgroups.GROUP_PREFIX / "run1"
    assert (d / "memory.max").read_text() == str(64 * 2**20)
    assert (d / "pids.max").read_text() == "32"
    assert (d / "cpu.max").read_text() == "50000 100000"
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert g.oom_kills() == 1


def test_hybrid_v2_without_controllers_falls_to_v1(tmp_path: Path) -> None:
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("\n")
    for c in ("memory", "pids", "cpu"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "cgroup.procs").write_text("")
    s = cgroups.detect(tmp_path)
    assert s.version == "v1" and set(s.controllers) == {"memory", "pids", "cpu"}
    g = cgroups.RunCgroup(s, "run2")
    g.create(Limits(1000, 128, 2, 10, 16, 8))
    assert (tmp_path / "memory" / cgroups.GROUP_PREFIX / "run2" / "memory.limit_in_bytes").read_text() == str(
        128 * 2**20
    )
    assert (tmp_path / "cpu" / cgroups.GROUP_PREFIX / "run2" / "cpu.cfs_quota_us").read_text() == "200000"
    assert g.limits_memory and g.limits_pids


def test_neither(tmp_path: Path) -> None:
    s = cgroups.detect(tmp_path)
    assert s.version == "none" and "rlimit" not in s.reason.lower() or s.reason
    g = cgroups.RunCgroup(s, "run3")
    assert not g.limits_memory and g.oom_kills() == 0 and g.pids() == []


def test_this_machine() -> None:
    s = cgroups.detect()
    assert s.version in ("v1", "v2", "none") and s.reason
