"""A small HTTP/1.1 server on asyncio protocols and httptools.

Why not a framework: the router's hot path is "parse a request, pick a backend, relay bytes". A
framework's routing, middleware and ASGI message objects cost more than the proxying itself
(see bench/router.py), so the router parses with httptools and writes bytes to the transport.

Guarantees: header and body size caps (431/413), a deadline to finish the headers (slowloris), an
idle keep-alive timeout, sequential handling of pipelined requests, and write back-pressure: a
handler's `write` waits while the client's socket buffer is full, so slow clients cannot pin memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

import httptools

REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class Request:
    """One parsed request. A plain slotted class: it is built once per request on the hot path."""

    __slots__ = ("method", "target", "headers", "body", "keep_alive", "client", "path", "query", "raw_target",
                 "raw_method")  # fmt: skip

    def __init__(self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes,
                 keep_alive: bool, client: str, path: str = "", query: str = "", raw_target: bytes = b"",
                 raw_method: bytes = b"") -> None:  # fmt: skip
        self.raw_target = raw_target or target.encode("latin-1")  # as received, for the upstream request line
        self.raw_method = raw_method or method.encode("latin-1")
        self.method = method
        self.target = target  # the raw request-target: path plus query
        self.headers = headers  # names lower-cased, in arrival order
        self.body = body
        self.keep_alive = keep_alive
        self.client = client
        self.path = path
        self.query = query

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class ClientGone(Exception):
    """The client closed its connection; stop relaying to it."""


class Response:
    """Writes one response to a connection, with back-pressure."""

    __slots__ = ("_conn", "started", "finished", "_chunked", "status", "bytes_out", "keep_alive", "_head")

    def __init__(self, conn: HttpConnection, keep_alive: bool) -> None:
        self._conn = conn
        self.started = False
        self.finished = False
        self._chunked = False
        self.status = 0
        self.bytes_out = 0
        self.keep_alive = keep_alive
        self._head = b""

    def start(self, status: int, headers: list[tuple[bytes, bytes]], content_length: int | None) -> None:
        """Send the status line and headers. Without a length the body is chunk-encoded."""
        self.started = True
        self.status = status
        out = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Unknown"))]
        for k, v in headers:
            out.append(k + b": " + v + b"\r\n")
        if content_length is None:
            self._chunked = True
            out.append(b"transfer-encoding: chunked\r\n")
        else:
            out.append(b"content-length: %d\r\n" % content_length)
        if not self.keep_alive:
            out.append(b"connection: close\r\n")
        out.append(b"\r\n")
        # Held back and sent with the first body bytes: one write syscall per response, not two.
        self._head = b"".join(out)

    def write_nowait(self, data: bytes) -> None:
        if not data:
            return
        self.bytes_out += len(data)
        if self._chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        if self._head:
            data = self._head + data
            self._head = b""
        self._conn.write(data)

    async def write(self, data: bytes) -> None:
        self.write_nowait(data)
        await self._conn.drain()

    def end(self, data: bytes = b"") -> None:
        if self._chunked:
            if data:
                self.write_nowait(data)
            self.write_raw(b"0\r\n\r\n")
        elif data:
            self.write_nowait(data)
        elif self._head:
            self.write_raw(b"")
        self.finished = True

    def write_raw(self, data: bytes) -> None:
        if self._head:
            data = self._head + data
            self._head = b""
        self._conn.write(data)

    def send(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        """A whole small response in one write."""
        self.start(status, headers or [(b"content-type", b"application/json")], len(body))
        self.end(body)

    @property
    def client_gone(self) -> bool:
        return self._conn.closed

    @property
    def write_paused(self) -> bool:
        """The client's socket buffer is full: stop feeding it until `on_resume` fires."""
        return self._conn.write_paused

    def on_resume(self, callback: Callable[[], None] | None) -> None:
        self._conn.resume_hook = callback


Handler = Callable[[Request, Response], Awaitable[None]]


@dataclass
class ServerLimits:
    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = 16 * 1024 * 1024
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 75.0


class HttpConnection(asyncio.Protocol):
    """One client connection: parse with httptools, hand complete requests to `handler` one at a time."""

    def __init__(self, handler: Handler, limits: ServerLimits, conns: set[HttpConnection]) -> None:
        self._handler = handler
        self._limits = limits
        self._conns = conns
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._client = ""
        self._url = bytearray()
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._pending: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self.write_paused = False
        self.resume_hook: Callable[[], None] | None = None  # a stream relay resuming its upstream
        self._drain_waiter: asyncio.Future[None] | None = None
        self.deadline = 0.0  # loop time after which an idle or header-pending connection is closed
        self._rejected = False
        self.closed = False
        self.busy = False

    # -- transport callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check here.
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._conns.add(self)
        self._arm(self._limits.idle_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._conns.discard(self)
        self._disarm()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ClientGone())
        hook = self.resume_hook
        if hook is not None:  # a relay paused its upstream for us: let it run on and notice we left
            self.resume_hook = None
            hook()
        if self._task is not None and not self._task.done():
            # The handler notices `client_gone` at its next write; cancelling would skip its accounting.
            pass

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        hook = self.resume_hook
        if hook is not None:
            self.resume_hook = None
            hook()
        w = self._drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            if not self._rejected:
                self._reject(400, f"malformed HTTP request: {exc}")

    # -- parser callbacks
    def on_message_begin(self) -> None:
        self._url.clear()
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_bytes = 0
        if not self.busy and not self._pending:
            self._arm(self._limits.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self._limits.max_header_bytes:
            self._reject(414, "the request line is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self._limits.max_header_bytes:
            self._reject(431, "request headers are too large")
            return
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self._rejected:
            return
        if not self.busy and not self._pending:
            # Headers are in; the body gets the idle allowance rather than the tight header deadline.
            self._arm(self._limits.idle_timeout_s)
        cl = None
        te = False
        for k, v in self._headers:
            if k == b"content-length":
                if cl is not None:
                    self._reject(400, "more than one Content-Length header")
                    return
                cl = v
            elif k == b"transfer-encoding":
                te = True
        # Both framings at once is the classic request-smuggling vector: refuse it outright.
        if cl is not None and te:
            self._reject(400, "both Content-Length and Transfer-Encoding were sent")
            return
        if cl is not None:
            try:
                n = int(cl)
            except ValueError:
                self._reject(400, "Content-Length is not a number")
                return
            if n > self._limits.max_body_bytes:
                self._reject(
                    413, f"the request body ({n} bytes) exceeds the limit of {self._limits.max_body_bytes}"
                )

    def on_body(self, body: bytes) -> None:
        if self._rejected:
            return
        self._body_bytes += len(body)
        if self._body_bytes > self._limits.max_body_bytes:
            self._reject(413, f"the request body exceeds the limit of {self._limits.max_body_bytes} bytes")
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._rejected:
            return
        url = bytes(self._url)
        target = url.decode("latin-1")
        path, _, query = target.partition("?")
        raw_method = self._parser.get_method()
        req = Request(
            raw_target=url,
            raw_method=raw_method,
            method=raw_method.decode("latin-1"),
            target=target,
            headers=self._headers,
            body=b"".join(self._body) if len(self._body) != 1 else self._body[0],
            keep_alive=self._parser.should_keep_alive(),
            client=self._client,
            path=path,
            query=query,
        )
        self._body = []
        if self.busy:
            # Pipelined: answer in order; stop reading so a client cannot queue without bound.
            self._pending.append(req)
            if self._transport is not None and len(self._pending) >= 8:
                self._transport.pause_reading()
            return
        self._start(req)

    # -- handling
    def _start(self, req: Request) -> None:
        self.busy = True
        self._disarm()
        self._task = self._loop.create_task(self._run(req))

    async def _run(self, req: Request) -> None:
        while True:
            resp = Response(self, req.keep_alive)
            try:
                await self._handler(req, resp)
            except ClientGone:
                return
            except Exception:  # a handler bug must answer 500, not hang the client
                import logging

                logging.getLogger("argosy.router").exception("handler failed for %s %s", req.method, req.path)
                if not resp.started and not self.closed:
                    resp.keep_alive = False
                    resp.send(
                        500,
                        b'{"error":{"message":"internal router error","type":"server_error","code":"router_error"}}',
                    )
                else:
                    self.close()
                    return
            if self.closed:
                return
            if not resp.finished or not resp.keep_alive:
                self.close()
                return
            if not self._pending:
                break
            req = self._pending.popleft()
            if self._transport is not None and len(self._pending) < 4:
                self._transport.resume_reading()
        self.busy = False
        self._task = None
        self._arm(self._limits.idle_timeout_s)

    def _reject(self, status: int, message: str) -> None:
        self._rejected = True
        if self._transport is None or self.closed:
            return
        import json

        body = json.dumps(
            {"error": {"message": message, "type": "invalid_request_error", "code": str(status)}}
        ).encode()
        if not self.busy:
            r = Response(self, keep_alive=False)
            r.send(status, body)
        self.close()

    # -- writing
    def write(self, data: bytes) -> None:
        if self._transport is not None and not self.closed:
            self._transport.write(data)

    async def drain(self) -> None:
        if self.closed:
            raise ClientGone()
        if not self.write_paused:
            return
        self._drain_waiter = self._loop.create_future()
        try:
            await self._drain_waiter
        finally:
            self._drain_waiter = None

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self.closed = True
            self._transport.close()

    # -- timers
    # Deadlines are checked by the server's sweeper once a second instead of a timer per request:
    # arming and cancelling a TimerHandle on every request was a measurable share of router CPU.
    def _arm(self, seconds: float) -> None:
        self.deadline = self._loop.time() + seconds

    def _disarm(self) -> None:
        self.deadline = 0.0


class HttpServer:
    """Owns the listening socket and the open connections."""

    def __init__(self, handler: Handler, limits: ServerLimits) -> None:
        self._handler = handler
        self._limits = limits
        self.connections: set[HttpConnection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        step = max(0.05, min(1.0, self._limits.header_timeout_s / 4))
        while True:
            await asyncio.sleep(step)
            now = loop.time()
            for c in [c for c in self.connections if c.deadline and c.deadline < now and not c.busy]:
                c.close()

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self._handler, self._limits, self.connections),
            host,
            port,
            reuse_address=True,
            backlog=4096,
        )
        self._sweeper = loop.create_task(self._sweep())
        return self._server.sockets[0].getsockname()[1]

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, close idle connections, give busy ones `grace_s` to finish."""
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for c in list(self.connections):
            if not c.busy:
                c.close()
        deadline = asyncio.get_running_loop().time() + grace_s
        while any(c.busy for c in self.connections) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for c in list(self.connections):
            c.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
