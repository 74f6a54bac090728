"""Pooled keep-alive HTTP/1.1 client for backends, on asyncio protocols and httptools.

Each backend has a pool of idle connections so a request costs no TCP (or TLS) handshake. The
response body is handed out chunk by chunk as it arrives (SSE is never buffered whole) and reading
from the upstream pauses while the router holds more than `HIGH_WATER` unread bytes, so a slow
client back-pressures the backend instead of filling router memory.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
MAX_IDLE_PER_BACKEND = 512


class UpstreamError(Exception):
    """A backend failed. `kind`: connect, timeout_first_byte, timeout_chunk, closed, protocol."""

    def __init__(self, kind: str, message: str, *, before_response: bool = True) -> None:
        super().__init__(message)
        self.kind = kind
        self.before_response = before_response


class _Conn(asyncio.Protocol):
    __slots__ = (
        "_loop", "_parser", "transport", "closed", "_head", "_chunks", "_buffered", "_done", "_error",
        "_waiter", "status", "headers", "_paused", "_got_bytes", "keep_alive", "sink", "_batch", "_timer",
        "_gap_s", "_last", "_sink_error", "_first_phase",
    )  # fmt: skip

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._head: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._paused = False
        self._got_bytes = False
        self.keep_alive = True
        # Stream mode: body bytes go straight to `sink`, joined once per socket read, instead of
        # waking the relaying task once per chunk (the per-chunk cost of SSE relaying).
        self.sink: Callable[[bytes], None] | None = None
        self._batch: list[bytes] = []
        self._sink_error: BaseException | None = None
        self._gap_s = 0.0
        self._last = 0.0
        self._first_phase = True  # the timer is still the first-byte one
        self._stop_timer()

    # transport callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check here.
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._flush()
        if not self._done:
            before = self._head is not None and not self._head.done()
            self._fail(
                UpstreamError(
                    "closed",
                    f"the backend closed the connection{' before answering' if before else ' mid-response'}",
                    before_response=before,
                )
            )
        self._stop_timer()

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        self._last = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._flush()
            self._fail(UpstreamError("protocol", f"the backend sent malformed HTTP: {exc}"))
            self.close()
            return
        if self._batch:
            self._flush()
        if self._first_phase and self.status and not self._done and not self.closed:
            # Headers are in but the body goes on: from now on the timer measures gaps.
            self._first_phase = False
            self._stop_timer()
            self._timer = self._loop.call_later(self._gap_s, self._on_timer)

    # parser callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self._batch.append(body)
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._flush()  # a stream's last events reach the sink before its end is signalled
        self._done = True
        self._stop_timer()
        self._wake()

    # internals
    def _flush(self) -> None:
        if not self._batch or self.sink is None:
            return
        data = self._batch[0] if len(self._batch) == 1 else b"".join(self._batch)
        self._batch.clear()
        try:
            self.sink(data)
        except Exception as exc:  # a sink bug must end this stream, not kill the event loop's callback
            self._sink_error = exc
            self._fail(UpstreamError("protocol", f"relaying failed: {exc!r}", before_response=False))
            self.abort()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, err: UpstreamError) -> None:
        if self._error is None:
            self._error = err
        if self._head is not None and not self._head.done():
            self._head.set_exception(err)
        self._wake()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self.closed = True
        self._stop_timer()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self._stop_timer()
        if self.transport is not None:
            self.transport.abort()

    def pause(self) -> None:
        """Stop reading from the backend (the client is slower than it); the gap timeout waits too."""
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self._last = self._loop.time()
            self.transport.resume_reading()

    async def send(self, data: bytes, first_byte_s: float, chunk_gap_s: float) -> None:
        """Write a request and wait for the response headers."""
        assert self.transport is not None
        self._head = self._loop.create_future()
        self._gap_s = chunk_gap_s
        self.transport.write(data)
        # One timer per request covers both the first byte and the gaps between chunks: when it
        # fires mid-body it re-arms for the rest of the gap instead of a timer per chunk.
        self._timer = self._loop.call_later(first_byte_s, self._on_timer)
        await self._head

    def _on_timer(self) -> None:
        self._timer = None
        if self._done or self.closed:
            return
        if self._head is not None and not self._head.done():
            self._fail(UpstreamError("timeout_first_byte", "the backend did not answer in time"))
            self.abort()
            return
        now = self._loop.time()
        if self._paused:  # back-pressure from the client, not a silent backend
            self._timer = self._loop.call_later(self._gap_s, self._on_timer)
            return
        left = self._last + self._gap_s - now
        if left > 0:
            self._timer = self._loop.call_later(left, self._on_timer)
            return
        self._fail(UpstreamError("timeout_chunk", "the backend stalled mid-response", before_response=False))
        self.abort()

    async def read(self) -> bytes | None:
        """The next body bytes (all that have arrived, joined), or None at the end of the body."""
        while True:
            if self._chunks:
                if len(self._chunks) == 1:
                    data = self._chunks.popleft()
                else:
                    data = b"".join(self._chunks)
                    self._chunks.clear()
                self._buffered = 0
                if self._paused and self.transport is not None:
                    self._paused = False
                    self._last = self._loop.time()
                    self.transport.resume_reading()
                return data
            if self._done:
                return None
            if self._error is not None:
                raise self._error
            if self._timer is None and not self.closed:
                # The headers arrived before the timer re-armed for gaps (it only fires on schedule).
                self._last = self._loop.time()
                self._timer = self._loop.call_later(self._gap_s, self._on_timer)
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def stream(self, sink: Callable[[bytes], None]) -> None:
        """Hand every body byte to `sink` as it arrives; return at the end of the body, raise on failure."""
        self.sink = sink
        if self._chunks:  # what arrived with the headers, before the sink was set
            self._batch.extend(self._chunks)
            self._chunks.clear()
            self._buffered = 0
            self._flush()
        if self._paused:
            self.resume()
        while not self._done:
            if self._sink_error is not None:
                raise self._sink_error  # the router's bug, not the backend's failure: no failover
            if self._error is not None:
                raise self._error
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._sink_error is not None:
            raise self._sink_error

    @property
    def reusable(self) -> bool:
        return self._done and self.keep_alive and not self.closed and self._error is None


class UpstreamResponse:
    """A backend's response: status and headers now, the body through `read()`."""

    __slots__ = ("_conn", "_pool", "status", "headers", "_released", "chunk_gap_s")

    def __init__(self, conn: _Conn, pool: Pool, chunk_gap_s: float) -> None:
        self._conn = conn
        self._pool = pool
        self.status = conn.status
        self.headers = conn.headers
        self._released = False
        self.chunk_gap_s = chunk_gap_s

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    async def read(self) -> bytes | None:
        data = await self._conn.read()
        if data is None:
            self.release()
        return data

    async def stream(self, sink: Callable[[bytes], None]) -> None:
        """Relay the body through `sink` (called from the protocol, once per socket read)."""
        await self._conn.stream(sink)
        self.release()

    def pause(self) -> None:
        self._conn.pause()

    def resume(self) -> None:
        self._conn.resume()

    def take_complete(self, limit: int) -> bytes | None:
        """The whole body if it has already arrived (a small answer usually comes with its headers),
        without a round through the coroutine machinery; None if more is to come."""
        conn = self._conn
        if not conn._done or conn._error is not None or conn._buffered > limit:
            return None
        chunks = conn._chunks
        data = b"" if not chunks else chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        conn._buffered = 0
        self.release()
        return data

    async def read_all(self, limit: int) -> bytes:
        parts = []
        n = 0
        while (d := await self.read()) is not None:
            n += len(d)
            if n > limit:
                self.close()
                raise UpstreamError(
                    "protocol", f"the backend's response exceeds {limit} bytes", before_response=False
                )
            parts.append(d)
        return b"".join(parts)

    def release(self) -> None:
        """Return the connection to the pool if the body was read to the end, else close it."""
        if self._released:
            return
        self._released = True
        if self._conn.reusable:
            self._pool.put(self._conn)
        else:
            self._conn.close()

    def close(self) -> None:
        if not self._released:
            self._released = True
            self._conn.abort()


class Pool:
    """Idle keep-alive connections to one backend origin."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.scheme = parts.scheme
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        default_port = (parts.scheme == "https" and self.port == 443) or (
            parts.scheme == "http" and self.port == 80
        )
        self.host_header = (self.host if default_port else f"{self.host}:{self.port}").encode()
        if ":" in self.host and not self.host.startswith("["):
            self.host_header = (f"[{self.host}]" if default_port else f"[{self.host}]:{self.port}").encode()
        self.base_path_b = self.base_path.encode()
        self.host_line = b" HTTP/1.1\r\nhost: " + self.host_header + b"\r\n"
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._idle: list[_Conn] = []
        self.closed = False

    def put(self, conn: _Conn) -> None:
        if self.closed or len(self._idle) >= MAX_IDLE_PER_BACKEND:
            conn.close()
            return
        conn._reset()
        self._idle.append(conn)

    async def _connect(self, connect_s: float) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Conn(loop),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None,
                ),
                connect_s,
            )
        except TimeoutError as exc:
            raise UpstreamError("connect", f"connecting to {self.host}:{self.port} timed out") from exc
        except OSError as exc:
            raise UpstreamError(
                "connect", f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}"
            ) from exc
        return conn

    async def request(
        self, head: bytes, body: bytes, connect_s: float, first_byte_s: float, chunk_gap_s: float
    ) -> UpstreamResponse:
        """Send `head` (request line and headers, no Host) plus `body`; return once headers arrive."""
        data = head + body if len(body) < 65536 else None
        while self._idle:
            conn = self._idle.pop()
            if conn.closed:
                continue
            try:
                await self._send(conn, head, body, data, first_byte_s, chunk_gap_s)
                return UpstreamResponse(conn, self, chunk_gap_s)
            except UpstreamError as exc:
                # A pooled connection the backend had already closed: no byte came back, so the
                # request was not processed; try the next one rather than failing the request.
                if exc.kind == "closed" and not conn._got_bytes:
                    continue
                raise
        conn = await self._connect(connect_s)
        await self._send(conn, head, body, data, first_byte_s, chunk_gap_s)
        return UpstreamResponse(conn, self, chunk_gap_s)

    @staticmethod
    async def _send(
        conn: _Conn, head: bytes, body: bytes, data: bytes | None, first_byte_s: float, chunk_gap_s: float
    ) -> None:
        if data is None:
            assert conn.transport is not None
            conn.transport.write(head)
            await conn.send(body, first_byte_s, chunk_gap_s)
        else:
            await conn.send(data, first_byte_s, chunk_gap_s)

    def close(self) -> None:
        self.closed = True
        for c in self._idle:
            c.close()
        self._idle.clear()
