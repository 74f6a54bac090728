"""Firecracker as the VMM of the `microvm` backend, beside QEMU: one Firecracker process per run,
configured by a JSON file (`--no-api --config-file`), the guest's ttyS0 on the process's stdout, so
the serial-marker protocol of microvm.py works unchanged.

What Firecracker needs that QEMU does not:
- an uncompressed ELF kernel on x86_64 (`vmlinux`): `extract_vmlinux` unpacks Debian's bzImage;
- a usable /dev/kvm, read-write for the uid it runs as: `probe_kvm` checks what can be checked
  cheaply (API version, the capabilities Firecracker requires, a vCPU entering a guest and exiting on
  `hlt`). That is not proof: on this project's nodes (themselves Firecracker guests, nested KVM) all of
  it passes, yet a real kernel hangs early in its boot under QEMU+KVM, silent on the console. A boot
  alone decides, which is what the backend's smoke boot (smoke.json, one record per VMM) records:
  microvm.py chooses Firecracker only when these checks pass and its Firecracker record says it booted.

The guest powers off by rebooting: Firecracker implements no guest power management, and with
`reboot=k` a guest reboot goes through the i8042 keyboard-controller reset, which ends the
Firecracker process (docs/getting-started.md; CHANGELOG 0.10.0). The jailer (chroot, namespaces,
cgroups, its own /dev/kvm node) is the production hardening; it closes every inherited descriptor
and wants the kernel and disks hard-linked into its chroot, so it is not used here: like QEMU,
Firecracker runs under the sandbox uid (setpriv, applied by the caller), with its own seccomp filters.

Two launch forms: `FirecrackerVMM.argv(vm)` fits microvm.py's VMM seam (argv only: the config
travels through a pipe), and `prepare`/`launch` write the config and Firecracker's log into a private
directory that the caller removes (the log explains a failed start).

Field names, flags and versions: see tests/sandbox/fixtures/firecracker-api.json (source and date).
"""

from __future__ import annotations

import bz2
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from argosy.sandbox.errors import SandboxError

FIRECRACKER = "firecracker"
# 1.0.0 renamed machine-config `ht_enabled` to `smt` (the name used here); 1.6.0 fixed a non-zero exit
# code after a clean guest shutdown under `--no-api` (#4178).
MIN_VERSION = (1, 6, 0)
# The guest command line Firecracker's docs use: serial console, reboot through the keyboard
# controller (which ends the VMM), reboot 1 s after a panic, no PCI probing (devices are virtio-mmio).
BOOT_ARGS = "console=ttyS0 reboot=k panic=1 pci=off"
MAX_VCPUS = 32  # swagger: vcpu_count in [1, 32]
ELF_MAGIC = b"\x7fELF"
_DEV_FD = re.compile(r"^/dev/fd/(\d+)$")
MAX_KERNEL_BYTES = 1 << 30  # a decompressed kernel larger than this is not a kernel

# The capabilities Firecracker checks before it creates a VM on x86_64
# (src/vmm/src/arch/x86_64/kvm.rs, DEFAULT_CAPABILITIES), with their numbers from <linux/kvm.h>.
KVM_CAPABILITIES: tuple[tuple[str, int], ...] = (
    ("KVM_CAP_IRQCHIP", 0),
    ("KVM_CAP_IOEVENTFD", 36),
    ("KVM_CAP_IRQFD", 32),
    ("KVM_CAP_USER_MEMORY", 3),
    ("KVM_CAP_SET_TSS_ADDR", 4),
    ("KVM_CAP_PIT2", 33),
    ("KVM_CAP_PIT_STATE2", 35),
    ("KVM_CAP_ADJUST_CLOCK", 39),
    ("KVM_CAP_DEBUGREGS", 50),
    ("KVM_CAP_MP_STATE", 14),
    ("KVM_CAP_VCPU_EVENTS", 41),
    ("KVM_CAP_XCRS", 56),
    ("KVM_CAP_XSAVE", 55),
    ("KVM_CAP_EXT_CPUID", 7),
)
KVM_API_VERSION = 12

# Runs in a child (python -I -c) so a KVM ioctl that never returns cannot hang the caller. Prints one
# JSON line per step reached, so a timeout can say where it stopped. The guest is one page at the top
# of the 4 GiB space holding `hlt` at the reset vector (0xfffffff0): a vCPU fresh from KVM_CREATE_VCPU
# starts there in real mode, so no register setup is needed, and KVM_RUN must return KVM_EXIT_HLT.
_PROBE_CHILD = r"""
import ctypes, fcntl, json, mmap, os, struct, sys, time
def say(**kw):
    print(json.dumps(kw), flush=True)
t0 = time.monotonic()
say(step="open")
kvm = os.open(sys.argv[1], os.O_RDWR | os.O_CLOEXEC)
say(step="KVM_GET_API_VERSION")
api = fcntl.ioctl(kvm, 0xAE00)
if api != int(sys.argv[2]):
    say(step="KVM_GET_API_VERSION", error=f"KVM API version {api}, Firecracker needs {sys.argv[2]}")
    sys.exit(0)
missing = [name for name, cap in json.loads(sys.argv[3]) if fcntl.ioctl(kvm, 0xAE03, cap) <= 0]
if missing:
    say(step="KVM_CHECK_EXTENSION", error="missing KVM capabilities: " + ", ".join(missing))
    sys.exit(0)
say(step="KVM_CREATE_VM")
vm = fcntl.ioctl(kvm, 0xAE01, 0)
mem = mmap.mmap(-1, 4096)
mem[0xFF0] = 0xF4
addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
say(step="KVM_SET_USER_MEMORY_REGION")
fcntl.ioctl(vm, 0x4020AE46, struct.pack("IIQQQ", 0, 0, 0xFFFFF000, 4096, addr))
say(step="KVM_CREATE_VCPU")
vcpu = fcntl.ioctl(vm, 0xAE41, 0)
run = mmap.mmap(vcpu, fcntl.ioctl(kvm, 0xAE04), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
say(step="KVM_RUN")
fcntl.ioctl(vcpu, 0xAE80, 0)
reason = struct.unpack_from("I", run, 8)[0]
if reason != 5:
    say(step="KVM_RUN", error=f"the guest's hlt exited with reason {reason}, not KVM_EXIT_HLT (5)")
else:
    say(step="done", ok=True, ms=round((time.monotonic() - t0) * 1000, 1))
"""


def probe_kvm(
    timeout_s: float = 5.0,
    device: str | Path = "/dev/kvm",
    uid: int | None = None,
    gid: int | None = None,
) -> tuple[bool, str]:
    """Whether `device` looks usable for Firecracker, checked in a child process with a deadline.

    With `uid`/`gid` (and root) the child runs as that user, as Firecracker will: /dev/kvm is often
    root-only. True means the cheap checks passed, not that a kernel boots (see the module doc).
    """
    device = Path(device)
    if not device.exists():
        return False, f"no {device} (no KVM on this node)"
    argv = [sys.executable, "-I", "-c", _PROBE_CHILD, str(device), str(KVM_API_VERSION)]
    argv.append(json.dumps(KVM_CAPABILITIES))
    if uid is not None and os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            return False, "setpriv is missing, so /dev/kvm cannot be checked as the sandbox uid"
        ids = [f"--reuid={uid}", f"--regid={gid if gid is not None else uid}", "--clear-groups"]
        argv = [setpriv, *ids, "--", *argv]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            out, err = proc.communicate(timeout=2.0)
        except subprocess.TimeoutExpired:
            # Stuck in the kernel (uninterruptible): leave it rather than hang with it.
            return False, f"a KVM ioctl hung past {timeout_s:g} s and pid {proc.pid} could not be killed"
        step = (_steps(out)[-1:] or [{"step": "the start"}])[0].get("step")
        return (
            False,
            f"no answer within {timeout_s:g} s: the probe stopped at {step} (a KVM ioctl that hangs)",
        )
    last = (_steps(out)[-1:] or [{}])[0]
    if last.get("ok"):
        return True, (
            f"{device}: KVM API {KVM_API_VERSION}, the {len(KVM_CAPABILITIES)} capabilities Firecracker "
            f"checks, a vCPU ran to its guest's hlt in {last.get('ms')} ms; a kernel boot is still unproven"
        )
    if "error" in last:
        return False, f"{device}: {last['error']}"
    tail = err.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
    why = tail[0]
    if "PermissionError" in why:
        who = uid if uid is not None else os.geteuid()
        # The VMM runs with --clear-groups (setpriv): only the uid or the primary gid can be let in.
        grp = f"the sandbox gid {gid}" if gid is not None else "the VMM's primary group"
        return False, (
            f"{device} is not read-write for uid {who} (fix: setfacl -m u:{who}:rw {device}, or give "
            f"{device} to {grp} with mode 0660; a supplementary group such as kvm does not count)"
        )
    return False, f"{device}: failed at {last.get('step', 'start')}: {why}"


def _steps(out: str | None) -> list[dict[str, Any]]:
    steps = []
    for line in (out or "").splitlines():
        try:
            steps.append(dict(json.loads(line)))
        except ValueError:  # a line cut short by the kill
            continue
    return steps


# -- the binary ------------------------------------------------------------------------------------


def find_firecracker(configured: str | Path | None = None) -> Path | None:
    """The Firecracker binary: `configured` if given (and executable), else `firecracker` on PATH."""
    if configured is not None:
        p = Path(configured).expanduser()
        return p if p.is_file() and os.access(p, os.X_OK) else None
    found = shutil.which(FIRECRACKER)
    return Path(found) if found else None


def firecracker_version(binary: str | Path, timeout_s: float = 5.0) -> tuple[int, int, int]:
    """`firecracker --version` ("Firecracker v1.7.0") as a tuple."""
    try:
        r = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxError(
            f"cannot run {binary} --version: {exc}", fix="check the Firecracker binary (a release build)"
        ) from exc
    m = re.search(r"Firecracker v(\d+)\.(\d+)\.(\d+)", r.stdout + r.stderr)
    if m is None:
        raise SandboxError(
            f"{binary} --version printed no Firecracker version: {(r.stdout + r.stderr).strip()[:200]!r}",
            fix="point the backend at a Firecracker binary",
        )
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


# -- the kernel ------------------------------------------------------------------------------------

# Magic numbers of the formats a bzImage payload can be in (the kernel's scripts/extract-vmlinux).
_MAGICS: tuple[tuple[str, bytes], ...] = (
    ("gzip", b"\x1f\x8b\x08"),
    ("xz", b"\xfd7zXZ\x00"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("lz4", b"\x02\x21\x4c\x18"),  # the legacy frame the kernel's `lz4 -l` writes
    ("bzip2", b"BZh"),
    ("lzma", b"\x5d\x00\x00"),
)


def extract_vmlinux(bzimage: str | Path, out: str | Path) -> Path:
    """Unpack the ELF kernel inside a bzImage into `out` (atomically); returns `out`.

    The payload is found through the boot header (boot protocol 2.08+: payload_offset/length), else
    by scanning for each format's magic as scripts/extract-vmlinux does; either way the result must
    be an ELF file.
    """
    bzimage, out = Path(bzimage), Path(out)
    try:
        data = bzimage.read_bytes()
    except OSError as exc:
        raise SandboxError(
            f"cannot read the kernel {bzimage}: {exc}", fix="argosy sandbox build-image"
        ) from exc
    if data.startswith(ELF_MAGIC):
        vmlinux = data
    else:
        vmlinux = _from_header(data) or _from_scan(data)
        if vmlinux is None:
            raise SandboxError(
                f"{bzimage} holds no kernel payload this code can unpack (gzip, xz, lzma, bzip2, lz4, zstd)",
                fix="give Firecracker an uncompressed vmlinux (the kernel's scripts/extract-vmlinux)",
            )
    # Per process, as vmimage.py names its temporaries: builds may overlap, and a dead one's is removed.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_bytes(vmlinux)
    tmp.chmod(0o644)  # the VMM runs as the sandbox uid and reopens it through /dev/fd
    tmp.replace(out)
    return out


def _from_header(data: bytes) -> bytes | None:
    if data[0x202:0x206] != b"HdrS" or int.from_bytes(data[0x206:0x208], "little") < 0x208:
        return None
    setup_sects = data[0x1F1] or 4
    offset = int.from_bytes(data[0x248:0x24C], "little")
    length = int.from_bytes(data[0x24C:0x250], "little")
    start = (setup_sects + 1) * 512 + offset
    payload = data[start : start + length]
    for fmt, magic in _MAGICS:
        if payload.startswith(magic):
            out = _decompress(fmt, payload)
            if out.startswith(ELF_MAGIC):
                return out
            raise SandboxError(
                f"the kernel's {fmt} payload did not unpack to an ELF file", fix="check the kernel image"
            )
    return None


def _from_scan(data: bytes) -> bytes | None:
    for fmt, magic in _MAGICS:
        at = data.find(magic)
        tries = 0
        while at >= 0 and tries < 16:
            try:
                out = _decompress(fmt, data[at:])
            except (SandboxError, lzma.LZMAError, zlib.error, OSError, ValueError, IndexError, EOFError):
                out = b""
            if out.startswith(ELF_MAGIC):
                return out
            at, tries = data.find(magic, at + 1), tries + 1
    return None


def _decompress(fmt: str, payload: bytes) -> bytes:
    """One stream from the start of payload; what follows it (the kernel's size field) is ignored."""
    if fmt == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload, MAX_KERNEL_BYTES)
    if fmt in ("xz", "lzma"):
        kind = lzma.FORMAT_XZ if fmt == "xz" else lzma.FORMAT_ALONE
        return lzma.LZMADecompressor(kind).decompress(payload, MAX_KERNEL_BYTES)
    if fmt == "bzip2":
        return bz2.BZ2Decompressor().decompress(payload, MAX_KERNEL_BYTES)
    if fmt == "lz4":
        return _lz4_legacy(payload)
    # zstd: not in Python 3.11's stdlib and not a dependency; the zstd tool is on most hosts.
    zstd = shutil.which("zstd")
    if zstd is None:
        raise SandboxError(
            "the kernel is zstd-compressed and the zstd tool is missing", fix="apt-get install zstd"
        )
    r = subprocess.run([zstd, "-dcq"], input=payload, capture_output=True, check=False)
    return r.stdout  # non-zero on the trailing bytes after the frame; the output is still whole


def _lz4_legacy(payload: bytes) -> bytes:
    """The LZ4 legacy frame: magic, then blocks of (u32 compressed size, block), each block
    independent and at most 8 MiB decompressed; it ends at EOF or at a size no block can have
    (the kernel appends the decompressed length)."""
    out = bytearray()
    i = 4
    while i + 4 <= len(payload):
        size = int.from_bytes(payload[i : i + 4], "little")
        if size == 0x184C2102:  # a concatenated frame
            i += 4
            continue
        if size == 0 or size > len(payload) - i - 4:
            break
        out += _lz4_block(payload[i + 4 : i + 4 + size])
        i += 4 + size
        if len(out) > MAX_KERNEL_BYTES:
            raise SandboxError("the lz4 kernel payload inflates past 1 GiB", fix="check the kernel image")
    return bytes(out)


def _lz4_length(src: bytes, i: int, nibble: int) -> tuple[int, int]:
    """A token's 4-bit length, extended by 255-valued bytes while the nibble is 15; (length, next i)."""
    length = nibble
    if nibble == 15:
        while True:
            b = src[i]
            i += 1
            length += b
            if b != 255:
                break
    return length, i


def _lz4_block(src: bytes) -> bytes:
    out = bytearray()
    i, n = 0, len(src)
    while i < n:
        token = src[i]
        i += 1
        lit, i = _lz4_length(src, i, token >> 4)
        out += src[i : i + lit]
        i += lit
        if i >= n:  # the last sequence has literals only
            break
        offset = src[i] | (src[i + 1] << 8)
        i += 2
        if offset == 0 or offset > len(out):
            raise SandboxError("corrupt lz4 block in the kernel payload", fix="check the kernel image")
        length, i = _lz4_length(src, i, token & 15)
        length += 4
        start = len(out) - offset
        if offset >= length:
            out += out[start : start + length]
        else:
            # Overlapping: the sequence from `start` repeats with period `offset`. Everything from
            # `start` on is a whole number of periods, so appending it keeps the pattern, and the
            # copy doubles each round (a run of zeros is offset 1, length in the thousands).
            while length > 0:
                chunk = out[start : start + length]
                out += chunk
                length -= len(chunk)
    return bytes(out)


def is_elf(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


# -- the VM ----------------------------------------------------------------------------------------


def firecracker_config(
    kernel: str,
    initrd: str | None,
    rootfs: str | None,
    memory_mb: int,
    vcpus: int,
    boot_args: str = BOOT_ARGS,
) -> dict[str, Any]:
    """The `--config-file` JSON (swagger FullVmConfiguration) for one VM.

    The rootfs is a read-only virtio-blk drive that is not the root device: the initramfs's /init
    mounts it, so Firecracker adds no `root=` to the command line. Firecracker itself appends the
    `virtio_mmio.device=` arguments that tell the guest where the drive is.
    """
    if not 1 <= vcpus <= MAX_VCPUS:
        raise SandboxError(
            f"vcpus must be 1-{MAX_VCPUS} for Firecracker, not {vcpus}", fix="ask for fewer vCPUs"
        )
    if memory_mb < 1:
        raise SandboxError(f"memory_mb must be positive, not {memory_mb}", fix="give the VM some memory")
    boot: dict[str, Any] = {"kernel_image_path": kernel, "boot_args": boot_args}
    if initrd is not None:
        boot["initrd_path"] = initrd
    drives = []
    if rootfs is not None:
        drives.append(
            {"drive_id": "rootfs", "path_on_host": rootfs, "is_root_device": False, "is_read_only": True}
        )
    return {
        "boot-source": boot,
        "drives": drives,
        "machine-config": {"vcpu_count": vcpus, "mem_size_mib": memory_mb, "smt": False},
    }


def merge_boot_args(base: str, extra: str) -> str:
    """`base` then `extra`, dropping from `base` each key that `extra` sets again (for most kernel
    parameters the last one wins anyway; this keeps the command line readable)."""
    keys = {a.split("=", 1)[0] for a in extra.split()}
    kept = [a for a in base.split() if a.split("=", 1)[0] not in keys]
    return " ".join([*kept, *extra.split()])


def firecracker_argv(
    binary: str | Path, config_path: str | Path, log_path: str | Path | None = None
) -> list[str]:
    """`firecracker --no-api --config-file PATH`: no API socket (`--no-api` requires `--config-file`);
    Firecracker's own log goes to `log_path`, at level Error, so it cannot interleave with the serial
    console on stdout."""
    argv = [str(binary), "--no-api", "--config-file", str(config_path)]
    if log_path is not None:
        argv += ["--log-path", str(log_path), "--level", "Error"]
    return argv


class VMSpec(Protocol):
    """What microvm.py's VMConfig carries (structural, so this module does not import microvm.py)."""

    kernel: str
    initrd: str
    rootfs: str | None
    memory_mb: int
    vcpus: int
    kernel_args: str


@dataclass(frozen=True)
class Launch:
    """A planned Firecracker process: its argv and the private directory holding its config and log."""

    argv: list[str]
    config: dict[str, Any]
    workdir: Path

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / "firecracker.log"

    def log_tail(self, limit: int = 2000) -> str:
        """Firecracker's own errors (a bad config, no /dev/kvm), for the message when a boot fails."""
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


class FirecrackerVMM:
    """Turns a VM (paths the VMM opens, RAM, vCPUs, kernel arguments) into a Firecracker launch.

    Paths may be /dev/fd/N of files the caller opened and passes to the child (Firecracker opens
    them by path and does not close inherited descriptors; the jailer would). `owner` is the
    (uid, gid) the caller will run Firecracker as: its config and log are handed to it.
    """

    name = "firecracker"
    compile_timeout_factor = 1.0  # KVM runs the guest at hardware speed: the table's timeouts hold
    # What microvm.py's VMM seam reads besides argv(): the kernel file in the image (the ELF), the
    # microvm image's own arguments (plan() puts BOOT_ARGS in front), and how long a boot may take
    # (well under a second under KVM; a hang under nested KVM should cost seconds, not minutes).
    kernel_file = "vmlinux"
    kernel_args = "quiet loglevel=1 rdinit=/init"
    boot_timeout_s = 30.0

    def __init__(self, binary: str | Path | None = None, owner: tuple[int, int] | None = None) -> None:
        self.binary = Path(binary) if binary is not None else find_firecracker()
        self.owner = owner

    def argv(self, vm: VMSpec) -> list[str]:
        """microvm.py's VMM seam, which has no clean-up step: no file at all. `sh` puts the config on
        a spare descriptor as a here-document (a pipe) and execs Firecracker, which reads
        `--config-file /dev/fd/N` once at start. Firecracker's own log (level Error) goes to its
        stderr, beside the console: only a failed start writes there."""
        if self.binary is None:
            raise SandboxError("Firecracker is not installed", fix="put a firecracker release binary on PATH")
        config = json.dumps(self.plan(vm), separators=(",", ":"))  # one line: it cannot be the delimiter
        taken = {m.group(1) for p in (vm.kernel, vm.initrd, vm.rootfs or "") if (m := _DEV_FD.match(p))}
        fd = next(str(n) for n in range(3, 10) if str(n) not in taken)  # sh redirects only fds 0-9
        script = (
            f'exec "$0" --no-api --config-file /dev/fd/{fd} --level Error {fd}<<"ARGOSY_FC_CONFIG"\n'
            f"{config}\nARGOSY_FC_CONFIG\n"
        )
        return ["/bin/sh", "-c", script, str(self.binary)]

    def plan(self, vm: VMSpec) -> dict[str, Any]:
        """The config for `vm`, checked; no effects beyond reading the kernel's first bytes."""
        if not is_elf(vm.kernel):
            raise SandboxError(
                f"the kernel {vm.kernel} is not an uncompressed ELF vmlinux, which Firecracker needs on x86_64",
                fix="unpack it once with argosy.sandbox.firecracker.extract_vmlinux(vmlinuz, vmlinux)",
            )
        args = merge_boot_args(BOOT_ARGS, vm.kernel_args)
        return firecracker_config(vm.kernel, vm.initrd, vm.rootfs, vm.memory_mb, vm.vcpus, args)

    def prepare(self, vm: VMSpec) -> Launch:
        """Write the config (and an empty log) into a fresh 0700 directory; the caller cleans up."""
        if self.binary is None:
            raise SandboxError("Firecracker is not installed", fix="put a firecracker release binary on PATH")
        config = self.plan(vm)
        workdir = Path(tempfile.mkdtemp(prefix="argosy-fc-"))
        config_path, log_path = workdir / "config.json", workdir / "firecracker.log"
        try:
            fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(config, f, indent=1)
            # Firecracker opens its log for writing; it need not create it.
            os.close(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            if self.owner is not None and os.geteuid() == 0:
                for p in (workdir, config_path, log_path):
                    os.chown(p, *self.owner)
        except OSError as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            raise SandboxError(
                f"cannot write the Firecracker config: {exc}", fix="check the temp dir"
            ) from exc
        return Launch(firecracker_argv(self.binary, config_path, log_path), config, workdir)

    @contextmanager
    def launch(self, vm: VMSpec) -> Iterator[Launch]:
        launch = self.prepare(vm)
        try:
            yield launch
        finally:
            launch.cleanup()

    def available(
        self,
        smoke: Mapping[str, Any] | None = None,
        kvm_timeout_s: float = 5.0,
        kvm: tuple[bool, str] | None = None,
    ) -> tuple[bool, str]:
        """Binary, version, KVM; then the smoke boot record, if the caller has one for Firecracker.

        `kvm`: a probe_kvm answer the caller already has (as the uid Firecracker will run as).
        """
        if self.binary is None:
            return False, "no firecracker binary on PATH (not packaged for Debian or PyPI: a release binary)"
        try:
            version = firecracker_version(self.binary)
        except SandboxError as exc:
            return False, exc.message
        if version < MIN_VERSION:
            have, need = ".".join(map(str, version)), ".".join(map(str, MIN_VERSION))
            return False, f"Firecracker {have} is older than {need}"
        uid, gid = self.owner if self.owner is not None else (None, None)
        ok, why = kvm if kvm is not None else probe_kvm(kvm_timeout_s, uid=uid, gid=gid)
        if not ok:
            return False, why
        label = f"Firecracker {'.'.join(map(str, version))}"
        if smoke is None or smoke.get("vmm") != self.name:
            return True, f"{label}; {why}: the smoke boot decides"
        if not smoke.get("ok"):
            return False, f"{label} failed its smoke boot: {smoke.get('error')}"
        return True, f"{label}, booted and ran a job in {smoke.get('seconds')} s"
