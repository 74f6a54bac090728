"""Failover, retries, health and ejection against real backends that die, fail and hang."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from router.backend import expected_text
from router.conftest import fallbacks, primaries


def _stream(url: str, path: str, body: dict) -> tuple[list[dict], list[str]]:
    with httpx.stream("POST", url + path, json={**body, "stream": True}, timeout=20) as s:
        assert s.status_code == 200, s.read()
        raw = [ln[6:] for ln in s.iter_lines() if ln.startswith("data: ")]
    assert raw[-1] == "[DONE]"
    return [json.loads(x) for x in raw[:-1]], raw


@pytest.mark.parametrize("kind", ["chat", "completions"])
def test_killed_mid_stream_fails_over_seamlessly(router, backends, kind: str) -> None:
    dying = backends("dying", die_after=4)
    healthy = backends("healthy")
    # Round-robin starts on the first backend, so the dying one takes the request.
    # No active probes here: this is about passive failover, and a probe racing the request could
    # steer round-robin away from the dying backend.
    r = router(backends=primaries(dying, healthy, probe=False), policy="round-robin")
    if kind == "chat":
        path, body = (
            "/v1/chat/completions",
            {"model": "tiny", "messages": [{"role": "user", "content": "go"}], "max_tokens": 12},
        )
    else:
        path, body = "/v1/completions", {"model": "tiny", "prompt": "go", "max_tokens": 12}
    events, _ = _stream(r.url, path, body)
    pieces = [
        (e["choices"][0]["delta"].get("content") if kind == "chat" else e["choices"][0].get("text")) or ""
        for e in events
        if e.get("choices")
    ]
    assert "".join(pieces) == expected_text(12)
    # One stream to the client: same id, created and model throughout.
    assert len({e["id"] for e in events}) == 1
    assert len({e["created"] for e in events}) == 1
    assert len({e["model"] for e in events}) == 1
    if kind == "chat":
        assert sum(1 for e in events if e["choices"] and "role" in e["choices"][0]["delta"]) == 1
    cont = healthy.completions()[-1]["body"]
    assert cont["max_tokens"] == 8
    if kind == "chat":
        assert cont["continue_final_message"] is True and cont["add_generation_prompt"] is False
        assert cont["messages"][-1] == {"role": "assistant", "content": expected_text(4)}
    else:
        assert cont["prompt"] == "go" + expected_text(4)
    assert r.call(lambda: r.router.metrics.value("argosy_router_failovers_total", ("continued",))) == 1


def test_continuation_impossible_ends_with_error_event(router, backends) -> None:
    dying = backends("dying", die_after=3)
    other = backends("other", reject_continuation=True)
    r = router(backends=primaries(dying, other, probe=False), policy="round-robin")
    body = {"model": "tiny", "messages": [{"role": "user", "content": "go"}], "max_tokens": 10}
    with httpx.stream("POST", r.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=20) as s:
        raw = [ln[6:] for ln in s.iter_lines() if ln.startswith("data: ")]
    assert raw[-1] == "[DONE]"
    err = json.loads(raw[-2])["error"]
    assert err["code"] == "stream_interrupted" and "rejected the continuation" in err["message"]


def test_no_other_backend_gives_error_event_not_truncation(router, backends) -> None:
    dying = backends("dying", die_after=2)
    r = router(backends=primaries(dying))
    with httpx.stream(
        "POST", r.url + "/v1/completions", json={"model": "t", "prompt": "p", "stream": True}, timeout=20
    ) as s:
        raw = [ln[6:] for ln in s.iter_lines() if ln.startswith("data: ")]
    assert raw[-1] == "[DONE]" and "error" in json.loads(raw[-2])


def test_5xx_and_429_retry_on_another_backend(router, backends) -> None:
    bad = backends("bad", status=500)
    busy = backends("busy", status=429)
    good = backends("good")
    r = router(backends=primaries(bad, busy, good), policy="round-robin")
    for _ in range(6):
        resp = httpx.post(r.url + "/v1/completions", json={"model": "t", "prompt": "x"})
        assert resp.status_code == 200 and resp.json()["served_by"] == "good"


def test_connect_error_retries_and_ejects(router, backends) -> None:
    good = backends("good")
    dead = {"name": "dead", "url": "http://127.0.0.1:9", "probe": False}
    r = router(backends=[dead, *primaries(good)], policy="round-robin", health={"eject_after_failures": 2})
    for _ in range(6):
        assert httpx.post(r.url + "/v1/completions", json={"model": "t", "prompt": "x"}).status_code == 200
    st = r.call(lambda: r.router.status())
    assert {b["name"]: b["state"] for b in st["backends"]}["dead"] == "ejected"


def test_all_primaries_down_goes_to_fallback_then_returns(router, backends) -> None:
    p = backends("p")
    f = backends("f")
    r = router(backends=primaries(p) + fallbacks(f), policy="spot-first")
    assert (
        httpx.post(r.url + "/v1/completions", json={"model": "t", "prompt": "x"}).json()["served_by"] == "p"
    )
    p.behaviour.health_status = 503
    _wait(lambda: r.call(lambda: r.router.table[0].state) == "unhealthy")
    assert (
        httpx.post(r.url + "/v1/completions", json={"model": "t", "prompt": "x"}).json()["served_by"] == "f"
    )
    p.behaviour.health_status = 200
    _wait(lambda: r.call(lambda: r.router.table[0].state) == "healthy")
    assert (
        httpx.post(r.url + "/v1/completions", json={"model": "t", "prompt": "x"}).json()["served_by"] == "p"
    )


def test_everything_down_is_503_within_deadline(router) -> None:
    r = router(backends=[{"url": "http://127.0.0.1:9"}], limits={"queue_timeout_s": 0.5})
    t0 = time.monotonic()
    resp = httpx.post(r.url + "/v1/completions", json={"model": "t", "prompt": "x"}, timeout=10)
    assert resp.status_code in (502, 503)
    assert resp.json()["error"]["code"] in ("no_backend_available", "backends_failed", "connect")
    assert time.monotonic() - t0 < 5


def test_hanging_backend_times_out_and_fails_over(router, backends) -> None:
    slow = backends("slow", hang_s=3)
    good = backends("good")
    r = router(backends=primaries(slow, good), policy="round-robin", timeouts={"first_byte_s": 0.3})
    for _ in range(2):
        resp = httpx.post(r.url + "/v1/completions", json={"model": "t", "prompt": "x"}, timeout=10)
        assert resp.status_code == 200 and resp.json()["served_by"] == "good"


def test_retry_budget_stops_retry_storm(router, backends) -> None:
    bads = [backends(f"bad{i}", status=503) for i in range(3)]
    r = router(
        backends=primaries(*bads),
        retries={"max_attempts": 3, "budget_ratio": 0.1, "budget_min_per_s": 0.0001},
    )
    for _ in range(30):
        httpx.post(r.url + "/v1/completions", json={"model": "t", "prompt": "x"})
    upstream = sum(len(b.completions()) for b in bads)
    # Without a budget this would be 90 upstream requests; 10% budget allows ~3 retries (+1 floor token).
    assert upstream <= 30 + 5
    assert r.call(lambda: r.router.metrics.total("argosy_router_retries_denied_total")) > 0


def test_scale_from_zero_queue_waits_for_backend(router, backends) -> None:
    r = router(admin_token="t", limits={"queue_timeout_s": 10})
    b = backends("late")
    import threading

    result: dict = {}

    def call() -> None:
        result["r"] = httpx.post(r.url + "/v1/completions", json={"model": "t", "prompt": "x"}, timeout=20)

    th = threading.Thread(target=call)
    th.start()
    _wait(lambda: r.call(lambda: r.router.queued) == 1)
    assert r.call(lambda: r.router.metrics.total("argosy_router_wakeups_total")) == 1
    httpx.put(
        r.url + "/router/backends", json={"backends": primaries(b)}, headers={"authorization": "Bearer t"}
    )
    th.join(15)
    assert result["r"].status_code == 200


def _wait(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")
