"""The sandbox routes inside the real server app: behind its auth, with a runner installed on it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from argosy.core.clock import FakeClock
from argosy.core.config import Settings
from argosy.sandbox.service import LocalRunner
from argosy.serve.routers import MemoryRouters
from argosy.server.app import create_app
from argosy.server.routes_sandbox import install
from argosy.server.state import ServerState
from argosy.store.db import Store

from .conftest import BWRAP, fresh_config

pytestmark = pytest.mark.skipif(BWRAP is None, reason="bubblewrap not installed")


def test_execute_behind_the_servers_auth(settings: Settings, tmp_path: Path) -> None:
    clock = FakeClock()
    state = ServerState(
        settings=settings,
        store=Store(settings.db_url),
        server_url="http://127.0.0.1:1",
        clock=clock,
        routers=MemoryRouters(),
    )
    app = create_app(state, run_loops=False)
    runner = LocalRunner(fresh_config(), clock=clock)
    install(app, runner)
    try:
        with TestClient(app) as client:
            body = {"code": "print('hi')", "language": "python"}
            assert client.post("/api/v1/sandbox/execute", json=body).status_code == 401
            key = json.loads(settings.credentials_path.read_text())["api_key"]
            client.headers["Authorization"] = f"Bearer {key}"
            r = client.post("/api/v1/sandbox/execute", json=body)
            assert r.status_code == 200 and r.json()["stdout"] == "hi\n"
            assert client.post("/api/v1/sandboxes", json={"ttl_s": 60}).status_code == 201
    finally:
        runner.close()
        shutil.rmtree(runner.config.base_dir, ignore_errors=True)


def test_agent_reports_reach_the_sandbox_routes(settings: Settings) -> None:
    """Heartbeats feed the sandbox agents' table; a malformed report never fails the heartbeat."""
    from argosy.core.host import free_port

    clock = FakeClock()
    state = ServerState(
        settings=settings,
        store=Store(settings.db_url),
        server_url="http://127.0.0.1:1",
        clock=clock,
        routers=MemoryRouters(),
    )
    app = create_app(state, run_loops=False)
    with TestClient(app) as client:
        key = json.loads(settings.credentials_path.read_text())["api_key"]
        client.headers["Authorization"] = f"Bearer {key}"
        node = client.post("/api/v1/agents/register", json={"hostname": "h", "roles": ["sandbox"]}).json()
        nid = node["node_id"]
        bad = {"services": {"sandbox": {"url": "http://x", "token": "t", "max_concurrent": "many"}}}
        assert client.post(f"/api/v1/agents/{nid}/heartbeat", json=bad).status_code == 200
        assert "server's own machine" in client.get("/api/v1/sandbox/doctor").json()["runs_on"]
        dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the agent is gone
        good = {"services": {"sandbox": {"url": dead, "token": "t", "max_concurrent": 2, "max_queue": 1}}}
        assert client.post(f"/api/v1/agents/{nid}/heartbeat", json=good).status_code == 200
        assert nid in client.get("/api/v1/sandbox/doctor").json()["runs_on"]
        r = client.post("/api/v1/sandbox/execute", json={"code": "print(1)"})
        assert r.status_code == 503 and nid in r.json()["message"] and r.json()["fix"]
        clock.advance(settings.server.heartbeat_timeout_s + 1)  # its heartbeats stop: not registered
        assert "server's own machine" in client.get("/api/v1/sandbox/doctor").json()["runs_on"]
