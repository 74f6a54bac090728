"""Between deployments and engines: build a ServingSpec from a deployment or workload, render or launch it."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from argosy.core.config import Settings
from argosy.core.errors import ArgosyError, did_you_mean
from argosy.fleet.agent import Launch
from argosy.serve.engines.base import LoraSpec, ServingSpec
from argosy.serve.engines.registry import engine_names as _engine_names
from argosy.serve.engines.registry import get_engine
from argosy.serve.engines.runtime import spec_from_settings

# `--engine-arg KEY=VALUE` keys a deployment may set, and their types.
ENGINE_ARGS: dict[str, type] = {"parallel": int, "context": int, "threads": int, "dtype": str, "gpus": int}


def engine_names() -> list[str]:
    return _engine_names()


def parse_engine_args(args: dict[str, Any]) -> dict[str, Any]:
    """Strict: an unknown key is an error naming the nearest valid one."""
    out: dict[str, Any] = {}
    for k, v in args.items():
        if k not in ENGINE_ARGS:
            near = did_you_mean(k, ENGINE_ARGS)
            raise ArgosyError(
                f"unknown engine argument '{k}'" + (f"; did you mean '{near}'?" if near else ""),
                fix=f"valid engine arguments: {', '.join(ENGINE_ARGS)}",
            )
        try:
            out[k] = ENGINE_ARGS[k](v)
        except (TypeError, ValueError) as exc:
            raise ArgosyError(f"engine argument '{k}' must be {ENGINE_ARGS[k].__name__}, not {v!r}") from exc
    return out


def build_spec(
    engine: str,
    model: str,
    served_name: str,
    args: dict[str, Any],
    settings: Settings,
    port: int,
    host: str = "127.0.0.1",
    lora: str | None = None,
) -> ServingSpec:
    """The engine's spec from settings (spec_from_settings), with the deployment's engine args on top
    (and the LoRA adapter of a fine-tune, if the deployment serves one)."""
    spec = spec_from_settings(
        settings, engine=engine, model=model, served_name=served_name, port=port, host=host
    )
    spec = replace(spec, **parse_engine_args(args))
    return replace(spec, lora=LoraSpec(path=lora)) if lora else spec


def engine_plan(req: Any, settings: Settings) -> dict[str, Any]:
    """The engine command a replica would run, rendered without touching the node (for plans)."""
    engine = get_engine(req.engine)
    spec = build_spec(
        req.engine, req.model, req.name, req.engine_args, settings, port=8080, lora=getattr(req, "lora", None)
    )
    engine.validate(spec)
    cmd = engine.command(spec)
    return {**cmd.to_dict(), "shell": cmd.shell(), "port": "chosen by the agent at start"}


def prepare_workload(
    workload: dict[str, Any],
    port: int,
    settings: Settings,
    progress: Callable[[str], None],
    host: str = "127.0.0.1",
) -> Launch:
    """Node-side: obtain the engine and convert the model (cached), then render the real command."""
    engine = get_engine(workload["engine"])
    spec = build_spec(
        workload["engine"],
        workload["model"],
        workload["served_name"],
        workload.get("args", {}),
        settings,
        port,
        host,
        lora=workload.get("lora"),
    )
    engine.validate(spec)

    def report(message: str, fraction: float | None = None) -> None:
        progress(message if fraction is None else f"{message} ({fraction:.0%})")

    prepared = engine.prepare(spec, settings, report)
    cmd = engine.command(spec, prepared)
    return Launch(argv=list(cmd.argv), env={**os.environ, **cmd.env}, health_url=cmd.health_url)
