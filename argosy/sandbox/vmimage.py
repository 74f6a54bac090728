"""The `microvm` backend's VM image (`argosy sandbox build-image`, under `image_dir/microvm`):
building it from this node's kernel and Debian packages, and where its files are (`VMImage`).
microvm.py chooses the VMM and boots it; the image does not depend on which VMM runs it, apart from
the vmlinux unpacked for Firecracker.

Files:
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
  and the inputs (package versions, image format) that decide whether a rebuild is needed.

/init (INIT, in the initramfs) is the guest's side of a run: it loads the modules, mounts the
rootfs, runs the job's steps and prints their output between the markers microvm.py reads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from argosy.sandbox.errors import SandboxError
from argosy.sandbox.firecracker import extract_vmlinux
from argosy.sandbox.languages import SANDBOX_PATH, LanguageTable

# The cloud kernel has ext4 built in; these (and what they depend on) are modules.
MODULES = ("virtio_mmio", "virtio_blk")
# Bump when the rootfs layout changes, so cached images are rebuilt.
IMAGE_FORMAT = 1
# Not needed to compile or run code; a third of some packages.
SKIP_PATHS = re.compile(
    r"^/usr/share/(doc|doc-base|man|info|locale|lintian|bug|bash-completion|menu)(/|$)"
    r"|^/usr/lib/python3\.\d+/(test|idlelib|tkinter|turtledemo|lib2to3)(/|$)"
)

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


class VMImage:
    """The image's files under `image_dir`, the languages its manifest says it carries, and the
    build of each file."""

    def __init__(self, image_dir: Path) -> None:
        self.image_dir = image_dir

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

    # -- building ----------------------------------------------------------------------------------

    def build_image(
        self, log: list[str] | None = None, table: LanguageTable | None = None, vmlinux: bool = False
    ) -> Path:
        """Build kernel, initramfs and rootfs under image_dir (and, with `vmlinux`, the ELF kernel
        for Firecracker); returns the dir.

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
        if vmlinux:
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
        53 MB), when the caller has a Firecracker binary, and again when vmlinuz is newer."""
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
