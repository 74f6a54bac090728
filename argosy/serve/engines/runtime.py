"""Effectful helpers around a rendered `EngineCommand`: build a spec from settings, probe readiness."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from argosy.core import proc
from argosy.core.config import Settings
from argosy.core.errors import EngineError
from argosy.serve.engines.base import Device, EngineCommand, LoraSpec, ServingSpec


def spec_from_settings(
    settings: Settings,
    *,
    engine: str,
    model: str,
    served_name: str,
    port: int,
    host: str = "127.0.0.1",
    device: Device = "cpu",
    gpus: int = 1,
    lora: LoraSpec | None = None,
    extra_args: tuple[str, ...] = (),
) -> ServingSpec:
    """A `ServingSpec` with the engine's tunables (parallel, context, threads, dtype) from settings."""
    ll = settings.engine.llamacpp
    dtype = settings.engine.vllm.dtype if engine == "vllm" else "auto"
    extra = tuple(settings.engine.vllm.extra_args) + extra_args if engine == "vllm" else extra_args
    return ServingSpec(
        model=model,
        served_name=served_name,
        host=host,
        port=port,
        device=device,
        gpus=gpus,
        parallel=ll.parallel,
        context=ll.context,
        threads=ll.threads,
        dtype=dtype,
        lora=lora,
        extra_args=extra,
    )


def is_ready(cmd: EngineCommand, client: httpx.Client | None = None) -> bool:
    """One probe: health answers as expected and the served name is listed. Never raises."""
    own = client is None
    c = client or httpx.Client(timeout=2.0)
    try:
        r = c.get(cmd.base_url + cmd.ready.health_path)
        if r.status_code != cmd.ready.expect_status:
            return False
        if not cmd.ready.models_path:
            return True
        m = c.get(cmd.base_url + cmd.ready.models_path)
        if m.status_code != 200:
            return False
        ids = {d.get("id") for d in m.json().get("data", []) if isinstance(d, dict)}
        return not cmd.ready.served_name or cmd.ready.served_name in ids
    except (httpx.HTTPError, ValueError):
        return False
    finally:
        if own:
            c.close()


def wait_ready(
    cmd: EngineCommand,
    *,
    pid: int | None = None,
    timeout: float | None = None,
    log_path: Path | None = None,
    interval: float = 0.2,
) -> float:
    """Wait until `cmd`'s engine is ready; seconds waited. Raises EngineError with the log tail if
    the process (`pid`) exits first or the timeout passes."""
    budget = cmd.ready.timeout_s if timeout is None else timeout
    start = time.monotonic()
    with httpx.Client(timeout=2.0) as client:
        while True:
            if is_ready(cmd, client):
                return time.monotonic() - start
            if pid is not None and not proc.alive(pid):
                raise _failed(cmd, "exited before it was ready", log_path)
            if time.monotonic() - start > budget:
                raise _failed(cmd, f"was not ready after {budget:.0f} s", log_path)
            time.sleep(interval)


def _failed(cmd: EngineCommand, what: str, log_path: Path | None) -> EngineError:
    lines = proc.tail(log_path, 15) if log_path else []
    shown = ("\nlast log lines:\n  " + "\n  ".join(lines)) if lines else ""
    where = f"see the full log: {log_path}" if log_path else "run the command by hand to see its output"
    return EngineError(f"engine {cmd.engine} ({cmd.served_name} on {cmd.base_url}) {what}{shown}", fix=where)
