"""The ledger: every resource-second we pay for, at the price in force when it was spent."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from argosy.store.models import LedgerEntry, Replica

# States in which a replica's machine time is being paid for.
BILLABLE_STATES = frozenset({"provisioning", "starting", "ready", "draining"})


def accrue_replica(session: Session, replica: Replica, provider: str, now: float) -> float:
    """Charge `replica` up to `now`, extending its open ledger span. Returns the USD added.

    Idempotent over time: calling twice at the same `now` charges nothing the second time.
    """
    start = replica.billed_until
    replica.billed_until = now
    if start is None or now <= start:
        return 0.0
    price = replica.price_per_hour or 0.0
    seconds = now - start
    cost = seconds * price / 3600.0
    last = session.scalars(
        select(LedgerEntry)
        .where(
            LedgerEntry.resource_id == replica.id,
            LedgerEntry.end_ts == start,
            LedgerEntry.price_per_hour == price,
        )
        .limit(1)
    ).first()
    if last is not None:
        last.end_ts = now
        last.seconds += seconds
        last.cost_usd += cost
    else:
        session.add(
            LedgerEntry(
                resource_kind="replica",
                resource_id=replica.id,
                deployment_id=replica.deployment_id,
                provider=provider,
                offering_key=str(replica.offering.get("key", "")),
                start_ts=start,
                end_ts=now,
                seconds=seconds,
                price_per_hour=price,
                cost_usd=cost,
            )
        )
    return cost


def totals(session: Session, deployment_id: str | None = None) -> dict[str, float]:
    q = select(
        func.coalesce(func.sum(LedgerEntry.seconds), 0.0), func.coalesce(func.sum(LedgerEntry.cost_usd), 0.0)
    )
    if deployment_id:
        q = q.where(LedgerEntry.deployment_id == deployment_id)
    seconds, cost = session.execute(q).one()
    return {"seconds": float(seconds), "cost_usd": float(cost)}
