"""The ledger: every resource-second we pay for, at the price in force when it was spent."""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from argosy.store.models import LedgerEntry, Replica

# States in which a replica's machine time is being paid for.
BILLABLE_STATES = frozenset({"provisioning", "starting", "ready", "draining"})


class Billable(Protocol):
    """What the ledger needs of a paid resource (replicas, training jobs): its rate and how far it is billed."""

    id: str
    offering: dict[str, Any]
    price_per_hour: float | None
    billed_until: float | None


def accrue(
    session: Session,
    resource: Billable,
    kind: str,
    provider: str,
    now: float,
    deployment_id: str | None = None,
) -> float:
    """Charge `resource` up to `now`, extending its open ledger span. Returns the USD added.

    Idempotent over time: calling twice at the same `now` charges nothing the second time.
    """
    start = resource.billed_until
    resource.billed_until = now
    if start is None or now <= start:
        return 0.0
    price = resource.price_per_hour or 0.0
    seconds = now - start
    cost = seconds * price / 3600.0
    last = session.scalars(
        select(LedgerEntry)
        .where(
            LedgerEntry.resource_id == resource.id,
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
                resource_kind=kind,
                resource_id=resource.id,
                deployment_id=deployment_id,
                provider=provider,
                offering_key=str(resource.offering.get("key", "")),
                start_ts=start,
                end_ts=now,
                seconds=seconds,
                price_per_hour=price,
                cost_usd=cost,
            )
        )
    return cost


def accrue_replica(session: Session, replica: Replica, provider: str, now: float) -> float:
    """A replica's machine time, kept under its deployment."""
    return accrue(session, replica, "replica", provider, now, deployment_id=replica.deployment_id)


def totals(session: Session, deployment_id: str | None = None) -> dict[str, float]:
    q = select(
        func.coalesce(func.sum(LedgerEntry.seconds), 0.0), func.coalesce(func.sum(LedgerEntry.cost_usd), 0.0)
    )
    if deployment_id:
        q = q.where(LedgerEntry.deployment_id == deployment_id)
    seconds, cost = session.execute(q).one()
    return {"seconds": float(seconds), "cost_usd": float(cost)}


# -- serverless fallback endpoints --------------------------------------------------------------
# A fallback endpoint's spend is billed by its provider, not by a machine we hold: its rows have
# resource_kind "serverless", resource_id = the endpoint id, and an offering_key that says where the
# figure came from: "measured:<provider>:<bucket>" (the provider's billing API) or
# "estimate:<provider>:router <start id>" (the router's busy seconds at the list price).
SERVERLESS = "serverless"
MEASURED = "measured"
ESTIMATE = "estimate"


def serverless_basis(entry: LedgerEntry) -> str:
    """'measured' or 'estimate' for a serverless row."""
    return entry.offering_key.split(":", 1)[0]


def _serverless_key(basis: str, provider: str, detail: str) -> str:
    return f"{basis}:{provider}:{detail}"[:300]


def find_serverless(
    session: Session, endpoint_id: str, basis: str, provider: str, detail: str
) -> LedgerEntry | None:
    return session.scalars(
        select(LedgerEntry).where(
            LedgerEntry.resource_kind == SERVERLESS,
            LedgerEntry.resource_id == endpoint_id[:40],
            LedgerEntry.offering_key == _serverless_key(basis, provider, detail),
        )
    ).first()


def record_serverless(
    session: Session,
    *,
    deployment_id: str,
    endpoint_id: str,
    provider: str,
    basis: str,
    detail: str,
    start_ts: float,
    end_ts: float,
    seconds: float,
    cost_usd: float,
    price_per_second: float | None,
) -> LedgerEntry:
    """Write one serverless row, or update the row with the same (endpoint, basis, detail).

    Idempotent: the caller passes the latest figure for that key (a provider's bucket total, a router
    process's cumulative busy time), so recording the same figure twice changes nothing.
    """
    if basis not in (MEASURED, ESTIMATE):
        raise ValueError(f"basis must be '{MEASURED}' or '{ESTIMATE}', not {basis!r}")
    key = _serverless_key(basis, provider, detail)
    row = find_serverless(session, endpoint_id, basis, provider, detail)
    if row is None:
        row = LedgerEntry(
            resource_kind=SERVERLESS,
            resource_id=endpoint_id[:40],
            deployment_id=deployment_id,
            provider=provider,
            offering_key=key,
            start_ts=start_ts,
        )
        session.add(row)
    row.end_ts = end_ts
    row.seconds = seconds
    row.cost_usd = cost_usd
    row.price_per_hour = (price_per_second or 0.0) * 3600.0
    return row


def serverless_totals(session: Session, deployment_id: str | None = None) -> dict[str, float]:
    """A deployment's (or everyone's) serverless spend, split by where the figure came from."""
    q = select(LedgerEntry).where(LedgerEntry.resource_kind == SERVERLESS)
    if deployment_id:
        q = q.where(LedgerEntry.deployment_id == deployment_id)
    out = {"seconds": 0.0, "cost_usd": 0.0, "measured_usd": 0.0, "estimate_usd": 0.0}
    for e in session.scalars(q):
        out["seconds"] += e.seconds
        out["cost_usd"] += e.cost_usd
        out[f"{serverless_basis(e)}_usd"] += e.cost_usd
    return out
