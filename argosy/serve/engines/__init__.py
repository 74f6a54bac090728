"""Inference engines: render a command from a serving spec (pure), prepare binaries/models (node-side)."""

from argosy.serve.engines.base import (
    Engine,
    EngineCommand,
    LoraSpec,
    Prepared,
    Progress,
    ReadinessCheck,
    ServingSpec,
    no_progress,
)
from argosy.serve.engines.registry import ENGINES, default_engine_name, engine_names, get_engine
from argosy.serve.engines.runtime import is_ready, spec_from_settings, wait_ready

__all__ = [
    "ENGINES",
    "Engine",
    "EngineCommand",
    "LoraSpec",
    "Prepared",
    "Progress",
    "ReadinessCheck",
    "ServingSpec",
    "default_engine_name",
    "engine_names",
    "get_engine",
    "is_ready",
    "no_progress",
    "spec_from_settings",
    "wait_ready",
]
