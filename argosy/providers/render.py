"""Printing a Plan for `--dry-run`: the exact payload, the rendered files, the price and the reason.

Pure: no provider is called. A dry run has no node to register, so callers pass `DRY_RUN_TOKEN` as
the request's agent token; a real token is never printed (it is replaced if passed in `secrets`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from argosy.providers.base import Plan

DRY_RUN_TOKEN = "dry-run-token-issued-at-provision"


def plan_text(plan: Plan, *, placement_reason: str = "", secrets: Sequence[str] = ()) -> str:
    off = plan.offering
    price = (
        f"${plan.estimated_cost_per_hour:.4f}/hour"
        if plan.estimated_cost_per_hour is not None
        else "unknown (the provider's API does not publish it; see the catalog)"
    )
    lines = [
        f"provider: {plan.provider}",
        f"action:   {plan.action}",
    ]
    if off is not None:
        gpu = f"{off.gpu_count}x {off.gpu}" if off.gpu else "no GPU"
        lines.append(f"offering: {off.key} ({gpu}, {off.kind})")
    lines.append(f"price:    {price}")
    if placement_reason:
        lines.append(f"reason:   {placement_reason}")
    lines += [f"note:     {n}" for n in plan.notes]
    lines += ["", "payload (sent exactly as shown):", json.dumps(plan.payload, indent=2, default=str)]
    for name, text in plan.artifacts.items():
        lines += ["", f"--- {name} ---", text.rstrip("\n")]
    out = "\n".join(lines) + "\n"
    for s in secrets:
        if s:
            out = out.replace(s, "<redacted>")
    return out
