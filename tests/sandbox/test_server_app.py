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
