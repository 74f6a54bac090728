"""The SSE relay (fed from the upstream protocol callback): back-pressure from a slow client reaches
the backend, a client that leaves stops the upstream, and a stream that stalls mid-body times out and
continues elsewhere. Real backends and a real router on loopback; waits poll state, nothing is timed."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

import httpx

from router.backend import expected_text
from router.conftest import RunningRouter, fallbacks, primaries


def _wait(cond: Callable[[], bool], what: str, limit_s: float = 20.0) -> None:
    end = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for: {what}")
        time.sleep(0.05)


def _raw_stream_request(port: int, body: dict[str, object], rcvbuf: int = 16384) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # a small window: a slow client
    sock.connect(("127.0.0.1", port))
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\n\r\n%s" % (len(data), data))  # fmt: skip
    return sock


def _in_flight(r: RunningRouter) -> int:
    return r.call(lambda: r.router.in_flight + sum(b.in_flight for b in r.router.table))


def _stable(read: Callable[[], int], samples: int = 5) -> int:
    """The value once it stopped changing over `samples` consecutive polls."""
    last, same = read(), 0
    while same < samples:
        time.sleep(0.1)
        now = read()
        same = same + 1 if now == last else 0
        last = now
    return last


def test_slow_client_back_pressures_the_backend_and_loses_nothing(router, backends) -> None:
    n, pad = 6000, 8192  # ~50 MB of events: more than every socket buffer on the way can hold
    a = backends("a", chunks=n, pad=pad)
    r = router(backends=primaries(a))
    sock = _raw_stream_request(
        r.router.port, {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    try:
        stalled_at = _stable(lambda: a.chunks_written)
        assert stalled_at < n, "the backend was never slowed down by the client that does not read"

        # What the router itself holds for this client stays bounded (the upstream is paused instead).
        def held() -> int:
            conns = list(r.router.server.connections)
            return max((c._transport.get_write_buffer_size() for c in conns if c._transport), default=0)

        assert r.call(held) < 2 * 1024 * 1024
        sock.settimeout(20)
        buf = bytearray()
        while not buf.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(1 << 20)
            assert chunk, "the router closed the stream early"
            buf += chunk
    finally:
        sock.close()
    assert a.chunks_written == n
    body = bytes(buf).split(b"\r\n\r\n", 1)[1]
    assert body.count(b'"content": "t') == n and b"data: [DONE]" in body
    assert b"t%d x" % (n - 1) in body


def test_client_leaving_mid_stream_releases_the_backend(router, backends) -> None:
    a = backends("a", chunks=400, chunk_delay_s=0.02)
    r = router(backends=primaries(a))
    with httpx.stream("POST", r.url + "/v1/chat/completions",
                      json={"messages": [{"role": "user", "content": "hi"}], "stream": True}) as s:  # fmt: skip
        lines = s.iter_lines()
        got = [ln for ln in (next(lines) for _ in range(6)) if ln.startswith("data: ")]
        assert got
    # The client is gone: the router stops relaying, closes the upstream and frees its slots.
    _wait(lambda: _in_flight(r) == 0, "the router to release the request")
    assert _stable(lambda: a.chunks_written) < 400  # the backend stopped: its socket was closed
    assert httpx.get(r.url + "/health").status_code == 200


def test_stream_stalling_mid_body_times_out_and_continues_elsewhere(router, backends) -> None:
    slow = backends("slow", chunks=6, chunk_delay_s=3.0)  # one token, then silence longer than the gap limit
    fast = backends("fast", chunks=6)
    # The fallback tier gets the continuation: the only primary was tried, so the choice is deterministic.
    r = router(backends=primaries(slow) + fallbacks(fast), timeouts={"chunk_gap_s": 0.5},
               health={"probe_interval_s": 60})  # fmt: skip
    events = []
    with httpx.stream("POST", r.url + "/v1/chat/completions", timeout=20,
                      json={"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 6}) as s:  # fmt: skip
        for line in s.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    text = "".join((c.get("delta") or {}).get("content") or "" for e in events for c in e["choices"])
    assert text == expected_text(6)
    assert len(slow.completions()) == 1 and len(fast.completions()) == 1
    assert fast.completions()[0]["body"]["continue_final_message"] is True
    assert len({e["id"] for e in events}) == 1  # one stream, as the client sees it
