"""The side-by-side plan for `argosy deploy MODEL --fallback PROVIDER --dry-run`.

Pure: it renders the serverless fallback endpoint's plan next to the primary (spot/VM) plan the
deploy command already made, with both prices on the same footing (per hour and per second), the
fallback's cold start and how the router authenticates to it, and the utilisation below which the
fallback alone would be cheaper. Nothing is created and no network is used; providers read only
their environment (credentials are never printed).

Usage from the deploy command:

    fp = plan_fallback(primary_plan, model, "modal", settings, name=deployment_name)
    console.print(render_fallback_plan(fp))
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from argosy.core.clock import Clock
from argosy.core.config import Settings
from argosy.core.errors import ArgosyError, ConfigError
from argosy.providers.base import EndpointRequest, Endpoints, Plan
from argosy.providers.templates.serverless import EndpointFacts


@dataclass
class FallbackPlan:
    primary: Plan
    fallback: Plan
    facts: EndpointFacts
    request: EndpointRequest

    @property
    def break_even_utilisation(self) -> float | None:
        """Fraction of the time the fallback may be busy before it costs more than the primary."""
        primary = self.primary.estimated_cost_per_hour
        if not primary or self.facts.price_per_second in (None, 0):
            return None
        return primary / (self.facts.price_per_second * 3600)  # type: ignore[operator]

    def to_dict(self) -> dict[str, Any]:
        """For the server's API: everything `render_fallback_plan` prints, as data (no secrets)."""
        return {
            "primary": _plan_dict(self.primary),
            "fallback": {
                **_plan_dict(self.fallback),
                "price_per_second": self.facts.price_per_second,
                "price_source": self.facts.price_source,
                "cold_start_s": self.facts.cold_start.seconds,
                "cold_start_source": self.facts.cold_start.source,
                "cold_start_measured": self.facts.cold_start.measured,
                "router_auth": self.facts.auth_scheme,
                "min_workers": self.request.min_workers,
                "max_workers": self.request.max_workers,
            },
            "break_even_utilisation": self.break_even_utilisation,
        }


def _plan_dict(plan: Plan) -> dict[str, Any]:
    o = plan.offering
    return {
        "provider": plan.provider,
        "action": plan.action,
        "offering": None
        if o is None
        else {"key": o.key, "gpu": o.gpu, "gpu_count": o.gpu_count, "kind": o.kind, "source": o.source},
        "estimated_cost_per_hour": plan.estimated_cost_per_hour,
        "payload": plan.payload,
        "artifacts": plan.artifacts,
        "notes": plan.notes,
    }


def plan_fallback(
    primary: Plan,
    model: str,
    fallback_provider: str,
    settings: Settings,
    *,
    name: str | None = None,
    gpu: str | None = None,
    min_workers: int = 0,
    max_workers: int = 1,
    extra: Mapping[str, Any] | None = None,
    clock: Clock | None = None,
) -> FallbackPlan:
    """Plan the serverless fallback endpoint for `model` beside `primary`; creates nothing.

    `gpu` ('L4', 'H100:2') defaults to the primary offering's GPU when the fallback provider sells
    it, else the provider's default. `extra` is the provider's endpoint options (strictly checked).
    """
    from argosy.providers.registry import PROVIDERS, get_provider

    provider = get_provider(fallback_provider, settings, clock)
    if not isinstance(provider, Endpoints):
        serverless = [
            n for n in PROVIDERS.names() if n in PROVIDERS.entries and _is_endpoints(n, settings, clock)
        ]
        raise ArgosyError(
            f"provider '{fallback_provider}' cannot run serverless endpoints",
            fix=f"use --fallback with one of: {', '.join(serverless)}",
        )
    options = dict(extra or {})
    follow = None
    if gpu:
        options["gpu"] = gpu
    elif primary.offering is not None and primary.offering.gpu:
        count = primary.offering.gpu_count
        follow = primary.offering.gpu + (f":{count}" if count > 1 else "")

    def request_for(opts: dict[str, Any]) -> EndpointRequest:
        payload_name = primary.payload.get("name")
        return EndpointRequest(
            name=name or (payload_name if isinstance(payload_name, str) else None) or model,
            model=model,
            min_workers=min_workers,
            max_workers=max_workers,
            extra=opts,
        )

    request = request_for(options)
    fallback: Plan | None = None
    if follow is not None:
        # Same GPU as the primary when the fallback provider sells it; plan() is pure, so trying is free.
        try:
            request = request_for({**options, "gpu": follow})
            fallback = provider.plan_endpoint(request)
        except ConfigError:
            request = request_for(options)
    if fallback is None:
        fallback = provider.plan_endpoint(request)
    facts = provider.facts(request) if hasattr(provider, "facts") else _facts_from_plan(fallback)
    return FallbackPlan(primary=primary, fallback=fallback, facts=facts, request=request)


def _is_endpoints(name: str, settings: Settings, clock: Clock | None) -> bool:
    from argosy.providers.registry import get_provider

    try:
        return isinstance(get_provider(name, settings, clock), Endpoints)
    except ArgosyError:
        return False  # an optional SDK is missing: it is still listed by `argosy providers`


def _facts_from_plan(plan: Plan) -> EndpointFacts:
    from argosy.providers.templates.serverless import ColdStart

    per_hour = plan.estimated_cost_per_hour
    return EndpointFacts(
        price_per_second=None if per_hour is None else per_hour / 3600,
        price_source="from the provider's plan",
        cold_start=ColdStart(None, "the provider reports none"),
        auth_scheme="see the plan notes",
    )


def _money_h(v: float | None) -> str:
    return "unknown" if v is None else f"${v:,.4f}/h"


def _money_s(v: float | None) -> str:
    return "unknown" if v is None else f"${v:.6f}/s"


def render_fallback_plan(fp: FallbackPlan, *, artifacts: bool = True) -> str:
    """Plain text: a two-column comparison, then each plan's notes and rendered artifacts."""
    p, f = fp.primary, fp.fallback
    po = p.offering
    primary_h = p.estimated_cost_per_hour
    rows = [
        ("provider", p.provider, f.provider),
        (
            "what",
            "-"
            if po is None
            else f"{po.instance_type} ({po.gpu_count}x {po.gpu or 'CPU'}, {po.kind}, {po.region})",
            f"serverless endpoint, {fp.request.extra.get('gpu', 'default GPU')}, "
            f"{fp.request.min_workers}-{fp.request.max_workers} workers",
        ),
        ("price per hour", _money_h(primary_h), f"{_money_h(f.estimated_cost_per_hour)} while a worker runs"),
        (
            "price per second",
            _money_s(None if primary_h is None else primary_h / 3600),
            _money_s(fp.facts.price_per_second),
        ),
        ("billed", "while the machine runs", fp.facts.billing_note or "while a worker runs"),
        (
            "idle cost",
            _money_h(primary_h),
            "$0/h (scales to zero)" if fp.request.min_workers == 0 else _money_h(f.estimated_cost_per_hour),
        ),
        (
            "cold start",
            "node boot + engine start (see primary notes)",
            fp.facts.cold_start.line().removeprefix("cold start: "),
        ),
        ("router auth", "agent-registered node (internal)", fp.facts.auth_scheme),
        ("price source", po.source if po is not None and po.source else "-", fp.facts.price_source),
    ]
    left = max(len(r[0]) for r in rows)
    mid = min(60, max(len(r[1]) for r in rows))
    lines = [f"{'':<{left}}  {'PRIMARY (spot/VM)':<{mid}}  FALLBACK (serverless)"]
    for label, a, b in rows:
        lines.append(f"{label:<{left}}  {a:<{mid}}  {b}")
    be = fp.break_even_utilisation
    if be is not None:
        lines.append("")
        if be >= 1:
            lines.append("The fallback costs less than the primary even when busy all the time.")
        else:
            lines.append(
                f"The fallback alone would cost less than the primary while it is busy under {be:.0%} of the time; "
                "as a fallback it bills only while it serves overflow or covers a preemption."
            )
    for title, plan in (("primary", p), ("fallback", f)):
        lines += ["", f"== {title}: {plan.provider} {plan.action} =="]
        lines += [f"  - {n}" for n in plan.notes]
        if artifacts:
            if plan.artifacts:
                for fname, text in plan.artifacts.items():
                    lines += [f"--- {fname}", text.rstrip("\n")]
            else:
                lines += ["--- payload", json.dumps(plan.payload, indent=2, sort_keys=True, default=str)]
    return "\n".join(lines) + "\n"
