"""`argosy server [start|stop|status]` and `argosy agent`."""

from __future__ import annotations

import os

import typer
from rich.console import Console

from argosy.core import proc
from argosy.core.config import load_settings
from argosy.core.errors import ArgosyError

console = Console(stderr=True, soft_wrap=True)


def register(app: typer.Typer) -> None:
    server = typer.Typer(help="Run or manage the control-plane server.", invoke_without_command=True)

    @server.callback()
    def run_server(
        ctx: typer.Context,
        host: str = typer.Option(None, help="Address to listen on (default from settings: 127.0.0.1)."),
        port: int = typer.Option(None, help="Port to listen on (default 8750)."),
    ) -> None:
        """With no subcommand: run the server in the foreground."""
        if ctx.invoked_subcommand is not None:
            ctx.obj = {"host": host, "port": port}
            return
        from argosy.server.run import serve

        settings = load_settings()
        serve(settings, host or settings.server.host, port or settings.server.port)

    @server.command("start")
    def start(
        host: str = typer.Option(None, help="Address to listen on."),
        port: int = typer.Option(None, help="Port to listen on."),
    ) -> None:
        """Start the local server in the background."""
        from argosy.cli.connect import running_local, start_local

        settings = load_settings()
        local = running_local(settings)
        if local is not None:
            console.print(f"already running at {local.url} (pid {local.pid})")
            return
        start_local(settings, console, host, port)

    @server.command("stop")
    def stop() -> None:
        """Stop the local server (its routers and local agent stop with it; deployments resume at next start)."""
        from argosy.cli.connect import running_local

        settings = load_settings()
        local = running_local(settings)
        if local is None:
            console.print("no local server is running")
            return
        with console.status(f"stopping the server (pid {local.pid})…"):
            proc.stop(local.pid, timeout=40)
        console.print("stopped")

    @server.command("status")
    def status() -> None:
        """Is the local server running, and where."""
        from argosy.cli.connect import healthy, running_local

        settings = load_settings()
        local = running_local(settings)
        if local is None:
            console.print("not running")
            raise typer.Exit(1)
        state = "healthy" if healthy(local.url) else "not answering"
        typer.echo(f"running at {local.url} (pid {local.pid}, {state}); home {settings.home}")

    app.add_typer(server, name="server")

    def _spot_notice(settings):  # type: ignore[no-untyped-def]
        # The bootstrap writes ARGOSY_PROVIDER and, on spot machines, ARGOSY_PREEMPTIBLE=1 into the
        # agent's environment: poll that provider's reclaim notice if it has one (SpotNotice).
        if os.environ.get("ARGOSY_PREEMPTIBLE") != "1" or not os.environ.get("ARGOSY_PROVIDER"):
            return None
        from argosy.providers.preemption import spot_notice_poller

        return spot_notice_poller(os.environ["ARGOSY_PROVIDER"], settings)

    @app.command("agent")
    def agent(
        server_url: str = typer.Option(..., "--server", help="The Argosy server's URL."),
        token: str = typer.Option(
            None, "--token", envvar="ARGOSY_AGENT_TOKEN", help="This node's agent token."
        ),
        name: str = typer.Option(None, "--name", help="Node name shown in listings."),
        address: str = typer.Option(
            "127.0.0.1", "--address", help="Address the server reaches this node's engines at."
        ),
        role: list[str] = typer.Option(
            [], "--role", help="Extra role of this node: `sandbox` runs the server's sandboxes here."
        ),
        sandbox_port: int = typer.Option(
            0, "--sandbox-port", help="Port of the sandbox endpoint (with --role sandbox; 0: a free one)."
        ),
    ) -> None:
        """Run the node agent: register, heartbeat, and run the workloads the server assigns."""
        from argosy.core.log import setup_logging
        from argosy.fleet.agent import Agent
        from argosy.serve.engine_glue import prepare_workload

        if not token:
            raise ArgosyError("the agent needs a token", fix="pass --token or set ARGOSY_AGENT_TOKEN")
        settings = load_settings()
        setup_logging(settings.log_level, "agent")
        os.makedirs(settings.home / "agent", exist_ok=True)

        def prepare(spec, port, progress):  # type: ignore[no-untyped-def]
            if spec.get("kind") == "train":  # a fine-tuning run: no engine, runs to completion
                from argosy.train.workload import prepare_train

                # A node apart from the server fetches inputs and uploads output with its key.
                return prepare_train(spec, progress, settings.home, server_url, token)
            return prepare_workload(spec, port, settings, progress, host=address)

        unknown = sorted(set(role) - {"sandbox"})
        if unknown:
            raise ArgosyError(f"unknown agent role '{unknown[0]}'", fix="the roles are: sandbox")
        service = None
        if "sandbox" in role:
            from argosy.cli.sandbox_agent import SandboxService

            holder: list[Agent] = []
            service = SandboxService(
                address, sandbox_port, node=lambda: holder[0].node_id if holder else None
            )
            service.start()
        a = Agent(
            server_url,
            token,
            settings,
            prepare,
            name=name,
            host=address,
            roles=tuple(sorted(set(role))),
            services=service.services if service is not None else None,
            spot_notice=_spot_notice(settings),
        )
        if service is not None:
            holder.append(a)
        try:
            a.run()
        finally:
            if service is not None:
                service.close()
