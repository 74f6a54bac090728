"""Trainer backends by name: `hf` (transformers + PEFT, CPU or GPU) and `unsloth` (NVIDIA GPUs).

Add one with a line here or an `argosy.train_backends` entry point. Backend modules import torch
only inside their methods, so the control plane can list and check backends without the extra.
"""

from __future__ import annotations

from argosy.core.registry import Entry, Registry
from argosy.train.backends.base import Backend

BACKENDS = Registry(
    kind="trainer backend",
    entry_point_group="argosy.train_backends",
    entries={
        "hf": Entry(
            "argosy.train.backends.hf:HfBackend",
            extra="train",
            summary="transformers + PEFT with Argosy's own loop (CPU or GPU)",
        ),
        "unsloth": Entry(
            "argosy.train.backends.unsloth:UnslothBackend",
            extra="train",
            summary="Unsloth's fused kernels (needs an NVIDIA GPU and `pip install unsloth`)",
        ),
    },
)


def get_backend(name: str) -> Backend:
    """An instance of backend `name`; unknown names get a did-you-mean error."""
    cls = BACKENDS.load(name)
    return cls()  # type: ignore[no-any-return]


def backend_names() -> list[str]:
    return BACKENDS.names()
