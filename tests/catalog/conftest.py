"""A real local HTTP server that answers like the providers' price APIs, from recorded responses."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from argosy.core.config import Settings, ensure_home, parse_config

FIXTURES = Path(__file__).parent / "fixtures"


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class PriceServer:
    """Routes "METHOD /path" to (status, content type, body); `{BASE}` in a body becomes the server URL."""

    url: str = ""
    routes: dict[str, tuple[int, str, str] | Callable[[Seen], tuple[int, str, str]]] = field(
        default_factory=dict
    )
    seen: list[Seen] = field(default_factory=list)

    def route(
        self,
        method: str,
        path: str,
        status: int = 200,
        fixture: str | None = None,
        body: str = "",
        ctype: str = "application/json",
    ) -> None:
        text = (FIXTURES / fixture).read_text() if fixture else body
        self.routes[f"{method} {path}"] = (status, ctype, text)


@pytest.fixture
def price_server() -> Iterator[PriceServer]:
    server_state = PriceServer()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            seen = Seen(
                self.command,
                parts.path,
                parts.query,
                {k.lower(): v for k, v in self.headers.items()},
                self.rfile.read(length),
            )
            server_state.seen.append(seen)
            route = server_state.routes.get(f"{self.command} {parts.path}")
            if route is None:
                status, ctype, text = 404, "application/json", '{"error": "no such route"}'
            elif callable(route):
                status, ctype, text = route(seen)
            else:
                status, ctype, text = route
            data = text.replace("{BASE}", server_state.url).encode()
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = _answer  # noqa: N815
        do_POST = _answer  # noqa: N815

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server_state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server_state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def cat_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings with a private cache dir: price caches must not leak between tests."""
    home = tmp_path / "home"
    cache = tmp_path / "cache"
    monkeypatch.setenv("ARGOSY_HOME", str(home))
    monkeypatch.setenv("ARGOSY_CACHE_DIR", str(cache))
    monkeypatch.delenv("ARGOSY_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    s = parse_config("", env={"ARGOSY_HOME": str(home), "ARGOSY_CACHE_DIR": str(cache)})
    ensure_home(s)
    return s
