"""The `microvm` isolation backend: one QEMU `microvm` VM per run. Slower than namespaces, stronger:
the code runs under its own kernel, so a kernel bug reachable from inside does not reach the host.

Image (`argosy sandbox build-image`): a Debian cloud kernel (from /boot, else `apt-get download`
of the linux-image-*-cloud-amd64 package, unpacked with dpkg-deb) and an uncompressed initramfs
holding busybox-static, bash, Python 3 (the node's interpreter, its stdlib and the libraries `ldd`
names) and an /init script. Nothing else: no network device, no disk, no host file system.

A run: the agent appends a second cpio archive (the kernel unpacks concatenated archives) with the
job — the files, the command, stdin — boots the VM with the job's memory, and reads the serial
console. /init runs the command as uid 65534, then prints stdout, stderr (base64) and the exit
status between markers and powers off. The agent enforces the deadline (from the moment the guest
says the command started, so boot time is not charged to the code), the output cap (on the console
bytes) and reads OOM kills from the guest's kernel log.

Firecracker is not used yet (it needs a working /dev/kvm); KVM is not used because nested KVM hangs
on this project's nodes, so QEMU runs with `-accel tcg` (software emulation): correct, and slow.
"""

from __future__ import annotations

import base64
import json
import os
import re
import selectors
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from argosy.sandbox.config import SandboxConfig
from argosy.sandbox.errors import BackendUnavailableError, SandboxError
from argosy.sandbox.languages import Limits
from argosy.sandbox.namespaces import Check, ProcessResult

QEMU = "qemu-system-x86_64"
BOOT_TIMEOUT_S = 60.0  # TCG on a busy 2-core node boots in ~3-10 s
GUEST_OVERHEAD_MB = 160  # kernel, initramfs in RAM (~70 MB unpacked), busybox
# Under TCG the guest cannot calibrate its TSC against the PIT (emulated time runs unevenly on a
# busy host) and the boot stalls for minutes with the clock at 0: give it a TSC frequency, trust the
# TSC, skip the timer and delay-loop checks. With these a Debian cloud kernel boots in seconds.
KERNEL_ARGS = (
    "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init "
    "tsc_early_khz=2000000 tsc=reliable no_timer_check lpj=4000000"
)
# Languages the image carries (their toolchains are in it); the rest need the namespaces backend.
IMAGE_LANGUAGES = ("python", "bash")

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs -o size=64m tmp /tmp
chmod 1777 /tmp
mkdir -p /work && cp -a /job/files/. /work/ 2>/dev/null
chown -R 65534:65534 /work /tmp
cd /work
export PATH=/usr/local/bin:/usr/bin:/bin HOME=/work LANG=C.UTF-8 TMPDIR=/tmp
echo "===ARGOSY-START==="
setpriv --nnp su -s /bin/sh nobody -c "exec sh /job/cmd.sh" </job/stdin >/tmp/.out 2>/tmp/.err
rc=$?
oom=0
dmesg | grep -q "Killed process" && oom=1
echo "===ARGOSY-STDOUT==="
base64 /tmp/.out
echo "===ARGOSY-STDERR==="
base64 /tmp/.err
echo "===ARGOSY-EXIT $rc $oom==="
poweroff -f
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


class MicroVMBackend:
    name = "microvm"
    summary = "one QEMU microvm VM per run (KVM unusable here: TCG emulation; slow, strongest)"

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.qemu = shutil.which(QEMU)
        self.image_dir = config.image_dir / "microvm"

    @property
    def kernel(self) -> Path:
        return self.image_dir / "vmlinuz"

    @property
    def initramfs(self) -> Path:
        return self.image_dir / "initramfs.cpio"

    @property
    def smoke_file(self) -> Path:
        return self.image_dir / "smoke.json"

    def smoke_result(self) -> dict[str, object] | None:
        try:
            return dict(json.loads(self.smoke_file.read_text()))
        except (OSError, ValueError):
            return None

    def smoke(self) -> dict[str, object]:
        """Boot the image once and run `echo ok`; the result decides whether the backend is offered.

        A built image is not proof that VMs boot on this node (under TCG on a loaded host the
        kernel's timer calibration can stall for minutes), so doctor trusts only this record.
        """
        t0 = time.monotonic()
        result: dict[str, object] = {"at": time.time()}
        try:
            res = self.run_job(["sh", "-c", "echo ok"], Limits(10_000, 64, 1, 4096, 16, 1), {}, check=False)
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
        self.smoke_file.write_text(json.dumps(result))
        return result

    def checks(self) -> list[Check]:
        kvm = Path("/dev/kvm")
        firecracker = shutil.which("firecracker")
        built = self.kernel.exists() and self.initramfs.exists()
        smoke = self.smoke_result()
        if smoke is None:
            booted = Check("boot", False, "never tried: `argosy sandbox build-image` boots it once")
        elif smoke.get("ok"):
            booted = Check("boot", True, f"booted and ran a job in {smoke.get('seconds')} s")
        else:
            booted = Check("boot", False, f"failed after {smoke.get('seconds')} s: {smoke.get('error')}")
        return [
            Check("qemu", self.qemu is not None, self.qemu or "not installed (apt-get install qemu-system-x86)"),
            Check("accelerator", True, "tcg (software emulation): nested KVM hangs on these nodes"
                  if kvm.exists() else "tcg (software emulation): no /dev/kvm"),
            Check("firecracker", firecracker is not None, firecracker or "not installed (not used yet)"),
            Check("image", built, str(self.image_dir) if built else "not built: run `argosy sandbox build-image`"),
            Check("languages", built, ", ".join(IMAGE_LANGUAGES)),
            booted,
        ]  # fmt: skip

    def available(self) -> tuple[bool, str]:
        if self.qemu is None:
            return False, "QEMU is not installed (apt-get install qemu-system-x86)"
        if not (self.kernel.exists() and self.initramfs.exists()):
            return False, "no VM image: run `argosy sandbox build-image`"
        smoke = self.smoke_result()
        if not smoke or not smoke.get("ok"):
            why = smoke.get("error") if smoke else "never booted"
            return (
                False,
                f"the VM image does not boot on this node ({why}); re-check with `argosy sandbox build-image`",
            )
        return True, f"QEMU microvm, TCG; languages: {', '.join(IMAGE_LANGUAGES)}"

    def require(self) -> None:
        ok, why = self.available()
        if not ok:
            raise BackendUnavailableError(
                f"isolation backend 'microvm' is unavailable: {why}",
                fix="apt-get install qemu-system-x86 busybox-static && argosy sandbox build-image",
            )

    # -- image -------------------------------------------------------------------------------------

    def build_image(self, log: list[str] | None = None) -> Path:
        """Build the kernel + initramfs under image_dir; returns the dir. Idempotent."""
        log = log if log is not None else []
        busybox = Path("/bin/busybox")
        ldd = (
            subprocess.run(["ldd", str(busybox)], capture_output=True, text=True)
            if busybox.exists()
            else None
        )
        if ldd is None or "not a dynamic executable" not in (ldd.stdout + ldd.stderr):
            # The guest has no libc of its own for busybox: it must be the static build.
            raise SandboxError(
                "busybox-static is needed for the VM image", fix="apt-get install -y busybox-static"
            )
        self.image_dir.mkdir(parents=True, exist_ok=True)
        self._kernel(log)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "root"
            for d in ("bin", "dev", "proc", "sys", "tmp", "work", "job", "etc", "usr/bin", "lib64"):
                (root / d).mkdir(parents=True, exist_ok=True)
            shutil.copy2(busybox, root / "bin" / "busybox")
            (root / "init").write_text(INIT)
            (root / "init").chmod(0o755)
            (root / "etc" / "passwd").write_text(
                "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/work:/bin/sh\n"
            )
            (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
            binaries = [Path("/usr/bin/python3"), Path("/usr/bin/bash")]
            for b in binaries:
                real = b.resolve()
                shutil.copy2(real, root / "usr" / "bin" / real.name)
                if real.name != b.name:
                    (root / "usr" / "bin" / b.name).symlink_to(real.name)
                self._copy_libs(real, root)
            (root / "bin" / "bash").symlink_to("/usr/bin/bash")
            py = Path("/usr/bin/python3").resolve().name  # python3.11
            stdlib = Path("/usr/lib") / py
            skip = {"test", "idlelib", "tkinter", "ensurepip", "lib2to3", "pydoc_data", "dist-packages",
                    "turtledemo", "site-packages", "unittest", "distutils"}  # fmt: skip
            shutil.copytree(
                stdlib,
                root / "usr" / "lib" / py,
                symlinks=True,
                ignore=lambda d, names: [
                    n
                    for n in names
                    if n in skip or n.endswith((".opt-1.pyc", ".opt-2.pyc")) or n.startswith("config-")
                ],
            )
            for so in (root / "usr" / "lib" / py / "lib-dynload").glob("*.so"):
                self._copy_libs(so, root)
            data = _cpio(_tree_entries(root))
        tmp_out = self.initramfs.with_suffix(".tmp")
        tmp_out.write_bytes(data)
        tmp_out.replace(self.initramfs)
        log.append(f"initramfs: {self.initramfs} ({len(data) / 2**20:.1f} MiB)")
        return self.image_dir

    def _copy_libs(self, binary: Path, root: Path) -> None:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.search(r"(/\S+)\s+\(0x", line)
            if not m:
                continue
            lib = Path(m.group(1))
            # Keep the path the loader asks for (e.g. /lib64/ld-linux-x86-64.so.2).
            dest = root / lib.relative_to("/")
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(lib.resolve(), dest)

    def _kernel(self, log: list[str]) -> None:
        if self.kernel.exists():
            return
        booted = sorted(Path("/boot").glob("vmlinuz-*"))
        if booted:
            shutil.copy2(booted[-1], self.kernel)
            log.append(f"kernel: {booted[-1]}")
            return
        # No kernel on the node (containers): fetch Debian's cloud kernel package and unpack it.
        with tempfile.TemporaryDirectory() as tmp:
            dep = subprocess.run(
                ["apt-cache", "depends", "linux-image-cloud-amd64"], capture_output=True, text=True
            ).stdout
            m = re.search(r"Depends: (linux-image-\S+-cloud-amd64)", dep)
            if not m:
                raise SandboxError(
                    "cannot find Debian's cloud kernel package",
                    fix="apt-get update, or put a kernel at " + str(self.kernel),
                )
            pkg = m.group(1)
            r = subprocess.run(["apt-get", "download", pkg], cwd=tmp, capture_output=True, text=True)
            debs = list(Path(tmp).glob("*.deb"))
            if r.returncode != 0 or not debs:
                raise SandboxError(
                    f"apt-get download {pkg} failed: {r.stderr.strip()[-300:]}", fix="check apt's sources"
                )
            subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(Path(tmp) / "x")], check=True)
            kernels = sorted((Path(tmp) / "x" / "boot").glob("vmlinuz-*"))
            shutil.copy2(kernels[-1], self.kernel)
            log.append(f"kernel: {pkg}")

    # -- running -----------------------------------------------------------------------------------

    def run_job(
        self,
        argv: list[str],
        limits: Limits,
        files: dict[str, bytes],
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> ProcessResult:
        if check:
            self.require()
        elif self.qemu is None or not self.initramfs.exists():
            raise SandboxError(
                "QEMU or the VM image is missing",
                fix="apt-get install qemu-system-x86; argosy sandbox build-image",
            )
        lines = [f"export {k}={shlex.quote(v)}" for k, v in (env or {}).items()]
        lines.append(f"exec {shlex.join(argv)}")
        entries: list[tuple[str, int, bytes]] = [
            ("job", 0o040755, b""),
            ("job/files", 0o040755, b""),
            ("job/cmd.sh", 0o100644, ("\n".join(lines) + "\n").encode()),
            ("job/stdin", 0o100644, stdin or b""),
        ]
        made: set[str] = set()
        for name, data in files.items():
            parts = name.split("/")
            for i in range(1, len(parts)):
                d = "job/files/" + "/".join(parts[:i])
                if d not in made:
                    made.add(d)
                    entries.append((d, 0o040755, b""))
            entries.append(("job/files/" + name, 0o100644, data))
        # QEMU runs as the sandbox uid when the agent is root, and the image may sit in a home dir
        # it cannot traverse: hand it the kernel and the initrd as open files (/dev/fd/N).
        with (
            tempfile.TemporaryFile(prefix="argosy-vm-", suffix=".cpio") as initrd,
            self.kernel.open("rb") as kernel,
        ):
            initrd.write(self.initramfs.read_bytes())
            initrd.write(_cpio(entries))
            initrd.flush()
            if os.geteuid() == 0:
                # Opening /dev/fd/N re-checks the file's own permissions: let the sandbox uid read it.
                os.fchown(initrd.fileno(), self.config.uid, self.config.gid)
            qemu_argv = [
                self.qemu or QEMU,
                "-M", "microvm,x-option-roms=off,rtc=on,pit=on,pic=on",
                "-accel", "tcg",
                "-cpu", "max",
                "-m", str(limits.memory_mb + GUEST_OVERHEAD_MB),
                "-smp", "1",
                "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
                "-serial", "stdio",
                "-kernel", f"/dev/fd/{kernel.fileno()}",
                "-initrd", f"/dev/fd/{initrd.fileno()}",
                "-append", KERNEL_ARGS,
                # QEMU's own seccomp filter: no exec, no privilege changes, no obsolete or
                # resource-control syscalls.
                "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            ]  # fmt: skip
            setpriv = shutil.which("setpriv")
            if os.geteuid() == 0 and setpriv:
                # Drop to the sandbox uid before QEMU starts (its -runas would need setgid after
                # its own filter forbids it).
                ids = [f"--reuid={self.config.uid}", f"--regid={self.config.gid}", "--clear-groups"]
                qemu_argv = [setpriv, *ids, "--", *qemu_argv]
            return self._watch(qemu_argv, limits, (kernel.fileno(), initrd.fileno()))

    def _watch(self, qemu_argv: list[str], limits: Limits, fds: tuple[int, ...] = ()) -> ProcessResult:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            qemu_argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=fds,
        )
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        # base64 inflates by 4/3, plus line breaks and the kernel's own lines.
        console_cap = limits.max_output_bytes * 3 // 2 + 256 * 1024
        buf = bytearray()
        started: float | None = None
        deadline = t0 + BOOT_TIMEOUT_S
        timed_out = truncated = False
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout.fileno(), selectors.EVENT_READ)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
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
                buf += chunk
                if started is None and b"===ARGOSY-START===" in buf:
                    started = time.monotonic()
                    deadline = started + limits.timeout_ms / 1000
                if len(buf) > console_cap:
                    truncated = True
                    break
                if b"===ARGOSY-EXIT" in buf and buf.rstrip().endswith(b"==="):
                    break
        finally:
            sel.close()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
        if started is None and not timed_out and not truncated:
            tail = buf[-500:].decode(errors="replace")
            raise SandboxError(
                f"the VM did not start the job: {tail}", fix="rebuild the image: argosy sandbox build-image"
            )
        text = bytes(buf).replace(b"\r\n", b"\n")
        duration_ms = (time.monotonic() - (started or t0)) * 1000
        m = re.search(
            rb"===ARGOSY-STDOUT===\n(.*?)===ARGOSY-STDERR===\n(.*?)===ARGOSY-EXIT (\d+) (\d)===", text, re.S
        )
        if timed_out or truncated or m is None:
            return ProcessResult(b"", b"", None, 9, timed_out, False, truncated, duration_ms)
        stdout = base64.b64decode(m.group(1))
        stderr = base64.b64decode(m.group(2))
        rc, oom = int(m.group(3)), m.group(4) == b"1"
        if len(stdout) + len(stderr) > limits.max_output_bytes:
            truncated = True
            stdout = stdout[: limits.max_output_bytes]
            stderr = stderr[: max(0, limits.max_output_bytes - len(stdout))]
        sig = rc - 128 if rc > 128 else None
        return ProcessResult(stdout, stderr, None if sig else rc, sig, False, oom, truncated, duration_ms)
