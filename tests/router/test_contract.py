"""The contract the control plane relies on: health, proxying, SSE relay, merged models, admin API, 503s."""

from __future__ import annotations

import json

import httpx

from router.backend import expected_text
from router.conftest import primaries


def test_health_without_backends(router) -> None:
    r = router()
    assert httpx.get(f"{r.url}/health").status_code == 200


def test_no_backend_is_503_openai_error(router) -> None:
    r = router()
    resp = httpx.post(f"{r.url}/v1/chat/completions", json={"model": "m", "messages": []})
    assert resp.status_code == 503
    err = resp.json()["error"]
    assert {"message", "type", "code"} <= set(err)
    assert "fix:" in err["message"]


def test_non_streaming_and_streaming(router, backends) -> None:
    a = backends("a", chunks=5)
    r = router(backends=primaries(a))
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    resp = httpx.post(f"{r.url}/v1/chat/completions", json=body)
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == expected_text(5)
    with httpx.stream("POST", f"{r.url}/v1/chat/completions", json={**body, "stream": True}) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        events = [ln for ln in s.iter_lines() if ln.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    text = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == expected_text(5)


def test_models_merged(router, backends) -> None:
    a = backends("a", model="m1")
    b = backends("b", model="m2")
    c = backends("c", model="m1")
    r = router(backends=primaries(a, b, c))
    ids = sorted(m["id"] for m in httpx.get(f"{r.url}/v1/models").json()["data"])
    assert ids == ["m1", "m2"]


def test_admin_replaces_table_and_reports_status(router, backends) -> None:
    a = backends("a")
    b = backends("b")
    r = router(backends=primaries(a), admin_token="s3cret")
    assert httpx.get(f"{r.url}/router/status").status_code == 401
    assert httpx.get(f"{r.url}/router/status", headers={"authorization": "Bearer nope"}).status_code == 401
    auth = {"authorization": "Bearer s3cret"}
    table = {"backends": [{"name": "bb", "url": b.url, "tier": "fallback", "weight": 2, "max_concurrency": 4,
                           "headers": {"Authorization": "Bearer provider-token"}}]}  # fmt: skip
    assert httpx.put(f"{r.url}/router/backends", json=table, headers=auth).status_code == 200
    st = httpx.get(f"{r.url}/router/status", headers=auth).json()
    (row,) = st["backends"]
    assert row["name"] == "bb" and row["url"] == b.url and row["tier"] == "fallback"
    assert {"state", "in_flight", "ewma_latency_ms"} <= set(row)
    resp = httpx.post(
        f"{r.url}/v1/completions",
        json={"model": "tiny", "prompt": "x"},
        headers={"authorization": "Bearer client"},
    )
    assert resp.status_code == 200
    assert resp.json()["served_by"] == "b"
    # Provider token injected, client's Authorization never forwarded.
    assert b.completions()[-1]["headers"]["Authorization"] == "Bearer provider-token"


def test_admin_rejects_unknown_keys(router) -> None:
    r = router(admin_token="t")
    auth = {"authorization": "Bearer t"}
    resp = httpx.put(f"{r.url}/router/backends", json={"backends": [{"url": "http://127.0.0.1:1", "wieght": 2}]},
                     headers=auth)  # fmt: skip
    assert resp.status_code == 400
    assert "wieght" in resp.json()["error"]["message"]


def test_admin_disabled_without_token(router) -> None:
    r = router()
    assert httpx.get(f"{r.url}/router/status").status_code == 404


def test_api_keys_required_and_not_forwarded(router, backends) -> None:
    a = backends("a")
    r = router(backends=primaries(a), api_keys=[{"key": "sk-client"}])
    body = {"model": "tiny", "prompt": "x"}
    assert httpx.post(f"{r.url}/v1/completions", json=body).status_code == 401
    assert (
        httpx.post(f"{r.url}/v1/completions", json=body, headers={"authorization": "Bearer bad"}).status_code
        == 401
    )
    ok = httpx.post(f"{r.url}/v1/completions", json=body, headers={"authorization": "Bearer sk-client"})
    assert ok.status_code == 200
    assert "Authorization" not in a.completions()[-1]["headers"]
    assert "authorization" not in {k.lower() for k in a.completions()[-1]["headers"]}
