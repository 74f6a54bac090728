"""Token usage from deployment routers into the store: record a pulled `/router/usage`, sum it up.

Each router process reports counters since its own start under a random `start_id`. One row per
(deployment, start_id) holds the latest values, so recording is idempotent (the same pull twice
changes nothing) and survives router restarts (a new process is a new row; nothing is subtracted).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from argosy.store.models import RouterUsage


def record(session: Session, deployment_id: str, report: dict[str, Any], now: float) -> RouterUsage | None:
    """Store one `/router/usage` answer; None (and nothing stored) if it is not a usage report."""
    start_id = report.get("start_id")
    total = report.get("total")
    if not isinstance(start_id, str) or not start_id or not isinstance(total, dict):
        return None
    row = session.scalars(
        select(RouterUsage).where(
            RouterUsage.deployment_id == deployment_id, RouterUsage.start_id == start_id
        )
    ).first()
    if row is None:
        row = RouterUsage(
            deployment_id=deployment_id,
            start_id=start_id[:40],
            router_started_at=float(report.get("started_at") or now),
        )
        session.add(row)
    # max(): a late, older answer for the same process must not lower what is already recorded.
    row.requests = max(row.requests or 0, int(total.get("requests", 0)))
    row.prompt_tokens = max(row.prompt_tokens or 0, int(total.get("prompt_tokens", 0)))
    row.completion_tokens = max(row.completion_tokens or 0, int(total.get("completion_tokens", 0)))
    keys = report.get("keys")
    row.by_key = (
        {str(k): dict(v) for k, v in keys.items() if isinstance(v, dict)} if isinstance(keys, dict) else {}
    )
    row.updated_at = now
    return row


def totals(session: Session, deployment_id: str | None = None) -> dict[str, int]:
    q = select(
        func.coalesce(func.sum(RouterUsage.requests), 0),
        func.coalesce(func.sum(RouterUsage.prompt_tokens), 0),
        func.coalesce(func.sum(RouterUsage.completion_tokens), 0),
    )
    if deployment_id:
        q = q.where(RouterUsage.deployment_id == deployment_id)
    requests, tin, tout = session.execute(q).one()
    return {"requests": int(requests), "prompt_tokens": int(tin), "completion_tokens": int(tout)}
