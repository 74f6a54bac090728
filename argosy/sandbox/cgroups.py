"""Per-run cgroups: v2 where its controllers are enabled, v1 where they are mounted, neither otherwise.

The caller creates a group, attaches the sandbox's first processes before they run user code
(everything they fork inherits the group), and reads the OOM counter afterwards. When no
controller is usable, `detect()` says why and the backend falls back to rlimits.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from argosy.sandbox.errors import SandboxError
from argosy.sandbox.limits import Limits

ROOT = Path("/sys/fs/cgroup")
GROUP_PREFIX = "argosy-sandbox"
CPU_PERIOD_US = 100_000
_LEAF_FIX = (
    "move the agent's processes to a leaf cgroup (mkdir {root}/agent; echo PID > "
    "{root}/agent/cgroup.procs for each), or run it as a systemd service with Delegate=yes"
)
# How long destroy() waits for SIGKILLed tasks to exit (freeing their memory) before rmdir gives up.
# In a TCG microVM, 8 tasks holding 10 MiB each took 0.13-0.24 s (the old fixed 0.1 s left dirs behind).
DESTROY_WAIT_S = 5.0


@dataclass(frozen=True)
class CgroupSupport:
    version: str  # "v2", "v1" or "none"
    controllers: tuple[str, ...]  # of memory, pids, cpu
    reason: str
    v1_paths: dict[str, Path] = field(default_factory=dict)
    v2_root: Path | None = None


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)


def _own_processes(group: Path) -> int:
    """How many processes sit directly in a non-root v2 cgroup (the root has no cgroup.type)."""
    if not (group / "cgroup.type").exists():
        return 0
    try:
        return len((group / "cgroup.procs").read_text().split())
    except OSError:
        return 0


def detect(root: Path = ROOT) -> CgroupSupport:
    wanted = ("memory", "pids", "cpu")
    blocked, blocked_at = "", root
    # v2: the unified hierarchy at the root, or a hybrid one at /unified; usable only with controllers.
    for v2 in (root, root / "unified"):
        ctl = v2 / "cgroup.controllers"
        if ctl.exists():
            have = set(ctl.read_text().split())
            usable = tuple(c for c in wanted if c in have)
            if not (usable and _writable(v2)):
                continue
            busy = _own_processes(v2)
            if busy:
                # A container's /sys/fs/cgroup under cgroupns, or a service without Delegate=yes: the
                # kernel refuses memory to child groups (EBUSY), and enabling pids or cpu would turn
                # this cgroup threaded, after which no child group takes a process (EOPNOTSUPP).
                blocked, blocked_at = (
                    (
                        f"cgroup v2 at {v2} holds {busy} process(es) of its own (in a container: this "
                        "agent's), and the kernel delegates controllers only from a cgroup without any"
                    ),
                    v2,
                )
                continue
            return CgroupSupport("v2", usable, f"cgroup v2 at {v2} with {', '.join(usable)}", v2_root=v2)
    paths = {c: root / c for c in wanted if (root / c / "cgroup.procs").exists()}
    if paths:
        writable = {c: p for c, p in paths.items() if _writable(p)}
        if writable:
            names = tuple(writable)
            return CgroupSupport("v1", names, f"cgroup v1 controllers {', '.join(names)}", v1_paths=writable)
        return CgroupSupport(
            "none", (), "cgroup v1 is mounted but not writable by this user (run the agent as root)"
        )
    if blocked:
        return CgroupSupport("none", (), f"{blocked}; fix: {_LEAF_FIX.format(root=blocked_at)}")
    return CgroupSupport(
        "none", (), "no cgroup v2 controllers enabled and no cgroup v1 memory/pids/cpu mounted"
    )


class RunCgroup:
    """One run's group in every usable controller."""

    def __init__(self, support: CgroupSupport, name: str) -> None:
        self.support = support
        self.dirs: dict[str, Path] = {}
        if support.version == "v1":
            for ctl, base in support.v1_paths.items():
                self.dirs[ctl] = base / GROUP_PREFIX / name
        elif support.version == "v2" and support.v2_root is not None:
            self.dirs["unified"] = support.v2_root / GROUP_PREFIX / name

    def create(self, limits: Limits) -> None:
        if self.support.version == "v2":
            assert self.support.v2_root is not None
            parent = self.support.v2_root / GROUP_PREFIX
            # Child groups only get controllers their parent delegates (and a refusal at the root
            # leaves nothing behind).
            _delegate(self.support.v2_root, self.support.controllers, self.support.v2_root)
            parent.mkdir(exist_ok=True)
            _delegate(parent, self.support.controllers, self.support.v2_root)
        for d in self.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.set_limits(limits)

    def set_limits(self, limits: Limits) -> None:
        mem = limits.memory_mb * 2**20
        quota = int(limits.cpu_count * CPU_PERIOD_US)
        if self.support.version == "v1":
            if "memory" in self.dirs:
                d = self.dirs["memory"]
                # Lower memsw first when shrinking would fail; write limit then memsw (swap counted too).
                with contextlib.suppress(OSError):
                    (d / "memory.memsw.limit_in_bytes").write_text("-1")
                (d / "memory.limit_in_bytes").write_text(str(mem))
                with contextlib.suppress(OSError):
                    (d / "memory.memsw.limit_in_bytes").write_text(str(mem))
            if "pids" in self.dirs:
                (self.dirs["pids"] / "pids.max").write_text(str(limits.pids))
            if "cpu" in self.dirs:
                (self.dirs["cpu"] / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
                (self.dirs["cpu"] / "cpu.cfs_quota_us").write_text(str(quota))
        elif "unified" in self.dirs:
            d = self.dirs["unified"]
            ctls = self.support.controllers
            if "memory" in ctls:
                (d / "memory.max").write_text(str(mem))
                with contextlib.suppress(OSError):
                    (d / "memory.swap.max").write_text("0")
            if "pids" in ctls:
                (d / "pids.max").write_text(str(limits.pids))
            if "cpu" in ctls:
                (d / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")

    def attach(self, pid: int) -> None:
        for d in self.dirs.values():
            (d / "cgroup.procs").write_text(str(pid))

    @property
    def limits_memory(self) -> bool:
        return "memory" in self.dirs or ("unified" in self.dirs and "memory" in self.support.controllers)

    @property
    def limits_pids(self) -> bool:
        return "pids" in self.dirs or ("unified" in self.dirs and "pids" in self.support.controllers)

    def oom_kills(self) -> int:
        try:
            if "memory" in self.dirs:
                text = (self.dirs["memory"] / "memory.oom_control").read_text()
            elif "unified" in self.dirs:
                text = (self.dirs["unified"] / "memory.events").read_text()
            else:
                return 0
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def pids(self) -> list[int]:
        d = self.dirs.get("pids") or self.dirs.get("unified") or next(iter(self.dirs.values()), None)
        if d is None:
            return []
        try:
            return [int(x) for x in (d / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def kill_all(self) -> None:
        """SIGKILL whatever is still in the group (the PID namespace normally got there first)."""
        if "unified" in self.dirs and (self.dirs["unified"] / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (self.dirs["unified"] / "cgroup.kill").write_text("1")
            return
        for _ in range(3):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def _populated(self) -> bool:
        d = self.dirs.get("unified")
        if d is None:
            return bool(self.pids())
        try:
            return "populated 1" in (d / "cgroup.events").read_text()
        except FileNotFoundError:
            return False
        except OSError:
            return bool(self.pids())

    def destroy(self) -> bool:
        """Kill what is left and remove the group; False if it is still there after DESTROY_WAIT_S
        (cleanup_stale retries such groups)."""
        self.kill_all()
        deadline = time.monotonic() + DESTROY_WAIT_S
        pause = 0.001
        # SIGKILL is delivered at once but tasks exit (and free their memory) when next scheduled;
        # rmdir fails with EBUSY until the last has.
        while self._populated() and time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 2, 0.02)
            if "unified" not in self.dirs:
                self.kill_all()  # v1 has no cgroup.kill: catch what forked after the last sweep
        gone = True
        for d in self.dirs.values():
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                        gone = False
                        break
                    time.sleep(0.005)
        return gone


def _delegate(group: Path, controllers: tuple[str, ...], root: Path) -> None:
    """Enable the controllers for `group`'s children, or say why the kernel refused."""
    ctl = group / "cgroup.subtree_control"
    try:
        ctl.write_text(" ".join(f"+{c}" for c in controllers))
    except OSError as exc:
        try:
            enabled = set(ctl.read_text().split())
        except OSError:
            enabled = set()
        missing = [c for c in controllers if c not in enabled]
        if missing:
            raise SandboxError(
                f"cannot give cgroup {group}'s child groups {', '.join(missing)}: {exc.strerror or exc}",
                fix=_LEAF_FIX.format(root=root),
            ) from exc
