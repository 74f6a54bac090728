"""Shared fixtures: an isolated ARGOSY_HOME per test, stores on SQLite and (when available) PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from argosy.core.config import Settings, ensure_home, parse_config

# Built engines and converted models are cached across tests and runs, outside the repo. By default
# the tests share the user's cache (ARGOSY_HOME's default), so `make demo` and `make test` build
# llama-server once between them; ARGOSY_TEST_CACHE points them elsewhere.
TEST_CACHE = Path(os.environ.get("ARGOSY_TEST_CACHE") or Path.home() / ".argosy" / "cache")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("ARGOSY_HOME", str(h))
    monkeypatch.setenv("ARGOSY_CACHE_DIR", str(TEST_CACHE))
    monkeypatch.delenv("ARGOSY_SERVER_URL", raising=False)
    monkeypatch.delenv("ARGOSY_DATABASE_URL", raising=False)
    monkeypatch.delenv("ARGOSY_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return h


@pytest.fixture
def settings(home: Path) -> Settings:
    s = parse_config("", env={"ARGOSY_HOME": str(home), "ARGOSY_CACHE_DIR": str(TEST_CACHE)})
    ensure_home(s)
    return s


# A small Llama-shaped config.json: enough for model sizing and placement, no weights needed.
TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 4096,
    "max_position_embeddings": 8192,
    "torch_dtype": "bfloat16",
}


def write_model_config(directory: Path) -> Path:
    import json

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(TINY_CONFIG))
    return directory


def _postgres_url() -> str | None:
    return os.environ.get("ARGOSY_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on each backend. PostgreSQL tests need ARGOSY_TEST_POSTGRES_URL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    base = _postgres_url()
    if not base:
        pytest.skip("PostgreSQL not configured: set ARGOSY_TEST_POSTGRES_URL (.ci/run starts one)")
    import psycopg

    name = f"argosy_test_{uuid.uuid4().hex[:10]}"
    admin = base.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    head, _, _ = base.rpartition("/")
    try:
        yield f"{head}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def api(settings: Settings):  # type: ignore[no-untyped-def]
    """The real server app over SQLite with a fake clock and in-memory routers, no reconciler loops:
    a TestClient carrying the admin key, and the ServerState behind it."""
    import json

    from fastapi.testclient import TestClient

    from argosy.core.clock import FakeClock
    from argosy.serve.routers import MemoryRouters
    from argosy.server.app import create_app
    from argosy.server.state import ServerState
    from argosy.store.db import Store

    state = ServerState(
        settings=settings,
        store=Store(settings.db_url),
        server_url="http://127.0.0.1:1",
        clock=FakeClock(),
        routers=MemoryRouters(),
    )
    with TestClient(create_app(state, run_loops=False)) as client:
        key = json.loads(settings.credentials_path.read_text())["api_key"]
        client.headers["Authorization"] = f"Bearer {key}"
        yield client, state
