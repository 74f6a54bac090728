"""Sandbox runs in the store: a `sandbox_runs` row per execution and a ledger row for what it cost.

Price: a run holds `cpu_count` of its node's CPUs for its duration, so it is charged that share of
the node's hourly price: price_per_hour x min(1, cpu_count / node cpus) x seconds / 3600. A run on
the server's own machine (no sandbox agent) gets a run row but no ledger row: nothing is rented.
A node with no known price (a machine enrolled by hand) is charged 0, and its ledger row says so.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from argosy.core.clock import Clock
from argosy.sandbox.models import ExecResult
from argosy.store.db import Store
from argosy.store.models import LedgerEntry, Node, SandboxRun


def run_price_per_hour(node: Node, cpu_count: float) -> float:
    """The hourly rate of `cpu_count` CPUs of `node`."""
    price = node.price_per_hour or 0.0
    cpus = float((node.resources or {}).get("cpus") or 0) or 1.0
    return price * min(1.0, cpu_count / cpus)


def total_ms(res: ExecResult) -> float:
    return res.duration_ms + (
        res.compile.duration_ms if res.compile and res.status != "compile_error" else 0.0
    )


def record_run(
    session: Session, res: ExecResult, node_id: str | None, session_id: str | None, now: float
) -> SandboxRun:
    """Add the run's row and, when it ran on a node, its ledger row (idempotent per run id)."""
    existing = session.get(SandboxRun, res.run_id)
    if existing is not None:
        return existing
    limits: dict[str, Any] = dict(res.limits or {})
    seconds = total_ms(res) / 1000
    cost = 0.0
    node = session.get(Node, node_id) if node_id else None
    if node is not None:
        rate = run_price_per_hour(node, float(limits.get("cpu_count") or 1.0))
        cost = rate * seconds / 3600
        session.add(
            LedgerEntry(
                resource_kind="run",
                resource_id=res.run_id,
                deployment_id=None,
                provider=node.provider,
                offering_key=str((node.offering or {}).get("key", "")),
                start_ts=now - seconds,
                end_ts=now,
                seconds=seconds,
                price_per_hour=rate,
                cost_usd=cost,
            )
        )
    row = SandboxRun(
        id=res.run_id,
        node_id=node_id,
        session_id=session_id,
        language=res.language,
        version=res.version,
        backend=res.backend,
        status=res.status,
        exit_code=res.exit_code,
        signal=res.signal,
        timed_out=res.timed_out,
        oom_killed=res.oom_killed,
        truncated=res.truncated,
        warm=res.warm,
        limits=limits,
        duration_ms=total_ms(res),
        cost_usd=cost,
        created_at=now,
    )
    session.add(row)
    return row


def run_json(r: SandboxRun) -> dict[str, Any]:
    return {
        "id": r.id,
        "node": r.node_id,
        "session": r.session_id,
        "language": r.language,
        "version": r.version,
        "backend": r.backend,
        "status": r.status,
        "exit_code": r.exit_code,
        "signal": r.signal,
        "timed_out": r.timed_out,
        "oom_killed": r.oom_killed,
        "truncated": r.truncated,
        "warm": r.warm,
        "limits": r.limits,
        "duration_ms": r.duration_ms,
        "cost_usd": r.cost_usd,
        "created_at": r.created_at,
    }


def list_runs(session: Session, limit: int = 50, node_id: str | None = None) -> list[dict[str, Any]]:
    q = select(SandboxRun).order_by(SandboxRun.created_at.desc(), SandboxRun.id).limit(limit)
    if node_id:
        q = q.where(SandboxRun.node_id == node_id)
    return [run_json(r) for r in session.scalars(q)]


class StoreRecorder:
    """A ClusterRunner recorder writing to the server's store on its clock."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def __call__(self, res: ExecResult, node_id: str | None, session_id: str | None) -> None:
        with self.store.session() as s:
            # A node id the store does not know (a stale report) is recorded without a price.
            record_run(s, res, node_id, session_id, self.clock.now())
