"""A real HTTP server on loopback that plays a provider's API for tests.

Each route says which request it accepts (method, path, auth header, JSON body shape) and which
recorded responses it replays, in order (the last one repeats). A request that matches no route or
breaks its route's shape is answered 400 and recorded in `errors`: tests assert `errors == []`, so a
client that drifts from the documented request shape fails its tests rather than a user's launch.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class ListOf:
    item: Any


@dataclass
class Shape:
    """A JSON object's documented fields: required and optional, each a type, Shape or ListOf."""

    required: dict[str, Any] = field(default_factory=dict)
    optional: dict[str, Any] = field(default_factory=dict)
    extra_ok: bool = False  # free-form maps (env vars, labels)

    def check(self, value: Any, where: str = "body") -> list[str]:
        return _check(self, value, where)


def _check(spec: Any, value: Any, where: str) -> list[str]:
    if isinstance(spec, Shape):
        if not isinstance(value, dict):
            return [f"{where}: expected an object, got {type(value).__name__}"]
        errs = [f"{where}: missing required field '{k}'" for k in spec.required if k not in value]
        for k, v in value.items():
            sub = spec.required.get(k, spec.optional.get(k))
            if sub is None:
                if not spec.extra_ok:
                    errs.append(f"{where}: unknown field '{k}'")
                continue
            errs += _check(sub, v, f"{where}.{k}")
        return errs
    if isinstance(spec, ListOf):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [e for i, v in enumerate(value) for e in _check(spec.item, v, f"{where}[{i}]")]
    types = spec if isinstance(spec, tuple) else (spec,)
    if bool in (type(value),) and bool not in types:
        return [f"{where}: expected {types}, got bool"]
    if not isinstance(value, types):
        return [f"{where}: expected {'/'.join(t.__name__ for t in types)}, got {type(value).__name__}"]
    return []


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # longer than the client's timeout simulates a timeout


@dataclass
class Route:
    method: str
    path: str  # a regex matched against the whole path (without the query)
    replies: list[Reply]
    body: Shape | None = None
    query: dict[str, str] = field(default_factory=dict)  # required query parameters and values
    hits: int = 0


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


class FakeApi:
    def __init__(self, auth_header: str = "Authorization", auth_value: str | None = None) -> None:
        self.auth_header = auth_header
        self.auth_value = auth_value
        self.routes: list[Route] = []
        self.calls: list[Call] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def route(
        self,
        method: str,
        path: str,
        *replies: Reply,
        body: Shape | None = None,
        query: dict[str, str] | None = None,
    ) -> Route:
        r = Route(method, path, list(replies) or [Reply()], body, query or {})
        self.routes.insert(0, r)  # later routes win, so a test can override a default
        return r

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeApi:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _handle(self) -> None:
                fake._serve(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = raw.decode(errors="replace")
        call = Call(h.command, parts.path, parse_qs(parts.query), dict(h.headers.items()), body)
        with self._lock:
            self.calls.append(call)
            reply, problem = self._match(call)
            if problem:
                self.errors.append(problem)
        if reply.delay_s:
            time.sleep(reply.delay_s)
        # A str body is sent as plain text (metadata servers answer text); anything else as JSON.
        text = isinstance(reply.body, str)
        data = b"" if reply.body is None else reply.body.encode() if text else json.dumps(reply.body).encode()
        try:
            h.send_response(reply.status)
            for k, v in reply.headers.items():
                h.send_header(k, v)
            if data:
                h.send_header("Content-Type", "text/plain" if text else "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    def _match(self, call: Call) -> tuple[Reply, str | None]:
        for r in self.routes:
            if r.method != call.method or not re.fullmatch(r.path, call.path):
                continue
            if self.auth_value is not None and call.headers.get(self.auth_header) != self.auth_value:
                return Reply(
                    401, {"error": "fake: bad auth"}
                ), f"{call.method} {call.path}: wrong or missing auth"
            for k, v in r.query.items():
                if call.query.get(k) != [v]:
                    return Reply(400, {"error": "fake"}), f"{call.method} {call.path}: query {k} != {v!r}"
            if r.body is not None:
                errs = r.body.check(call.body)
                if errs:
                    return Reply(400, {"error": "; ".join(errs)}), f"{call.method} {call.path}: " + "; ".join(
                        errs
                    )
            reply = r.replies[min(r.hits, len(r.replies) - 1)]
            r.hits += 1
            return reply, None
        return Reply(404, {"error": "fake: no such route"}), f"no route for {call.method} {call.path}"
