"""Choosing where a deployment runs when the user names no provider: catalog placement over the
offerings of providers that can run replicas here and now (their preflight passes)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from argosy.catalog import load_offerings, size_model
from argosy.catalog.sizing import Requirement
from argosy.catalog.types import Offering
from argosy.core.config import Settings
from argosy.core.errors import ArgosyError
from argosy.placement import Placement, PlacementRequest, place
from argosy.providers.base import Instances, Offerings, Preflight
from argosy.providers.registry import PROVIDERS

# The fake provider's made-up prices must never win a real plan: it is used only when asked for.
NEVER_IMPLICIT = frozenset({"fake"})


def requirement_for(model: str) -> Requirement | None:
    """Size a local HF model dir (its config.json); a bare GGUF file carries no config to size from."""
    p = Path(model)
    if p.is_file() and p.suffix == ".gguf":
        return None
    return size_model(str(p))


def usable_providers(
    settings: Settings, provider_for: Callable[[str], Any]
) -> tuple[list[str], dict[str, str]]:
    """Providers that can run replicas now (Instances + a passing preflight), and why the others cannot."""
    usable, why_not = [], {}
    for name in PROVIDERS.names():
        if name in NEVER_IMPLICIT:
            continue
        try:
            p = provider_for(name)
        except ArgosyError as exc:
            why_not[name] = exc.message
            continue
        if not isinstance(p, Instances):
            continue
        failed = [c for c in p.preflight() if not c.ok] if isinstance(p, Preflight) else []
        if failed:
            why_not[name] = f"{failed[0].name}: {failed[0].detail}"
            continue
        usable.append(name)
    return usable, why_not


def place_deployment(
    model: str,
    gpu: str | None,
    settings: Settings,
    provider_for: Callable[[str], Any],
    only: str | None = None,
    objective: str = "cost",
) -> tuple[Placement, list[Offering], dict[str, str]]:
    """The placement for a deployment, its ordered offerings (choice first), and the skipped providers.

    With `only`, placement is restricted to that provider, even if its preflight fails: a dry run
    still shows the exact payload, and a real deploy fails later with the provider's own fix.
    """
    if only:
        usable, why_not = [only], {}
    else:
        usable, why_not = usable_providers(settings, provider_for)
    live: list[Offering] = []
    for name in usable:
        p = provider_for(name)
        if isinstance(p, Offerings):
            try:
                live.extend(p.offerings())
            except ArgosyError as exc:
                # No credentials or no network: the catalog snapshot still prices this provider.
                why_not[name] = f"live offerings unavailable ({exc.message}); using the catalog snapshot"
    offerings = [
        o for o in load_offerings(settings, live=live) if o.provider in usable and o.kind != "serverless"
    ]
    request = PlacementRequest(requirement=requirement_for(model), gpu=gpu, providers=tuple(usable))
    placement = place(request, offerings, objective)
    ordered = [placement.choice.offering, *[c.offering for c in placement.fallbacks]]
    return placement, ordered, why_not
