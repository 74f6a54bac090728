"""`argosy router`: run the OpenAI-compatible router as its own process."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Annotated, Any

import typer

from argosy.core.errors import ConfigError


def _run(overrides: dict[str, Any], config_path: str | None) -> None:
    # Imported here so `argosy --help` does not pay for the router's imports.
    from argosy.core.log import setup_logging
    from argosy.router.app import install_uvloop, serve
    from argosy.router.config import load_router_config
    from argosy.router.policies import POLICIES

    config = load_router_config(config_path, overrides)
    if config.policy not in POLICIES.names():
        from argosy.core.errors import unknown_name

        raise unknown_name(
            "routing policy", config.policy, POLICIES.names(), fix="pass --policy with a known name"
        )
    setup_logging(os.environ.get("ARGOSY_LOG_LEVEL", "INFO"), "router")
    install_uvloop()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await serve(config, stop)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {config.listen}: {exc.strerror or exc}",
                fix="pick a free port with --listen HOST:PORT",
            ) from exc

    asyncio.run(main())


def register(app: typer.Typer) -> None:
    @app.command("router")
    def router(
        listen: Annotated[
            str | None, typer.Option(help="HOST:PORT to listen on (default 127.0.0.1:8780).")
        ] = None,
        backend: Annotated[
            list[str] | None, typer.Option(help="A primary backend URL; repeat for more.")
        ] = None,
        fallback: Annotated[
            list[str] | None, typer.Option(help="A fallback (serverless) backend URL.")
        ] = None,
        policy: Annotated[
            str | None, typer.Option(help="Routing policy (default least-outstanding).")
        ] = None,
        api_key: Annotated[
            list[str] | None, typer.Option(help="A client API key; /v1 then needs one.")
        ] = None,
        admin_token: Annotated[
            str | None,
            typer.Option(envvar="ARGOSY_ROUTER_ADMIN_TOKEN", help="Bearer token for /router/* admin API."),
        ] = None,
        config: Annotated[str | None, typer.Option(help="A router.yaml; flags override its keys.")] = None,
        queue_timeout: Annotated[
            float | None, typer.Option(help="Seconds a request waits for a usable backend before 503.")
        ] = None,
        access_log: Annotated[bool, typer.Option(help="Log one JSON line per request.")] = False,
        metrics_token: Annotated[
            str | None,
            typer.Option(
                envvar="ARGOSY_ROUTER_METRICS_TOKEN",
                help="Bearer token that may read /metrics (and nothing else).",
            ),
        ] = None,
        metrics_auth: Annotated[
            str | None,
            typer.Option(help="auto (default: open only on a loopback listen), on or off, for /metrics."),
        ] = None,
    ) -> None:
        """Run the OpenAI-compatible router in front of backends (spot replicas, serverless fallbacks)."""
        overrides: dict[str, Any] = {}
        if listen is not None:
            overrides["listen"] = listen
        if backend or fallback:
            overrides["backends"] = [{"url": u, "tier": "primary"} for u in backend or []] + [
                {"url": u, "tier": "fallback"} for u in fallback or []
            ]
        if policy is not None:
            overrides["policy"] = policy
        if api_key:
            overrides["api_keys"] = [{"name": f"cli-{i + 1}", "key": k} for i, k in enumerate(api_key)]
        if admin_token:
            overrides["admin_token"] = admin_token
        if access_log:
            overrides["access_log"] = True
        if metrics_token:
            overrides["metrics_token"] = metrics_token
        if metrics_auth is not None:
            overrides["metrics_auth"] = metrics_auth
        if queue_timeout is not None:
            overrides["limits"] = {"queue_timeout_s": queue_timeout}
        _run(overrides, config)
