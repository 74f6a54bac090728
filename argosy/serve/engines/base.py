"""The inference-engine interface: a pure command renderer plus an effectful, node-side `prepare`.

An engine turns a `ServingSpec` (what to serve, where, how) into an `EngineCommand` (argv, env,
health check). Rendering is a pure function of its inputs so it can be unit-tested byte for byte,
printed in `--dry-run` plans, and rendered for a remote node that has not got anything yet: with no
`Prepared` it uses the conventional paths an Argosy node image uses.

`prepare` runs on the node that will serve (the agent calls it): it obtains the engine binary and
converts the model, both cached, and returns a `Prepared` that `command` turns into the real argv.

    engine = get_engine("llamacpp")
    prepared = engine.prepare(spec, settings, progress)   # node-side, slow the first time
    cmd = engine.command(spec, prepared)                   # pure
    proc.spawn(list(cmd.argv), log, env={**os.environ, **cmd.env})
    wait_ready(cmd, pid=..., timeout=..., log_path=log)
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from argosy.core.config import Settings
from argosy.core.errors import ArgosyError

Device = Literal["cpu", "gpu"]

# Progress callback: a short human message, and optionally a fraction done (0..1) when known.
Progress = Callable[[str, float | None], None]


def no_progress(message: str, fraction: float | None = None) -> None:
    """A `Progress` that shows nothing (library callers that do not care)."""


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA adapter to serve on top of the base model."""

    path: str  # HF PEFT adapter dir (vLLM) or a GGUF adapter / PEFT dir (llama.cpp converts it)
    name: str | None = None  # name clients ask for; defaults to the spec's served name
    rank: int = 8  # vLLM needs the maximum rank up front


@dataclass(frozen=True)
class ServingSpec:
    """What to serve and how. Everything `command` needs, nothing effectful.

    `model` is an HF-format model dir, a `.gguf` file, or (vLLM on GPU nodes) a hub id the node
    can fetch itself.
    """

    model: str
    served_name: str
    host: str = "127.0.0.1"
    port: int = 8080
    device: Device = "cpu"
    gpus: int = 1  # tensor-parallel size on GPU nodes
    parallel: int = 4  # concurrent sequences (llama.cpp slots / vLLM max-num-seqs)
    context: int = 8192  # total context (llama.cpp splits it across slots; vLLM max-model-len)
    threads: int | None = None  # CPU threads (None: the engine's default)
    dtype: str = "auto"
    lora: LoraSpec | None = None
    extra_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # extra environment for the engine process

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ReadinessCheck:
    """How to tell that a started engine is ready to answer requests.

    Ready means: GET `health_path` answers `expect_status`, and GET `models_path` lists
    `served_name` (llama-server answers /health 503 while loading, vLLM refuses connections).
    """

    health_path: str = "/health"
    expect_status: int = 200
    models_path: str = "/v1/models"
    served_name: str = ""
    timeout_s: float = 120.0  # a sensible start-up budget for this engine on this device


@dataclass(frozen=True)
class EngineCommand:
    """A rendered engine invocation: run `argv` with `env` added to the environment."""

    engine: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    base_url: str
    ready: ReadinessCheck
    served_name: str
    notes: tuple[str, ...] = ()

    @property
    def health_path(self) -> str:
        return self.ready.health_path

    @property
    def health_url(self) -> str:
        return self.base_url + self.ready.health_path

    def shell(self) -> str:
        """One shell line (env assignments, then argv), for plans, logs and cloud-init."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        line = shlex.join(self.argv)
        return f"{env} {line}" if env else line

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "argv": list(self.argv),
            "env": dict(sorted(self.env.items())),
            "base_url": self.base_url,
            "served_name": self.served_name,
            "ready": asdict(self.ready),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Prepared:
    """What `prepare` produced on the node, for `command` to use.

    `executable` is the engine binary (llama-server) or the Python interpreter (vLLM), `model` the
    path the engine loads (a GGUF file for llama.cpp, an HF dir or hub id for vLLM), `lora` the
    adapter in the engine's format.
    """

    executable: str
    model: str
    lora: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    info: tuple[tuple[str, str], ...] = field(default=())  # e.g. ("binary_version", "0.3.36")


@runtime_checkable
class Engine(Protocol):
    name: str
    summary: str

    def command(self, spec: ServingSpec, prepared: Prepared | None = None) -> EngineCommand:
        """Render the invocation. Pure. Without `prepared`, uses conventional node paths."""
        ...

    def prepare(self, spec: ServingSpec, settings: Settings, progress: Progress = no_progress) -> Prepared:
        """Node-side: obtain the binary and convert the model (cached). Effectful, may take minutes."""
        ...

    def validate(self, spec: ServingSpec) -> None:
        """Raise an ArgosyError (with a fix) for a spec this engine cannot serve. Pure."""
        ...

    def cleanup(self, prepared: Prepared) -> None:
        """Node-side, after the engine process has stopped: remove per-run files `prepare` made."""
        ...


def check_common(spec: ServingSpec) -> None:
    """Checks every engine shares; pure (no filesystem access)."""
    if not spec.served_name:
        raise ArgosyError("the served model name is empty", fix="pass a name, e.g. --name tiny")
    if not 0 < spec.port < 65536:
        raise ArgosyError(f"port {spec.port} is out of range", fix="use a port between 1 and 65535")
    if spec.parallel < 1:
        raise ArgosyError(
            f"parallel must be at least 1 (got {spec.parallel})", fix="use --parallel 1 or more"
        )
    if spec.context < 256:
        raise ArgosyError(f"context {spec.context} is too small", fix="use a context of 256 tokens or more")


def require_model_path(model: str) -> Path:
    """The model path as a Path, or a clear error if it does not exist (effectful: node-side only)."""
    path = Path(model).expanduser()
    if not path.exists():
        raise ArgosyError(
            f"model path {path} does not exist",
            fix="check the path, or make a test model with: argosy model make-tiny " + shlex.quote(str(path)),
        )
    return path
