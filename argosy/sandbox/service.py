"""The sandbox service: languages, admission (concurrency cap + queue), warm pools, sessions, reaping.

`SandboxRunner` is what the API and the CLI call. `LocalRunner` executes on this machine; a runner
that forwards to an agent with the `sandbox` role implements the same methods.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from argosy.core.clock import Clock, SystemClock
from argosy.core.errors import NotFoundError
from argosy.core.ids import new_id
from argosy.core.registry import Entry, Registry
from argosy.sandbox.config import SandboxConfig
from argosy.sandbox.errors import SandboxBusyError, SandboxRequestError
from argosy.sandbox.languages import Language, LanguageTable, Limits
from argosy.sandbox.models import (
    CompileOutput,
    ExecRequest,
    ExecResult,
    SessionCreate,
    SessionExec,
    SessionInfo,
    check_relative_path,
)
from argosy.sandbox.namespaces import (
    NamespacesBackend,
    OutputSink,
    Prepared,
    ProcessResult,
    read_inside,
    write_inside,
)
from argosy.sandbox.zygote import python_argv

MAX_DOWNLOAD_BYTES = 64 * 2**20
REAP_GRACE_S = 2.0


def backends() -> Registry:
    """Isolation backends by name (a fresh registry: no module-level state)."""
    return Registry(
        kind="isolation backend",
        entry_point_group="argosy.sandbox_backends",
        entries={
            "namespaces": Entry(
                "argosy.sandbox.namespaces:NamespacesBackend", summary=NamespacesBackend.summary
            ),
            "microvm": Entry(
                "argosy.sandbox.microvm:MicroVMBackend",
                summary="one VM per run: own kernel, toolchains on a read-only disk (Firecracker, QEMU/KVM or QEMU/TCG)",
            ),
        },
    )


class SandboxRunner(Protocol):
    def execute(self, req: ExecRequest, on_output: OutputSink | None = None) -> ExecResult: ...
    def create_session(self, req: SessionCreate) -> SessionInfo: ...
    def exec_session(self, session_id: str, req: SessionExec) -> ExecResult: ...
    def get_session(self, session_id: str) -> SessionInfo: ...
    def put_file(self, session_id: str, path: str, data: bytes) -> None: ...
    def get_file(self, session_id: str, path: str) -> bytes: ...
    def list_sessions(self) -> list[SessionInfo]: ...
    def delete_session(self, session_id: str) -> None: ...
    def doctor(self) -> dict[str, Any]: ...


class Admission:
    """At most `max_concurrent` runs; up to `max_queue` more wait; beyond that, SandboxBusyError (429)."""

    def __init__(self, max_concurrent: int, max_queue: int, queue_timeout_s: float) -> None:
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.active = 0
        self.waiting = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self._cond:
            if self.active >= self.max_concurrent:
                if self.waiting >= self.max_queue:
                    raise SandboxBusyError(
                        f"all {self.max_concurrent} sandbox slots are busy and {self.waiting} requests are queued",
                        fix="retry after a moment, or raise max_concurrent / max_queue on this node",
                    )
                self.waiting += 1
                try:
                    ok = self._cond.wait_for(lambda: self.active < self.max_concurrent, self.queue_timeout_s)
                finally:
                    self.waiting -= 1
                if not ok:
                    raise SandboxBusyError(
                        f"waited {self.queue_timeout_s:.0f} s for a sandbox slot",
                        fix="retry later; this node is saturated",
                    )
            self.active += 1
        try:
            yield
        finally:
            with self._cond:
                self.active -= 1
                self._cond.notify()


class WarmPool:
    """Blocked, ready sandboxes per language: a request takes one and pays only for the unblock.

    One long-lived thread starts every pooled sandbox. It has to be long-lived: bwrap's
    --die-with-parent (PR_SET_PDEATHSIG) fires when the *thread* that started it exits, so a
    sandbox started from a short-lived refill thread would die with it.
    """

    def __init__(
        self,
        backend: NamespacesBackend,
        sizes: dict[str, int],
        tmpfs_mb: int,
        zygotes: dict[str, tuple[list[str], int]] | None = None,
    ) -> None:
        self.backend = backend
        self.sizes = dict(sizes)
        # Languages whose pooled sandboxes run a pre-started interpreter (zygote.py).
        self.zygotes = dict(zygotes or {})
        self.tmpfs_mb = tmpfs_mb
        self.ready: dict[str, list[Prepared]] = {lang: [] for lang in sizes}
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.sizes and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="sandbox-pool", daemon=True)
            self._thread.start()

    def _missing(self) -> str | None:
        with self._lock:
            for lang, size in self.sizes.items():
                if len(self.ready[lang]) < size:
                    return lang
        return None

    def _loop(self) -> None:
        while not self._closed:
            lang = self._missing()
            if lang is None:
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                prepared = self.backend.prepare(
                    network=False, tmpfs_mb=self.tmpfs_mb, zygote=self.zygotes.get(lang)
                )
            except Exception as exc:  # keep serving cold; say why in doctor/stats, retry later
                self.last_error = str(exc)
                self._wake.wait(5.0)
                continue
            with self._lock:
                if self._closed:
                    prepared.close()
                    return
                self.ready[lang].append(prepared)

    def filled(self) -> bool:
        return self._missing() is None

    def take(self, lang: str) -> Prepared | None:
        with self._lock:
            items = self.ready.get(lang)
            prepared = None
            while items:
                candidate = items.pop()
                if candidate.alive():
                    prepared = candidate
                    break
                candidate.close()
        # No refill here: starting a replacement now would compete for the CPU with the run that
        # just took this one. The runner calls `refill()` when that run is over.
        return prepared

    def refill(self) -> None:
        self._wake.set()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            items = [p for ps in self.ready.values() for p in ps]
            for ps in self.ready.values():
                ps.clear()
        self._wake.set()
        for p in items:
            p.close()
        # Wait out a sandbox the thread may be starting right now, so nothing is left behind.
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=15)


@dataclass
class _Active:
    prepared: Prepared
    deadline: float  # on the service clock
    reaped: bool = False


def _compile_output(res: ProcessResult) -> CompileOutput:
    return CompileOutput(
        stdout=_decode(res.stdout),
        stderr=_decode(res.stderr),
        exit_code=res.exit_code,
        duration_ms=round(res.duration_ms, 3),
        timed_out=res.timed_out,
        oom_killed=res.oom_killed,
    )


def _exec_result(
    run_id: str,
    res: ProcessResult,
    status: str,
    language: str,
    version: str | None,
    backend: str,
    compile_out: CompileOutput | None = None,
    warm: bool = False,
) -> ExecResult:
    """One step's process result as the API's answer (a compile error is the compile step's)."""
    return ExecResult(
        run_id=run_id,
        status=status,  # type: ignore[arg-type]
        stdout=_decode(res.stdout),
        stderr=_decode(res.stderr),
        exit_code=res.exit_code,
        signal=res.signal,
        timed_out=res.timed_out,
        oom_killed=res.oom_killed,
        truncated=res.truncated,
        duration_ms=round(res.duration_ms, 3),
        language=language,
        version=version,
        backend=backend,
        compile=compile_out,
        warm=warm,
    )


def _decode(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


class LocalRunner:
    """Runs sandboxes on this machine."""

    def __init__(
        self,
        config: SandboxConfig | None = None,
        clock: Clock | None = None,
        table: LanguageTable | None = None,
        node: Callable[[], str | None] | None = None,
    ) -> None:
        self.config = config or SandboxConfig.from_env()
        # On an agent with the sandbox role: its node id, stamped on every result (known only
        # once the agent has registered, hence a callable).
        self.node = node
        self.clock = clock or SystemClock()
        self.table = table or LanguageTable.load()
        backend = backends().load(self.config.backend)(self.config)
        backend.require()
        # The microvm backend runs one-shot executions only; sessions and pools need namespaces.
        self.vm = backend if backend.name == "microvm" else None
        if self.vm is not None:
            backend = NamespacesBackend(self.config)
        self.backend: NamespacesBackend = backend
        self.admission = Admission(
            self.config.max_concurrent, self.config.max_queue, self.config.queue_timeout_s
        )
        self.sessions_dir = self.config.base_dir / "sessions"
        tmpfs_default = int(self.table.spec.defaults.tmpfs_mb or 64)
        for lang in self.config.pool:
            self.table.get(lang)  # unknown names fail here, at start-up, with a suggestion
        sizes = {self.table.get(k).name: v for k, v in self.config.pool.items()}
        # Languages whose run step a zygote can stand in for (cold and pooled sandboxes alike).
        self.zygotes: dict[str, tuple[list[str], int]] = {}
        if self.config.zygote:
            for name in self.table.names():
                z = python_argv(self.table.get(name).spec.run, "{file}")
                if z is not None:
                    self.zygotes[name] = z
        self.pool = WarmPool(
            backend, sizes, tmpfs_default, {k: v for k, v in self.zygotes.items() if k in sizes}
        )
        self._active: dict[str, _Active] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start_background(self) -> None:
        """Start filling the pools and the reaper thread (the server calls this; the CLI does not)."""
        self.pool.start()
        if self._reaper is None:
            self._reaper = threading.Thread(target=self._reap_loop, name="sandbox-reaper", daemon=True)
            self._reaper.start()

    def _reap_loop(self) -> None:
        # Real time paces the loop; what is expired is decided on the injectable clock.
        while not self._stop.wait(self.config.reap_interval_s):
            with contextlib.suppress(Exception):  # one bad session dir must not stop reaping the rest
                self.reap()

    def close(self) -> None:
        self._stop.set()
        self.pool.close()
        self.backend.flush()

    # -- execute -----------------------------------------------------------------------------------

    def _language(self, name: str, version: str | None) -> Language:
        lang = self.table.get(name)
        have = lang.version()
        if version and version not in have:
            raise SandboxRequestError(
                f"{lang.name} {version} was asked for; this node has '{have}'",
                fix="leave `version` out or ask for the installed one",
            )
        return lang

    def _status(self, res: ProcessResult) -> str:
        if res.timed_out:
            return "timed_out"
        if res.oom_killed:
            return "oom_killed"
        if res.truncated:
            return "output_limit"
        return "ok" if res.exit_code == 0 else "error"

    def _track(self, run_id: str, prepared: Prepared, limits: Limits) -> None:
        with self._lock:
            self._active[run_id] = _Active(
                prepared, self.clock.now() + limits.timeout_ms / 1000 + REAP_GRACE_S
            )

    def _untrack(self, run_id: str) -> bool:
        with self._lock:
            entry = self._active.pop(run_id, None)
        return bool(entry and entry.reaped)

    def _start(
        self,
        run_id: str,
        prepared: Prepared,
        argv: list[str],
        limits: Limits,
        env: dict[str, str],
        stdin: bytes | None,
        on_output: OutputSink | None = None,
    ) -> ProcessResult:
        self._track(run_id, prepared, limits)
        try:
            res = prepared.start(argv, limits, env=env, stdin=stdin, on_output=on_output)
        finally:
            reaped = self._untrack(run_id)
        if reaped:
            res.timed_out = True
        return res

    def _run_language(
        self,
        run_id: str,
        lang: Language,
        files: dict[str, bytes],
        limits: Limits,
        args: list[str],
        stdin: bytes | None,
        network: bool,
        workdir: Path | None,
        on_output: OutputSink | None = None,
    ) -> ExecResult:
        env = dict(lang.spec.env)
        compile_out: CompileOutput | None = None
        own_workdir: Path | None = None
        if lang.compiled and workdir is None:
            # Compile and run are two sandboxes sharing one work dir: make it here.
            self.backend.ensure_base()
            own_workdir = self.backend.runs_dir / run_id
            self.backend.make_dir(own_workdir, 0o711, sandbox_owned=False)
            self.backend.claim(own_workdir)
            workdir = own_workdir / "work"
            self.backend.make_dir(workdir)
        owner = self.backend._owner() if self.backend.is_root else None
        try:
            if lang.compiled:
                assert lang.spec.compile is not None and workdir is not None
                climits = self.table.limits(lang, {}, compile_step=True)
                climits = Limits(**{**climits.as_dict(), "max_output_bytes": limits.max_output_bytes})
                for name, data in files.items():
                    write_inside(workdir, name, data, owner)
                files = {}
                prepared = self.backend.prepare(
                    network=False, workdir=workdir, tmpfs_mb=climits.tmpfs_mb, limits=climits
                )
                cres = self._start(
                    run_id, prepared, lang.argv(lang.spec.compile, lang.spec.file), climits, env, None
                )
                compile_out = _compile_output(cres)
                if cres.exit_code != 0:
                    return _exec_result(
                        run_id,
                        cres,
                        "compile_error",
                        lang.name,
                        lang.version(),
                        self.backend.name,
                        compile_out,
                    )
            warm = False
            prepared_run: Prepared | None = None
            if workdir is None and not network:
                prepared_run = self.pool.take(lang.name)
                warm = prepared_run is not None
            if prepared_run is None:
                prepared_run = self.backend.prepare(
                    network=network,
                    workdir=workdir,
                    tmpfs_mb=limits.tmpfs_mb,
                    limits=limits,
                    # Not over an existing work dir (a session's): files the user left there (a
                    # usercustomize in ~/.local) would run at the zygote's start, before its limits.
                    zygote=self.zygotes.get(lang.name) if workdir is None else None,
                )
            try:
                for name, data in files.items():
                    write_inside(prepared_run.workdir, name, data, owner)
            except BaseException:
                prepared_run.close()
                raise
            argv = lang.argv(lang.spec.run, lang.spec.file) + list(args)
            try:
                res = self._start(run_id, prepared_run, argv, limits, env, stdin, on_output)
            finally:
                if warm:
                    self.pool.refill()
            return _exec_result(
                run_id,
                res,
                self._status(res),
                lang.name,
                lang.version(),
                self.backend.name,
                compile_out,
                warm,
            )
        finally:
            if own_workdir is not None:
                shutil.rmtree(own_workdir, ignore_errors=True)

    def _request_limits(
        self, lang: Language, req: ExecRequest | SessionExec, memory_default: int | None = None
    ) -> Limits:
        return self.table.limits(
            lang,
            {
                "timeout_ms": req.timeout_ms,
                "memory_mb": req.memory_mb or memory_default,
                "cpu_count": req.cpu_count,
                "max_output_bytes": req.max_output_bytes,
            },
        )

    def execute(self, req: ExecRequest, on_output: OutputSink | None = None) -> ExecResult:
        """Run once. `on_output(stream, chunk)` gets the run step's output as it comes (not the compiler's)."""
        lang = self._language(req.language, req.version)
        limits = self._request_limits(lang, req)
        files = {k: v.encode() for k, v in (req.files or {}).items()}
        if req.code is not None:
            files[lang.spec.file] = req.code.encode()
        elif lang.spec.file not in files:
            raise SandboxRequestError(
                f"`files` has no {lang.spec.file}, the entry point for {lang.name}",
                fix=f"name the main file {lang.spec.file} or send `code`",
            )
        stdin = req.stdin.encode() if req.stdin is not None else None
        if self.vm is not None:
            with self.admission.slot():
                return self._stamp(self._run_in_vm(lang, files, limits, req.args, stdin, req.network), limits)
        with self.admission.slot():
            return self._stamp(
                self._run_language(
                    new_id("run"), lang, files, limits, req.args, stdin, req.network, None, on_output
                ),
                limits,
            )

    def _stamp(self, res: ExecResult, limits: Limits) -> ExecResult:
        """Who ran it and under which limits (the server records both)."""
        res.node = self.node() if self.node is not None else None
        res.limits = {
            k: limits.as_dict()[k]
            for k in ("timeout_ms", "memory_mb", "cpu_count", "max_output_bytes", "pids")
        }
        return res

    def _run_in_vm(
        self,
        lang: Language,
        files: dict[str, bytes],
        limits: Limits,
        args: list[str],
        stdin: bytes | None,
        network: bool,
    ) -> ExecResult:
        """One VM per run: a compiled language compiles and runs in the same VM (one /work)."""
        from argosy.sandbox.microvm import Step

        assert self.vm is not None
        carried = self.vm.image_languages
        if lang.name not in carried:
            raise SandboxRequestError(
                f"the microvm image carries {', '.join(carried) or 'no languages'}, not {lang.name}",
                fix="install its toolchain on this node and rerun `argosy sandbox build-image`, "
                "or use the namespaces backend",
            )
        if network:
            raise SandboxRequestError(
                "microvm sandboxes have no network device", fix="drop `network` or use namespaces"
            )
        run_id = new_id("run")
        version = carried[lang.name]
        env = dict(lang.spec.env)
        steps = []
        if lang.compiled:
            assert lang.spec.compile is not None
            climits = self.table.limits(lang, {}, compile_step=True)
            climits = Limits(**{**climits.as_dict(), "max_output_bytes": limits.max_output_bytes})
            compile_argv = lang.argv(lang.spec.compile, lang.spec.file)
            steps.append(
                Step(
                    "compile",
                    compile_argv,
                    climits,
                    stdin=False,
                    timeout_factor=self.vm.compile_timeout_factor,
                )
            )
        steps.append(Step("run", lang.argv(lang.spec.run, lang.spec.file) + list(args), limits))
        results = self.vm.run_steps(steps, files, stdin, env)
        compile_out: CompileOutput | None = None
        if lang.compiled:
            cres = results[0]
            compile_out = _compile_output(cres)
            if cres.exit_code != 0 or len(results) < 2:
                # As the namespaces backend reports it: the compiler's output, status compile_error.
                return _exec_result(run_id, cres, "compile_error", lang.name, version, "microvm", compile_out)
        res = results[-1]
        return _exec_result(run_id, res, self._status(res), lang.name, version, "microvm", compile_out)

    # -- sessions ----------------------------------------------------------------------------------

    def _session_dir(self, session_id: str) -> Path:
        if not session_id.startswith("sbs_") or not session_id[4:].isalnum():
            raise NotFoundError(
                f"no sandbox session '{session_id}'", fix="list sessions with `argosy sandbox ls`"
            )
        d = self.sessions_dir / session_id
        if not (d / "meta.json").exists():
            raise NotFoundError(
                f"no sandbox session '{session_id}' (expired or removed)",
                fix="create one with `argosy sandbox create`",
            )
        return d

    def _meta(self, d: Path) -> dict[str, Any]:
        return dict(json.loads((d / "meta.json").read_text()))

    def _info(self, d: Path) -> SessionInfo:
        meta = self._meta(d)
        count = size = 0
        for p in (d / "work").rglob("*"):
            with contextlib.suppress(OSError):
                st = p.lstat()
                if p.is_file() and not p.is_symlink():
                    count += 1
                    size += st.st_size
        return SessionInfo(files=count, bytes=size, **meta)

    def create_session(self, req: SessionCreate) -> SessionInfo:
        if req.ttl_s > self.config.session_ttl_max_s:
            raise SandboxRequestError(
                f"ttl_s={req.ttl_s:.0f} is above this node's maximum of {self.config.session_ttl_max_s:.0f} s",
                fix=f"ask for ttl_s <= {self.config.session_ttl_max_s:.0f}",
            )
        self.backend.ensure_base()
        self.sessions_dir.mkdir(exist_ok=True)
        self.sessions_dir.chmod(0o711)
        sid = new_id("sbs")
        d = self.sessions_dir / sid
        self.backend.make_dir(d, 0o711, sandbox_owned=False)
        self.backend.make_dir(d / "work", 0o700)
        now = self.clock.now()
        meta = {
            "id": sid,
            "created_at": now,
            "expires_at": now + req.ttl_s,
            "network": req.network,
            "memory_mb": req.memory_mb,
        }
        tmp = d / "meta.json.tmp"
        tmp.write_text(json.dumps(meta))
        tmp.replace(d / "meta.json")
        return self._info(d)

    def exec_session(self, session_id: str, req: SessionExec) -> ExecResult:
        d = self._session_dir(session_id)
        meta = self._meta(d)
        lang = self._language(req.language, None)
        limits = self._request_limits(lang, req, meta.get("memory_mb"))
        return self._stamp(self._exec_session(d, meta, lang, limits, req), limits)

    def _exec_session(
        self, d: Path, meta: dict[str, Any], lang: Language, limits: Limits, req: SessionExec
    ) -> ExecResult:
        stdin = req.stdin.encode() if req.stdin is not None else None
        with self.admission.slot():
            run_id = new_id("run")
            if req.code is not None:
                return self._run_language(
                    run_id,
                    lang,
                    {lang.spec.file: req.code.encode()},
                    limits,
                    req.args,
                    stdin,
                    meta["network"],
                    d / "work",
                )
            assert req.command
            prepared = self.backend.prepare(
                network=meta["network"], workdir=d / "work", tmpfs_mb=limits.tmpfs_mb, limits=limits
            )
            res = self._start(run_id, prepared, list(req.command) + list(req.args), limits, {}, stdin)
            return _exec_result(run_id, res, self._status(res), "command", "", self.backend.name)

    def get_session(self, session_id: str) -> SessionInfo:
        return self._info(self._session_dir(session_id))

    def put_file(self, session_id: str, path: str, data: bytes) -> None:
        d = self._session_dir(session_id)
        try:
            check_relative_path(path)
        except ValueError as exc:
            raise SandboxRequestError(str(exc), fix="give a path relative to the session's work dir") from exc
        write_inside(d / "work", path, data, self.backend._owner() if self.backend.is_root else None)

    def get_file(self, session_id: str, path: str) -> bytes:
        d = self._session_dir(session_id)
        try:
            check_relative_path(path)
        except ValueError as exc:
            raise SandboxRequestError(str(exc), fix="give a path relative to the session's work dir") from exc
        return read_inside(d / "work", path, MAX_DOWNLOAD_BYTES)

    def list_sessions(self) -> list[SessionInfo]:
        if not self.sessions_dir.exists():
            return []
        out = []
        for d in sorted(self.sessions_dir.iterdir()):
            with contextlib.suppress(OSError, ValueError):
                out.append(self._info(d))
        return out

    def delete_session(self, session_id: str) -> None:
        d = self._session_dir(session_id)
        shutil.rmtree(d, ignore_errors=True)

    # -- reaping -----------------------------------------------------------------------------------

    def reap(self) -> dict[str, list[str]]:
        """Kill runs past their lifetime, remove expired sessions and a crashed agent's leftovers."""
        now = self.clock.now()
        killed = []
        with self._lock:
            for run_id, entry in self._active.items():
                if not entry.reaped and now > entry.deadline:
                    entry.reaped = True
                    entry.prepared.kill()
                    killed.append(run_id)
        expired = []
        if self.sessions_dir.exists():
            for d in self.sessions_dir.iterdir():
                try:
                    meta = self._meta(d)
                except (OSError, ValueError):
                    continue
                if meta["expires_at"] <= now:
                    shutil.rmtree(d, ignore_errors=True)
                    expired.append(d.name)
        # Leftovers of an agent that crashed (run dirs, cgroups): not clock-driven, they are orphans.
        stale = self.backend.cleanup_stale()
        return {"runs": killed, "sessions": expired, "stale": stale}

    # -- doctor ------------------------------------------------------------------------------------

    def doctor(self) -> dict[str, Any]:
        return doctor(self.config, self.table)


def doctor(config: SandboxConfig, table: LanguageTable | None = None) -> dict[str, Any]:
    """Which backends and languages work on this node, and why not."""
    table = table or LanguageTable.load()
    out: dict[str, Any] = {"backends": {}, "languages": {}, "default_backend": config.backend}
    reg = backends()
    for name in reg.names():
        try:
            backend = reg.load(name)(config)
            checks = backend.checks()
            ok, why = backend.available()
        except Exception as exc:  # doctor reports every failure instead of stopping at the first
            out["backends"][name] = {"available": False, "reason": str(exc), "checks": []}
            continue
        out["backends"][name] = {
            "available": ok,
            "reason": why,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
        }
    for name in table.names():
        lang = table.get(name)
        path = lang.toolchain_path()
        entry: dict[str, Any] = {"toolchain": lang.spec.toolchain, "path": path, "compiled": lang.compiled}
        try:
            entry["version"] = lang.version() if path else None
        except Exception as exc:  # same: report, keep going
            entry["version"] = None
            entry["error"] = str(exc)
        entry["available"] = bool(path and entry.get("version"))
        out["languages"][name] = entry
    return out


def wait_for(predicate: Any, timeout: float) -> bool:
    """Poll `predicate` until true or `timeout` seconds (for pools filling in the background)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())
