"""The `microvm` isolation backend: one VM per run. Slower than namespaces, stronger: the code runs
under its own kernel, so a kernel bug reachable from inside does not reach the host.

Image (`argosy sandbox build-image`): kernel, initramfs, read-only rootfs and manifest, built and
found by vmimage.py (`VMImage`); here, beside them, `smoke.json`: the smoke boot of each VMM
tried, which decides the VMM (below).

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
import json
import math
import os
import re
import selectors
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from argosy.sandbox.config import SandboxConfig
from argosy.sandbox.errors import BackendUnavailableError, SandboxError
from argosy.sandbox.firecracker import FirecrackerVMM, find_firecracker, probe_kvm
from argosy.sandbox.languages import SANDBOX_PATH, LanguageTable, Limits
from argosy.sandbox.namespaces import Check, ProcessResult
from argosy.sandbox.vmimage import VMImage, _cpio, _short_version, _tmp_name

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
# `reboot=t`: the guest's `reboot -f` triple-faults at once, which QEMU's -no-reboot turns into an
# exit. The kernel's default (ACPI, then the keyboard controller QEMU's microvm lacks, polled with
# delay loops that run many times slower under TCG on a loaded host) once took over 120 s here.
KERNEL_ARGS = (
    "console=ttyS0 quiet loglevel=1 panic=-1 reboot=t rdinit=/init "
    "tsc_early_khz=2000000 tsc=reliable no_timer_check lpj=4000000"
)
# Under KVM the guest calibrates against a real clock: the TCG settings above would be wrong there.
QEMU_KVM_KERNEL_ARGS = "console=ttyS0 quiet loglevel=1 panic=-1 reboot=t rdinit=/init"
# Preference order of `vmm: auto` (argosy/sandbox/config.py), and what the other values allow.
VMM_ORDER: dict[str, tuple[str, ...]] = {
    "auto": ("firecracker", "qemu-kvm", "qemu-tcg"),
    "firecracker": ("firecracker",),
    "qemu": ("qemu-kvm", "qemu-tcg"),
    "qemu-kvm": ("qemu-kvm",),
    "qemu-tcg": ("qemu-tcg",),
}
STEP_NAME = re.compile(r"^[a-z]+$")


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
        self.image = VMImage(config.image_dir / "microvm")
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

    # The image's paths and manifest, as the CLI, the service and the tests read them off the backend.
    @property
    def image_dir(self) -> Path:
        return self.image.image_dir

    @property
    def kernel(self) -> Path:
        return self.image.kernel

    @property
    def vmlinux(self) -> Path:
        return self.image.vmlinux

    @property
    def initramfs(self) -> Path:
        return self.image.initramfs

    @property
    def rootfs(self) -> Path:
        return self.image.rootfs

    @property
    def manifest_file(self) -> Path:
        return self.image.manifest_file

    @property
    def modules_dir(self) -> Path:
        return self.image.modules_dir

    @property
    def smoke_file(self) -> Path:
        return self.image.image_dir / "smoke.json"

    def manifest(self) -> dict[str, Any] | None:
        return self.image.manifest()

    @property
    def image_languages(self) -> dict[str, str]:
        return self.image.image_languages

    def built(self) -> bool:
        return self.image.built()

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
        """VMImage.build_image, with the vmlinux only where a Firecracker binary could use it."""
        fc = [v for v in self.candidates() if isinstance(v, FirecrackerVMM) and v.binary is not None]
        return self.image.build_image(log, table, vmlinux=bool(fc))

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
