"""cgroups.py against a real cgroup v2 kernel: the microVM's Debian kernel, booted once under QEMU (TCG).

The host here has only cgroup v1 controllers, and its cgroups are not ours to remount, so the v2
path runs inside the guest as root. Only the kernel comes from the microVM image; the initramfs is
this test's own: busybox-static, the host's Python with just the stdlib files the guest script
imports, cgroups.py with its stdlib-only imports, our /init and a guest script that drives
`RunCgroup` through real limits (OOM kill, fork bomb, CPU throttling, cgroup.kill, rmdir,
delegation from the root and from a nested group) and prints one JSON line on the serial console.
One boot, 10-30 s depending on the host's load."""

from __future__ import annotations

import errno
import importlib.util
import json
import re
import shutil
import subprocess
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

import argosy
from argosy.sandbox.microvm import KERNEL_ARGS
from argosy.sandbox.vmimage import _cpio, _tree_entries

# The kernel of the microVM image (built once into the test cache); the image's own initramfs and
# rootfs are the microvm backend's business and not used here.
SRC = Path(argosy.__file__).parent
# cgroups.py and what it imports: stdlib only, which is all the guest's Python has.
GUEST_MODULES = ("sandbox/cgroups.py", "sandbox/limits.py", "sandbox/errors.py", "core/errors.py")
BUSYBOX = "/bin/busybox"
PYTHON = "/usr/bin/python3"
BOOT_LIMIT_S = 120  # the whole VM run; TCG on a loaded 2-core host is slow, but not this slow
GUEST_MB = 384  # the image unpacks to ~70 MB in RAM; the groups under test stay far below the rest
MEMORY_MB = 32
PIDS = 8
CPU_LIMITED = 0.2
BUSY, BALLAST_MB = 8, 10  # tasks in the group destroy() is called on, and the memory each holds

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs -o size=16m tmp /tmp
export PATH=/usr/bin:/bin
PYTHONPATH=/cgtest python3 -S -B /cgtest/guest.py
echo "===CGV2-RC $?==="
poweroff -f
"""

# Runs as root (pid 1's child) in the guest. Each check records what it saw; the host asserts.
GUEST = r"""
import json, os, signal, subprocess, sys, time, traceback
from pathlib import Path

from argosy.sandbox import cgroups
from argosy.sandbox.limits import Limits

ROOT = Path("/sys/fs/cgroup")
out = {"errors": {}}


def limits(memory_mb=64, cpu=1.0, pids=64):
    return Limits(timeout_ms=10_000, memory_mb=memory_mb, cpu_count=cpu, max_output_bytes=4096,
                  pids=pids, file_size_mb=1)


def read(p):
    try:
        return Path(p).read_text().strip()
    except OSError as exc:
        return "ERR " + type(exc).__name__


def kv(p):
    return {k: int(v) for k, v in (line.split() for line in read(p).splitlines() if line and not line.startswith("ERR"))}


def gated(group, work):
    # The child blocks until it is in the group, so everything it does (and forks) is charged there.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        code = 0
        try:
            work()
        except BaseException:
            code = 1
        os._exit(code)
    os.close(r)
    group.attach(pid)
    os.write(w, b"x")
    os.close(w)
    return pid


def dead(pid):
    # Gone, or a zombie waiting for its reaper: either way nothing runs.
    state = read(f"/proc/{pid}/stat")
    return state.startswith("ERR") or state.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_empty(group, timeout=5.0):
    t0 = time.monotonic()
    while group.pids() and time.monotonic() - t0 < timeout:
        time.sleep(0.005)
    return round(time.monotonic() - t0, 4)


def check(name):
    def wrap(fn):
        t0 = time.monotonic()
        try:
            fn(out.setdefault(name, {}))
        except BaseException:
            out["errors"][name] = traceback.format_exc()[-1500:]
        out[name]["seconds"] = round(time.monotonic() - t0, 3)
        return fn
    return wrap


subprocess.run(["mount", "-t", "cgroup2", "cgroup2", str(ROOT)], check=True)
out["kernel"] = os.uname().release
out["root_subtree_before"] = read(ROOT / "cgroup.subtree_control")
support = cgroups.detect()
out["detect"] = {"version": support.version, "controllers": list(support.controllers),
                  "reason": support.reason, "v2_root": str(support.v2_root)}


@check("memory")
def _(res):
    g = cgroups.RunCgroup(support, "mem")
    g.create(limits(memory_mb=MEMORY_MB))
    d = g.dirs["unified"]
    res["delegation"] = {
        "root": read(ROOT / "cgroup.subtree_control"),
        "parent": read(d.parent / "cgroup.subtree_control"),
        "group": read(d / "cgroup.controllers"),
    }
    res["memory.max"] = read(d / "memory.max")

    def hog():
        blocks = []
        for _ in range(4 * MEMORY_MB):  # 4x the limit; touched pages, not just reserved ones
            blocks.append(b"\x01" * 2**20)

    pid = gated(g, hog)
    _, status = os.waitpid(pid, 0)
    res["signal"] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    res["exit"] = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    res["oom_kills"] = g.oom_kills()
    res["events"] = kv(d / "memory.events")
    g.destroy()
    res["dir_after_destroy"] = d.exists()


@check("pids")
def _(res):
    g = cgroups.RunCgroup(support, "pids")
    g.create(limits(pids=PIDS))
    d = g.dirs["unified"]
    res["pids.max"] = read(d / "pids.max")
    r, w = os.pipe()

    def bomb():
        n, err = 0, None
        while n < 10 * PIDS:
            try:
                child = os.fork()
            except OSError as exc:
                err = exc.errno
                break
            if child == 0:
                time.sleep(120)
                os._exit(0)
            n += 1
        os.write(w, json.dumps({"forked": n, "errno": err}).encode())
        time.sleep(120)

    pid = gated(g, bomb)
    os.close(w)
    res |= json.loads(os.read(r, 4096))
    members = g.pids()
    res["in_group"] = len(members)
    res["pids.current"] = read(d / "pids.current")
    res["events"] = kv(d / "pids.events")
    # cgroup.kill: everything in the group, forks included, gets SIGKILL.
    g.kill_all()
    res["kill_empty_s"] = wait_empty(g)
    res["left_after_kill"] = g.pids()
    _, status = os.waitpid(pid, 0)
    res["bomb_signal"] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    res["all_dead"] = all(dead(p) for p in members)
    res["populated"] = read(d / "cgroup.events")
    g.destroy()
    res["dir_after_destroy"] = d.exists()


@check("destroy_populated")
def _(res):
    # The agent's usual order: destroy() straight away on a group whose tasks still run.
    # Tasks with memory of their own: exiting frees it, and rmdir waits for the last one.
    g = cgroups.RunCgroup(support, "busy")
    g.create(limits(memory_mb=128, pids=64))
    d = g.dirs["unified"]

    r, w = os.pipe()

    def family():
        for _ in range(BUSY - 1):
            if os.fork() == 0:
                ballast = b"\x01" * BALLAST_MB * 2**20
                os.write(w, b"+")
                time.sleep(120)
                os._exit(len(ballast) and 0)
        time.sleep(120)

    pid = gated(g, family)
    os.close(w)
    t0 = time.monotonic()
    ready = b""
    while len(ready) < BUSY - 1:
        ready += os.read(r, BUSY)
    os.close(r)
    res["spawn_s"] = round(time.monotonic() - t0, 3)
    members = g.pids()
    res["members"] = len(members)
    res["memory.current"] = read(d / "memory.current")
    t0 = time.monotonic()
    res["destroyed"] = g.destroy()
    res["destroy_s"] = round(time.monotonic() - t0, 4)
    res["dir_after_destroy"] = d.exists()
    _, status = os.waitpid(pid, 0)
    res["signal"] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    res["all_dead"] = all(dead(p) for p in members)


@check("cpu")
def _(res):
    g = cgroups.RunCgroup(support, "cpu")
    g.create(limits(cpu=CPU_LIMITED))
    d = g.dirs["unified"]
    res["cpu.max_limited"] = read(d / "cpu.max")

    def spin():
        while True:
            pass

    def share(seconds):
        s0, t0 = kv(d / "cpu.stat"), time.monotonic()
        time.sleep(seconds)
        s1, t1 = kv(d / "cpu.stat"), time.monotonic()
        return {"share": round((s1["usage_usec"] - s0["usage_usec"]) / 1e6 / (t1 - t0), 3),
                 "nr_throttled": s1.get("nr_throttled", 0) - s0.get("nr_throttled", 0)}

    pid = gated(g, spin)
    time.sleep(0.2)
    res["limited"] = share(1.5)
    g.set_limits(limits(cpu=1.0))
    res["cpu.max_raised"] = read(d / "cpu.max")
    res["raised"] = share(1.0)
    g.destroy()
    _, status = os.waitpid(pid, 0)
    res["signal"] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    res["dir_after_destroy"] = d.exists()


def move_self(cg):
    (cg / "cgroup.procs").write_text(str(os.getpid()))


def support_dict(s):
    return {"version": s.version, "controllers": list(s.controllers), "reason": s.reason}


@check("nested_leaf")
def _(res):
    # The agent in a leaf of its own below a delegated, process-free cgroup (systemd Delegate=yes,
    # a container whose init moved itself aside): run groups nest two levels below the root.
    top = ROOT / "svc"
    (top / "agent").mkdir(parents=True)
    move_self(top / "agent")
    try:
        s = cgroups.detect(top)
        res["detect"] = support_dict(s)
        g = cgroups.RunCgroup(s, "inner")
        g.create(limits(memory_mb=MEMORY_MB, pids=PIDS))
        d = g.dirs["unified"]
        res["group_controllers"] = read(d / "cgroup.controllers")
        res["memory.max"] = read(d / "memory.max")
        res["pids.max"] = read(d / "pids.max")
        g.destroy()
        res["dir_after_destroy"] = d.exists()
    finally:
        move_self(ROOT)
        for p in (top / cgroups.GROUP_PREFIX, top / "agent", top):
            if p.exists():
                p.rmdir()


@check("leafless")
def _(res):
    # The agent's own processes in the cgroup it would delegate from (a container's /sys/fs/cgroup
    # under cgroupns, a service without Delegate=): the kernel refuses memory to child groups
    # (EBUSY), and enabling only pids/cpu would make it threaded (children then take no process).
    top = ROOT / "ctr"
    top.mkdir()
    move_self(top)
    try:
        res["detect"] = support_dict(cgroups.detect(top))
        forced = cgroups.CgroupSupport("v2", ("memory", "pids", "cpu"), "forced", v2_root=top)
        g = cgroups.RunCgroup(forced, "forced")
        try:
            g.create(limits())
            res["create_forced"] = "ok"
        except Exception as exc:
            res["create_forced"] = f"{type(exc).__name__}: {exc}"
        res["type_after"] = read(top / "cgroup.type")
        res["parent_made"] = (top / cgroups.GROUP_PREFIX).exists()
        g.destroy()
    finally:
        move_self(ROOT)
        for p in (top / cgroups.GROUP_PREFIX, top):
            if p.exists():
                p.rmdir()


out["parent_left"] = sorted(p.name for p in (ROOT / cgroups.GROUP_PREFIX).iterdir() if p.is_dir())
print("===CGV2-RESULT===" + json.dumps(out) + "===CGV2-END===", flush=True)
"""


# Run on the host by the same interpreter the guest gets: it imports what the guest script imports
# (and formats a traceback, which imports lazily) and lists the stdlib files that took.
CENSUS = r"""
import ast, json, sys, sysconfig, traceback
src = open(sys.argv[1]).read()
for node in ast.parse(src).body:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        exec(compile(ast.Module([node], []), "guest", "exec"))
try:
    raise RuntimeError
except RuntimeError:
    traceback.format_exc()
std = sysconfig.get_paths()["stdlib"] + "/"
files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
print(json.dumps(sorted(f for f in files if f and f.startswith(std))))
"""


def _image(kernel: Path) -> tuple[str, Path]:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("QEMU is not installed: apt-get install -y qemu-system-x86")
    ldd = subprocess.run(["ldd", BUSYBOX], capture_output=True, text=True) if Path(BUSYBOX).exists() else None
    if ldd is None or "not a dynamic executable" not in ldd.stdout + ldd.stderr:
        pytest.skip(
            "the guest has no libc for busybox, so it must be the static build: apt-get install -y busybox-static"
        )
    return qemu, kernel


def _copy_libs(binary: Path, root: Path) -> None:
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    for lib in re.findall(r"(/\S+)\s+\(0x", out):
        # At the path the loader asks for (/lib64/ld-linux-x86-64.so.2), not where it resolves.
        dest = root / Path(lib).relative_to("/")
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(lib).resolve(), dest)


def _initramfs(root: Path) -> bytes:
    """busybox, the host's Python with just the stdlib files the guest imports, and the code under test."""
    for d in ("bin", "dev", "proc", "sys", "tmp", "usr/bin", "cgtest"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    (root / "init").write_text(INIT)
    (root / "init").chmod(0o755)
    guest = root / "cgtest" / "guest.py"
    guest.write_text(
        f"MEMORY_MB, PIDS, CPU_LIMITED, BUSY, BALLAST_MB = {MEMORY_MB}, {PIDS}, {CPU_LIMITED}, {BUSY}, {BALLAST_MB}\n"
        + GUEST
    )
    pkg = root / "cgtest" / "argosy"
    for name in GUEST_MODULES:
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(SRC / name, pkg / name)
    # Empty package markers: nothing but the modules above comes from argosy.
    for init in ("__init__.py", "core/__init__.py", "sandbox/__init__.py"):
        (pkg / init).write_text("")

    python = Path(PYTHON).resolve()
    shutil.copy2(python, root / "usr" / "bin" / python.name)
    (root / "usr" / "bin" / "python3").symlink_to(python.name)
    _copy_libs(python, root)
    census = subprocess.run(
        [str(python), "-S", "-B", "-c", CENSUS, str(guest)],
        env={"PYTHONPATH": str(root / "cgtest"), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    # os.py is the landmark Python finds its stdlib by; lib-dynload the one for extension modules.
    files = {Path(f) for f in json.loads(census.stdout)} | {stdlib / "os.py"}
    (root / stdlib.relative_to("/") / "lib-dynload").mkdir(parents=True, exist_ok=True)
    for f in files:
        cached = [Path(importlib.util.cache_from_source(str(f)))] if f.suffix == ".py" else []
        for src in [f, *(c for c in cached if c.exists())]:
            dest = root / src.relative_to("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
        if f.suffix == ".so":
            _copy_libs(f, root)
    return _cpio(_tree_entries(root))


def _boot(qemu: str, kernel: Path) -> tuple[dict[str, Any], str, float]:
    with tempfile.TemporaryDirectory(prefix="argosy-cgv2-") as tmp:
        initrd = Path(tmp) / "initramfs.cpio"
        initrd.write_bytes(_initramfs(Path(tmp) / "root"))
        argv = [
            qemu,
            "-M", "microvm,x-option-roms=off,rtc=on,pit=on,pic=on",
            "-accel", "tcg",
            "-cpu", "max",
            "-m", str(GUEST_MB),
            "-smp", "1",
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-serial", "stdio",
            "-kernel", str(kernel),
            "-initrd", str(initrd),
            "-append", KERNEL_ARGS,
        ]  # fmt: skip
        t0 = time.monotonic()
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=BOOT_LIMIT_S)
        except subprocess.TimeoutExpired as exc:
            tail = (exc.stdout or b"")[-2000:].decode(errors="replace")
            pytest.fail(f"the VM did not finish in {BOOT_LIMIT_S} s; console tail:\n{tail}")
        seconds = time.monotonic() - t0
    console = (proc.stdout + proc.stderr).decode(errors="replace").replace("\r\n", "\n")
    m = re.search(r"===CGV2-RESULT===(.*?)===CGV2-END===", console, re.S)
    if m is None:
        pytest.fail(f"no result from the guest (qemu rc {proc.returncode}); console tail:\n{console[-3000:]}")
    return json.loads(m.group(1)), console, seconds


@pytest.mark.slow
def test_cgroup_v2_limits_in_a_real_kernel(vm_kernel: Path) -> None:
    res, console, seconds = _boot(*_image(vm_kernel))
    print(f"VM run {seconds:.1f} s, kernel {res.get('kernel')}\n{json.dumps(res, indent=1)}")
    assert not res["errors"], res["errors"]

    d = res["detect"]
    assert d["version"] == "v2" and d["v2_root"] == "/sys/fs/cgroup", d
    assert set(d["controllers"]) == {"memory", "pids", "cpu"}, d

    # Delegation: nothing enabled on a fresh mount; create() enabled the three at the root and in
    # argosy-sandbox/, so the run's group has them.
    mem = res["memory"]
    assert not {"memory", "pids", "cpu"} & set(res["root_subtree_before"].split())
    for level in ("root", "parent", "group"):
        assert {"memory", "pids", "cpu"} <= set(mem["delegation"][level].split()), (level, mem)

    assert mem["memory.max"] == str(MEMORY_MB * 2**20)
    assert mem["signal"] == 9 and mem["exit"] is None, mem  # SIGKILLed, not a Python MemoryError
    assert mem["oom_kills"] == 1 == mem["events"]["oom_kill"], mem
    assert not mem["dir_after_destroy"]

    pids = res["pids"]
    assert pids["pids.max"] == str(PIDS)
    # The bomb itself is one of the PIDS tasks: it gets PIDS-1 forks, then EAGAIN.
    assert pids["forked"] == PIDS - 1 and pids["errno"] == errno.EAGAIN, pids
    assert pids["in_group"] == PIDS and pids["events"]["max"] >= 1, pids
    assert pids["left_after_kill"] == [] and pids["all_dead"] and pids["bomb_signal"] == 9, pids
    assert "populated 0" in pids["populated"], pids
    assert not pids["dir_after_destroy"]

    busy = res["destroy_populated"]
    assert busy["members"] == BUSY and busy["signal"] == 9 and busy["all_dead"], busy
    assert int(busy["memory.current"]) >= (BUSY - 1) * BALLAST_MB * 2**20, busy
    # Freeing ~70 MiB under TCG outlasts the 0.1 s destroy() used to allow (it left the dir behind).
    assert busy["destroyed"] and not busy["dir_after_destroy"], busy

    cpu = res["cpu"]
    quota = int(CPU_LIMITED * 100_000)
    assert cpu["cpu.max_limited"] == f"{quota} 100000" and cpu["cpu.max_raised"] == "100000 100000"
    assert cpu["limited"]["nr_throttled"] > 0 and cpu["limited"]["share"] < CPU_LIMITED * 1.5, cpu
    # set_limits took effect on the running group: the same spinner now gets (nearly) the whole CPU.
    assert cpu["raised"]["share"] > 2 * cpu["limited"]["share"], cpu
    assert cpu["signal"] == 9 and not cpu["dir_after_destroy"], cpu

    nested = res["nested_leaf"]
    assert nested["detect"]["version"] == "v2" and set(nested["detect"]["controllers"]) == {
        "memory",
        "pids",
        "cpu",
    }
    assert {"memory", "pids", "cpu"} <= set(nested["group_controllers"].split()), nested
    assert nested["memory.max"] == str(MEMORY_MB * 2**20) and nested["pids.max"] == str(PIDS), nested
    assert not nested["dir_after_destroy"]

    leafless = res["leafless"]
    assert leafless["detect"]["version"] == "none" and "process" in leafless["detect"]["reason"], leafless
    assert "fix:" in leafless["detect"]["reason"]
    assert leafless["create_forced"].startswith("SandboxError: cannot give cgroup"), leafless
    assert "memory" in leafless["create_forced"] and "fix:" in leafless["create_forced"], leafless
    # The refused write changed nothing, and create() made no directory before it.
    assert leafless["type_after"] == "domain" and not leafless["parent_made"], leafless

    assert res["parent_left"] == [], res
    assert "===CGV2-RC 0===" in console
