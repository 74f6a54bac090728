"""The `namespaces` isolation backend: bubblewrap, cgroups, rlimits, seccomp.

One sandbox is one `bwrap` process tree:

- user, PID, mount, network (unless asked), IPC, UTS and cgroup namespaces (`--unshare-*`);
- a fresh root with only `ro_paths` bound read-only (no home dirs, no /var, no server database),
  secrets like /etc/shadow masked, a private /tmp tmpfs with a size cap, the work dir at /work;
- uid/gid 65534 inside; when the agent is root, bwrap itself is started as the unprivileged
  `config.uid`, so the sandbox's processes are not root on the host either;
- no capabilities (`--cap-drop ALL`), `no_new_privs` (bwrap sets it before loading the filter),
  no further user namespaces (`--disable-userns`), the seccomp deny list of seccomp.py;
- a cgroup (v1 or v2) for memory, pids and CPU; rlimits always (core, file size, open files, CPU
  seconds) and, where no cgroup controller exists, also address space and process count.

Start-up is split in two so pools can pre-warm: `prepare()` starts bwrap blocked on `--block-fd`
(namespaces and mounts are built; nothing of the user's has run), then the caller writes files into
the work dir and `Prepared.start()` writes the command, applies the limits and unblocks it. The
blocked processes are attached to the cgroup before they are unblocked, so every process the code
creates is inside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import queue
import resource
import selectors
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from argosy.core.ids import new_id
from argosy.sandbox import cgroups, seccomp
from argosy.sandbox.config import SandboxConfig
from argosy.sandbox.errors import BackendUnavailableError, SandboxError
from argosy.sandbox.languages import SANDBOX_PATH, Limits

INSIDE_UID = 65534
PLACEHOLDER_LIMITS = Limits(10_000, 256, 1, 1, 64, 64)  # a pooled sandbox's cgroup until its request
WORK = "/work"
CTL = "/run/argosy"  # read-only inside: the command script and stdin, written by the agent
READ_CHUNK = 65536
OutputSink = Callable[[str, bytes], None]
PRLIMIT = "/usr/bin/prlimit"  # util-linux: essential on Debian and Ubuntu
# The environment every sandbox starts with (languages add theirs).
BASE_ENV = {"PATH": SANDBOX_PATH, "HOME": WORK, "LANG": "C.UTF-8", "TMPDIR": "/tmp", "USER": "sandbox"}
_RLIMITS = {
    "core": resource.RLIMIT_CORE,
    "nofile": resource.RLIMIT_NOFILE,
    "cpu": resource.RLIMIT_CPU,
    "fsize": resource.RLIMIT_FSIZE,
    "as": resource.RLIMIT_AS,
    "nproc": resource.RLIMIT_NPROC,
}


@dataclass
class ProcessResult:
    stdout: bytes
    stderr: bytes
    exit_code: int | None
    signal: int | None
    timed_out: bool
    oom_killed: bool
    truncated: bool
    duration_ms: float


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Prepared:
    """A started, blocked sandbox: namespaces and mounts exist, no user code has run."""

    backend: NamespacesBackend
    run_dir: Path  # removed on close: ctl/ and, unless a session's work dir was given, work/
    ctl_dir: Path
    workdir: Path
    proc: subprocess.Popen[bytes]
    child_pid: int
    block_w: int
    cgroup: cgroups.RunCgroup | None
    network: bool
    created_mono: float = field(default_factory=time.monotonic)
    closed: bool = False
    # A zygote sandbox (zygote.py): already running an interpreter that waits on `block_w`; a
    # request's argv loses this many leading items (the interpreter and its flags).
    zygote_skip: int = 0
    cg_limits: Limits | None = None  # the limits the cgroup already has, if prepare() knew them

    def alive(self) -> bool:
        return self.proc.poll() is None

    def start(
        self,
        argv: list[str],
        limits: Limits,
        env: dict[str, str] | None = None,
        stdin: bytes | None = None,
        on_output: OutputSink | None = None,
    ) -> ProcessResult:
        """Run `argv` in /work under `limits`; returns when it exits, is killed, or floods its output.

        `on_output(stream, chunk)` sees each kept chunk ("stdout"/"stderr") as it arrives (for SSE).
        """
        if self.closed or not self.alive():
            raise SandboxError(
                "this sandbox is no longer usable", fix="retry; a fresh sandbox will be started"
            )
        try:
            if self.zygote_skip:
                self._write_request(argv[self.zygote_skip :], limits, env or {}, stdin)
            else:
                self._write_command([*self.backend.apply_rlimits(self, limits), *argv], env or {}, stdin)
            self.backend.apply_limits(self, limits)
            return self._run(limits, on_output)
        finally:
            self.close()

    def _write_request(
        self, argv: list[str], limits: Limits, env: dict[str, str], stdin: bytes | None
    ) -> None:
        """What a zygote reads when it is told to go (it sets the rlimits on itself)."""
        if stdin is not None:
            (self.ctl_dir / "stdin").write_bytes(stdin)
            (self.ctl_dir / "stdin").chmod(0o644)
        from argosy.sandbox.zygote import encode_request

        path = self.ctl_dir / "run.req"
        path.write_bytes(
            encode_request(
                argv,
                {**BASE_ENV, **env, "PWD": WORK},  # PWD: what /bin/sh would have exported
                self.backend._rlimit_values(self, limits),
                f"{CTL}/stdin" if stdin is not None else "/dev/null",
            )
        )
        path.chmod(0o644)

    def _write_command(self, argv: list[str], env: dict[str, str], stdin: bytes | None) -> None:
        lines = ["set -e"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
        stdin_path = f"{CTL}/stdin" if stdin is not None else "/dev/null"
        if stdin is not None:
            (self.ctl_dir / "stdin").write_bytes(stdin)
            (self.ctl_dir / "stdin").chmod(0o644)
        # `exec` so the code is the shell's process, its exit status is ours and no shell lingers.
        lines.append(f"exec {shlex.join(argv)} < {stdin_path}")
        script = self.ctl_dir / "cmd.sh"
        script.write_text("\n".join(lines) + "\n")
        script.chmod(0o644)

    def _run(self, limits: Limits, on_output: OutputSink | None = None) -> ProcessResult:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        cap = limits.max_output_bytes
        out = {self.proc.stdout.fileno(): bytearray(), self.proc.stderr.fileno(): bytearray()}
        names = {self.proc.stdout.fileno(): "stdout", self.proc.stderr.fileno(): "stderr"}
        total = 0
        truncated = timed_out = False
        sel = selectors.DefaultSelector()
        for fd in out:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        t0 = time.monotonic()
        deadline = t0 + limits.timeout_ms / 1000
        os.write(self.block_w, b"1")  # unblock: from here on, the user's code runs
        os.close(self.block_w)
        self.block_w = -1
        try:
            while sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                for key, _ in sel.select(remaining):
                    fd = int(key.fd)
                    try:
                        chunk = os.read(fd, READ_CHUNK)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        sel.unregister(fd)
                        continue
                    keep = max(0, cap - total)
                    out[fd] += chunk[:keep]
                    if on_output is not None and keep:
                        on_output(names[fd], chunk[:keep])
                    total += len(chunk)
                    if total > cap:
                        truncated = True
                if truncated:
                    break  # an output flood: stop it now rather than read (and discard) until the deadline
            # Both pipes closed; the process may still be running (it closed them itself).
            if (
                not timed_out
                and not truncated
                and not _wait_exit(self.proc, max(0.0, deadline - time.monotonic()))
            ):
                timed_out = True
        finally:
            sel.close()
            if timed_out or truncated or self.proc.poll() is None:
                self.kill()
            self.proc.wait()
        duration_ms = (time.monotonic() - t0) * 1000
        rc = self.proc.returncode
        oom = bool(self.cgroup and self.cgroup.oom_kills() > 0)
        exit_code: int | None = rc
        sig: int | None = None
        if timed_out or truncated:
            exit_code, sig = None, signal.SIGKILL
        elif rc < 0:
            exit_code, sig = None, -rc
        elif 128 < rc <= 128 + 64:
            # bwrap reports a child killed by signal N as 128+N, as shells do.
            exit_code, sig = None, rc - 128
        return ProcessResult(
            stdout=bytes(out[self.proc.stdout.fileno()]),
            stderr=bytes(out[self.proc.stderr.fileno()]),
            exit_code=exit_code,
            signal=sig,
            timed_out=timed_out,
            oom_killed=oom,
            truncated=truncated,
            duration_ms=duration_ms,
        )

    def kill(self) -> None:
        # PID 1 of the sandbox's PID namespace first: when it dies the kernel kills every process in it.
        for pid in (self.child_pid, self.proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if self.cgroup is not None:
            self.cgroup.kill_all()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.proc.poll() is None:
            self.kill()
        if _wait_exit(self.proc, 5):
            self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        if self.block_w >= 0:
            os.close(self.block_w)
            self.block_w = -1
        # Every process of the sandbox is dead (its PID namespace went with its init); removing the
        # cgroup and the run dir is housekeeping, done off the request's path.
        self.backend.dispose(self.cgroup, self.run_dir)


class NamespacesBackend:
    name = "namespaces"
    summary = "bubblewrap namespaces + cgroups + rlimits + seccomp (default on Linux)"

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.bwrap = shutil.which("bwrap")
        self.setpriv = shutil.which("setpriv", path=SANDBOX_PATH)
        self.cgroups = cgroups.detect()
        self.is_root = os.geteuid() == 0
        self._bpf: bytes | None = None
        self._root_argv: list[str] | None = None
        self._base_ready = False
        self._direct_rlimits: bool | None = None  # prlimit(2) on the blocked sandbox works here
        self._janitor: queue.Queue[tuple[cgroups.RunCgroup | None, Path] | None] = queue.Queue()
        self._janitor_thread: threading.Thread | None = None
        self._janitor_lock = threading.Lock()
        self.runs_dir = config.base_dir / "runs"
        # cgroup names carry the base dir's tag: agents (or tests) with other base dirs share the
        # cgroup parent, and the stale-cgroup sweep must only touch this one's.
        self.tag = hashlib.sha1(str(config.base_dir).encode()).hexdigest()[:8]

    # -- checks ------------------------------------------------------------------------------------

    def checks(self) -> list[Check]:
        out = [Check("linux", os.uname().sysname == "Linux", os.uname().sysname)]
        out.append(
            Check("bwrap", self.bwrap is not None, self.bwrap or "not found (apt-get install bubblewrap)")
        )
        ok, why = seccomp.available()
        out.append(Check("seccomp", ok, why))
        out.append(
            Check(
                "cgroups",
                self.cgroups.version != "none",
                self.cgroups.reason + ("" if self.cgroups.version != "none" else "; rlimits only"),
            )
        )
        out.append(
            Check(
                "host uid",
                True,
                f"sandboxed code runs as uid {self.config.uid} on the host"
                if self.is_root
                else f"agent is not root: sandboxed code runs as this user (uid {os.getuid()}) on the host",
            )
        )
        if self.bwrap:
            try:
                res = self.run_argv(["true"], Limits(5000, 64, 1, 1024, 16, 1))
                out.append(
                    Check(
                        "smoke",
                        res.exit_code == 0,
                        f"`true` in a sandbox exited {res.exit_code}: {res.stderr[-300:].decode(errors='replace')}",
                    )
                )
            except Exception as exc:  # doctor reports every failure instead of dying on the first
                out.append(Check("smoke", False, str(exc)))
        return out

    def available(self) -> tuple[bool, str]:
        failed = [c for c in self.checks() if not c.ok and c.name != "cgroups"]
        if failed:
            return False, "; ".join(f"{c.name}: {c.detail}" for c in failed)
        return True, "ok"

    def require(self) -> None:
        if self.bwrap is None:
            raise BackendUnavailableError(
                "the namespaces sandbox needs bubblewrap, which is not installed on this node",
                fix="apt-get install -y bubblewrap (then `argosy sandbox doctor`)",
            )

    # -- building blocks ---------------------------------------------------------------------------

    def bpf(self) -> bytes:
        if self._bpf is None:
            ok, why = seccomp.available()
            if not ok:
                raise BackendUnavailableError(
                    f"cannot build the seccomp filter: {why}", fix="pip install pyseccomp"
                )
            self._bpf = seccomp.compile_filter()
        return self._bpf

    def _owner(self) -> tuple[int, int]:
        return (self.config.uid, self.config.gid) if self.is_root else (os.getuid(), os.getgid())

    def make_dir(self, path: Path, mode: int = 0o700, sandbox_owned: bool = True) -> None:
        path.mkdir(mode=mode, parents=False, exist_ok=True)
        path.chmod(mode)
        if sandbox_owned and self.is_root:
            os.chown(path, *self._owner())

    def ensure_base(self) -> None:
        # 0711: bwrap (running as the sandbox uid) must traverse to the run dirs; it cannot list them.
        if self._base_ready and self.runs_dir.is_dir():
            return
        for d in (self.config.base_dir, self.runs_dir):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o711)
        self._base_ready = True

    def claim(self, run_dir: Path) -> None:
        """Mark a run dir as this agent's, so a later reaper can tell a crashed agent's leftovers."""
        (run_dir / "owner").write_text(str(os.getpid()))

    def cleanup_stale(self) -> list[str]:
        """Remove run dirs whose agent is gone, and cgroups whose run dir is gone (after a crash)."""
        removed: list[str] = []
        if self.runs_dir.exists():
            for d in self.runs_dir.iterdir():
                try:
                    pid = int((d / "owner").read_text())
                except (OSError, ValueError):
                    # Claimed right after mkdir: only a crash in between leaves none. Old ones go.
                    if time.time() - d.stat().st_mtime < 3600:
                        continue
                    pid = 0
                if pid and psutil.pid_exists(pid):
                    continue
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d.name)
        parents = [p / cgroups.GROUP_PREFIX for p in self.cgroups.v1_paths.values()]
        if self.cgroups.v2_root is not None:
            parents.append(self.cgroups.v2_root / cgroups.GROUP_PREFIX)
        for parent in parents:
            if not parent.is_dir():
                continue
            for g in parent.iterdir():
                tag, _, run = g.name.partition("-")
                # A run's cgroup is made after its run dir and destroyed before it is removed.
                if g.is_dir() and tag == self.tag and not (self.runs_dir / run).exists():
                    cgroups.RunCgroup(self.cgroups, g.name).destroy()
                    if not g.exists():
                        removed.append(f"cgroup:{parent.parent.name}/{g.name}")
        return removed

    def bwrap_argv(
        self,
        network: bool,
        limits_tmpfs_mb: int,
        workdir: Path,
        ctl_dir: Path,
        block_fd: int,
        seccomp_fd: int,
        info_fd: int,
        command: list[str] | None = None,
    ) -> list[str]:
        assert self.bwrap is not None
        argv = [
            self.bwrap,
            "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--disable-userns",
            "--uid", str(INSIDE_UID), "--gid", str(INSIDE_UID),
            "--hostname", "sandbox",
            "--cap-drop", "ALL",
        ]  # fmt: skip
        if not network:
            argv.append("--unshare-net")
        if self._root_argv is None:
            # The node's top-level layout does not change under a running agent: worked out once.
            root: list[str] = []
            for p in self.config.ro_paths:
                path = Path(p)
                if path.is_symlink():
                    root += ["--symlink", os.readlink(path), p]  # merged-/usr systems: /bin -> usr/bin
                elif path.exists():
                    root += ["--ro-bind", p, p]
            self._root_argv = root
        argv += self._root_argv
        # Checked every time: a secret that appears after start-up must be masked too.
        for p in self.config.masked_paths:
            path = Path(p)
            if path.is_dir():
                argv += ["--tmpfs", p]
            elif path.exists():
                argv += ["--ro-bind", "/dev/null", p]
        argv += ["--proc", "/proc", "--dev", "/dev"]
        argv += ["--size", str(limits_tmpfs_mb * 2**20), "--tmpfs", "/tmp"]
        argv += ["--bind", str(workdir), WORK, "--ro-bind", str(ctl_dir), CTL]
        argv += ["--remount-ro", "/", "--chdir", WORK]
        argv += ["--info-fd", str(info_fd), "--block-fd", str(block_fd), "--seccomp", str(seccomp_fd)]
        argv += ["--", *(command or ["/bin/sh", f"{CTL}/cmd.sh"])]
        return argv

    def prepare(
        self,
        network: bool = False,
        workdir: Path | None = None,
        tmpfs_mb: int = 64,
        zygote: tuple[list[str], int] | None = None,
        limits: Limits | None = None,
    ) -> Prepared:
        """Start a blocked sandbox. With no `workdir`, a fresh private one is made (and removed on close).

        With `zygote` (zygote.python_argv's answer), the sandbox is unblocked at once and runs the
        zygote, which waits for the request on a pipe of its own instead. With `limits` (a cold
        run knows them), the cgroup is made with them, not with placeholders to be reset at start.
        """
        self.require()
        self.ensure_base()
        run_id = new_id("sbx")
        run_dir = self.runs_dir / run_id
        self.make_dir(run_dir, 0o711, sandbox_owned=False)
        self.claim(run_dir)
        ctl_dir = run_dir / "ctl"
        self.make_dir(ctl_dir, 0o755, sandbox_owned=False)
        if workdir is None:
            workdir = run_dir / "work"
            self.make_dir(workdir, 0o700)
        block_r, block_w = os.pipe()
        info_r, info_w = os.pipe()
        sec_r, sec_w = os.pipe()
        bpf = self.bpf()
        os.write(sec_w, bpf)  # a few hundred bytes: fits the pipe buffer, never blocks
        os.close(sec_w)
        go_r = go_w = ready_r = ready_w = -1
        command = None
        if zygote is not None:
            from argosy.sandbox.zygote import SCRIPT_NAME, SOURCE

            (ctl_dir / SCRIPT_NAME).write_text(SOURCE)
            (ctl_dir / SCRIPT_NAME).chmod(0o644)
            go_r, go_w = os.pipe()
            ready_r, ready_w = os.pipe()
            fds = {"{go_fd}": str(go_r), "{ready_fd}": str(ready_w)}
            command = [fds.get(a, a) for a in zygote[0]]
        cg: cgroups.RunCgroup | None = None
        try:
            argv = self.bwrap_argv(network, tmpfs_mb, workdir, ctl_dir, block_r, sec_r, info_w, command)
            env = dict(BASE_ENV)
            kwargs: dict[str, object] = {}
            if self.is_root:
                # Start bwrap itself unprivileged: it then builds its user namespace as that uid, so
                # nothing in the sandbox maps to root on the host. Through setpriv(1) rather than
                # Popen(user=...): a uid change makes CPython fork instead of vfork, which costs
                # ~10 ms in a server-sized process; setpriv's exec costs less.
                if self.setpriv:
                    ids = [f"--reuid={self.config.uid}", f"--regid={self.config.gid}", "--clear-groups"]
                    argv = [self.setpriv, *ids, "--", *argv]
                else:
                    kwargs = {"user": self.config.uid, "group": self.config.gid, "extra_groups": []}
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd="/",
                pass_fds=(block_r, sec_r, info_w) + ((go_r, ready_w) if go_r >= 0 else ()),
                start_new_session=True,
                **kwargs,  # type: ignore[arg-type]
            )
        except OSError as exc:
            for fd in (block_r, block_w, info_r, info_w, sec_r, go_r, go_w, ready_r, ready_w):
                if fd >= 0:
                    os.close(fd)
            shutil.rmtree(run_dir, ignore_errors=True)
            raise SandboxError(
                f"could not start bubblewrap: {exc}", fix="run `argosy sandbox doctor`"
            ) from exc
        os.close(block_r)
        os.close(info_w)
        os.close(sec_r)
        if go_r >= 0:
            os.close(go_r)
            os.close(ready_w)
        try:
            child = self._read_child_pid(info_r, proc)
            if self.cgroups.version != "none":
                cg = cgroups.RunCgroup(self.cgroups, f"{self.tag}-{run_id}")
                cg.create(limits or PLACEHOLDER_LIMITS)
                # The sandbox's init is blocked; whatever it starts from now on inherits the group.
                # (The outer bwrap only waits for it and is killed by pid: one migration, not two.)
                cg.attach(child)
        except BaseException:
            os.close(info_r)
            if go_w >= 0:
                os.close(go_w)
                os.close(ready_r)
            Prepared(self, run_dir, ctl_dir, workdir, proc, 0, block_w, cg, network).close()
            raise
        os.close(info_r)
        if zygote is None:
            return Prepared(
                self, run_dir, ctl_dir, workdir, proc, child, block_w, cg, network, cg_limits=limits
            )
        # In its cgroup: let bwrap start the zygote now; the request's go byte goes to its pipe.
        os.write(block_w, b"1")
        os.close(block_w)
        prepared = Prepared(
            self, run_dir, ctl_dir, workdir, proc, child, go_w, cg, network, zygote_skip=zygote[1]
        )
        # Ready once the interpreter has started (the pool's thread waits here, not a request).
        try:
            ok = _wait_readable(ready_r, 30.0)
            if not ok or os.read(ready_r, 1) != b"1":
                err = b""
                if prepared.proc.poll() is not None and prepared.proc.stderr is not None:
                    err = prepared.proc.stderr.read()
                prepared.close()
                raise SandboxError(
                    f"the Python zygote did not start: {err.decode(errors='replace')[-300:] or 'no message'}",
                    fix="set ARGOSY_SANDBOX_ZYGOTE=0 to pool plain sandboxes; run `argosy sandbox doctor`",
                )
        finally:
            os.close(ready_r)
        return prepared

    def _read_child_pid(self, info_r: int, proc: subprocess.Popen[bytes]) -> int:
        data = b""
        deadline = time.monotonic() + 10
        sel = selectors.DefaultSelector()
        sel.register(info_r, selectors.EVENT_READ)
        try:
            while b"}" not in data:
                if time.monotonic() > deadline:
                    raise SandboxError(
                        "bubblewrap did not start within 10 s", fix="run `argosy sandbox doctor`"
                    )
                if not sel.select(0.5):
                    continue
                chunk = os.read(info_r, 4096)
                if not chunk:
                    break
                data += chunk
        finally:
            sel.close()
        try:
            return int(json.loads(data)["child-pid"])
        except (ValueError, KeyError) as exc:
            proc.wait(5)
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise SandboxError(
                f"bubblewrap failed to build the sandbox: {err.strip() or 'no message'}",
                fix="run `argosy sandbox doctor`; user namespaces must be enabled (sysctl user.max_user_namespaces > 0)",
            ) from exc

    def apply_limits(self, prepared: Prepared, limits: Limits) -> None:
        """Set the run's cgroup limits (the pool made the group with placeholder figures)."""
        if prepared.cgroup is not None and prepared.cg_limits != limits:
            prepared.cgroup.set_limits(limits)

    # -- housekeeping off the request path ------------------------------------------------------------

    def dispose(self, cg: cgroups.RunCgroup | None, run_dir: Path) -> None:
        """Remove a finished sandbox's cgroup and run dir, in the background (v1 rmdir waits out
        the kernel reaping the last task, which can take milliseconds)."""
        with self._janitor_lock:
            if self._janitor_thread is None or not self._janitor_thread.is_alive():
                self._janitor_thread = threading.Thread(
                    target=self._janitor_loop, name="sandbox-janitor", daemon=True
                )
                self._janitor_thread.start()
        self._janitor.put((cg, run_dir))

    def _janitor_loop(self) -> None:
        while True:
            item = self._janitor.get()
            try:
                if item is None:
                    return
                cg, run_dir = item
                if cg is not None:
                    cg.destroy()
                shutil.rmtree(run_dir, ignore_errors=True)
            except Exception:  # one stubborn dir must not stop the rest; cleanup_stale retries
                pass
            finally:
                self._janitor.task_done()

    def flush(self) -> None:
        """Wait until every disposed sandbox is cleaned up (on close, and in tests)."""
        if self._janitor_thread is not None and self._janitor_thread.is_alive():
            self._janitor.join()

    # -- limits ----------------------------------------------------------------------------------------

    def _rlimit_values(self, prepared: Prepared, limits: Limits) -> list[tuple[str, int]]:
        cg = prepared.cgroup
        cpu_s = math.ceil(limits.timeout_ms / 1000 * max(1.0, limits.cpu_count)) + 1
        out = [
            ("core", 0),
            ("nofile", 1024),
            # A backstop if the agent's own deadline is ever missed: the kernel stops a CPU spinner.
            ("cpu", cpu_s),
            ("fsize", limits.file_size_mb * 2**20),
        ]
        if cg is None or not cg.limits_memory:
            # The floor without a memory cgroup: address space, with room for runtimes that reserve
            # far more than they touch (V8, the JVM, Go). Weaker: per process, not per sandbox.
            out.append(("as", (limits.memory_mb + limits.address_space_extra_mb) * 2**20))
        if cg is None or not cg.limits_pids:
            # Counted per uid in the sandbox's own user namespace, so runs do not share the count.
            out.append(("nproc", limits.pids + 2))
        return out

    def apply_rlimits(self, prepared: Prepared, limits: Limits) -> list[str]:
        """Set the code's rlimits; returns the argv prefix that sets them inside, if that is needed.

        Fast path: prlimit(2) on the blocked sandbox's init process, before it starts the code
        (everything it starts inherits them; soft = hard, so the code cannot raise them). That
        needs the agent's uid to match the sandbox's, or CAP_SYS_RESOURCE over it; where neither
        holds (root in a container without that capability) the prlimit(1) prefix of
        `rlimit_argv` sets them from inside instead, at the cost of one more exec per run.
        """
        values = self._rlimit_values(prepared, limits)
        if self._direct_rlimits is not False:
            try:
                for name, value in values:
                    res = _RLIMITS[name]
                    _, hard = resource.prlimit(prepared.child_pid, res)
                    if hard != resource.RLIM_INFINITY:
                        value = min(value, hard)
                    resource.prlimit(prepared.child_pid, res, (value, value))
                self._direct_rlimits = True
                return []
            except PermissionError:
                self._direct_rlimits = False
        return self.rlimit_argv(prepared, limits)

    def rlimit_argv(self, prepared: Prepared, limits: Limits) -> list[str]:
        """A `prlimit ... --` prefix: the code's rlimits, set by the sandbox on itself just before exec.

        The fallback of `apply_rlimits` where prlimit(2) from the agent is refused: lowering one's
        own limits needs no privilege, while prlimit on another uid's process needs
        CAP_SYS_RESOURCE, which an agent in a container often lacks. Why the
        prlimit(1) binary (util-linux) and not the shell's `ulimit`: its flags differ between dash
        and bash (-p vs -u for processes). `--x=N` sets soft and hard, so the code cannot raise them.
        """
        flags = {
            "core": "--core",
            "nofile": "--nofile",
            "cpu": "--cpu",
            "fsize": "--fsize",
            "as": "--as",
            "nproc": "--nproc",
        }
        argv = [PRLIMIT, *(f"{flags[n]}={v}" for n, v in self._rlimit_values(prepared, limits))]
        return [*argv, "--"]

    def run_argv(
        self,
        argv: list[str],
        limits: Limits,
        network: bool = False,
        env: dict[str, str] | None = None,
        stdin: bytes | None = None,
        workdir: Path | None = None,
        files: dict[str, bytes] | None = None,
    ) -> ProcessResult:
        """Cold path: prepare, write `files`, start."""
        prepared = self.prepare(network=network, workdir=workdir, tmpfs_mb=limits.tmpfs_mb, limits=limits)
        try:
            for name, data in (files or {}).items():
                write_inside(prepared.workdir, name, data, self._owner() if self.is_root else None)
        except BaseException:
            prepared.close()
            raise
        return prepared.start(argv, limits, env=env, stdin=stdin)


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to `timeout` s for `proc` to exit; True if it did.

    Through a pidfd: Popen.wait(timeout) polls with sleeps that grow from 0.5 ms, which adds
    milliseconds to every run whose sandbox exits just after closing its pipes (all of them).
    """
    if proc.poll() is not None:
        return True
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # before Linux 5.3
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        _wait_readable(fd, timeout)
    finally:
        os.close(fd)
    return proc.poll() is not None


def _wait_readable(fd: int, timeout: float) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(timeout))


def _open_dir_nofollow(root: Path, parts: list[str], create: bool, owner: tuple[int, int] | None) -> int:
    """An fd for root/parts..., refusing symlinks at every step (the sandbox writes this tree)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                    if owner:
                        os.chown(part, *owner, dir_fd=fd, follow_symlinks=False)
                except FileExistsError:
                    pass
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_inside(root: Path, rel: str, data: bytes, owner: tuple[int, int] | None) -> None:
    """Write root/rel without following any symlink the sandbox may have planted."""
    from argosy.sandbox.models import check_relative_path

    parts = check_relative_path(rel).split("/")
    try:
        dfd = _open_dir_nofollow(root, parts[:-1], create=True, owner=owner)
        try:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
                if st.st_mode & 0o170000 != 0o100000:
                    os.unlink(parts[-1], dir_fd=dfd)  # a symlink or fifo where a file goes: replace it
            fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644, dir_fd=dfd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if owner:
                    os.fchown(fd, *owner)
            finally:
                os.close(fd)
        finally:
            os.close(dfd)
    except (OSError, IsADirectoryError) as exc:
        raise SandboxError(
            f"cannot write '{rel}' into the sandbox: {exc.strerror or exc}",
            fix="use a plain relative file path",
        ) from exc


def read_inside(root: Path, rel: str, max_bytes: int) -> bytes:
    """Read root/rel: regular files only, no symlinks anywhere on the path, at most `max_bytes`."""
    from argosy.sandbox.models import check_relative_path

    parts = check_relative_path(rel).split("/")
    try:
        dfd = _open_dir_nofollow(root, parts[:-1], create=False, owner=None)
    except OSError as exc:
        raise SandboxError(
            f"no file '{rel}' in the sandbox ({exc.strerror})",
            fix="list files with `argosy sandbox exec ID -- ls -la`",
        ) from exc
    try:
        # O_NONBLOCK: a FIFO planted by the code must not hang the agent.
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
    except OSError as exc:
        raise SandboxError(
            f"cannot read '{rel}' from the sandbox: {exc.strerror}",
            fix="only regular files can be downloaded",
        ) from exc
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o170000 != 0o100000:
            raise SandboxError(f"'{rel}' is not a regular file", fix="only regular files can be downloaded")
        if st.st_size > max_bytes:
            raise SandboxError(
                f"'{rel}' is {st.st_size} bytes, above the {max_bytes}-byte download cap",
                fix="compress or split it first",
            )
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
