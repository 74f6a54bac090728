"""The store on SQLite and on a real PostgreSQL server: migrations, keys, events, ledger."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, select

from argosy.core.errors import ArgosyError
from argosy.store.db import Store
from argosy.store.events import events_for, transition
from argosy.store.keys import create_key, revoke_node_keys, verify_key
from argosy.store.ledger import accrue_replica, totals
from argosy.store.models import ApiKey, Deployment, LedgerEntry, Node, Replica


def _deployment(s, now: float = 100.0) -> Deployment:  # type: ignore[no-untyped-def]
    d = Deployment(
        id="dep_1",
        name="m",
        model="/m",
        engine="llamacpp",
        provider="fake",
        replicas=1,
        state="active",
        spec={},
        created_at=now,
        updated_at=now,
    )
    s.add(d)
    s.flush()
    return d


def test_migrations_create_every_table_and_are_idempotent(db_url: str) -> None:
    store = Store(db_url)
    Store(db_url).close()  # a second upgrade is a no-op
    names = set(inspect(store.engine).get_table_names())
    assert {"api_keys", "nodes", "deployments", "replicas", "events", "ledger", "alembic_version"} <= names
    store.close()


def test_keys_store_only_a_hash_and_verify_in_constant_time(db_url: str) -> None:
    store = Store(db_url)
    with store.session() as s:
        key = create_key(s, "admin", "admin", 1.0)
    with store.session() as s:
        row = s.scalars(select(ApiKey)).one()
        assert key not in (row.key_hash, row.salt) and len(row.key_hash) == 64
        assert verify_key(s, key) is not None
        assert verify_key(s, key + "x") is None
        assert verify_key(s, "not-a-key") is None
    store.close()


def test_agent_keys_are_revoked_with_their_node(db_url: str) -> None:
    store = Store(db_url)
    with store.session() as s:
        s.add(
            Node(
                id="node_1",
                name="n",
                provider="fake",
                provider_instance_id="i",
                status="ready",
                created_at=1,
                updated_at=1,
            )
        )
        s.flush()
        key = create_key(s, "agent", "agent", 1.0, node_id="node_1")
    with store.session() as s:
        revoke_node_keys(s, "node_1", 2.0)
    with store.session() as s:
        assert verify_key(s, key) is None
    store.close()


def test_every_transition_is_an_event_with_a_reason(db_url: str) -> None:
    store = Store(db_url)
    with store.session() as s:
        d = _deployment(s)
        r = Replica(id="rep_1", deployment_id=d.id, state="pending", created_at=1, state_changed_at=1)
        s.add(r)
        s.flush()
        assert transition(s, r, "provisioning", "placed", 2.0)
        assert not transition(s, r, "provisioning", "again", 3.0)  # no change, no event
        transition(s, r, "failed", "engine exited with code 1", 4.0)
    with store.session() as s:
        evs = events_for(s, "dep_1")
        assert [(e.from_state, e.to_state, e.reason) for e in evs] == [
            ("pending", "provisioning", "placed"),
            ("provisioning", "failed", "engine exited with code 1"),
        ]
    store.close()


def test_ledger_extends_one_span_and_keeps_the_price_paid(db_url: str) -> None:
    store = Store(db_url)
    with store.session() as s:
        d = _deployment(s)
        r = Replica(
            id="rep_1",
            deployment_id=d.id,
            state="ready",
            created_at=0,
            state_changed_at=0,
            price_per_hour=3.6,
            billed_until=0.0,
            offering={"key": "fake/x/y/spot"},
        )
        s.add(r)
        s.flush()
        assert accrue_replica(s, r, "fake", 100.0) == pytest.approx(0.1)
        assert accrue_replica(s, r, "fake", 100.0) == 0.0  # idempotent at the same instant
        accrue_replica(s, r, "fake", 200.0)
        r.price_per_hour = 7.2  # the price changed: a new span at the new rate
        accrue_replica(s, r, "fake", 300.0)
    with store.session() as s:
        spans = s.scalars(select(LedgerEntry).order_by(LedgerEntry.start_ts)).all()
        assert [(e.start_ts, e.end_ts, e.price_per_hour) for e in spans] == [(0, 200, 3.6), (200, 300, 7.2)]
        assert totals(s, "dep_1") == {"seconds": pytest.approx(300), "cost_usd": pytest.approx(0.2 + 0.2)}
    store.close()


def test_unreachable_database_says_what_to_do() -> None:
    with pytest.raises(ArgosyError) as exc:
        Store("postgresql://nobody@127.0.0.1:1/none")
    assert "ARGOSY_DATABASE_URL" in (exc.value.fix or "")
