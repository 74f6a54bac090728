"""The server's API: auth on every call, deployments CRUD and dry-run, clear errors, agent protocol."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from argosy.core.config import Settings
from tests.conftest import write_model_config


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = write_model_config(tmp_path / "model")
    return d


def test_first_start_writes_an_admin_key_readable_only_by_the_user(api, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    mode = stat.S_IMODE(os.stat(settings.credentials_path).st_mode)
    assert mode == 0o600
    creds = json.loads(settings.credentials_path.read_text())
    assert creds["api_key"].startswith("ak_")


def test_every_api_call_needs_a_valid_key(api) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    assert client.get("/healthz").status_code == 200
    anon = TestClient(client.app)
    r = anon.get("/api/v1/deployments")
    assert r.status_code == 401 and "Bearer" in r.json()["message"]
    r = anon.get("/api/v1/deployments", headers={"Authorization": "Bearer ak_wrong"})
    assert r.status_code == 401 and r.json()["fix"]


def test_agent_keys_cannot_call_user_endpoints(api) -> None:  # type: ignore[no-untyped-def]
    client, state = api
    from argosy.store.keys import create_key

    with state.store.session() as s:
        agent_key = create_key(s, "a", "agent", 1.0, node_id="node_x")
    r = client.get("/api/v1/deployments", headers={"Authorization": f"Bearer {agent_key}"})
    assert r.status_code == 401 and "role 'agent'" in r.json()["message"]


def test_dry_run_changes_nothing_and_shows_the_plan(api, model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    r = client.post(
        "/api/v1/deployments",
        json={"model": str(model_dir), "name": "m", "provider": "fake", "dry_run": True},
    )
    assert r.status_code == 200, r.text
    plan = r.json()["plan"]
    assert plan["offering"]["provider"] == "fake"
    assert plan["engine_plan"]["argv"]
    assert "--alias" in plan["engine_plan"]["argv"]
    assert client.get("/api/v1/deployments").json() == []


def test_deploy_list_get_destroy_and_conflicts(api, model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    r = client.post("/api/v1/deployments", json={"model": str(model_dir), "name": "m", "provider": "fake"})
    assert r.status_code == 200, r.text
    assert r.json()["deployment"]["state"] == "active"
    again = client.post(
        "/api/v1/deployments", json={"model": str(model_dir), "name": "m", "provider": "fake"}
    )
    assert again.status_code == 409 and "already exists" in again.json()["message"]
    assert [d["name"] for d in client.get("/api/v1/deployments").json()] == ["m"]
    assert client.delete("/api/v1/deployments/m").json()["state"] == "destroying"
    assert client.delete("/api/v1/deployments/m").status_code == 200  # idempotent while it runs
    events = client.get("/api/v1/events", params={"deployment": "m"}).json()
    assert [e["to"] for e in events] == ["active", "destroying"]


def test_bad_input_is_answered_clearly(api, model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    r = client.post("/api/v1/deployments", json={"model": str(model_dir), "provider": "lokal"})
    assert r.status_code == 400 and "did you mean 'local'" in r.json()["message"].lower()
    r = client.post("/api/v1/deployments", json={"model": "./missing-model"})
    assert r.status_code == 400 and "does not exist" in r.json()["message"]
    assert "make-tiny" in r.json()["fix"]
    r = client.post("/api/v1/deployments", json={"model": str(model_dir), "engine": "llamacp"})
    assert "did you mean 'llamacpp'" in r.json()["message"].lower()
    r = client.post("/api/v1/deployments", json={"model": str(model_dir), "replicaz": 2})
    assert r.status_code == 422
    r = client.get("/api/v1/deployments/nope")
    assert r.status_code == 404 and "argosy list" in r.json()["fix"]


def test_agent_registers_and_heartbeats_with_its_node_scoped_key(api) -> None:  # type: ignore[no-untyped-def]
    client, state = api
    from argosy.store.keys import create_key
    from argosy.store.models import Node

    with state.store.session() as s:
        s.add(
            Node(
                id="node_1",
                name="n",
                provider="fake",
                provider_instance_id="i",
                status="provisioning",
                created_at=1,
                updated_at=1,
            )
        )
        s.flush()
        key = create_key(s, "a", "agent", 1.0, node_id="node_1")
    h = {"Authorization": f"Bearer {key}"}
    r = client.post("/api/v1/agents/register", json={"hostname": "h", "cpus": 2}, headers=h)
    assert r.json()["node_id"] == "node_1"
    r = client.post(
        "/api/v1/agents/node_1/heartbeat", json={"workloads": {}, "metrics": {"load1": 0.1}}, headers=h
    )
    assert r.status_code == 200 and r.json()["workloads"] == []
    other = client.post("/api/v1/agents/node_2/heartbeat", json={}, headers=h)
    assert other.status_code == 400
    nodes = client.get("/api/v1/nodes").json()
    assert nodes[0]["status"] == "ready" and nodes[0]["metrics"]["load1"] == 0.1
