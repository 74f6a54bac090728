"""State transitions: every change of state is an event row with a reason."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from argosy.store.models import Deployment, Event, Node, Replica

_KIND = {Replica: "replica", Node: "node", Deployment: "deployment"}


def transition(
    session: Session, obj: Replica | Node | Deployment, to_state: str, reason: str, now: float
) -> bool:
    """Move `obj` to `to_state`, recording an event. Returns False (and records nothing) if already there."""
    attr = "status" if isinstance(obj, Node) else "state"
    from_state = getattr(obj, attr)
    if from_state == to_state:
        return False
    setattr(obj, attr, to_state)
    if isinstance(obj, Replica):
        obj.state_changed_at = now
        obj.reason = reason
        deployment_id: str | None = obj.deployment_id
    elif isinstance(obj, Deployment):
        obj.updated_at = now
        deployment_id = obj.id
    else:
        obj.updated_at = now
        deployment_id = None
    session.add(
        Event(
            ts=now,
            kind=_KIND[type(obj)],
            object_id=obj.id,
            deployment_id=deployment_id,
            from_state=from_state,
            to_state=to_state,
            reason=reason,
        )
    )
    return True


def note(
    session: Session,
    kind: str,
    object_id: str,
    state: str,
    reason: str,
    now: float,
    deployment_id: str | None = None,
) -> None:
    """An event that is not a state change (e.g. the router was restarted)."""
    session.add(
        Event(
            ts=now,
            kind=kind,
            object_id=object_id,
            deployment_id=deployment_id,
            from_state=state,
            to_state=state,
            reason=reason,
        )
    )


def events_for(
    session: Session, deployment_id: str | None = None, limit: int = 200, after_id: int = 0
) -> list[Event]:
    q = select(Event).where(Event.id > after_id).order_by(Event.id.desc()).limit(limit)
    if deployment_id:
        q = q.where(Event.deployment_id == deployment_id)
    return list(reversed(session.scalars(q).all()))
