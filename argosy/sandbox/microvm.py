"""The `microvm` isolation backend: one VM per run. Slower than namespaces, stronger: the code runs
under its own kernel, so a kernel bug reachable from inside does not reach the host.

Image (`argosy sandbox build-image`, under `image_dir/microvm`):
- `vmlinuz`: a Debian cloud kernel (from /boot, else `apt-get download` of the
  linux-image-*-cloud-amd64 package, unpacked with dpkg-deb), and from the same package the
  modules it needs to see its disk (virtio_mmio, virtio_blk and what their .modinfo names);
- `vmlinux`: the ELF kernel inside vmlinuz (Firecracker boots nothing else), unpacked only where a
  Firecracker binary is found (~2 s, 53 MB);
- `initramfs.cpio`: busybox-static, those modules and /init (a few hundred KiB);
- `rootfs.ext4`: the languages' toolchains, read-only. Built from the Debian packages that own each
  toolchain binary on this node (`dpkg -S`) and their installed dependencies (`dpkg -L` of each),
  docs and man pages left out, plus the libraries `ldd` names and the /etc/alternatives links that
  point into it; written with `mkfs.ext4 -d` (no mount, no root needed);
- `manifest.json`: which languages (and versions) the rootfs carries, which were left out and why,
  and the inputs (package versions, image format) that decide whether a rebuild is needed;
- `smoke.json`: the smoke boot of each VMM tried, which decides the VMM (below).

A run: the agent appends a second cpio archive (the kernel unpacks concatenated archives) with the
job — its files, one script per step (compile, run), stdin — and boots the VM. /init loads the
modules, mounts the rootfs read-only, puts tmpfs on /work and /tmp, copies the files in, and runs
each step chrooted into the rootfs as uid 65534 with no_new_privs, inside a guest cgroup that holds
the step's memory and pids limits. It prints each step's stdout, stderr (base64) and exit status
between markers on the serial console and ends the VM by rebooting (`reboot -f`: Firecracker has
no guest power-off, and QEMU's -no-reboot exits on a reboot); a failed compile ends the job there.
The agent enforces each step's deadline from the moment the guest says it started (boot time is not
charged to the code) and the output cap (on the console bytes).

The VMM is a seam (`VMM`: VMConfig → argv, plus its kernel file, kernel arguments, boot timeout and
compile-timeout factor), with three, most preferred first: Firecracker (firecracker.py), QEMU's
`microvm` machine with `-accel kvm`, and the same under TCG (software emulation: correct, slow, the
TSC clock settings in KERNEL_ARGS, compile deadlines × TCG_COMPILE_FACTOR). A KVM VMM is considered
only when /dev/kvm passes the probe as the uid the VMM runs as, and Firecracker only with a 1.6+
binary and the vmlinux; then only a recorded smoke boot under that VMM makes it the one jobs use, so
a node where nested KVM hangs on a real kernel (this project's, themselves Firecracker guests) falls
back to QEMU/TCG. The `vmm` setting (auto|firecracker|qemu|qemu-kvm|qemu-tcg) narrows the list.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import selectors
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from argosy.sandbox.config import SandboxConfig
from argosy.sandbox.errors import BackendUnavailableError, SandboxError
from argosy.sandbox.firecracker import FirecrackerVMM, extract_vmlinux, find_firecracker, probe_kvm
from argosy.sandbox.languages import SANDBOX_PATH, LanguageTable, Limits
from argosy.sandbox.namespaces import Check, ProcessResult

QEMU = "qemu-system-x86_64"
# Until the guest says the first step started: measured 2-6 s under TCG on an idle 2-core node,
# several times that while other test suites load it.
BOOT_TIMEOUT_S = 90.0
# The same under KVM (QEMU or Firecracker), where a kernel is up in well under a second: a guest
# that hangs under nested KVM (silent on the console) costs this much, once, at the smoke boot.
KVM_BOOT_TIMEOUT_S = 30.0
# The guest kernel and initramfs use ~30 MB once up (MemFree after boot, 2026-12-01); the rest is
# slack for the rootfs's page cache. The job's limits are held by a cgroup inside the guest, not by
# the VM's RAM; the job's files and stdin (copied in by /init, outside that cgroup) come on top.
GUEST_OVERHEAD_MB = 128
# Compilers run 5-15x slower under TCG than natively (javac on Hello.java: ~1.5 s native, 19.5 s
# in the VM on an idle 2-core node, more when it is loaded): a compile step's deadline is the
# table's compile timeout times this. Run steps keep the request's timeout.
TCG_COMPILE_FACTOR = 4.0
# After the last step ends: the guest base64-prints its output and powers off.
DRAIN_TIMEOUT_S = 30.0
# Under TCG the guest cannot calibrate its TSC against the PIT (emulated time runs unevenly on a
# busy host) and the boot stalls for minutes with the clock at 0: give it a TSC frequency, trust the
# TSC, skip the timer and delay-loop checks. With these a Debian cloud kernel boots in seconds.
KERNEL_ARGS = (
    "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init "
    "tsc_early_khz=2000000 tsc=reliable no_timer_check lpj=4000000"
)
# Under KVM the guest calibrates against a real clock: the TCG settings above would be wrong there.
QEMU_KVM_KERNEL_ARGS = "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init"
# Preference order of `vmm: auto` (argosy/sandbox/config.py), and what the other values allow.
VMM_ORDER: dict[str, tuple[str, ...]] = {
    "auto": ("firecracker", "qemu-kvm", "qemu-tcg"),
    "firecracker": ("firecracker",),
    "qemu": ("qemu-kvm", "qemu-tcg"),
    "qemu-kvm": ("qemu-kvm",),
    "qemu-tcg": ("qemu-tcg",),
}
# The cloud kernel has ext4 built in; these (and what they depend on) are modules.
MODULES = ("virtio_mmio", "virtio_blk")
# Bump when the rootfs layout changes, so cached images are rebuilt.
IMAGE_FORMAT = 1
# Not needed to compile or run code; a third of some packages.
SKIP_PATHS = re.compile(
    r"^/usr/share/(doc|doc-base|man|info|locale|lintian|bug|bash-completion|menu)(/|$)"
    r"|^/usr/lib/python3\.\d+/(test|idlelib|tkinter|turtledemo|lib2to3)(/|$)"
)
STEP_NAME = re.compile(r"^[a-z]+$")

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "===ARGOSY-$*==="; }
# Firecracker implements no guest power-off: a reboot (reboot=k) is what ends it, and QEMU's
# -no-reboot turns the same reboot into a clean exit.
fail() { say "FAIL $*"; reboot -f; }
for m in $(cat /modules/order); do
  p=""
  # insmod, unlike modprobe, does not take a module's parameters from the kernel command line.
  [ "$m" = virtio_mmio ] && for a in $(cat /proc/cmdline); do
    case "$a" in virtio_mmio.device=*) p="$p device=${a#virtio_mmio.device=}";; esac
  done
  insmod /modules/$m.ko $p || fail "insmod $m"
done
i=0
while [ ! -b /dev/vda ]; do
  i=$((i + 1)); [ $i -gt 500 ] && fail "no root disk (/dev/vda)"; usleep 10000
done
. /job/env
R=/newroot
mkdir -p $R /out
mount -t ext4 -o ro,noload,nosuid,nodev /dev/vda $R || fail "cannot mount the root disk"
mount -t tmpfs -o size=${TMPFS_MB}m,mode=1777,nosuid,nodev tmp $R/tmp
mount -t tmpfs -o size=${TMPFS_MB}m,mode=0755,nosuid,nodev work $R/work
mount -t tmpfs -o mode=0755,nosuid,nodev job $R/job
mount -t proc -o nosuid,nodev,noexec proc $R/proc
mount -t devtmpfs -o nosuid,noexec dev $R/dev
mount -t tmpfs -o size=${OUT_KB}k out /out
cp -a /job/files/. $R/work/
chown -R 65534:65534 $R/work
cp /job/*.sh $R/job/
mkdir -p /sys/fs/cgroup
mount -t cgroup2 cgroup /sys/fs/cgroup && echo "+memory +pids" >/sys/fs/cgroup/cgroup.subtree_control
killed=$(dmesg | grep -c "Killed process")
while read name mem pids input; do
  cg=/sys/fs/cgroup/$name
  mkdir -p $cg && echo $((mem * 1048576)) >$cg/memory.max && echo $pids >$cg/pids.max
  say "START $name"
  sh -c 'echo $$ >"$1/cgroup.procs"; shift; exec "$@"' - $cg chroot $R /bin/busybox setpriv --nnp \
    /bin/busybox su -s /bin/sh nobody -c "exec sh /job/$name.sh" <$input >/out/$name.out 2>/out/$name.err
  rc=$?
  say "END $name"
  oom=0
  [ "$(sed -n 's/^oom_kill //p' $cg/memory.events 2>/dev/null)" -gt 0 ] 2>/dev/null && oom=1
  now=$(dmesg | grep -c "Killed process")
  [ "$now" -gt "$killed" ] && oom=1
  killed=$now
  say "STDOUT $name"
  base64 /out/$name.out
  say "STDERR $name"
  base64 /out/$name.err
  say "EXIT $name $rc $oom"
  rm -f /out/$name.out /out/$name.err
  [ $rc = 0 ] || break
done </job/steps
say DONE
reboot -f
"""


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (path, mode, data) entries; directories have S_IFDIR in mode."""
    out = bytearray()
    ino = 1
    for name, mode, data in [*entries, ("TRAILER!!!", 0, b"")]:
        nm = name.encode() + b"\0"
        hdr = "070701" + "".join(
            f"{v:08x}" for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nm), 0)
        )
        out += hdr.encode() + nm
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
        ino += 1
    out += b"\0" * (-len(out) % 512)
    return bytes(out)


def _tree_entries(root: Path, prefix: str = "") -> list[tuple[str, int, bytes]]:
    entries: list[tuple[str, int, bytes]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        base = prefix + ("" if rel == "." else rel + "/")
        if rel != ".":
            entries.append((base.rstrip("/"), 0o040755, b""))
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            st = p.lstat()
            if p.is_symlink():
                entries.append((base + fn, 0o120777, os.readlink(p).encode()))
            else:
                entries.append((base + fn, 0o100000 | (st.st_mode & 0o777), p.read_bytes()))
        for dn in sorted(dirnames):
            if (Path(dirpath) / dn).is_symlink():
                entries.append((base + dn, 0o120777, os.readlink(Path(dirpath) / dn).encode()))
        dirnames[:] = sorted(d for d in dirnames if not (Path(dirpath) / d).is_symlink())
    return entries


# -- the VMM seam ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VMConfig:
    """One VM: paths the VMM opens (here /dev/fd/N of files the agent opened), RAM, vCPUs."""

    kernel: str
    initrd: str
    rootfs: str
    memory_mb: int
    vcpus: int
    kernel_args: str


class VMM(Protocol):
    """Turns a VMConfig into the argv of a VMM process whose stdout is the guest's serial console
    and whose guest sees the rootfs as /dev/vda over virtio-mmio."""

    # The key of its smoke record: firecracker, qemu-kvm, qemu-tcg.
    name: str
    # How many times the table's compile timeout a compile step gets (1 with hardware virtualization).
    compile_timeout_factor: float
    # The image's kernel file it boots (vmlinuz; Firecracker: the unpacked ELF vmlinux).
    kernel_file: str
    # The guest command line (Firecracker puts its own documented arguments in front).
    kernel_args: str
    # Until the guest says the first step started.
    boot_timeout_s: float

    def argv(self, vm: VMConfig) -> list[str]: ...


class QemuVMM:
    """QEMU's `microvm` machine, under KVM or TCG (software emulation)."""

    kernel_file = "vmlinuz"

    def __init__(self, binary: str, accel: str = "tcg") -> None:
        if accel not in ("tcg", "kvm"):
            raise SandboxError(f"QEMU accelerator {accel!r} is not tcg or kvm", fix="use tcg or kvm")
        self.binary = binary
        self.accel = accel
        self.name = f"qemu-{accel}"
        kvm = accel == "kvm"
        self.compile_timeout_factor = 1.0 if kvm else TCG_COMPILE_FACTOR
        self.kernel_args = QEMU_KVM_KERNEL_ARGS if kvm else KERNEL_ARGS
        self.boot_timeout_s = KVM_BOOT_TIMEOUT_S if kvm else BOOT_TIMEOUT_S

    def argv(self, vm: VMConfig) -> list[str]:
        return [
            self.binary,
            "-M", "microvm,x-option-roms=off,rtc=on,pit=on,pic=on",
            "-accel", self.accel,
            # Under KVM, the host's CPU model (TCG's `max` is not one KVM can run).
            "-cpu", "host" if self.accel == "kvm" else "max",
            "-m", str(vm.memory_mb),
            "-smp", str(vm.vcpus),
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-serial", "stdio",
            "-kernel", vm.kernel,
            "-initrd", vm.initrd,
            "-append", vm.kernel_args,
            # Read-only, and no OFD lock: many VMs share one image.
            "-drive", f"id=root,file={vm.rootfs},format=raw,if=none,readonly=on,file.locking=off",
            "-device", "virtio-blk-device,drive=root",
            # QEMU's own seccomp filter: no exec, no privilege changes, no obsolete or
            # resource-control syscalls.
            "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]  # fmt: skip


# -- jobs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One command of a job (`compile`, `run`): its limits, and whether the job's stdin is its stdin."""

    name: str
    argv: list[str]
    limits: Limits
    stdin: bool = True
    # The deadline is limits.timeout_ms times this (compile steps under emulation).
    timeout_factor: float = 1.0


@dataclass
class _Seen:
    started: float | None = None
    ended: float | None = None


@dataclass
class _Console:
    buf: bytearray = field(default_factory=bytearray)
    steps: dict[str, _Seen] = field(default_factory=dict)
    timed_out: str | None = None
    truncated: bool = False
    done: bool = False


def _module_depends(ko: Path) -> list[str]:
    m = re.search(rb"(?:^|\0)depends=([^\0]*)", ko.read_bytes())
    return [d for d in (m.group(1).decode().split(",") if m else []) if d]


def _resolve_in(root: Path, path: str) -> Path | None:
    """`path` resolved inside `root` as the guest would (symlinks followed within root), if it exists."""
    parts = [p for p in path.split("/") if p]
    cur = Path("/")
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            cur = cur.parent
            continue
        nxt = cur / part
        real = root / nxt.relative_to("/")
        if real.is_symlink():
            hops += 1
            if hops > 40:
                return None
            target = os.readlink(real)
            parts = [p for p in target.split("/") if p] + parts
            cur = Path("/") if target.startswith("/") else cur
            continue
        if not real.exists() and not real.is_symlink():
            return None
        cur = nxt
    return root / cur.relative_to("/")


@dataclass(frozen=True)
class VMMChoice:
    """The VMM this node's VMs run under (None: none works) and, for each one `vmm` allows, most
    preferred first, whether it could be used and why (or why not)."""

    vmm: VMM | None
    considered: list[tuple[str, bool, str]]


_LABELS = {
    "firecracker": "Firecracker (KVM)",
    "qemu-kvm": "QEMU microvm, KVM",
    "qemu-tcg": "QEMU microvm, TCG",
}


class MicroVMBackend:
    name = "microvm"
    summary = "one VM per run, own kernel, toolchains on a read-only disk (Firecracker or QEMU microvm)"

    def __init__(self, config: SandboxConfig, kvm_device: str | Path = "/dev/kvm") -> None:
        """`kvm_device` is the node the KVM probe opens; the VMMs themselves open /dev/kvm."""
        self.config = config
        self.qemu = shutil.which(QEMU)
        self.kvm_device = Path(kvm_device)
        self.image_dir = config.image_dir / "microvm"
        # Cached per instance (a probe is a child process) until smoke.json changes: a build-image
        # run elsewhere re-checks, and a long-lived agent picks up its result.
        self._kvm: tuple[bool, str] | None = None
        self._choice: tuple[int, VMMChoice] | None = None

    @property
    def vmm(self) -> VMM | None:
        return self.choose().vmm

    @property
    def compile_timeout_factor(self) -> float:
        # Follows the accelerator the runs get; with no VMM chosen nothing runs, TCG is the worst case.
        vmm = self.vmm
        return vmm.compile_timeout_factor if vmm is not None else TCG_COMPILE_FACTOR

    @property
    def kernel(self) -> Path:
        return self.image_dir / "vmlinuz"

    @property
    def vmlinux(self) -> Path:
        """The ELF kernel inside vmlinuz, for Firecracker (written only where a binary is found)."""
        return self.image_dir / "vmlinux"

    @property
    def initramfs(self) -> Path:
        return self.image_dir / "initramfs.cpio"

    @property
    def rootfs(self) -> Path:
        return self.image_dir / "rootfs.ext4"

    @property
    def manifest_file(self) -> Path:
        return self.image_dir / "manifest.json"

    @property
    def modules_dir(self) -> Path:
        return self.image_dir / "modules"

    @property
    def smoke_file(self) -> Path:
        return self.image_dir / "smoke.json"

    def manifest(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.manifest_file.read_text()))
        except (OSError, ValueError):
            return None

    @property
    def image_languages(self) -> dict[str, str]:
        """Languages the built rootfs carries, with the version each toolchain reported at build time."""
        m = self.manifest() or {}
        return {k: str(v.get("version", "")) for k, v in dict(m.get("languages") or {}).items()}

    def built(self) -> bool:
        return (
            all(p.exists() for p in (self.kernel, self.initramfs, self.rootfs, self.manifest_file))
            and (self.modules_dir / "order").exists()
        )

    # -- choosing the VMM --------------------------------------------------------------------------

    def _owner(self) -> tuple[int, int] | None:
        """Who the VMM runs as when the agent is root (setpriv in run_steps); else the agent itself."""
        return (self.config.uid, self.config.gid) if os.geteuid() == 0 else None

    def candidates(self) -> list[VMM]:
        """The VMMs the `vmm` setting allows, most preferred first, whether or not they work here."""
        configured = self.config.firecracker_binary
        fc = FirecrackerVMM(find_firecracker(configured), self._owner())
        if configured is not None:
            fc.binary = find_firecracker(configured)  # a bad configured path is not replaced by PATH's
        made: dict[str, VMM] = {
            "firecracker": fc,
            "qemu-kvm": QemuVMM(self.qemu or QEMU, "kvm"),
            "qemu-tcg": QemuVMM(self.qemu or QEMU, "tcg"),
        }
        return [made[n] for n in VMM_ORDER[self.config.vmm]]

    def kvm_probe(self) -> tuple[bool, str]:
        """The KVM probe, as the uid the VMM will run as (cached: both KVM VMMs ask)."""
        if self._kvm is None:
            owner = self._owner()
            uid, gid = owner if owner is not None else (None, None)
            self._kvm = probe_kvm(5.0, self.kvm_device, uid, gid)
        return self._kvm

    def precheck(self, vmm: VMM) -> tuple[bool, str]:
        """What can be checked about `vmm` without booting it."""
        if isinstance(vmm, FirecrackerVMM):
            if vmm.binary is None:
                configured = self.config.firecracker_binary
                if configured is not None:
                    return False, f"firecracker_binary {configured} is not an executable file"
                return (
                    False,
                    "no firecracker binary on PATH (a release binary: not packaged for Debian or PyPI)",
                )
            ok, why = vmm.available(kvm=self.kvm_probe())
            if ok and not self.vmlinux.exists():
                return False, f"no {self.vmlinux}: run `argosy sandbox build-image` (it unpacks vmlinuz)"
            return ok, why
        if self.qemu is None:
            return False, "QEMU is not installed (apt-get install qemu-system-x86)"
        if isinstance(vmm, QemuVMM) and vmm.accel == "kvm":
            return self.kvm_probe()
        return True, "software emulation, no KVM needed"

    def smoke_records(self) -> dict[str, dict[str, Any]]:
        """The last smoke boot of each VMM that was tried, by VMM name."""
        smoke = self.smoke_result()
        if smoke is None:
            return {}
        if "vmms" in smoke:
            return {str(k): dict(v) for k, v in dict(smoke["vmms"]).items()}  # type: ignore[call-overload]
        # Written before there was a choice of VMM: QEMU under TCG was the only one.
        return {"qemu-tcg": dict(smoke)}

    def choose(self) -> VMMChoice:
        """The first VMM (in the `vmm` setting's order) that passes its checks and whose smoke boot
        worked: a passing KVM probe is not proof (nested KVM hangs on a real kernel), a boot is."""
        try:
            stamp = self.smoke_file.stat().st_mtime_ns
        except OSError:
            stamp = 0
        if self._choice is not None and self._choice[0] == stamp:
            return self._choice[1]
        if self._choice is not None:
            self._kvm = None
        records = self.smoke_records()
        chosen: VMM | None = None
        considered: list[tuple[str, bool, str]] = []
        for vmm in self.candidates():
            ok, why = self.precheck(vmm)
            rec = records.get(vmm.name)
            if ok:
                if rec is None:
                    ok, why = False, f"never smoke-booted ({why}): `argosy sandbox build-image` boots it"
                elif not rec.get("ok"):
                    ok, why = False, f"failed its smoke boot after {rec.get('seconds')} s: {rec.get('error')}"
                else:
                    why = f"booted and ran a job in {rec.get('seconds')} s ({why})"
            if ok and chosen is None:
                chosen = vmm
            elif ok:
                assert chosen is not None
                why = f"works, but {chosen.name} comes first ({why})"
            considered.append((vmm.name, ok, why))
        self._choice = (stamp, VMMChoice(chosen, considered))
        return self._choice[1]

    def smoke_result(self) -> dict[str, object] | None:
        try:
            return dict(json.loads(self.smoke_file.read_text()))
        except (OSError, ValueError):
            return None

    def smoke(self) -> dict[str, object]:
        """Boot the image and run `echo ok` under each VMM that passes its checks, most preferred
        first, until one works. The record (`vmm` and the result at the top, every VMM tried under
        `vmms`) decides which VMM runs jobs: a failed Firecracker or KVM boot falls back to the next.

        A built image is not proof that VMs boot on this node (under TCG on a loaded host the
        kernel's timer calibration can stall for minutes; under nested KVM a kernel hangs), so
        doctor trusts only this record.
        """
        self._kvm = self._choice = None
        records: dict[str, dict[str, Any]] = {}
        skipped: list[str] = []
        last: dict[str, Any] | None = None
        for vmm in self.candidates():
            ok, why = self.precheck(vmm)
            if not ok:
                skipped.append(f"{vmm.name}: {why}")
                continue
            last = records[vmm.name] = self._smoke_one(vmm)
            if last["ok"]:
                break
        if last is None:
            last = {"vmm": None, "at": time.time(), "ok": False, "seconds": 0.0}
            last["error"] = "no VMM can run here (" + "; ".join(skipped) + ")"
        result: dict[str, object] = {**last, "vmms": records}
        tmp = _tmp_name(self.smoke_file)
        tmp.write_text(json.dumps(result))
        tmp.replace(self.smoke_file)
        self._choice = None
        return result

    def _smoke_one(self, vmm: VMM) -> dict[str, Any]:
        t0 = time.monotonic()
        result: dict[str, Any] = {"vmm": vmm.name, "at": time.time()}
        try:
            res = self.run_job(
                ["sh", "-c", "echo ok"], Limits(10_000, 64, 1, 4096, 16, 1), {}, check=False, vmm=vmm
            )
            ok = res.stdout == b"ok\n"
            result |= {"ok": ok, "seconds": round(time.monotonic() - t0, 2)}
            if not ok:
                result["error"] = (
                    "the VM timed out before running the job"
                    if res.timed_out
                    else f"wrong output: {(res.stdout + res.stderr)[-300:].decode(errors='replace')!r}"
                )
        except SandboxError as exc:
            result |= {"ok": False, "seconds": round(time.monotonic() - t0, 2), "error": exc.message}
        return result

    def checks(self) -> list[Check]:
        built = self.built()
        smoke = self.smoke_result()
        manifest = self.manifest() or {}
        choice = self.choose()
        if smoke is None:
            booted = Check("boot", False, "never tried: `argosy sandbox build-image` boots it once")
        elif choice.vmm is not None:
            rec = self.smoke_records()[choice.vmm.name]
            booted = Check(
                "boot", True, f"booted under {choice.vmm.name} and ran a job in {rec.get('seconds')} s"
            )
        else:
            booted = Check("boot", False, f"failed after {smoke.get('seconds')} s: {smoke.get('error')}")
        langs = self.image_languages
        missing = dict(manifest.get("missing") or {})
        detail = ", ".join(f"{k} {_short_version(v)}" for k, v in langs.items()) or "none"
        if missing:
            detail += "; left out: " + ", ".join(f"{k} ({v})" for k, v in missing.items())
        in_use = choice.vmm.name if choice.vmm is not None else None
        vmm_checks = [
            Check(f"vmm {name}", ok, ("in use: " if name == in_use else "") + why)
            for name, ok, why in choice.considered
        ]
        return [
            Check("qemu", self.qemu is not None, self.qemu or "not installed (apt-get install qemu-system-x86)"),
            Check("vmm", in_use is not None,
                  f"{in_use} (setting: vmm={self.config.vmm})" if in_use
                  else f"none boots the image here (setting: vmm={self.config.vmm})"),
            *vmm_checks,
            Check("image", built, str(self.image_dir) if built else "not built: run `argosy sandbox build-image`"),
            Check("languages", built and bool(langs), detail),
            booted,
        ]  # fmt: skip

    def available(self) -> tuple[bool, str]:
        if self.qemu is None and self.config.vmm.startswith("qemu"):
            return False, "QEMU is not installed (apt-get install qemu-system-x86)"
        if not self.built():
            return False, "no VM image: run `argosy sandbox build-image`"
        choice = self.choose()
        if choice.vmm is None:
            smoke = self.smoke_result()
            if smoke is None:
                why = "never booted"
            else:
                why = "; ".join(f"{name}: {w}" for name, _, w in choice.considered)
            return (
                False,
                f"the VM image does not boot on this node ({why}); re-check with `argosy sandbox build-image`",
            )
        return True, f"{_LABELS[choice.vmm.name]}; languages: {', '.join(self.image_languages)}"

    def require(self) -> None:
        ok, why = self.available()
        if not ok:
            raise BackendUnavailableError(
                f"isolation backend 'microvm' is unavailable: {why}",
                fix="apt-get install qemu-system-x86 busybox-static && argosy sandbox build-image",
            )

    # -- image -------------------------------------------------------------------------------------

    def build_image(self, log: list[str] | None = None, table: LanguageTable | None = None) -> Path:
        """Build kernel, initramfs and rootfs under image_dir; returns the dir.

        Idempotent: the rootfs is rebuilt only when its inputs (package versions, languages, image
        format) differ from the manifest's. Every file is written to a temporary name and renamed.
        """
        log = log if log is not None else []
        busybox = Path("/bin/busybox")
        ldd = (
            subprocess.run(["ldd", str(busybox)], capture_output=True, text=True)
            if busybox.exists()
            else None
        )
        if ldd is None or "not a dynamic executable" not in (ldd.stdout + ldd.stderr):
            # The initramfs has no libc of its own for busybox: it must be the static build.
            raise SandboxError(
                "busybox-static is needed for the VM image", fix="apt-get install -y busybox-static"
            )
        if shutil.which("dpkg-query") is None:
            raise SandboxError(
                "the VM image is built from this node's Debian packages, and dpkg is not here",
                fix="build the image on a Debian or Ubuntu node, or use the namespaces backend",
            )
        if shutil.which("mkfs.ext4") is None:
            raise SandboxError("mkfs.ext4 is needed for the VM image", fix="apt-get install -y e2fsprogs")
        self.image_dir.mkdir(parents=True, exist_ok=True)
        _remove_dead_builds(self.image_dir)
        self._kernel(log)
        self._vmlinux(log)
        self._initramfs(busybox, log)
        self._rootfs(busybox, table or LanguageTable.load(), log)
        return self.image_dir

    def _initramfs(self, busybox: Path, log: list[str]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "root"
            for d in ("bin", "dev", "proc", "sys", "tmp", "job", "etc", "modules"):
                (root / d).mkdir(parents=True, exist_ok=True)
            shutil.copy2(busybox, root / "bin" / "busybox")
            (root / "init").write_text(INIT)
            (root / "init").chmod(0o755)
            for ko in self.modules_dir.iterdir():
                shutil.copy2(ko, root / "modules" / ko.name)
            data = _cpio(_tree_entries(root))
        tmp_out = _tmp_name(self.initramfs)
        tmp_out.write_bytes(data)
        tmp_out.replace(self.initramfs)
        log.append(f"initramfs: {self.initramfs} ({len(data) / 2**20:.1f} MiB)")

    def _kernel(self, log: list[str]) -> None:
        """The kernel and, from the same package, the modules the guest needs for its disk."""
        if self.kernel.exists() and (self.modules_dir / "order").exists():
            return
        with tempfile.TemporaryDirectory() as tmp:
            booted = sorted(Path("/boot").glob("vmlinuz-*"))
            release = booted[-1].name.removeprefix("vmlinuz-") if booted else None
            if booted and release and Path("/lib/modules", release, "kernel").is_dir():
                src, what = Path("/"), str(booted[-1])
            else:
                # No kernel on the node (containers): fetch Debian's cloud kernel package and unpack it.
                pkg = f"linux-image-{release}" if release else self._cloud_kernel_package()
                r = subprocess.run(["apt-get", "download", pkg], cwd=tmp, capture_output=True, text=True)
                debs = list(Path(tmp).glob("*.deb"))
                if r.returncode != 0 or not debs:
                    raise SandboxError(
                        f"apt-get download {pkg} failed: {r.stderr.strip()[-300:]}",
                        fix="check apt's sources (apt-get update)",
                    )
                src, what = Path(tmp) / "x", pkg
                subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(src)], check=True)
            kernels = sorted((src / "boot").glob("vmlinuz-*"))
            if not kernels:
                raise SandboxError(f"{what} holds no kernel", fix=f"put a kernel at {self.kernel}")
            release = kernels[-1].name.removeprefix("vmlinuz-")
            kos = {p.name.split(".ko")[0]: p for p in (src / "lib/modules" / release).rglob("*.ko*")}
            order: list[str] = []

            def add(mod: str) -> None:
                if mod in order:
                    return
                if mod not in kos:
                    raise SandboxError(
                        f"kernel {release} has no module {mod}",
                        fix="use a kernel with virtio_mmio and virtio_blk (Debian's cloud kernel)",
                    )
                for dep in _module_depends(self._plain_ko(kos[mod], Path(tmp))):
                    add(dep)
                order.append(mod)

            for mod in MODULES:
                add(mod)
            staged = Path(tmp) / "modules"
            staged.mkdir()
            for mod in order:
                shutil.copy2(self._plain_ko(kos[mod], Path(tmp)), staged / f"{mod}.ko")
            (staged / "order").write_text("\n".join(order) + "\n")
            kernel_tmp = _tmp_name(self.kernel)
            shutil.copy2(kernels[-1], kernel_tmp)
            new = _tmp_name(self.modules_dir)
            shutil.copytree(staged, new)
            old = self.image_dir / f".modules-old.{os.getpid()}.tmp"
            if self.modules_dir.exists():
                self.modules_dir.rename(old)
            try:
                new.rename(self.modules_dir)
            except OSError:  # another build put the same modules there first
                shutil.rmtree(new, ignore_errors=True)
            kernel_tmp.replace(self.kernel)
            shutil.rmtree(old, ignore_errors=True)
            log.append(f"kernel: {what} ({release}), modules: {', '.join(order)}")

    def _vmlinux(self, log: list[str]) -> None:
        """Firecracker boots only an ELF kernel: unpack vmlinuz (Debian's is LZ4, ~2 s in Python for
        53 MB), only where a Firecracker binary could use it, and again when vmlinuz is newer."""
        fc = [v for v in self.candidates() if isinstance(v, FirecrackerVMM) and v.binary is not None]
        if not fc:
            return
        if self.vmlinux.exists() and self.vmlinux.stat().st_mtime >= self.kernel.stat().st_mtime:
            return
        t0 = time.monotonic()
        extract_vmlinux(self.kernel, self.vmlinux)
        log.append(
            f"vmlinux (for Firecracker): {self.vmlinux} ({self.vmlinux.stat().st_size / 2**20:.0f} MiB) "
            f"in {time.monotonic() - t0:.1f} s"
        )

    def _cloud_kernel_package(self) -> str:
        dep = subprocess.run(
            ["apt-cache", "depends", "linux-image-cloud-amd64"], capture_output=True, text=True
        ).stdout
        m = re.search(r"Depends: (linux-image-\S+-cloud-amd64)", dep)
        if not m:
            raise SandboxError(
                "cannot find Debian's cloud kernel package",
                fix="apt-get update, or put a kernel at " + str(self.kernel),
            )
        return m.group(1)

    @staticmethod
    def _plain_ko(ko: Path, tmp: Path) -> Path:
        """busybox insmod loads plain .ko files: decompress .ko.xz / .ko.zst kernels' modules."""
        if ko.suffix == ".ko":
            return ko
        out = tmp / ko.name.split(".ko")[0]
        out = out.with_suffix(".ko")
        if not out.exists():
            tool = {".xz": ["xz", "-dc"], ".zst": ["zstd", "-dc"], ".gz": ["gzip", "-dc"]}.get(ko.suffix)
            if tool is None:
                raise SandboxError(f"cannot read module {ko}", fix="use a kernel with plain or xz modules")
            out.write_bytes(subprocess.run([*tool, str(ko)], capture_output=True, check=True).stdout)
        return out

    # -- rootfs ------------------------------------------------------------------------------------

    def _rootfs(self, busybox: Path, table: LanguageTable, log: list[str]) -> None:
        t0 = time.monotonic()
        db = _dpkg_db()
        languages: dict[str, dict[str, Any]] = {}
        missing: dict[str, str] = {}
        roots: dict[str, set[str]] = {}
        for name in table.names():
            lang = table.get(name)
            bins = _language_binaries(
                lang.spec.toolchain, [lang.spec.version, lang.spec.compile, lang.spec.run]
            )
            hosts = {b: shutil.which(b, path=SANDBOX_PATH) for b in bins}
            absent = [b for b, p in hosts.items() if p is None]
            if absent:
                missing[name] = f"'{absent[0]}' not installed"
                continue
            owners: set[str] = set()
            unowned = []
            for p in hosts.values():
                assert p is not None
                found = _owners(_symlink_chain(Path(p)))
                if not found:
                    unowned.append(p)
                owners |= found
            if unowned:
                missing[name] = f"{unowned[0]} is from no Debian package (dpkg -S)"
                continue
            try:
                version = lang.version()
            except SandboxError as exc:
                missing[name] = exc.message
                continue
            roots[name] = owners
            languages[name] = {"version": version, "binaries": sorted(hosts.values())}  # type: ignore[arg-type]
        packages = _closure(
            set().union(*roots.values(), _owners([busybox])) if roots else _owners([busybox]), db
        )
        inputs = {
            "format": IMAGE_FORMAT,
            "packages": {p: db[p]["version"] for p in sorted(packages)},
            "languages": {k: v["version"] for k, v in sorted(languages.items())},
        }
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
        old = self.manifest()
        if old and old.get("inputs_sha256") == digest and self.rootfs.exists():
            log.append(
                f"rootfs: {self.rootfs} up to date ({self.rootfs.stat().st_size / 2**20:.0f} MiB, "
                f"languages: {', '.join(old.get('languages') or {})})"
            )
            return
        staging = _tmp_name(self.image_dir / "staging")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            nfiles, nbytes = _stage(staging, packages, busybox)
            for name in list(languages):
                bad = [b for b in languages[name]["binaries"] if _resolve_in(staging, b) is None]
                if bad:
                    missing[name] = f"{bad[0]} does not resolve inside the image"
                    del languages[name]
            size_mb = math.ceil(nbytes * 1.15 / 2**20) + 64
            tmp_img = _tmp_name(self.rootfs)
            r = subprocess.run(
                ["mkfs.ext4", "-q", "-F", "-L", "argosy-root", "-O", "^has_journal", "-m", "0",
                 "-N", str(int(nfiles * 1.2) + 4096), "-E", "root_owner=0:0", "-d", str(staging),
                 str(tmp_img), f"{size_mb}M"],
                capture_output=True, text=True,
            )  # fmt: skip
            if r.returncode != 0:
                tmp_img.unlink(missing_ok=True)
                raise SandboxError(
                    f"mkfs.ext4 failed: {r.stderr.strip()[-400:]}",
                    fix="check the free space under " + str(self.image_dir),
                )
            # QEMU runs as the sandbox uid and reopens it through /dev/fd: others must be able to read it.
            tmp_img.chmod(0o644)
            tmp_img.replace(self.rootfs)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        seconds = round(time.monotonic() - t0, 1)
        manifest = {
            "inputs_sha256": digest,
            "built_at": time.time(),
            "build_seconds": seconds,
            "size_bytes": self.rootfs.stat().st_size,
            "files": nfiles,
            "languages": languages,
            "missing": missing,
            "inputs": inputs,
        }
        tmp_m = _tmp_name(self.manifest_file)
        tmp_m.write_text(json.dumps(manifest, indent=1))
        tmp_m.replace(self.manifest_file)
        log.append(
            f"rootfs: {self.rootfs} ({self.rootfs.stat().st_size / 2**20:.0f} MiB, {nfiles} files, "
            f"{len(packages)} packages) in {seconds} s; languages: "
            + ", ".join(f"{k} {_short_version(v['version'])}" for k, v in languages.items())
        )
        for k, why in missing.items():
            log.append(f"left out {k}: {why}")

    # -- running -----------------------------------------------------------------------------------

    def run_job(
        self,
        argv: list[str],
        limits: Limits,
        files: dict[str, bytes],
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
        vmm: VMM | None = None,
    ) -> ProcessResult:
        """One command in a fresh VM."""
        return self.run_steps([Step("run", argv, limits)], files, stdin, env, check, vmm)[-1]

    def run_steps(
        self,
        steps: list[Step],
        files: dict[str, bytes],
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
        vmm: VMM | None = None,
    ) -> list[ProcessResult]:
        """Steps in order in one fresh VM, sharing /work; stops after the first that fails.

        `vmm`: this one instead of the chosen one (the smoke boot tries each). Returns one result
        per step that started (a step that timed out is the last one).
        """
        if check:
            self.require()
        vmm = vmm or self.vmm
        if vmm is None or not self.built():
            raise SandboxError(
                "no VMM boots the VM image here, or the image is missing",
                fix="apt-get install qemu-system-x86; argosy sandbox build-image",
            )
        if (
            not steps
            or len({s.name for s in steps}) != len(steps)
            or not all(STEP_NAME.match(s.name) for s in steps)
        ):
            raise SandboxError(
                f"bad step names {[s.name for s in steps]}", fix="name steps [a-z]+, once each"
            )
        base_env = {"PATH": SANDBOX_PATH, "HOME": "/work", "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
        entries: list[tuple[str, int, bytes]] = [
            ("job", 0o040755, b""),
            ("job/files", 0o040755, b""),
            ("job/stdin", 0o100644, stdin or b""),
        ]
        plan = []
        for s in steps:
            lines = [f"export {k}={shlex.quote(v)}" for k, v in {**base_env, **(env or {})}.items()]
            lines += ["cd /work", f"exec {shlex.join(s.argv)}"]
            entries.append((f"job/{s.name}.sh", 0o100644, ("\n".join(lines) + "\n").encode()))
            plan.append(
                f"{s.name} {s.limits.memory_mb} {s.limits.pids} {'/job/stdin' if s.stdin else '/dev/null'}"
            )
        entries.append(("job/steps", 0o100644, ("\n".join(plan) + "\n").encode()))
        # stdout and stderr share a tmpfs just above the output cap: a flood gets ENOSPC there
        # (and the agent keeps the first max_output_bytes, marked truncated) instead of filling RAM.
        out_kb = max(s.limits.max_output_bytes for s in steps) // 1024 + 64
        tmpfs_mb = max(s.limits.tmpfs_mb for s in steps)
        entries.append(("job/env", 0o100644, f"TMPFS_MB={tmpfs_mb}\nOUT_KB={out_kb}\n".encode()))
        made: set[str] = set()
        for name, data in files.items():
            parts = name.split("/")
            for i in range(1, len(parts)):
                d = "job/files/" + "/".join(parts[:i])
                if d not in made:
                    made.add(d)
                    entries.append((d, 0o040755, b""))
            entries.append(("job/files/" + name, 0o100644, data))
        # Memory is held per step by the guest's cgroup; the VM needs room for the largest step
        # plus its tmpfs work dir (charged to that cgroup too) and the guest's own.
        payload_mb = (sum(len(d) for d in files.values()) + len(stdin or b"")) // 2**20
        memory_mb = max(s.limits.memory_mb for s in steps) + GUEST_OVERHEAD_MB + payload_mb
        vcpus = max(1, min(os.cpu_count() or 1, math.ceil(max(s.limits.cpu_count for s in steps))))
        # The VMM runs as the sandbox uid when the agent is root, and the image may sit in a home dir
        # it cannot traverse: hand it the kernel, the initrd and the disk as open files (/dev/fd/N).
        kernel_path = self.image_dir / vmm.kernel_file
        try:
            kernel = kernel_path.open("rb")
        except OSError as exc:
            raise SandboxError(
                f"cannot open the kernel {kernel_path} for {vmm.name}: {exc.strerror}",
                fix="argosy sandbox build-image",
            ) from exc
        with (
            tempfile.TemporaryFile(prefix="argosy-vm-", suffix=".cpio") as initrd,
            kernel,
            self.rootfs.open("rb") as rootfs,
        ):
            initrd.write(self.initramfs.read_bytes())
            initrd.write(_cpio(entries))
            initrd.flush()
            if os.geteuid() == 0:
                # Opening /dev/fd/N re-checks the file's own permissions: let the sandbox uid read it.
                os.fchown(initrd.fileno(), self.config.uid, self.config.gid)
            fds = (kernel.fileno(), initrd.fileno(), rootfs.fileno())
            vm_argv = vmm.argv(
                VMConfig(
                    kernel=f"/dev/fd/{kernel.fileno()}",
                    initrd=f"/dev/fd/{initrd.fileno()}",
                    rootfs=f"/dev/fd/{rootfs.fileno()}",
                    memory_mb=memory_mb,
                    vcpus=vcpus,
                    kernel_args=vmm.kernel_args,
                )
            )
            setpriv = shutil.which("setpriv")
            if os.geteuid() == 0 and setpriv:
                # Drop to the sandbox uid before the VMM starts (QEMU's -runas would need setgid
                # after its own filter forbids it).
                ids = [f"--reuid={self.config.uid}", f"--regid={self.config.gid}", "--clear-groups"]
                vm_argv = [setpriv, *ids, "--", *vm_argv]
            console = self._watch(vm_argv, steps, fds, vmm.boot_timeout_s)
        return self._results(console, steps)

    def _watch(
        self, vm_argv: list[str], steps: list[Step], fds: tuple[int, ...], boot_timeout_s: float
    ) -> _Console:
        proc = subprocess.Popen(
            vm_argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=fds,
        )
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        # base64 inflates by 4/3, plus line breaks and the kernel's own lines.
        console_cap = sum(s.limits.max_output_bytes * 3 // 2 for s in steps) + 256 * 1024
        con = _Console(steps={s.name: _Seen() for s in steps})
        by_name = {s.name: s for s in steps}
        deadline = time.monotonic() + boot_timeout_s
        current: str | None = None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout.fileno(), selectors.EVENT_READ)
        scanned = 0
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    con.timed_out = current or "boot"
                    break
                if not sel.select(min(remaining, 0.5)):
                    if proc.poll() is not None:
                        break
                    continue
                try:
                    chunk = os.read(proc.stdout.fileno(), 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    break
                now = time.monotonic()
                con.buf += chunk
                # Markers are whole lines; rescan from a little before the new bytes.
                for m in re.finditer(rb"===ARGOSY-(START|END) ([a-z]+)===", con.buf[max(0, scanned - 64) :]):
                    seen = con.steps.get(m.group(2).decode())
                    if seen is None:
                        continue
                    if m.group(1) == b"START" and seen.started is None:
                        seen.started = now
                        current = m.group(2).decode()
                        step = by_name[current]
                        deadline = now + step.limits.timeout_ms / 1000 * step.timeout_factor
                    elif m.group(1) == b"END" and seen.ended is None:
                        seen.ended = now
                        current = None
                        deadline = now + DRAIN_TIMEOUT_S
                scanned = len(con.buf)
                if len(con.buf) > console_cap:
                    con.truncated = True
                    break
                if b"===ARGOSY-DONE===" in con.buf or b"===ARGOSY-FAIL" in con.buf:
                    con.done = True
                    break
        finally:
            sel.close()
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            try:
                # A vCPU stuck in the host kernel (nested KVM) takes a while to die; not forever.
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired as exc:
                raise SandboxError(
                    f"the VMM (pid {proc.pid}) did not exit 30 s after SIGKILL",
                    fix="check the node's KVM (dmesg); set vmm: qemu-tcg in the sandbox config",
                ) from exc
        return con

    def _results(self, con: _Console, steps: list[Step]) -> list[ProcessResult]:
        text = bytes(con.buf).replace(b"\r\n", b"\n")
        fail = re.search(rb"===ARGOSY-FAIL (.*?)===", text)
        if fail:
            raise SandboxError(
                f"the VM could not start the job: {fail.group(1).decode(errors='replace')}",
                fix="rebuild the image: argosy sandbox build-image",
            )
        first = con.steps[steps[0].name]
        if first.started is None and con.timed_out is None and not con.truncated:
            tail = text[-500:].decode(errors="replace")
            raise SandboxError(
                f"the VM did not start the job: {tail}", fix="rebuild the image: argosy sandbox build-image"
            )
        out: list[ProcessResult] = []
        end = time.monotonic()
        for s in steps:
            seen = con.steps[s.name]
            if seen.started is None:
                if con.timed_out == "boot":
                    # Never started: report it as the step that timed out (nothing of it ran).
                    out.append(ProcessResult(b"", b"", None, 9, True, False, False, 0.0))
                elif out:
                    # The previous step succeeded and the guest never started this one.
                    raise SandboxError(
                        f"the VM stopped before the {s.name} step: {text[-300:].decode(errors='replace')}",
                        fix="retry; if it persists, rebuild the image: argosy sandbox build-image",
                    )
                break
            duration_ms = ((seen.ended or end) - seen.started) * 1000
            name = re.escape(s.name.encode())
            m = re.search(
                rb"===ARGOSY-STDOUT " + name + rb"===\n(.*?)===ARGOSY-STDERR " + name
                + rb"===\n(.*?)===ARGOSY-EXIT " + name + rb" (\d+) (\d)===",
                text, re.S,
            )  # fmt: skip
            if m is None:
                timed_out = con.timed_out == s.name
                truncated = con.truncated and not timed_out
                out.append(ProcessResult(b"", b"", None, 9, timed_out, False, truncated, duration_ms))
                break
            stdout = base64.b64decode(m.group(1))
            stderr = base64.b64decode(m.group(2))
            rc, oom = int(m.group(3)), m.group(4) == b"1"
            truncated = False
            cap = s.limits.max_output_bytes
            if len(stdout) + len(stderr) > cap:
                truncated = True
                stdout = stdout[:cap]
                stderr = stderr[: max(0, cap - len(stdout))]
            sig = rc - 128 if rc > 128 else None
            out.append(
                ProcessResult(stdout, stderr, None if sig else rc, sig, False, oom, truncated, duration_ms)
            )
            if rc != 0:
                break
        return out


# -- building the rootfs ---------------------------------------------------------------------------


def _short_version(line: str) -> str:
    """`gcc (Debian 12.2.0-14) 12.2.0` -> `12.2.0`: the first dotted number of a version line."""
    m = re.search(r"\d+(\.\d+)+", line)
    return m.group(0) if m else line


def _tmp_name(path: Path) -> Path:
    """Where a build writes `path` before renaming it into place (per process: builds may overlap)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _remove_dead_builds(image_dir: Path) -> None:
    """Temporaries of builds whose process is gone (a staging tree and a rootfs are GBs)."""
    for p in image_dir.glob(".*.tmp"):
        m = re.match(r"^\..*\.(\d+)\.tmp$", p.name)
        if m is None:
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _language_binaries(toolchain: str, steps: Iterable[list[str] | None]) -> list[str]:
    """The commands a language runs: its toolchain and the first word of each step (not ./main)."""
    out = [toolchain]
    for step in steps:
        if step and "/" not in step[0] and step[0] not in out:
            out.append(step[0])
    return out


def _symlink_chain(path: Path) -> list[Path]:
    """`path` and every link it goes through (/usr/bin/javac -> /etc/alternatives/javac -> ...)."""
    chain = [path]
    cur = path
    for _ in range(40):
        if not cur.is_symlink():
            break
        cur = Path(os.path.normpath(cur.parent / os.readlink(cur)))
        chain.append(cur)
    chain.append(path.resolve())
    return chain


def _owners(paths: Iterable[Path]) -> set[str]:
    """The packages that own these paths, trying /usr/bin/x and /bin/x alike (merged /usr)."""
    variants: list[str] = []
    for p in paths:
        s = str(p)
        variants.append(s)
        for a, b in (("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/"), ("/usr/lib/", "/lib/")):
            if s.startswith(a):
                variants.append(b + s[len(a) :])
            elif s.startswith(b):
                variants.append(a + s[len(b) :])
    r = subprocess.run(["dpkg", "-S", *dict.fromkeys(variants)], capture_output=True, text=True)
    owners: set[str] = set()
    for line in r.stdout.splitlines():
        if ": " in line and not line.startswith("diversion "):
            for pkg in line.split(": ", 1)[0].split(","):
                owners.add(pkg.strip().split(":")[0])
    return owners


def _dpkg_db() -> dict[str, dict[str, Any]]:
    """Installed packages: version, dependencies (alternatives kept), what they provide."""
    fmt = "${db:Status-Abbrev}\t${Package}\t${Version}\t${Pre-Depends}, ${Depends}\t${Provides}\n"
    out = subprocess.run(["dpkg-query", "-W", "-f", fmt], capture_output=True, text=True, check=True).stdout
    db: dict[str, dict[str, Any]] = {}
    provides: dict[str, str] = {}
    for line in out.splitlines():
        status, pkg, version, deps, prov = (line.split("\t") + [""] * 5)[:5]
        if not status.startswith("ii"):
            continue
        alts = [
            [re.sub(r"[\s(:].*", "", a.strip()) for a in d.split("|") if a.strip()]
            for d in deps.split(",")
            if d.strip()
        ]
        db[pkg] = {"version": version, "deps": alts}
        for p in prov.split(","):
            if p.strip():
                provides.setdefault(re.sub(r"[\s(:].*", "", p.strip()), pkg)
    for virtual, pkg in provides.items():
        db.setdefault(virtual, {"version": "", "deps": [[pkg]], "virtual": True})
    return db


def _closure(roots: set[str], db: dict[str, dict[str, Any]]) -> set[str]:
    """`roots` and every installed package they depend on (first installed alternative of each)."""
    seen: set[str] = set()
    stack = [r for r in roots if r in db]
    while stack:
        pkg = stack.pop()
        if pkg in seen:
            continue
        seen.add(pkg)
        for alts in db[pkg]["deps"]:
            for a in alts:
                if a in db:
                    stack.append(a)
                    break
    return {p for p in seen if not db[p].get("virtual")}


def _canonical(path: str) -> str:
    """Where `path` lives once the host's directory links (/bin -> usr/bin) are followed."""
    parent, name = os.path.split(path)
    return os.path.join(os.path.realpath(parent), name)


def _place(staging: Path, path: str) -> tuple[int, int]:
    """Put the host's `path` into staging at its canonical place; returns (files, bytes) added."""
    try:
        st = os.lstat(path)
    except OSError:
        return 0, 0
    dest = staging / _canonical(path).lstrip("/")
    if os.path.lexists(dest):
        return 0, 0
    if stat.S_ISDIR(st.st_mode):
        dest.mkdir(parents=True, exist_ok=True)
        return 0, 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    if stat.S_ISLNK(st.st_mode):
        dest.symlink_to(os.readlink(path))
        return 1, 0
    if not stat.S_ISREG(st.st_mode):
        return 0, 0
    try:
        # Same file system as /usr (the usual case): a hard link, no copy; mkfs reads it once.
        os.link(path, dest)
    except OSError:
        shutil.copy2(path, dest)
    return 1, st.st_size


def _stage(staging: Path, packages: set[str], busybox: Path) -> tuple[int, int]:
    nfiles = nbytes = 0
    listing = subprocess.run(["dpkg", "-L", *sorted(packages)], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        path = line.strip()
        if (
            not path.startswith("/")
            or SKIP_PATHS.match(path)
            or path.startswith(("/etc/init.d", "/etc/cron"))
        ):
            continue
        f, b = _place(staging, path)
        nfiles, nbytes = nfiles + f, nbytes + b
    # Merged /usr: the top-level links as on the host.
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/", top)
        if host.is_symlink() and not os.path.lexists(staging / top):
            (staging / top).symlink_to(os.readlink(host))
    # Libraries the toolchains load that no dependency declared (ldd of every staged executable
    # under bin/ is enough: the packages' own libraries came with them).
    for bindir in ("usr/bin", "usr/sbin"):
        for exe in sorted((staging / bindir).glob("*")) if (staging / bindir).is_dir() else []:
            if exe.is_file() and not exe.is_symlink() and os.access(exe, os.X_OK):
                for lib in _ldd(exe):
                    f, b = _place(staging, lib)
                    nfiles, nbytes = nfiles + f, nbytes + b
    # /etc/alternatives links whose target is in the image, and the links that point at them
    # (cc, c++, java, javac: postinst scripts make these, dpkg -L does not list them).
    alts = Path("/etc/alternatives")
    taken: set[str] = set()
    for link in sorted(alts.iterdir()) if alts.is_dir() else []:
        if link.is_symlink() and _resolve_in(staging, os.readlink(link)) is not None:
            f, b = _place(staging, str(link))
            nfiles += f
            taken.add(link.name)
    for d in ("/usr/bin", "/usr/sbin", "/usr/lib/jvm"):
        for entry in sorted(Path(d).iterdir()) if Path(d).is_dir() else []:
            if entry.is_symlink():
                target = os.readlink(entry)
                if target.startswith("/etc/alternatives/") and target.rsplit("/", 1)[1] in taken:
                    f, b = _place(staging, str(entry))
                    nfiles += f
    # busybox for the shell and the tools /init uses inside the rootfs (su, setpriv).
    bb = staging / _canonical(str(busybox)).lstrip("/")
    if not bb.exists():
        nfiles, nbytes = nfiles + _place(staging, str(busybox))[0], nbytes + busybox.stat().st_size
    applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True).stdout.split()
    for applet in applets:
        dest = staging / _canonical("/" + applet).lstrip("/")
        if not os.path.lexists(dest) and dest.parent.is_dir():
            dest.symlink_to(os.path.relpath(bb, dest.parent))
            nfiles += 1
    etc = staging / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text("root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/work:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    if not (etc / "ld.so.conf").exists():
        (etc / "ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\n")
    if Path("/etc/ld.so.conf.d").is_dir():
        (etc / "ld.so.conf.d").mkdir(exist_ok=True)
        for conf in Path("/etc/ld.so.conf.d").glob("*.conf"):
            if not (etc / "ld.so.conf.d" / conf.name).exists():
                shutil.copy2(conf, etc / "ld.so.conf.d" / conf.name)
    for d in ("proc", "dev", "sys", "tmp", "work", "job", "root"):
        (staging / d).mkdir(exist_ok=True)
    # A loader cache for the image's own libraries (-X: leave the library links alone; the host's
    # files are hard-linked in).
    subprocess.run(["ldconfig", "-X", "-r", str(staging)], capture_output=True)
    return nfiles + 16, nbytes + 1024 * 1024


def _ldd(exe: Path) -> list[str]:
    try:
        out = subprocess.run(["ldd", str(exe)], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [m.group(1) for m in re.finditer(r"(/\S+)\s+\(0x", out)]
