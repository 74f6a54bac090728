"""`argosy run` and `argosy sandbox create|exec|cp|rm|ls|doctor|build-image`.

With a server configured (ARGOSY_SERVER_URL / server.url) or a local one running, commands go
through its API; otherwise they run sandboxes on this machine directly (sessions are kept on disk
under the sandbox base dir, so `create` / `exec` / `rm` work across invocations either way).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from argosy.cli.output import check_format, emit_json, table
from argosy.core.errors import ArgosyError
from argosy.sandbox.models import ExecRequest, ExecResult, SessionCreate, SessionExec

console = Console(stderr=True, soft_wrap=True)

# File extension -> language name, for `argosy run FILE` without -l.
_EXTENSIONS = {
    ".py": "python", ".js": "node", ".mjs": "node", ".sh": "bash", ".rb": "ruby", ".go": "go",
    ".rs": "rust", ".c": "c", ".cpp": "cpp", ".cc": "cpp", ".cxx": "cpp", ".java": "java",
}  # fmt: skip


def _runner(local: bool):  # type: ignore[no-untyped-def]
    """The API when a server is configured or running; this machine otherwise (or with --local)."""
    if not local:
        from argosy.cli.connect import connect, healthy, running_local
        from argosy.core.config import load_settings

        settings = load_settings()
        running = running_local(settings)
        if settings.server.url or (running is not None and healthy(running.url)):
            from argosy.cli.sandbox_remote import RemoteRunner

            return RemoteRunner(connect(console, autostart=False))
    from argosy.sandbox.service import LocalRunner

    return LocalRunner()


def _exit_code(res: ExecResult) -> int:
    """What `argosy run` exits with: the program's code, 128+signal when killed (as a shell does)."""
    if res.exit_code is not None:
        return res.exit_code
    return 128 + (res.signal or 9)


def _stream_to_terminal(stream: str, chunk: bytes) -> None:
    out = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
    out.write(chunk)
    out.flush()


def _print_result(res: ExecResult, fmt: str, streamed: bool = False) -> None:
    if fmt == "json":
        emit_json(res.model_dump())
        return
    # Streamed runs printed their output as it came; the compiler's output is never streamed.
    if not streamed or res.status == "compile_error":
        sys.stdout.write(res.stdout)
        sys.stdout.flush()
        sys.stderr.write(res.stderr)
    notes = {
        "timed_out": "killed: time limit reached",
        "oom_killed": "killed: memory limit reached",
        "output_limit": "killed: output above the cap (truncated)",
        "compile_error": "compile error",
    }
    if res.status in notes:
        console.print(f"[bold red]{notes[res.status]}[/] ({res.language}, run {res.run_id})", highlight=False)
    elif res.truncated:
        console.print("[yellow]output truncated at the cap[/]")


def register(app: typer.Typer) -> None:
    @app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
    def run(
        ctx: typer.Context,
        file: Path | None = typer.Argument(None, help="Source file to run (or - for standard input)."),
        code: str | None = typer.Option(None, "-c", "--code", help="Code to run instead of a file."),
        language: str | None = typer.Option(
            None, "-l", "--language", help="python, node, bash, ruby, go, rust, c, cpp, java."
        ),
        timeout: float | None = typer.Option(None, "--timeout", help="Seconds before the run is killed."),
        memory: int | None = typer.Option(None, "--memory", help="Memory limit in MB."),
        cpus: float | None = typer.Option(None, "--cpus", help="CPU cores (fractions allowed)."),
        network: bool = typer.Option(False, "--network", help="Allow network access (off by default)."),
        stdin_file: Path | None = typer.Option(
            None, "--stdin", help="File to feed to the program's standard input."
        ),
        max_output: int | None = typer.Option(
            None, "--max-output", help="Bytes of stdout+stderr kept before the run is stopped."
        ),
        local: bool = typer.Option(
            False, "--local", help="Run on this machine even when a server is configured."
        ),
        output: str = typer.Option(
            "text", "--output", "-o", help="text or json (the API's execute response)."
        ),
    ) -> None:
        """Run code in a sandbox: `argosy run hello.py`, `argosy run -l ruby -c 'puts 1'`. Extra args go to the program."""
        check_format(output, ("text", "json"))
        if (file is None) == (code is None):
            raise ArgosyError(
                "give a FILE or -c CODE (one of them)",
                fix="argosy run script.py   or   argosy run -c 'print(1)'",
            )
        if file is not None:
            if str(file) == "-":
                code = sys.stdin.read()
            else:
                try:
                    code = file.read_text()
                except OSError as exc:
                    raise ArgosyError(f"cannot read {file}: {exc.strerror}", fix="check the path") from exc
                language = language or _EXTENSIONS.get(file.suffix.lower())
                if language is None:
                    raise ArgosyError(f"cannot tell the language of {file.name}", fix="pass -l LANGUAGE")
        req = ExecRequest(
            code=code,
            language=language or "python",
            args=list(ctx.args),
            stdin=stdin_file.read_text() if stdin_file else None,
            timeout_ms=int(timeout * 1000) if timeout else None,
            memory_mb=memory,
            cpu_count=cpus,
            network=network,
            max_output_bytes=max_output,
        )
        streamed = output == "text"
        res = _runner(local).execute(req, on_output=_stream_to_terminal if streamed else None)
        _print_result(res, output, streamed)
        # sys.exit, not typer.Exit: the app runs with standalone_mode=False, which drops Exit codes.
        sys.exit(_exit_code(res))

    sandbox = typer.Typer(
        help="Sandbox sessions (state kept between execs) and node checks.", no_args_is_help=True
    )
    app.add_typer(sandbox, name="sandbox")

    @sandbox.command("create")
    def create(
        ttl: float = typer.Option(600, "--ttl", help="Seconds until the session is removed."),
        network: bool = typer.Option(False, "--network", help="Allow network access in this session."),
        memory: int | None = typer.Option(None, "--memory", help="Memory limit in MB for each exec."),
        local: bool = typer.Option(
            False, "--local", help="On this machine even when a server is configured."
        ),
        output: str = typer.Option("text", "--output", "-o", help="text or json."),
    ) -> None:
        """Create a session; prints its id."""
        info = _runner(local).create_session(SessionCreate(ttl_s=ttl, network=network, memory_mb=memory))
        if output == "json":
            emit_json(info.model_dump())
        else:
            typer.echo(info.id)

    @sandbox.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def exec_(
        ctx: typer.Context,
        session_id: str = typer.Argument(..., help="Session id (from `argosy sandbox create`)."),
        code: str | None = typer.Option(None, "-c", "--code", help="Code to run in --language."),
        language: str = typer.Option("python", "-l", "--language"),
        timeout: float | None = typer.Option(None, "--timeout", help="Seconds."),
        local: bool = typer.Option(False, "--local"),
        output: str = typer.Option("text", "--output", "-o", help="text or json."),
    ) -> None:
        """Run code (-c) or a command (after --) in a session's work dir: `argosy sandbox exec ID -- ls -la`."""
        check_format(output, ("text", "json"))
        command = list(ctx.args) or None
        if (code is None) == (command is None):
            raise ArgosyError(
                "give -c CODE or a command after --", fix="argosy sandbox exec ID -- python3 main.py"
            )
        req = SessionExec(
            code=code, language=language, command=command, timeout_ms=int(timeout * 1000) if timeout else None
        )
        res = _runner(local).exec_session(session_id, req)
        _print_result(res, output)
        # sys.exit, not typer.Exit: the app runs with standalone_mode=False, which drops Exit codes.
        sys.exit(_exit_code(res))

    @sandbox.command("cp")
    def cp(
        src: str = typer.Argument(..., help="LOCAL_PATH or SESSION:PATH"),
        dst: str = typer.Argument(..., help="SESSION:PATH or LOCAL_PATH"),
        local: bool = typer.Option(False, "--local"),
    ) -> None:
        """Copy a file into (`cp data.csv sbs_x:data.csv`) or out of (`cp sbs_x:out.txt .`) a session."""
        runner = _runner(local)
        if src.startswith("sbs_") and ":" in src:
            sid, _, path = src.partition(":")
            data = runner.get_file(sid, path)
            target = Path(dst)
            if target.is_dir():
                target = target / Path(path).name
            target.write_bytes(data)
            console.print(f"{len(data)} bytes -> {target}")
        elif dst.startswith("sbs_") and ":" in dst:
            sid, _, path = dst.partition(":")
            source = Path(src)
            try:
                data = source.read_bytes()
            except OSError as exc:
                raise ArgosyError(f"cannot read {source}: {exc.strerror}", fix="check the path") from exc
            runner.put_file(sid, path or source.name, data)
            console.print(f"{len(data)} bytes -> {sid}:{path or source.name}")
        else:
            raise ArgosyError(
                "one side of `cp` must be SESSION:PATH", fix="argosy sandbox cp notes.txt sbs_...:notes.txt"
            )

    @sandbox.command("rm")
    def rm(
        session_ids: list[str] = typer.Argument(...), local: bool = typer.Option(False, "--local")
    ) -> None:
        """Remove sessions and their files."""
        runner = _runner(local)
        for sid in session_ids:
            runner.delete_session(sid)
            typer.echo(f"removed {sid}")

    @sandbox.command("ls")
    def ls(
        local: bool = typer.Option(False, "--local"),
        runs: bool = typer.Option(False, "--runs", help="Recent runs (from the server's store) instead."),
        limit: int = typer.Option(50, "--limit", help="With --runs: how many, newest first."),
        node: str | None = typer.Option(None, "--node", help="With --runs: only this node's."),
        output: str = typer.Option("table", "--output", "-o"),
    ) -> None:
        """List sessions, or with --runs the runs the server brokered (node, limits, outcome, cost)."""
        check_format(output)
        import time

        if runs:
            runner = _runner(local)
            if not hasattr(runner, "list_runs"):
                raise ArgosyError(
                    "run history is kept by the Argosy server, and none is configured or running",
                    fix="start one (`argosy server start`) and run sandboxes through it",
                )
            items = runner.list_runs(limit, node)
            if output == "json":
                emit_json(items)
                return
            rows = [
                [
                    r["id"],
                    r["node"] or "server",
                    r["language"],
                    r["status"],
                    r["exit_code"] if r["exit_code"] is not None else f"sig {r['signal']}",
                    f"{r['duration_ms']:.0f}",
                    f"{(r['limits'] or {}).get('cpu_count', '-')}",
                    f"{(r['limits'] or {}).get('memory_mb', '-')}",
                    f"{r['cost_usd']:.6f}",
                ]
                for r in items
            ]
            table(None, ["run", "node", "language", "status", "exit", "ms", "cpus", "MB", "cost $"], rows)
            return
        infos = _runner(local).list_sessions()
        if output == "json":
            emit_json([i.model_dump() for i in infos])
            return
        now = time.time()
        rows = [[i.id, f"{max(0, i.expires_at - now):.0f}s", i.network, i.files, i.bytes] for i in infos]
        table(None, ["id", "expires in", "network", "files", "bytes"], rows)

    @sandbox.command("doctor")
    def doctor(
        local: bool = typer.Option(
            True, "--local/--server", help="Check this machine (default) or the server's."
        ),
        output: str = typer.Option("table", "--output", "-o"),
    ) -> None:
        """Which isolation backends and languages work on this node, and why not."""
        check_format(output)
        if local:
            from argosy.sandbox.config import SandboxConfig
            from argosy.sandbox.service import doctor as run_doctor

            report = run_doctor(SandboxConfig.from_env())
        else:
            report = _runner(False).doctor()
        if output == "json":
            emit_json(report)
            return
        if local:
            console.print(
                "this machine's sandbox support; `argosy sandbox doctor --server` says where the server runs them"
            )
        if "runs_on" in report:  # the server's answer: where its sandboxes run
            Console().print(f"[bold]sandboxes run[/] {report['runs_on']}", highlight=False)
            for nid, n in (report.get("nodes") or {}).items():
                a = n.get("agent", {})
                state = "[red]down[/]" if a.get("down") or "error" in n else "[green]up[/]"
                Console().print(
                    f"  node {nid} {a.get('url', '')}: {state}, {a.get('inflight', 0)} in flight, "
                    f"{a.get('max_concurrent', '?')} slots + {a.get('max_queue', '?')} queue"
                    + (f" ({n['error']})" if "error" in n else ""),
                    highlight=False,
                )
        for name, b in report["backends"].items():
            mark = "[green]available[/]" if b["available"] else f"[red]unavailable[/]: {escape(b['reason'])}"
            Console().print(
                f"[bold]backend {name}[/]{' (default)' if name == report['default_backend'] else ''}: {mark}",
                highlight=False,
            )
            for c in b["checks"]:
                # Details quote tool output (`ruby --version` ends in "[x86_64-linux-gnu]"): not markup.
                Console().print(
                    f"  {'ok ' if c['ok'] else 'NO '} {c['name']}: {escape(str(c['detail']))}",
                    highlight=False,
                )
        rows = [
            [
                n,
                "yes" if x["available"] else "no",
                x.get("version") or x.get("error") or "not installed",
                x["path"] or "-",
            ]
            for n, x in report["languages"].items()
        ]
        table("languages", ["language", "ok", "version", "toolchain"], rows)

    @sandbox.command("build-image")
    def build_image() -> None:
        """Build the microVM image (kernel, initramfs, a read-only rootfs with every language's
        toolchain found on this node) for the `microvm` backend and boot it once to check."""
        import time

        from argosy.sandbox.config import SandboxConfig
        from argosy.sandbox.microvm import MicroVMBackend

        vm = MicroVMBackend(SandboxConfig.from_env())
        usable = [v.name for v in vm.candidates() if vm.precheck(v)[0]]
        if not usable:
            why = "; ".join(f"{v.name}: {vm.precheck(v)[1]}" for v in vm.candidates())
            raise ArgosyError(
                f"no VMM can run the microVM here ({why})",
                fix="apt-get install -y qemu-system-x86 busybox-static (or set vmm in the sandbox config)",
            )
        log: list[str] = []
        t0 = time.monotonic()
        with console.status("building the microVM image (a rebuild of the rootfs takes ~30 s)…"):
            vm.build_image(log)
        for line in log:
            console.print(escape(line), highlight=False)
        parts = (vm.kernel, vm.vmlinux, vm.initramfs, vm.rootfs)
        total = sum(p.stat().st_size for p in parts if p.exists())
        console.print(
            f"image: {vm.image_dir}, {total / 2**20:.0f} MiB, built in {time.monotonic() - t0:.1f} s",
            highlight=False,
        )
        with console.status(f"booting it once under {', then '.join(usable)} until one works…"):
            smoke = vm.smoke()
        tried = dict(smoke.get("vmms") or {})  # type: ignore[call-overload]
        # In order of preference: each VMM's smoke boot, or why it was not tried.
        for name, _, why in vm.choose().considered:
            rec = tried.get(name)
            if rec is None:
                console.print(f"  {name}: not tried: {escape(why)}", highlight=False)
                continue
            mark = "[green]ok[/]" if rec.get("ok") else "[red]failed[/]"
            detail = "ran a job" if rec.get("ok") else escape(str(rec.get("error")))
            console.print(f"  {name}: {mark} after {rec.get('seconds')} s: {detail}", highlight=False)
        if not smoke.get("ok"):
            raise ArgosyError(
                f"the image is built ({vm.image_dir}) but the VM did not run a job: {smoke.get('error')} "
                f"after {smoke.get('seconds')} s",
                fix="the microvm backend stays off on this node; use the namespaces backend (the default)",
            )
        console.print(f"[green]ok[/]: booted under {smoke['vmm']} and ran a job in {smoke['seconds']} s")
