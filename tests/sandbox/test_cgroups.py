"""cgroup detection for v2, v1 and neither, on real directory trees shaped like /sys/fs/cgroup."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from argosy.sandbox import cgroups
from argosy.sandbox.errors import SandboxError
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


def test_v2_cgroup_holding_processes_is_not_used(tmp_path: Path) -> None:
    # A container's /sys/fs/cgroup under cgroupns: a non-root group (it has cgroup.type) with the
    # agent in it; the kernel would refuse the controllers to any child group.
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "cgroup.type").write_text("domain\n")
    (tmp_path / "cgroup.procs").write_text("1\n57\n")
    s = cgroups.detect(tmp_path)
    assert s.version == "none" and "2 process(es)" in s.reason and "fix:" in s.reason
    (tmp_path / "cgroup.procs").write_text("")
    assert cgroups.detect(tmp_path).version == "v2"


def test_refused_delegation_is_an_error_not_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("memory pids\n")
    (tmp_path / "cgroup.subtree_control").mkdir()  # any write fails, as EBUSY would
    s = cgroups.detect(tmp_path)
    with pytest.raises(SandboxError, match="child groups memory, pids") as err:
        cgroups.RunCgroup(s, "run4").create(Limits(1000, 64, 1, 10, 32, 8))
    assert err.value.fix and "leaf" in err.value.fix


def test_destroy_gives_up_at_once_on_what_no_wait_fixes(tmp_path: Path) -> None:
    # Only EBUSY (tasks still exiting) is waited out; a directory that is simply not empty is not.
    (tmp_path / "cgroup.controllers").write_text("pids\n")
    g = cgroups.RunCgroup(cgroups.detect(tmp_path), "run5")
    g.create(Limits(1000, 64, 1, 10, 32, 8))
    t0 = time.monotonic()
    assert g.destroy() is False and time.monotonic() - t0 < 1
    for f in g.dirs["unified"].iterdir():
        f.unlink()
    assert g.destroy() is True and not g.dirs["unified"].exists()
