"""Node registration and heartbeats, server side.

The protocol is level-triggered: each heartbeat carries the agent's *actual* workloads and gets back
the node's *desired* workloads. A lost message is repaired by the next heartbeat, so there is no
command queue to replay after a crash of either side.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from argosy.core.errors import AuthError, NotFoundError
from argosy.core.ids import new_id
from argosy.store.events import transition
from argosy.store.models import ApiKey, Deployment, Node, Replica

# Replica states whose workload should be running on its node.
RUNNING_STATES = ("starting", "ready")
LIVE_NODE_STATES = ("provisioning", "ready", "unhealthy", "cordoned")
MAX_LOG_LINES_PER_BEAT = 500


def register(session: Session, key: ApiKey, info: dict[str, Any], now: float) -> Node:
    """Bind an agent to its node. Agent keys are node-scoped; an admin key may enrol a new machine."""
    if key.role == "agent" and key.node_id:
        node = session.get(Node, key.node_id)
        if node is None or node.status == "terminated":
            raise AuthError("this agent's node has been terminated", fix="provision a new node")
    elif key.role == "admin":
        node = Node(
            id=new_id("node"),
            name=str(info.get("name") or info.get("hostname") or "node"),
            provider="manual",
            provider_instance_id=str(info.get("hostname", "")),
            status="provisioning",
            created_at=now,
            updated_at=now,
        )
        session.add(node)
        session.flush()
    else:
        raise AuthError("this key cannot register an agent", fix="use the token Argosy gave the node")
    node.address = info.get("address") or node.address
    node.resources = {k: info[k] for k in ("hostname", "cpus", "ram_gb", "gpus", "os", "roles") if k in info}
    node.last_heartbeat = now
    if node.status in ("provisioning", "unhealthy"):
        transition(
            session,
            node,
            "ready",
            "agent registered" if node.status == "provisioning" else "agent is back",
            now,
        )
    return node


def desired_workloads(session: Session, node: Node) -> list[dict[str, Any]]:
    """What this node should be running now: the replicas placed on it in a running state."""
    rows = session.execute(
        select(Replica, Deployment)
        .join(Deployment, Replica.deployment_id == Deployment.id)
        .where(Replica.node_id == node.id, Replica.state.in_(RUNNING_STATES))
    ).all()
    return [
        {
            "id": r.id,
            "kind": "engine",
            "engine": d.engine,
            "model": d.model,
            "served_name": d.name,
            "args": d.spec.get("engine_args", {}),
            "lora": d.spec.get("lora"),
        }
        for r, d in rows
    ]


def heartbeat(
    session: Session,
    node_id: str,
    report: dict[str, Any],
    now: float,
    logs_dir: Path,
    sources: Sequence[Any] = (),
) -> dict[str, Any]:
    """Record an agent's report; answer with the node's desired workloads.

    `sources` are the other workload kinds' halves of the protocol (e.g. training jobs): objects with
    `ingest(session, node, report, now, logs_dir)` and `desired(session, node) -> list[dict]`.
    """
    node = session.get(Node, node_id)
    if node is None:
        raise NotFoundError(f"unknown node {node_id}", fix="restart the agent so it registers again")
    if node.status == "terminated":
        return {"workloads": [], "terminate": True}
    node.last_heartbeat = now
    node.metrics = report.get("metrics", {})
    if node.status == "unhealthy":
        transition(session, node, "ready", "heartbeats resumed", now)
    notice = report.get("preemption_notice")
    if notice and node.status not in ("preempted", "terminated", "failed"):
        # The machine was told it will be reclaimed (AWS ~2 min, GCP ~30 s ahead): mark it now so the
        # deployment reconciler replaces its replicas while the VM still runs.
        transition(session, node, "preempted", f"agent: {str(notice)[:300]}", now)
    for wid, state in (report.get("workloads") or {}).items():
        replica = session.get(Replica, wid)
        if replica is None or replica.node_id != node.id:
            continue  # a workload this node no longer owns; the agent stops it (not in the desired set)
        replica.workload = {**state, "reported_at": now}
    for wid, lines in (report.get("logs") or {}).items():
        replica = session.get(Replica, wid)
        if replica is not None and replica.node_id == node.id and lines:
            append_logs(logs_dir, replica.deployment_id, wid, lines[-MAX_LOG_LINES_PER_BEAT:])
    desired = desired_workloads(session, node)
    for source in sources:
        source.ingest(session, node, report, now, logs_dir)
        desired += source.desired(session, node)
    return {"workloads": desired, "terminate": False}


def append_logs(logs_dir: Path, deployment_id: str, replica_id: str, lines: list[str]) -> None:
    d = logs_dir / "deployments" / deployment_id
    d.mkdir(parents=True, exist_ok=True)
    with (d / f"{replica_id}.log").open("a", encoding="utf-8", errors="replace") as f:
        for line in lines:
            f.write(f"[{replica_id}] {line.rstrip()}\n")


def mark_stale(session: Session, now: float, timeout_s: float) -> list[Node]:
    """Nodes whose agent missed heartbeats for `timeout_s` become unhealthy (idempotent)."""
    stale = []
    for node in session.scalars(select(Node).where(Node.status == "ready")):
        if node.last_heartbeat is not None and now - node.last_heartbeat > timeout_s:
            transition(session, node, "unhealthy", f"no heartbeat for {now - node.last_heartbeat:.0f}s", now)
            stale.append(node)
    return stale


def live_node_for_instance(session: Session, provider: str, instance_id: str) -> Node | None:
    return session.scalars(
        select(Node).where(
            Node.provider == provider,
            Node.provider_instance_id == instance_id,
            Node.status.in_(LIVE_NODE_STATES),
        )
    ).first()
