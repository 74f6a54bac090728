"""The router: OpenAI-compatible proxy, admin API, health probes, limits and metrics in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from argosy.core.errors import ArgosyError
from argosy.router import sse
from argosy.router.backends import HALF_OPEN, Backend, build_table
from argosy.router.config import RouterConfig, parse_backend_table
from argosy.router.http import ClientGone, HttpServer, Request, Response, ServerLimits
from argosy.router.limits import ClientKey, KeyRing, RetryBudget
from argosy.router.metrics import Metrics
from argosy.router.policies import RouteContext, make_policy, usable
from argosy.router.upstream import Pool, UpstreamError, UpstreamResponse

log = logging.getLogger("argosy.router")
access_log = logging.getLogger("argosy.router.access")

# Hop-by-hop and router-owned headers: never forwarded upstream. Authorization is the client's key
# for the router; it must not reach a provider (the backend's own headers are injected instead).
_DROP_UP = frozenset(
    b"host connection keep-alive proxy-connection proxy-authorization te trailer transfer-encoding upgrade "
    b"content-length expect authorization".split()
)
# ... and never relayed back to the client (framing is the router's own).
_DROP_DOWN = frozenset(
    b"connection keep-alive transfer-encoding content-length trailer upgrade server date".split()
)
_JSON = [(b"content-type", b"application/json")]
_USAGE_RE = re.compile(rb'"(prompt_tokens|completion_tokens)"\s*:\s*(\d+)')
_USAGE_OBJ = re.compile(rb'"usage"\s*:\s*\{')  # a usage object, not the `"usage": null` of other chunks
_BAD_PATH = re.compile(r"(\.\.|//|\\|%2e|%2f|%5c|%00|@|[^\x21-\x7e])", re.IGNORECASE)
_STREAM_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_BUFFER_LIMIT = 1024 * 1024  # non-stream bodies up to this are read whole, so a mid-body failure can retry


def _with_usage(body: bytes, parsed: dict[str, Any]) -> tuple[bytes, bool]:
    """A streaming request's body asking the upstream for usage, and whether the client did not ask
    (then the router strips the usage chunk from what it relays). `parsed` is updated to match, so a
    failover continuation asks too."""
    had = "stream_options" in parsed
    so = parsed.get("stream_options")
    if had and so is not None and not isinstance(so, dict):
        return body, False  # malformed: passed as sent, the upstream's validation answers it
    if isinstance(so, dict) and so.get("include_usage") is True:
        return body, False  # the client asked itself: relay its usage chunk
    parsed["stream_options"] = {**(so or {}), "include_usage": True}
    stripped = body.rstrip()
    if not had and stripped.endswith(b"}"):
        # Append the key to the client's own bytes rather than re-serialising its whole body.
        return stripped[:-1] + b',"stream_options":{"include_usage":true}}', True
    return json.dumps(parsed, separators=(",", ":")).encode(), True


def _error(message: str, type_: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "code": code}}).encode()


class _Failed(Exception):
    """A request failed at a point where the client gets `status` with an OpenAI-style error body."""

    def __init__(
        self, status: int, message: str, type_: str, code: str, headers: Sequence[tuple[bytes, bytes]] = ()
    ):
        super().__init__(message)
        self.status = status
        self.body = _error(message, type_, code)
        self.headers = [*_JSON, *headers]


class _Relay:
    """Feeds one upstream SSE stream to the client from the upstream protocol's callback.

    Called once per socket read with everything that read delivered, so a burst of events costs one
    client write, and no task wakes per chunk. It forwards whole events only (a break never leaves
    half an event with the client), keeps what it sent for failover, rewrites a continuation's events,
    strips the usage chunk the router asked for on the client's behalf, and pauses the upstream while
    the client's socket is full.
    """

    __slots__ = ("resp", "up", "sent", "seen", "chat", "strip_usage", "headers", "obs", "pending", "chunks",
                 "first", "last", "usage")  # fmt: skip

    def __init__(self, resp: Response, up: UpstreamResponse, sent: bytearray, seen: sse.Seen | None,
                 chat: bool, strip_usage: bool, headers: list[tuple[bytes, bytes]],
                 obs: Any) -> None:  # fmt: skip
        self.resp = resp
        self.up = up
        self.sent = sent
        self.seen = seen
        self.chat = chat
        self.strip_usage = strip_usage
        self.headers = headers
        self.obs = obs
        self.pending = b""
        self.chunks = 0
        self.first: float | None = None
        self.last = 0.0
        self.usage: list[bytes] = []  # usage payloads seen (stripped or not), for accounting

    def feed(self, data: bytes) -> None:
        resp = self.resp
        if resp.client_gone:
            self.up.close()  # nobody to relay to: stop the backend generating
            return
        now = time.monotonic()
        if self.first is None:
            self.first = now
        else:
            self.obs("argosy_router_chunk_gap_seconds", (), now - self.last)
        self.last = now
        buf = self.pending + data if self.pending else data
        cut = sse.event_cut(buf)
        if not cut:
            if len(buf) > _BUFFER_LIMIT:  # not SSE after all: relay rather than hold it without bound
                self.pending = b""
                self._emit(buf)
            else:
                self.pending = buf
            return
        if cut == len(buf):
            self.pending = b""
            self._emit(buf)
        else:
            self.pending = buf[cut:]
            self._emit(buf[:cut])

    def finish(self) -> None:
        """The upstream ended: send a trailing event that lacked its blank line."""
        tail, self.pending = self.pending, b""
        if tail.strip():
            self._emit(tail if tail.endswith(b"\n\n") else tail.rstrip(b"\r\n") + b"\n\n")
        if not self.resp.started:
            self.resp.start(200, self.headers, None)

    def _emit(self, out: bytes) -> None:
        if self.seen is not None:
            out = sse.rewrite_events(out, self.seen, self.chat)
        if b'"usage"' in out and _USAGE_OBJ.search(out):
            out = self._take_usage(out)
            if not out:
                return
        resp = self.resp
        if not resp.started:
            resp.start(200, self.headers, None)
        self.chunks += out.count(b"data:")
        self.sent += out
        resp.write_nowait(out)
        if resp.write_paused:
            self.up.pause()
            resp.on_resume(self.up.resume)

    def _take_usage(self, out: bytes) -> bytes:
        """Note every usage object; drop the usage-only chunk when the client did not ask for it."""
        keep = []
        for event in out.replace(b"\r\n", b"\n").split(b"\n\n"):
            if not event.strip():
                continue
            if _USAGE_OBJ.search(event):
                self.usage.append(event)
                if self.strip_usage and sse.is_usage_only(event):
                    continue
            keep.append(event + b"\n\n")
        return b"".join(keep)


class Router:
    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.policy = make_policy(config.policy, config.affinity_load_factor)
        self.table: tuple[Backend, ...] = build_table(config.backends)
        self.metrics = Metrics()
        # Counters restart at zero with the process; the ledger records deltas per start id, so a
        # restarted router is a new series rather than a counter that went backwards.
        self.start_id = uuid.uuid4().hex
        self.started_at = time.time()
        self.usage_by_backend: dict[str, dict[str, int]] = {}
        # Wall seconds each backend had at least one request in flight (overlapping requests count
        # once): the server's estimate of billed serverless time where a provider reports none.
        self.busy_s: dict[str, float] = {}
        self._busy_since: dict[str, float] = {}
        self.requests = 0  # proxied /v1 requests since start
        self._metrics_digests = [
            hashlib.sha256(t.encode()).digest() for t in (config.metrics_token, config.admin_token) if t
        ]
        loop_now = time.monotonic()
        self.keys = KeyRing(config.api_keys, loop_now)
        self._admin_digest = (
            hashlib.sha256(config.admin_token.encode()).digest() if config.admin_token else None
        )
        self.retry_budget = RetryBudget(config.retries, loop_now)
        self.in_flight = 0
        self.queued = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._last_wake = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.port = 0
        lim = config.limits
        self.server = HttpServer(
            self.handle,
            ServerLimits(
                max_header_bytes=lim.max_header_bytes,
                max_body_bytes=lim.max_body_bytes,
                header_timeout_s=config.timeouts.client_header_s,
                idle_timeout_s=config.timeouts.client_idle_s,
            ),
        )
        t = config.timeouts
        self._timeouts = (t.connect_s, t.first_byte_s, t.chunk_gap_s)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> int:
        self.port = await self.server.start(self.config.host, self.config.port)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._probe_loop()))
        if self.config.table_url and not self.table:
            self._tasks.append(loop.create_task(self._fetch_table()))
        log.info("router listening on %s:%d with %d backends, policy %s", self.config.host, self.port,
                 len(self.table), self.policy.name)  # fmt: skip
        if self.config.metrics_protected and not self._metrics_digests:
            log.warning("/metrics needs a token on %s but none is set: set metrics_token (or metrics_auth: "
                        "off on a trusted network)", self.config.listen)  # fmt: skip
        return self.port

    async def stop(self, grace_s: float = 10.0) -> None:
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._notify()
        await self.server.stop(grace_s)
        for b in self.table:
            b.pool.close()

    # ------------------------------------------------------------------ dispatch
    async def handle(self, req: Request, resp: Response) -> None:
        path = req.path
        if path.startswith("/v1/"):
            await self._v1(req, resp)
        elif path == "/health":
            resp.send(200, b'{"status":"ok"}')
        elif path == "/metrics":
            if self.config.metrics_protected and not self._metrics_allowed(req):
                resp.send(401, _error("/metrics needs 'Authorization: Bearer <metrics or admin token>'; fix: "
                                      "send metrics_token (or admin_token), or set metrics_auth: off",
                                      "authentication_error", "invalid_metrics_token"))  # fmt: skip
                return
            self._update_gauges()
            resp.send(200, self.metrics.render(), [(b"content-type", b"text/plain; version=0.0.4")])
        elif path.startswith("/router/"):
            self._admin(req, resp)
        else:
            resp.send(404, _error(f"no route for {path}", "invalid_request_error", "not_found"))

    # ------------------------------------------------------------------ admin API
    def _metrics_allowed(self, req: Request) -> bool:
        auth = req.header(b"authorization") or b""
        token = auth[7:] if auth[:7].lower() == b"bearer " else b""
        got = hashlib.sha256(token).digest()
        ok = False
        for d in self._metrics_digests:  # every digest compared, in constant time
            ok |= hmac.compare_digest(got, d)
        return ok and bool(token)

    def usage(self) -> dict[str, Any]:
        """Token counters since this process started, per client key and per backend."""
        total = {"prompt_tokens": 0, "completion_tokens": 0}
        for u in self.usage_by_backend.values():
            for k in total:
                total[k] += u[k]
        total["requests"] = self.requests
        return {
            "start_id": self.start_id,
            "started_at": self.started_at,
            "keys": {k.name: dict(k.usage) for k in self.keys.keys},
            "backends": {name: dict(u) for name, u in self.usage_by_backend.items()},
            "busy_s": self._busy_seconds(),
            "total": total,
        }

    def _busy_seconds(self) -> dict[str, float]:
        """Busy wall seconds per backend since start, the open busy period included."""
        now = time.monotonic()
        busy = dict(self.busy_s)
        for name, since in self._busy_since.items():
            busy[name] = busy.get(name, 0.0) + now - since
        return {name: round(s, 3) for name, s in busy.items()}

    def _admin(self, req: Request, resp: Response) -> None:
        if self._admin_digest is None:
            resp.send(404, _error("the admin API is disabled", "invalid_request_error", "admin_disabled"))
            return
        auth = req.header(b"authorization") or b""
        token = auth[7:] if auth[:7].lower() == b"bearer " else b""
        if not hmac.compare_digest(hashlib.sha256(token).digest(), self._admin_digest):
            resp.send(
                401, _error("missing or wrong admin token", "authentication_error", "invalid_admin_token")
            )
            return
        if req.path == "/router/backends" and req.method == "PUT":
            try:
                specs = parse_backend_table(json.loads(req.body or b"null"))
            except ValueError as exc:
                resp.send(
                    400, _error(f"the body is not valid JSON: {exc}", "invalid_request_error", "bad_json")
                )
                return
            except ArgosyError as exc:
                resp.send(
                    400, _error(f"{exc.message} (fix: {exc.fix})", "invalid_request_error", "bad_table")
                )
                return
            self.replace_backends(specs)
            resp.send(200, json.dumps({"backends": [b.status() for b in self.table]}).encode())
        elif req.path in ("/router/status", "/router/backends") and req.method == "GET":
            resp.send(200, json.dumps(self.status()).encode())
        elif req.path == "/router/usage" and req.method == "GET":
            resp.send(200, json.dumps(self.usage()).encode())
        else:
            resp.send(
                404, _error(f"no admin route {req.method} {req.path}", "invalid_request_error", "not_found")
            )

    def replace_backends(self, specs: list[Any]) -> None:
        """Swap the table in one assignment; in-flight requests keep their Backend objects."""
        old = self.table
        self.table = build_table(specs, old)
        kept = set(self.table)
        for b in old:
            if b not in kept:
                b.pool.close()  # idle connections go now; busy ones close when their request ends
        log.info(
            "backend table replaced: %s", ", ".join(f"{b.name}({b.tier})" for b in self.table) or "empty"
        )
        self._notify()

    def status(self) -> dict[str, Any]:
        return {
            "policy": self.policy.name,
            "in_flight": self.in_flight,
            "queued": self.queued,
            "backends": [b.status() for b in self.table],
            "retries": self.metrics.total("argosy_router_retries_total"),
            "failovers": self.metrics.total("argosy_router_failovers_total"),
            "wakeups": self.metrics.total("argosy_router_wakeups_total"),
        }

    def _update_gauges(self) -> None:
        self.metrics.clear_gauge("argosy_router_in_flight")
        self.metrics.clear_gauge("argosy_router_backend_up")
        now = time.monotonic()
        for b in self.table:
            self.metrics.set("argosy_router_in_flight", (b.name,), b.in_flight)
            self.metrics.set("argosy_router_backend_up", (b.name, b.tier), 1.0 if b.available(now) else 0.0)
        self.metrics.set("argosy_router_queue_depth", (), self.queued)

    # ------------------------------------------------------------------ client API
    def _reject(self, resp: Response, status: int, message: str, code: str, type_: str = "invalid_request_error",
                headers: Sequence[tuple[bytes, bytes]] = ()) -> None:  # fmt: skip
        self.metrics.inc("argosy_router_rejected_total", (code,))
        resp.send(status, _error(message, type_, code), [*_JSON, *headers])

    async def _v1(self, req: Request, resp: Response) -> None:
        if _BAD_PATH.search(req.target):
            self._reject(resp, 400, "the request path has forbidden characters or segments", "bad_path")
            return
        key: ClientKey | None = None
        now = time.monotonic()
        if self.keys.required:
            auth = req.header(b"authorization") or b""
            key = self.keys.verify(auth[7:]) if auth[:7].lower() == b"bearer " else None
            if key is None:
                self._reject(resp, 401, "missing or invalid API key; send 'Authorization: Bearer <key>'",
                             "invalid_api_key", "authentication_error")  # fmt: skip
                return
            spec = key.spec
            if spec.max_concurrency is not None and key.in_flight >= spec.max_concurrency:
                self._reject(resp, 429, f"key '{key.name}' already has {key.in_flight} requests in flight",
                             "concurrency_limit", "rate_limit_error", [(b"retry-after", b"1")])  # fmt: skip
                return
            if key.requests is not None and not key.requests.take(now):
                wait = key.requests.wait_s(now)
                self._reject(resp, 429, f"key '{key.name}' exceeded {spec.requests_per_minute:g} requests per minute",
                             "rate_limit", "rate_limit_error", [(b"retry-after", str(wait).encode())])  # fmt: skip
                return
            if key.tokens is not None and not key.tokens.positive(now):
                wait = key.tokens.wait_s(now)
                self._reject(resp, 429, f"key '{key.name}' exceeded {spec.tokens_per_minute:g} tokens per minute",
                             "token_rate_limit", "rate_limit_error", [(b"retry-after", str(wait).encode())])  # fmt: skip
                return
        if self.in_flight >= self.config.limits.max_in_flight:
            self._reject(resp, 429, "the router is at its in-flight limit", "overloaded", "rate_limit_error",
                         [(b"retry-after", b"1")])  # fmt: skip
            return
        if req.path == "/v1/models" and req.method == "GET":
            await self._models(resp)
            return
        self.in_flight += 1
        self.requests += 1
        if key is not None:
            key.in_flight += 1
            key.usage["requests"] += 1
        self.retry_budget.on_request()
        started = time.monotonic()
        tier = "-"
        backend_name = "-"
        try:
            tier, backend_name = await self._proxy(req, resp, key, started)
        except _Failed as f:
            if not resp.started:
                resp.send(f.status, f.body, f.headers)
            else:
                resp.keep_alive = False
        finally:
            self.in_flight -= 1
            if key is not None:
                key.in_flight -= 1
            if self.config.access_log:
                access_log.info(json.dumps({
                    "ts": round(time.time(), 3), "client": req.client, "method": req.method, "path": req.path,
                    "status": resp.status, "backend": backend_name, "tier": tier,
                    "ms": round((time.monotonic() - started) * 1000, 2), "bytes": resp.bytes_out,
                    "key": key.name if key else None,
                }))  # fmt: skip

    # ------------------------------------------------------------------ choosing a backend
    def _notify(self) -> None:
        if self._waiters:
            for w in self._waiters:
                if not w.done():
                    w.set_result(None)
            self._waiters.clear()

    async def _choose(self, ctx: RouteContext, tried: set[Backend], may_wait: bool) -> Backend | None:
        spill = getattr(self.policy, "spill_on_saturation", False)
        cands = usable(self.table, time.monotonic(), tried, spill)
        if cands:
            return self.policy.pick(cands, ctx)
        lim = self.config.limits
        if not may_wait or lim.queue_timeout_s <= 0 or self.queued >= lim.max_queue or self._stopping:
            return None
        # Scale from zero: hold the request until a backend appears, frees a slot or recovers.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + lim.queue_timeout_s
        self.queued += 1
        self._wake_up()
        t0 = loop.time()
        try:
            while not self._stopping:
                left = deadline - loop.time()
                if left <= 0:
                    return None
                w = loop.create_future()
                self._waiters.append(w)
                # Ejection back-off and probe recovery are time-driven, so re-check at least every 0.5 s.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(w, min(left, 0.5))
                cands = usable(self.table, time.monotonic(), tried, spill)
                if cands:
                    return self.policy.pick(cands, ctx)
            return None
        finally:
            self.queued -= 1
            self.metrics.observe("argosy_router_queue_wait_seconds", (), loop.time() - t0)

    def _wake_up(self) -> None:
        now = time.monotonic()
        if now - self._last_wake < 5.0:
            return
        self._last_wake = now
        self.metrics.inc("argosy_router_wakeups_total")
        log.warning("requests are waiting for a backend (%d queued); wake-up event emitted", self.queued)
        if self.config.wake_url:
            asyncio.get_running_loop().create_task(self._post_wake())

    async def _post_wake(self) -> None:
        body = json.dumps({"event": "wake", "router": self.config.listen, "queued": self.queued,
                           "time": time.time()}).encode()  # fmt: skip
        try:
            await self._simple_request(self.config.wake_url or "", "POST", body)
        except (UpstreamError, OSError) as exc:
            log.warning("could not deliver the wake-up event to %s: %s", self.config.wake_url, exc)

    async def _simple_request(self, url: str, method: str, body: bytes = b"") -> tuple[int, bytes]:
        parts = urlsplit(url)
        pool = Pool(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = [f"{method} {target} HTTP/1.1\r\nhost: ".encode() + pool.host_header + b"\r\n"]
        if self.config.admin_token:
            head.append(b"authorization: Bearer " + self.config.admin_token.encode() + b"\r\n")
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        )
        try:
            r = await pool.request(b"".join(head), body, 3.0, 10.0, 10.0)
            return r.status, await r.read_all(16 * 1024 * 1024)
        finally:
            pool.close()

    # ------------------------------------------------------------------ proxying
    def _head(self, req: Request, backend: Backend, body_len: int) -> bytes:
        pool = backend.pool
        parts = [req.raw_method, b" ", pool.base_path_b, req.raw_target, pool.host_line]
        for k, v in req.headers:
            if k not in _DROP_UP:
                parts += (k, b": ", v, b"\r\n")
        parts.append(backend.extra_head)  # the backend's own auth headers, encoded once per table
        parts.append(b"content-length: %d\r\n\r\n" % body_len)
        return b"".join(parts)

    def _parse_body(self, req: Request) -> dict[str, Any]:
        try:
            obj = json.loads(req.body)
        except ValueError as exc:
            raise _Failed(
                400, f"the request body is not valid JSON: {exc}", "invalid_request_error", "bad_json"
            ) from exc
        if not isinstance(obj, dict):
            raise _Failed(400, "the request body must be a JSON object", "invalid_request_error", "bad_json")
        return obj

    def _affinity_key(self, body: dict[str, Any]) -> bytes | None:
        if isinstance(body.get("user"), str) and body["user"]:
            return b"user:" + body["user"].encode()
        n = self.config.affinity_prefix_chars
        if isinstance(body.get("prompt"), str):
            return body["prompt"][:n].encode()
        msgs = body.get("messages")
        if isinstance(msgs, list):
            text = json.dumps(msgs, separators=(",", ":"), sort_keys=True)
            return text[:n].encode()
        return None

    def _record_failure(self, backend: Backend, error: str) -> None:
        if backend.on_failure(error, self.config.health, time.monotonic()):
            self.metrics.inc("argosy_router_ejections_total", (backend.name,))
            log.warning("backend %s ejected for %.1fs after: %s", backend.name,
                        backend.retry_at - time.monotonic(), error)  # fmt: skip

    async def _attempt(self, backend: Backend, head: bytes, body: bytes) -> UpstreamResponse:
        if backend.in_flight == 0:
            self._busy_since[backend.name] = time.monotonic()
        backend.in_flight += 1
        backend.requests += 1
        if backend.state == HALF_OPEN:
            backend.trial_in_flight = True
        try:
            return await backend.pool.request(head, body, *self._timeouts)
        except BaseException:
            self._release(backend)
            raise

    def _release(self, backend: Backend) -> None:
        backend.in_flight -= 1
        if backend.in_flight == 0:
            since = self._busy_since.pop(backend.name, None)
            if since is not None:
                self.busy_s[backend.name] = self.busy_s.get(backend.name, 0.0) + time.monotonic() - since
        backend.trial_in_flight = False
        if self._waiters:
            self._notify()

    async def _proxy(
        self, req: Request, resp: Response, key: ClientKey | None, started: float
    ) -> tuple[str, str]:
        ctx = RouteContext(req.path)
        parsed: dict[str, Any] | None = None
        body = req.body
        strip_usage = False
        if req.method == "POST":
            # Bodies are parsed only when the router needs them: a policy reads them, or the request
            # may stream (failover continuations and usage injection need its fields). The byte sniff
            # keeps the non-streaming hot path free of JSON parsing; everything else passes untouched.
            stream_path = req.path in _STREAM_PATHS
            if self.policy.needs_body or (stream_path and b'"stream"' in body):
                parsed = self._parse_body(req)
                if self.policy.needs_body:
                    ctx.affinity_key = self._affinity_key(parsed)
                if stream_path and parsed.get("stream") is True and self.config.request_usage:
                    body, strip_usage = _with_usage(body, parsed)
        inject = strip_usage  # the router asked for usage on the client's behalf
        tried: set[Backend] = set()
        max_attempts = self.config.retries.max_attempts
        attempt = 0
        last_error = "no backend is configured"
        while True:
            backend = await self._choose(ctx, tried, may_wait=not tried)
            if backend is None:
                if tried:
                    raise _Failed(502, f"every backend tried failed; last error: {last_error}", "upstream_error",
                                  "backends_failed")  # fmt: skip
                why = (
                    "no backend is configured" if not self.table else "no backend is healthy or has capacity"
                )
                raise _Failed(503, f"{why}; fix: add or repair backends (see /router/status)",
                              "service_unavailable", "no_backend_available", [(b"retry-after", b"1")])  # fmt: skip
            attempt += 1
            tried.add(backend)
            # A backend known to reject `stream_options` gets the client's own bytes.
            strip_usage = inject and not backend.rejects_stream_options
            send = body if strip_usage or not inject else req.body
            head = self._head(req, backend, len(send))
            t0 = time.monotonic()
            try:
                up = await self._attempt(backend, head, send)
            except UpstreamError as exc:
                last_error = f"{backend.name}: {exc}"
                self._record_failure(backend, str(exc))
                if attempt < max_attempts and self._may_retry(exc.kind):
                    continue
                status = 504 if exc.kind.startswith("timeout") else 502
                raise _Failed(status, f"backend {last_error}", "upstream_error", exc.kind) from exc
            try:
                if strip_usage and up.status in (400, 422):
                    detail = await self._read_quietly(up)
                    if b"stream_options" in detail or b"include_usage" in detail:
                        # An upstream that refuses the option the router added: remember, and send
                        # the request as the client wrote it (not a failure, not a retry).
                        backend.rejects_stream_options = True
                        log.info(
                            "backend %s rejects stream_options; usage is not requested from it", backend.name
                        )
                        tried.discard(backend)
                        attempt -= 1
                        continue
                    resp.send(up.status, detail, self._down_headers(up))
                    self._finish(backend, up.status, started, t0, None)
                    return backend.tier, backend.name
                if up.status in _RETRY_STATUSES and attempt < max_attempts:
                    if up.status != 429:
                        self._record_failure(backend, f"HTTP {up.status}")
                    spill = getattr(self.policy, "spill_on_saturation", False)
                    if usable(self.table, time.monotonic(), tried, spill) and self._may_retry(str(up.status)):
                        last_error = f"{backend.name}: HTTP {up.status}"
                        up.close()
                        continue
                ctype = up.header(b"content-type") or b""
                if up.status == 200 and ctype.startswith(b"text/event-stream"):
                    await self._relay_stream(req, resp, backend, up, key, started, t0, tried, parsed,
                                             strip_usage)  # fmt: skip
                else:
                    await self._relay_plain(resp, backend, up, key, started, t0)
                return backend.tier, backend.name
            finally:
                up.close()
                self._release(backend)

    def _may_retry(self, reason: str) -> bool:
        if self.retry_budget.try_retry(time.monotonic()):
            self.metrics.inc("argosy_router_retries_total", (reason,))
            return True
        self.metrics.inc("argosy_router_retries_denied_total")
        return False

    def _account(self, backend: Backend, key: ClientKey | None, data: bytes) -> None:
        """Token usage from an upstream `usage` object: metrics, the key's rate limit and the ledger
        counters per key and per backend that `/router/usage` reports."""
        at = data.rfind(b'"usage"')
        if at < 0:
            return
        per_backend = self.usage_by_backend.get(backend.name)
        if per_backend is None:
            per_backend = self.usage_by_backend[backend.name] = {"prompt_tokens": 0, "completion_tokens": 0}
        for name, n in _USAGE_RE.findall(data, at):
            tokens = int(n)
            field = name.decode()
            direction = "in" if field == "prompt_tokens" else "out"
            self.metrics.inc("argosy_router_tokens_total", (backend.name, direction), tokens)
            per_backend[field] += tokens
            if key is not None:
                key.usage[field] += tokens
                self.metrics.inc("argosy_router_key_tokens_total", (key.name, direction), tokens)
                if key.tokens is not None:
                    key.tokens.charge(time.monotonic(), tokens)

    def _down_headers(self, up: UpstreamResponse) -> list[tuple[bytes, bytes]]:
        return [(k, v) for k, v in up.headers if k not in _DROP_DOWN]

    async def _relay_plain(self, resp: Response, backend: Backend, up: UpstreamResponse, key: ClientKey | None,
                           started: float, t0: float) -> None:  # fmt: skip
        cl = up.header(b"content-length")
        length = int(cl) if cl is not None and cl.isdigit() else None
        headers = self._down_headers(up)
        if length is not None and length <= _BUFFER_LIMIT:
            try:
                data = up.take_complete(_BUFFER_LIMIT)
                if data is None:
                    data = await up.read_all(_BUFFER_LIMIT)
            except UpstreamError as exc:
                self._record_failure(backend, str(exc))
                raise _Failed(502, f"backend {backend.name} broke its response: {exc}", "upstream_error",
                              exc.kind) from exc  # fmt: skip
            ttft = time.monotonic() - t0
            resp.start(up.status, headers, len(data))
            resp.end(data)
            self._account(backend, key, data)
        else:
            resp.start(up.status, headers, length)
            ttft = None
            try:
                while (data := await up.read()) is not None:
                    if ttft is None:
                        ttft = time.monotonic() - t0
                    await resp.write(data)
            except UpstreamError as exc:
                self._record_failure(backend, str(exc))
                resp.keep_alive = False
                raise _Failed(502, str(exc), "upstream_error", exc.kind) from exc
            resp.end()
        self._finish(backend, up.status, started, t0, ttft)

    def _finish(self, backend: Backend, status: int, started: float, t0: float, ttft: float | None) -> None:
        now = time.monotonic()
        if status < 500:
            backend.on_success(now - t0, ttft)
        self.metrics.inc("argosy_router_requests_total", (backend.name, backend.tier, str(status)))
        self.metrics.observe("argosy_router_request_seconds", (backend.tier,), now - started)
        if ttft is not None:
            self.metrics.observe("argosy_router_ttft_seconds", (backend.tier,), ttft)

    async def _relay_stream(self, req: Request, resp: Response, backend: Backend, up: UpstreamResponse,
                            key: ClientKey | None, started: float, t0: float, tried: set[Backend],
                            parsed: dict[str, Any] | None, strip_usage: bool) -> None:  # fmt: skip
        """Relay SSE event by event; if the upstream breaks before [DONE], continue on another backend."""
        sent = bytearray()  # every byte the client has been sent, for failover bookkeeping
        chat = req.path.endswith("/chat/completions")
        seen: sse.Seen | None = None  # set once we are relaying a continuation
        current, cur_up, cur_t0 = backend, up, t0
        held: list[tuple[Backend, UpstreamResponse]] = []  # continuation backends we must release
        try:
            while True:
                usage: list[bytes] = []
                error = await self._pump(resp, current, cur_up, sent, seen, chat, started, cur_t0, strip_usage,
                                         usage)  # fmt: skip
                if usage:
                    self._account(current, key, usage[-1])
                if error is None:
                    resp.end()
                    return
                # The stream broke. Work out what the client has seen and whether it can be continued.
                self._record_failure(current, error)
                state = sse.parse_seen(bytes(sent), chat)
                if state.done or state.finished:
                    # The answer was complete; only the terminator was lost.
                    if not state.done:
                        await resp.write(b"data: [DONE]\n\n")
                    resp.end()
                    self.metrics.inc("argosy_router_failovers_total", ("not_needed",))
                    return
                if parsed is None:
                    try:
                        parsed = self._parse_body(req)
                    except _Failed:
                        parsed = {}
                plan = (
                    sse.continuation_body(parsed, state, chat) if parsed else "the request body is not JSON"
                )
                if isinstance(plan, str):
                    await self._give_up(resp, current, error, plan)
                    return
                body = json.dumps(plan).encode()
                plain_body = (
                    json.dumps({k: v for k, v in plan.items() if k != "stream_options"}).encode()
                    if strip_usage
                    else body
                )
                nxt_up: UpstreamResponse | None = None
                reason = "no other backend is available"
                while len(held) < self.config.retries.max_attempts:
                    nxt = await self._choose(RouteContext(req.path), tried, may_wait=False)
                    if nxt is None:
                        break
                    tried.add(nxt)
                    t1 = time.monotonic()
                    cont = plain_body if nxt.rejects_stream_options else body
                    try:
                        cand = await self._attempt(nxt, self._head(req, nxt, len(cont)), cont)
                    except UpstreamError as exc:
                        self._record_failure(nxt, str(exc))
                        reason = f"{nxt.name} failed: {exc}"
                        continue
                    held.append((nxt, cand))
                    ctype = cand.header(b"content-type") or b""
                    if cand.status != 200 or not ctype.startswith(b"text/event-stream"):
                        detail = (await self._read_quietly(cand))[:300].decode("utf-8", "replace")
                        reason = f"{nxt.name} rejected the continuation: HTTP {cand.status} {detail}"
                        self.metrics.inc("argosy_router_failovers_total", ("rejected",))
                        continue
                    nxt_up = cand
                    break
                if nxt_up is None:
                    await self._give_up(resp, current, error, reason)
                    return
                nxt = held[-1][0]
                self.metrics.inc("argosy_router_failovers_total", ("continued",))
                log.info("stream from %s broke (%s); continuing on %s after %d tokens", current.name, error,
                         nxt.name, state.tokens)  # fmt: skip
                current, cur_up, cur_t0, seen = nxt, nxt_up, t1, state
        finally:
            for b, u in held:
                u.close()
                self._release(b)

    async def _give_up(self, resp: Response, current: Backend, error: str, reason: str) -> None:
        self.metrics.inc("argosy_router_failovers_total", ("impossible",))
        log.warning("stream from %s broke (%s) and cannot be continued: %s", current.name, error, reason)
        await self._write_terminal_error(
            resp, f"the backend stream broke ({error}) and could not be continued: {reason}"
        )

    async def _read_quietly(self, up: UpstreamResponse) -> bytes:
        try:
            return await asyncio.wait_for(up.read_all(65536), 2.0)
        except (UpstreamError, TimeoutError):
            return b""

    async def _write_terminal_error(self, resp: Response, message: str) -> None:
        """Never truncate silently: end the stream with an SSE error event and [DONE]."""
        if not resp.started:
            resp.start(200, [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")], None)
        with contextlib.suppress(ClientGone):
            await resp.write(sse.error_event(message, "stream_interrupted"))
        resp.end()

    async def _pump(self, resp: Response, backend: Backend, up: UpstreamResponse, sent: bytearray,
                    seen: sse.Seen | None, chat: bool, started: float, t0: float, strip_usage: bool,
                    usage: list[bytes]) -> str | None:  # fmt: skip
        """Relay whole events from `up` until its end. None when the stream ended with [DONE], else what
        went wrong. Events are cut at the last blank line so a break never leaves half an event sent."""
        relay = _Relay(resp, up, sent, seen, chat, strip_usage, self._down_headers(up), self.metrics.observe)
        try:
            await up.stream(relay.feed)
        except UpstreamError as exc:
            if resp.client_gone:
                raise ClientGone() from exc
            return str(exc)
        finally:
            self.metrics.inc("argosy_router_chunks_total", (), relay.chunks)
            usage.extend(relay.usage)
        if resp.client_gone:
            raise ClientGone()
        relay.finish()
        usage.extend(relay.usage)
        relay.usage.clear()
        if not sent.rstrip().endswith(b"[DONE]"):
            return "the stream ended before [DONE]"
        ttft = relay.first - t0 if relay.first is not None else None
        self._finish(backend, 200, started, t0, ttft)
        return None

    # ------------------------------------------------------------------ /v1/models, probes, table fetch
    async def _get(self, backend: Backend, path: str, timeout_s: float) -> tuple[int, bytes]:
        pool = backend.pool
        head = [
            b"GET ",
            pool.base_path.encode(),
            path.encode(),
            b" HTTP/1.1\r\nhost: ",
            pool.host_header,
            b"\r\n",
        ]
        for k, v in backend.spec.headers.items():
            head += (k.encode(), b": ", v.encode(), b"\r\n")
        head.append(b"\r\n")
        up = await pool.request(b"".join(head), b"", min(timeout_s, self._timeouts[0]), timeout_s, timeout_s)
        try:
            return up.status, await asyncio.wait_for(up.read_all(4 * 1024 * 1024), timeout_s)
        finally:
            up.close()

    async def _models(self, resp: Response) -> None:
        """The union of every usable backend's /v1/models, first backend wins on duplicate ids."""
        now = time.monotonic()
        live = [b for b in self.table if b.available(now)]
        if not live:
            why = "no backend is configured" if not self.table else "no backend is healthy"
            self._reject(resp, 503, f"{why}; fix: add or repair backends (see /router/status)",
                         "no_backend_available", "service_unavailable", [(b"retry-after", b"1")])  # fmt: skip
            return
        timeout = self.config.health.probe_timeout_s * 2
        results = await asyncio.gather(
            *(self._get(b, "/v1/models", timeout) for b in live), return_exceptions=True
        )
        merged: dict[str, dict[str, Any]] = {}
        errors = []
        for b, r in zip(live, results, strict=True):
            if isinstance(r, BaseException):
                errors.append(f"{b.name}: {r}")
                continue
            status, body = r
            try:
                data = json.loads(body).get("data", []) if status == 200 else None
            except (ValueError, AttributeError):
                data = None
            if data is None:
                errors.append(f"{b.name}: HTTP {status}")
                continue
            b.models = [m for m in data if isinstance(m, dict)]
            for m in b.models:
                if isinstance(m.get("id"), str):
                    merged.setdefault(m["id"], m)
        if not merged and errors:
            self._reject(resp, 502, "no backend listed its models: " + "; ".join(errors), "backends_failed",
                         "upstream_error")  # fmt: skip
            return
        resp.send(200, json.dumps({"object": "list", "data": list(merged.values())}).encode())

    async def probe(self, backend: Backend) -> None:
        """One active health check: /health, then /v1/models if the backend has no /health."""
        timeout = self.config.health.probe_timeout_s
        ok = False
        error = None
        try:
            status, _ = await self._get(backend, "/health", timeout)
            if status == 404:
                status, _ = await self._get(backend, "/v1/models", timeout)
            ok = 200 <= status < 300
            error = None if ok else f"probe answered HTTP {status}"
        except (UpstreamError, TimeoutError, OSError) as exc:
            error = f"probe failed: {exc}"
        was = backend.state
        backend.on_probe(ok, error)
        if backend.state != was:
            log.warning("backend %s: %s -> %s (%s)", backend.name, was, backend.state, error or "probe ok")
            self._notify()

    async def _probe_loop(self) -> None:
        interval = self.config.health.probe_interval_s
        while True:
            targets = [b for b in self.table if b.spec.probe]
            if targets:
                await asyncio.gather(*(self.probe(b) for b in targets), return_exceptions=True)
            await asyncio.sleep(interval)

    async def _fetch_table(self) -> None:
        """A router started empty asks the server for its table until it gets one."""
        url = self.config.table_url or ""
        delay = 1.0
        while not self.table:
            try:
                status, body = await self._simple_request(url, "GET")
                if status == 200:
                    self.replace_backends(parse_backend_table(json.loads(body)))
                    return
                log.warning("table fetch from %s answered HTTP %d", url, status)
            except (UpstreamError, OSError, ValueError, ArgosyError) as exc:
                log.warning("cannot fetch the backend table from %s: %s", url, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


def install_uvloop() -> None:
    """uvloop's event loop roughly halves per-request CPU; fall back quietly where it is missing."""
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        log.info("uvloop is not installed; using the default asyncio loop")


async def serve(config: RouterConfig, stop: asyncio.Event, ready: Any = None) -> None:
    """Run a router until `stop` is set, then shut down gracefully."""
    router = Router(config)
    await router.start()
    # The start-up objects (config, imports) never die: freeze them out of the collector's scans, and
    # collect the young generation less often. The hot path allocates a few short-lived objects per
    # request, nearly all freed by reference counting, so frequent gen-0 passes were pure overhead.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    if ready is not None:
        ready(router)
    await stop.wait()
    await router.stop()


__all__ = ["Router", "serve", "install_uvloop"]
