"""A deployment's serverless fallback spend into the ledger: measured where the provider reports it,
else estimated from the router's busy seconds.

Every fallback endpoint a deployment had is kept in `spec["fallback_billing"]` (id -> provider,
list price, basis, when it was made, polled and destroyed), so its spend is still recorded after the
endpoint itself is gone from the spec.

- measured: providers with the `EndpointUsage` capability are asked at most every `POLL_S` for the
  billing buckets since the last poll less `LOOKBACK_S` (billing data arrives late and an open
  bucket grows); each bucket is one ledger row, rewritten with the provider's latest figure.
- estimate: for the others, the router's `busy_s` for the endpoint's backend (wall seconds with a
  request in flight) times the endpoint's list price per second, one row per router process (start
  id) holding its latest cumulative figure. A lower bound: it leaves out the provider's idle
  scale-down window and any always-on `min_workers`.

Both are idempotent (the same figures twice change nothing) and survive router and server restarts.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from argosy.core.errors import ArgosyError
from argosy.providers.base import EndpointUsage
from argosy.store.events import note
from argosy.store.ledger import ESTIMATE, MEASURED, find_serverless, record_serverless
from argosy.store.models import Deployment

log = logging.getLogger(__name__)

POLL_S = 300.0  # the billing APIs we read update hourly (RunPod) or within minutes (Modal)
LOOKBACK_S = 3 * 3600.0  # closed buckets are re-read this long for late billing data


def register(
    dep: Deployment, provider: Any, endpoint_id: str, price_per_second: float | None, now: float
) -> None:
    """Remember a new fallback endpoint for billing (idempotent)."""
    billing = dict(dep.spec.get("fallback_billing") or {})
    if endpoint_id not in billing:
        billing[endpoint_id] = {
            "provider": provider.name,
            "price_per_second": price_per_second,
            "basis": MEASURED if isinstance(provider, EndpointUsage) else ESTIMATE,
            "created_at": now,
            "polled_at": None,
            "destroyed_at": None,
        }
        dep.spec = {**dep.spec, "fallback_billing": billing}


def adopt(dep: Deployment, providers: Any, now: float) -> None:
    """Register a fallback endpoint made before billing was tracked (its spend from now on)."""
    have, want = dep.spec.get("fallback_endpoint"), dep.spec.get("fallback")
    if have and want and have["id"] not in (dep.spec.get("fallback_billing") or {}):
        register(dep, providers(want["provider"]), have["id"], have.get("price_per_second"), now)


def _update(dep: Deployment, endpoint_id: str, **changes: Any) -> None:
    billing = dict(dep.spec.get("fallback_billing") or {})
    billing[endpoint_id] = {**billing[endpoint_id], **changes}
    dep.spec = {**dep.spec, "fallback_billing": billing}


def mark_destroyed(dep: Deployment, endpoint_id: str, now: float) -> None:
    if endpoint_id in (dep.spec.get("fallback_billing") or {}):
        _update(dep, endpoint_id, destroyed_at=now)


def poll_measured(s: Session, dep: Deployment, providers: Any, now: float, *, force: bool = False) -> None:
    """Read billed usage of the deployment's measured endpoints that are due (all of them if `force`)."""
    for endpoint_id, info in list((dep.spec.get("fallback_billing") or {}).items()):
        if info.get("basis") != MEASURED or info.get("destroyed_at") is not None:
            continue
        polled = info.get("polled_at")
        if not force and polled is not None and now - polled < POLL_S:
            continue
        provider = providers(info["provider"])
        if not isinstance(provider, EndpointUsage):
            continue
        created = float(info.get("created_at") or dep.created_at)
        since = created if polled is None else max(created, float(polled) - LOOKBACK_S)
        try:
            records = provider.endpoint_usage(endpoint_id, since, now)
        except ArgosyError as exc:
            reason = f"reading billed usage of {endpoint_id} on {provider.name} failed: {exc.message}"
            if info.get("usage_error") != reason:  # one event per distinct failure, not per poll
                note(s, "deployment", dep.id, dep.state, reason, now, dep.id)
            _update(dep, endpoint_id, polled_at=now, usage_error=reason)
            continue
        if records is None:
            # The provider has a billing API but no figures for this endpoint: estimate from the
            # router instead (its counters run from the router's start, so nothing is missed).
            _update(dep, endpoint_id, basis=ESTIMATE, polled_at=now, usage_error=None)
            note(
                s,
                "deployment",
                dep.id,
                dep.state,
                f"{provider.name} reports no billed usage for {endpoint_id}: its spend is estimated "
                "from the router's busy seconds",
                now,
                dep.id,
            )
            continue
        price = info.get("price_per_second")
        for r in records:
            seconds = r.seconds if r.seconds is not None else (r.cost_usd / price if price else 0.0)
            record_serverless(
                s,
                deployment_id=dep.id,
                endpoint_id=endpoint_id,
                provider=provider.name,
                basis=MEASURED,
                detail=f"{getattr(provider, 'usage_source', 'billing API')} bucket {int(r.start_ts)}",
                start_ts=r.start_ts,
                end_ts=r.end_ts,
                seconds=seconds,
                cost_usd=r.cost_usd,
                price_per_second=price,
            )
        _update(dep, endpoint_id, polled_at=now, usage_error=None)


def record_estimates(s: Session, dep: Deployment, report: dict[str, Any], now: float) -> None:
    """Busy seconds from one `/router/usage` report into estimate rows for the endpoints without a
    measured figure."""
    start_id = report.get("start_id")
    busy = report.get("busy_s")
    if not isinstance(start_id, str) or not start_id or not isinstance(busy, dict):
        return  # an older router without busy seconds: nothing to estimate from
    for endpoint_id, info in (dep.spec.get("fallback_billing") or {}).items():
        seconds = busy.get(endpoint_id)
        if info.get("basis") != ESTIMATE or not isinstance(seconds, (int, float)):
            continue
        if info.get("destroyed_at") is not None:
            continue  # its last figure was taken before it was destroyed; later tries were not billed
        price = info.get("price_per_second") or 0.0
        provider, detail = str(info["provider"]), f"router {start_id}"
        prev = find_serverless(s, endpoint_id, ESTIMATE, provider, detail)
        # max(): a late, older answer from the same router process must not lower the figure.
        total = max(prev.seconds if prev is not None else 0.0, float(seconds))
        record_serverless(
            s,
            deployment_id=dep.id,
            endpoint_id=endpoint_id,
            provider=provider,
            basis=ESTIMATE,
            detail=detail,
            start_ts=prev.start_ts if prev is not None else now,
            end_ts=now,
            seconds=total,
            cost_usd=total * price,
            price_per_second=price,
        )
