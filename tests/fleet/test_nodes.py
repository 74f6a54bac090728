"""Server-side node protocol: registration binds keys to nodes, missed heartbeats make nodes unhealthy."""

from __future__ import annotations

from pathlib import Path

import pytest

from argosy.core.errors import AuthError
from argosy.fleet import nodes as node_svc
from argosy.store.db import Store
from argosy.store.keys import create_key, verify_key
from argosy.store.models import Node


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'n.db'}")


def _node(store: Store, status: str = "provisioning") -> str:
    with store.session() as s:
        s.add(
            Node(
                id="node_1",
                name="n1",
                provider="fake",
                provider_instance_id="i-1",
                status=status,
                created_at=0,
                updated_at=0,
            )
        )
        s.flush()
        return create_key(s, "agent", "agent", 0, node_id="node_1")


def test_register_then_missed_heartbeats_mark_unhealthy_then_recover(store: Store, tmp_path: Path) -> None:
    token = _node(store)
    with store.session() as s:
        node = node_svc.register(
            s, verify_key(s, token), {"hostname": "h", "cpus": 4, "address": "10.0.0.5"}, 10.0
        )
        assert node.status == "ready" and node.address == "10.0.0.5" and node.resources["cpus"] == 4
    with store.session() as s:
        assert node_svc.mark_stale(s, 20.0, timeout_s=15) == []
        assert [n.id for n in node_svc.mark_stale(s, 26.0, timeout_s=15)] == ["node_1"]
        assert node_svc.mark_stale(s, 27.0, timeout_s=15) == []  # idempotent
    with store.session() as s:
        assert s.get(Node, "node_1").status == "unhealthy"
        node_svc.heartbeat(s, "node_1", {"workloads": {}}, 30.0, tmp_path)
    with store.session() as s:
        assert s.get(Node, "node_1").status == "ready"


def test_terminated_nodes_cannot_register_and_are_told_to_stop(store: Store, tmp_path: Path) -> None:
    token = _node(store, status="terminated")
    with store.session() as s, pytest.raises(AuthError, match="terminated"):
        node_svc.register(s, verify_key(s, token), {"hostname": "h"}, 1.0)
    with store.session() as s:
        assert node_svc.heartbeat(s, "node_1", {}, 1.0, tmp_path)["terminate"] is True


def test_user_keys_cannot_register_agents(store: Store) -> None:
    with store.session() as s:
        key = create_key(s, "u", "user", 0)
    with store.session() as s, pytest.raises(AuthError):
        node_svc.register(s, verify_key(s, key), {}, 1.0)


def test_logs_from_heartbeats_land_in_the_deployment_log(store: Store, tmp_path: Path) -> None:
    node_svc.append_logs(tmp_path, "dep_1", "rep_1", ["line one", "line two\n"])
    text = (tmp_path / "deployments" / "dep_1" / "rep_1.log").read_text()
    assert text == "[rep_1] line one\n[rep_1] line two\n"
