"""The REST routes on a real FastAPI app (the server includes the same router behind auth)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from argosy.catalog import load_offerings
from argosy.core.clock import FakeClock
from argosy.server.routes_catalog import offerings_dependency, router


@pytest.fixture
def client(cat_settings) -> TestClient:  # type: ignore[no-untyped-def]
    from argosy.providers.local import LocalProvider

    app = FastAPI()
    app.include_router(router)
    from argosy.providers.registry import get_provider

    live = LocalProvider(cat_settings, FakeClock()).offerings()
    for name in ("modal", "runpod-serverless", "baseten", "cloudrun"):  # published list prices
        live += get_provider(name, cat_settings).offerings()
    app.dependency_overrides[offerings_dependency] = lambda: load_offerings(cat_settings, live=live)
    return TestClient(app)


def test_gpus(client: TestClient) -> None:
    r = client.get("/api/v1/catalog/gpus")
    assert r.status_code == 200
    names = {g["name"] for g in r.json()}
    assert {"H100-SXM", "MI300X", "RTX4090"} <= names


def test_offerings_filters_and_errors(client: TestClient) -> None:
    r = client.get("/api/v1/catalog/offerings", params={"gpu": "A100", "kind": "vm"})
    assert r.status_code == 200
    rows = r.json()
    assert rows and all(o["gpu"] == "A100-80GB" and o["kind"] == "vm" for o in rows)
    assert all("age_s" in o and "stale" in o and o["source"] for o in rows)
    bad = client.get("/api/v1/catalog/offerings", params={"gpu": "H10"})
    assert bad.status_code == 404 and "H100-SXM" in bad.json()["message"] and bad.json()["fix"]


def test_plan(client: TestClient) -> None:
    r = client.post(
        "/api/v1/plan", json={"model": "llama-3.1-8b", "objective": "balanced", "kinds": ["vm", "spot"]}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choice"]["kind"] in ("vm", "spot") and body["explanation"][0].startswith("Chose ")
    assert body["requirement"]["weights_gb"] == pytest.approx(16.06, abs=0.05)


def test_plan_errors(client: TestClient) -> None:
    r = client.post("/api/v1/plan", json={"model": "llama-3.1-405b", "kinds": ["serverless"]})
    assert r.status_code == 422 and r.json()["details"]["suggestions"]
    assert client.post("/api/v1/plan", json={"model": "lama-3.1-8b"}).status_code == 404
    assert client.post("/api/v1/plan", json={"model": "x", "bogus": 1}).status_code == 422  # strict body
    cpu = client.post("/api/v1/plan", json={"model": "smollm2-135m", "kinds": ["local"]}).json()
    assert cpu["choice"]["provider"] == "local"
