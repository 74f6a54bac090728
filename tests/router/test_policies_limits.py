"""Policy distributions, limits and HTTP hardening, with the OpenAI client against the router."""

from __future__ import annotations

import collections
import socket
import threading
import time

import httpx
import pytest

from router.backend import expected_text
from router.conftest import fallbacks, primaries


def _served(url: str, n: int, body: dict | None = None) -> collections.Counter:
    c: collections.Counter = collections.Counter()
    with httpx.Client() as cl:
        for _ in range(n):
            c[
                cl.post(url + "/v1/completions", json=body or {"model": "t", "prompt": "x"}).json()[
                    "served_by"
                ]
            ] += 1
    return c


def test_round_robin_weights_exact(router, backends) -> None:
    a, b = backends("a"), backends("b")
    r = router(backends=[{"name": "a", "url": a.url, "weight": 2}, {"name": "b", "url": b.url, "weight": 1}],
               policy="round-robin")  # fmt: skip
    assert _served(r.url, 30) == {"a": 20, "b": 10}


@pytest.mark.parametrize("policy", ["least-outstanding", "power-of-two"])
def test_load_policies_spread_sequential_load(router, backends, policy: str) -> None:
    bs = [backends(n) for n in "abc"]
    r = router(backends=primaries(*bs), policy=policy)
    c = _served(r.url, 60)
    assert set(c) == {"a", "b", "c"} and min(c.values()) >= 10


def test_least_outstanding_avoids_busy_backend(router, backends) -> None:
    slow, fast = backends("slow", hang_s=1.5), backends("fast")
    r = router(backends=primaries(slow), policy="least-outstanding", admin_token="t")
    t = threading.Thread(
        target=lambda: httpx.post(r.url + "/v1/completions", json={"prompt": "x"}, timeout=10)
    )
    t.start()
    time.sleep(0.3)
    # Adding a backend keeps the busy one's in-flight count (same name and URL), so new work avoids it.
    httpx.put(
        r.url + "/router/backends",
        json={"backends": primaries(slow, fast)},
        headers={"authorization": "Bearer t"},
    )
    assert _served(r.url, 5) == {"fast": 5}
    t.join()


def test_spot_first_spills_when_saturated(router, backends) -> None:
    p, f = backends("p", hang_s=1.0), backends("f")
    r = router(backends=primaries(p, max_concurrency=1) + fallbacks(f), policy="spot-first")
    t = threading.Thread(
        target=lambda: httpx.post(r.url + "/v1/completions", json={"prompt": "x"}, timeout=10)
    )
    t.start()
    time.sleep(0.3)
    assert _served(r.url, 2) == {"f": 2}  # the only primary is full: spill to the fallback tier
    t.join()
    p.behaviour.hang_s = 0
    assert _served(r.url, 2) == {"p": 2}  # and return once it has room


def test_prefix_affinity_sticks_and_bounds(router, backends) -> None:
    bs = [backends(n) for n in "abcd"]
    r = router(backends=primaries(*bs), policy="prefix-affinity")
    for prompt in ("alpha " * 50, "beta " * 50, "gamma " * 50):
        c = _served(r.url, 5, {"model": "t", "prompt": prompt})
        assert len(c) == 1  # same prefix, same replica
    spread = collections.Counter()
    for i in range(40):
        spread.update(_served(r.url, 1, {"model": "t", "prompt": f"user {i} question"}))
    assert len(spread) >= 3  # different prefixes spread over the ring
    bad = httpx.post(
        r.url + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_json"


def test_bad_json_passes_through_when_router_need_not_parse(router, backends) -> None:
    a = backends("a")
    r = router(backends=primaries(a))
    resp = httpx.post(r.url + "/v1/echo", content=b"{not json")
    assert resp.status_code == 200 and resp.json()["raw"] == "{not json"


def test_per_key_rate_limit_and_concurrency(router, backends) -> None:
    a = backends("a", hang_s=0)
    r = router(backends=primaries(a), api_keys=[{"name": "k", "key": "sk1", "requests_per_minute": 3}])
    h = {"authorization": "Bearer sk1"}
    codes = [
        httpx.post(r.url + "/v1/completions", json={"prompt": "x"}, headers=h).status_code for _ in range(4)
    ]
    assert codes == [200, 200, 200, 429]
    last = httpx.post(r.url + "/v1/completions", json={"prompt": "x"}, headers=h)
    assert last.headers["retry-after"].isdigit() and last.json()["error"]["code"] == "rate_limit"


def test_token_rate_limit(router, backends) -> None:
    a = backends("a")
    r = router(backends=primaries(a), api_keys=[{"key": "sk1", "tokens_per_minute": 10}], admin_token="t")
    h = {"authorization": "Bearer sk1"}
    assert (
        httpx.post(r.url + "/v1/completions", json={"prompt": "x"}, headers=h).status_code == 200
    )  # 5+8 tokens
    second = httpx.post(r.url + "/v1/completions", json={"prompt": "x"}, headers=h)
    assert second.status_code == 429 and second.json()["error"]["code"] == "token_rate_limit"
    usage = httpx.get(r.url + "/router/usage", headers={"authorization": "Bearer t"}).json()["keys"]["key-1"]
    assert usage["prompt_tokens"] == 5 and usage["completion_tokens"] == 8


def test_global_in_flight_cap(router, backends) -> None:
    a = backends("a", hang_s=1.0)
    r = router(backends=primaries(a), limits={"max_in_flight": 1})
    t = threading.Thread(
        target=lambda: httpx.post(r.url + "/v1/completions", json={"prompt": "x"}, timeout=10)
    )
    t.start()
    time.sleep(0.3)
    resp = httpx.post(r.url + "/v1/completions", json={"prompt": "x"})
    assert resp.status_code == 429 and resp.headers["retry-after"] == "1"
    t.join()


def test_body_cap_413(router, backends) -> None:
    a = backends("a")
    r = router(backends=primaries(a), limits={"max_body_bytes": 2048})
    resp = httpx.post(r.url + "/v1/completions", content=b"x" * 5000)
    assert resp.status_code == 413


def test_path_validation(router, backends) -> None:
    a = backends("a")
    r = router(backends=primaries(a))
    for path in ("/v1/../admin", "/v1/%2e%2e/x", "/v1//evil.com/x", "/v1/a@b"):
        with socket.create_connection(("127.0.0.1", r.router.port)) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
            assert s.recv(100).startswith(b"HTTP/1.1 400"), path
    with socket.create_connection(("127.0.0.1", r.router.port)) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        assert s.recv(100).startswith(b"HTTP/1.1 400")


def test_slowloris_is_cut_off_and_idle_clients_do_not_block(router, backends) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20000), hard))
    a = backends("a")
    r = router(backends=primaries(a), timeouts={"client_header_s": 0.5})
    slow = socket.create_connection(("127.0.0.1", r.router.port))
    slow.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n")  # ... and never finishes its headers
    idle = []
    n = 5000 if min(hard, 20000) > 11000 else 1000
    for _ in range(n):
        idle.append(socket.create_connection(("127.0.0.1", r.router.port)))
    try:
        resp = httpx.post(r.url + "/v1/completions", json={"prompt": "x"}, timeout=20)
        assert resp.status_code == 200
        assert r.call(lambda: len(r.router.server.connections)) >= n
        slow.settimeout(5)
        assert slow.recv(10) == b""  # closed by the header deadline
    finally:
        for s in idle:
            s.close()
        slow.close()


def test_openai_client_streaming_and_not(router, backends) -> None:
    openai = pytest.importorskip("openai")
    a = backends("a", chunks=6)
    r = router(backends=primaries(a), api_keys=[{"key": "sk-test"}])
    client = openai.OpenAI(base_url=r.url + "/v1", api_key="sk-test")
    out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert out.choices[0].message.content == expected_text(6)
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected_text(6)
    comp = client.completions.create(model="tiny", prompt="x", max_tokens=3)
    assert comp.choices[0].text == expected_text(3)
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_metrics_exposed(router, backends) -> None:
    a = backends("a")
    r = router(backends=primaries(a))
    httpx.post(r.url + "/v1/completions", json={"prompt": "x"})
    with httpx.stream("POST", r.url + "/v1/completions", json={"prompt": "x", "stream": True}) as s:
        s.read()
    text = httpx.get(r.url + "/metrics").text
    assert 'argosy_router_requests_total{backend="a",tier="primary",status="200"} 2' in text
    assert "argosy_router_ttft_seconds_bucket" in text and "argosy_router_chunks_total 10" in text
    # 8 from the plain answer, 8 from the stream's usage chunk (asked for by the router, not relayed)
    assert 'argosy_router_tokens_total{backend="a",direction="out"} 16' in text
