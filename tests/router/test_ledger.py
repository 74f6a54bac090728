"""Router token usage reaches the server's store: pulled from real router processes on loopback,
recorded once per router start id (idempotent), summed across restarts."""

from __future__ import annotations

import json

import httpx
from fastapi.testclient import TestClient

from argosy.core.clock import FakeClock
from argosy.core.config import Settings
from argosy.serve import router_usage
from argosy.serve.reconciler import DeploymentReconciler
from argosy.serve.routers import MemoryRouters, ProcessRouters
from argosy.server.app import create_app
from argosy.server.state import ServerState
from argosy.store.db import Store
from argosy.store.models import Deployment, RouterUsage
from router.conftest import primaries


def _traffic(url: str, n_stream: int, n_plain: int) -> None:
    for _ in range(n_stream):
        body = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 3}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body) as s:
            s.read()
    for _ in range(n_plain):
        httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 2})


def _deployment(store: Store, port: int) -> str:
    with store.session() as s:
        s.add(Deployment(id="dep1", name="m", model="tiny", engine="llamacpp", provider="local", replicas=1,
                         state="active", router_port=port, router_admin_token="adm", created_at=0.0,
                         updated_at=0.0))  # fmt: skip
    return "dep1"


def test_usage_is_pulled_idempotently_and_survives_a_router_restart(
    router, backends, settings: Settings, db_url: str
) -> None:
    a = backends("a")
    store = Store(db_url)
    clock = FakeClock()
    first = router(backends=primaries(a), admin_token="adm")
    dep_id = _deployment(store, first.router.port)
    rec = DeploymentReconciler(store, clock, lambda _n: None, ProcessRouters(settings), "http://server")
    _traffic(first.url, n_stream=2, n_plain=1)  # 2 x (5 in, 3 out) + (5 in, 2 out)

    for _ in range(2):  # the same counters pulled twice are recorded once
        with store.session() as s:
            rec._pull_usage(s, s.get(Deployment, dep_id), clock.now())
    with store.session() as s:
        assert len(s.query(RouterUsage).all()) == 1
        assert router_usage.totals(s, dep_id) == {"requests": 3, "prompt_tokens": 15, "completion_tokens": 8}

    # The router restarts: its counters start from zero under a new start id; nothing is lost or doubled.
    second = router(backends=primaries(a), admin_token="adm")
    with store.session() as s:
        s.get(Deployment, dep_id).router_port = second.router.port
    _traffic(second.url, n_stream=1, n_plain=0)
    with store.session() as s:
        rec._pull_usage(s, s.get(Deployment, dep_id), clock.now())
    with store.session() as s:
        rows = s.query(RouterUsage).order_by(RouterUsage.id).all()
        assert [r.start_id for r in rows] == [first.router.start_id, second.router.start_id]
        assert router_usage.totals(s, dep_id) == {"requests": 4, "prompt_tokens": 20, "completion_tokens": 11}
        assert router_usage.totals(s) == router_usage.totals(s, dep_id)


def test_an_unreachable_router_or_a_manager_without_usage_records_nothing(
    settings: Settings, db_url: str
) -> None:
    store = Store(db_url)
    dep_id = _deployment(store, 1)  # nothing listens on port 1
    for routers in (ProcessRouters(settings), MemoryRouters()):
        rec = DeploymentReconciler(store, FakeClock(), lambda _n: None, routers, "http://server")
        with store.session() as s:
            rec._pull_usage(s, s.get(Deployment, dep_id), 0.0)
    with store.session() as s:
        assert s.query(RouterUsage).all() == []
        assert router_usage.totals(s, dep_id) == {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}


def test_an_older_report_never_lowers_the_recorded_counters(db_url: str) -> None:
    store = Store(db_url)
    report = {
        "start_id": "s1",
        "started_at": 1.0,
        "total": {"requests": 5, "prompt_tokens": 50, "completion_tokens": 9},
    }
    stale = {**report, "total": {"requests": 4, "prompt_tokens": 40, "completion_tokens": 7}}
    with store.session() as s:
        router_usage.record(s, "d", report, 2.0)
    with store.session() as s:
        router_usage.record(s, "d", stale, 3.0)
        assert router_usage.record(s, "d", {"keys": {}}, 3.0) is None  # not a usage report
    with store.session() as s:
        assert router_usage.totals(s, "d") == {"requests": 5, "prompt_tokens": 50, "completion_tokens": 9}


def test_ledger_api_reports_tokens_per_deployment(settings: Settings) -> None:
    store = Store(settings.db_url)
    state = ServerState(settings=settings, store=store, server_url="http://127.0.0.1:1", clock=FakeClock(),
                        routers=MemoryRouters())  # fmt: skip
    _deployment(store, 1)
    with store.session() as s:  # two router processes of the same deployment
        for start, tin, tout in (("s1", 100, 40), ("s2", 7, 3)):
            report = {
                "start_id": start,
                "total": {"requests": 2, "prompt_tokens": tin, "completion_tokens": tout},
            }
            router_usage.record(s, "dep1", report, 1.0)
    with TestClient(create_app(state, run_loops=False)) as client:
        key = json.loads(settings.credentials_path.read_text())["api_key"]
        led = client.get("/api/v1/ledger", headers={"Authorization": f"Bearer {key}"}).json()
    row = led["deployments"][0]
    assert row["deployment"] == "m"
    assert row["tokens"] == {"requests": 4, "prompt_tokens": 107, "completion_tokens": 43}
    assert led["total"]["tokens"] == row["tokens"]
