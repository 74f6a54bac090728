"""Busy seconds per backend in /router/usage: what the server bills a serverless fallback by when its
provider reports no usage of its own."""

from __future__ import annotations

import threading

import httpx

from router.conftest import fallbacks, primaries

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
ADMIN = {"Authorization": "Bearer adm"}


def _post(url: str) -> None:
    assert httpx.post(url + "/v1/chat/completions", json=CHAT, timeout=10).status_code == 200


def test_busy_seconds_count_overlapping_requests_once(router, backends) -> None:
    a = backends("a", hang_s=0.4)
    r = router(backends=primaries(a), admin_token="adm")
    assert httpx.get(r.url + "/router/usage", headers=ADMIN).json()["busy_s"] == {}
    threads = [threading.Thread(target=_post, args=(r.url,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    busy = httpx.get(r.url + "/router/usage", headers=ADMIN).json()["busy_s"]
    assert set(busy) == {"a"}
    assert busy["a"] >= 0.4  # each request took at least the backend's hang
    # Counted as wall time with a request in flight, not the sum of request durations: the two
    # overlapping requests add their union, which the router's own clock bounds from above.
    # Wall time with a request in flight, not the sum of request durations: one busy period here,
    # closed once the backend is idle (nothing left open to keep growing).
    assert r.call(lambda: dict(r.router._busy_since)) == {}
    assert abs(r.call(lambda: r.router.busy_s["a"]) - busy["a"]) < 1e-3


def test_busy_seconds_are_per_backend_and_include_an_open_request(router, backends) -> None:
    f = backends("f", hang_s=0.6)
    r = router(backends=fallbacks(f), admin_token="adm")  # no primary: the fallback tier serves
    t = threading.Thread(target=_post, args=(r.url,))
    t.start()
    # While the fallback's answer is still pending, its open busy period is reported.
    for _ in range(100):
        busy = httpx.get(r.url + "/router/usage", headers=ADMIN).json()["busy_s"]
        if busy.get("f", 0) > 0:
            break
        threading.Event().wait(0.02)
    assert busy.get("f", 0) > 0
    t.join()
    after = httpx.get(r.url + "/router/usage", headers=ADMIN).json()["busy_s"]
    assert after["f"] >= 0.6 and after["f"] >= busy["f"]
    assert set(after) == {"f"}
