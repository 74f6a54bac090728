"""Fixtures: real backends on loopback and a real router on its own event loop thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop

from argosy.router.app import Router
from argosy.router.config import parse_router_config
from router.backend import Backend, Behaviour


class RunningRouter:
    """A Router serving on 127.0.0.1:<random port> from a background thread with its own loop."""

    def __init__(self, config: dict[str, Any]) -> None:
        config = {"listen": "127.0.0.1:0", **config}
        health = config.setdefault("health", {})
        health.setdefault("probe_interval_s", 0.2)
        health.setdefault("probe_timeout_s", 0.5)
        self.config = parse_router_config("", "test", config)
        # The same loop as production (argosy router installs uvloop).
        self.loop = uvloop.new_event_loop()
        self.router: Router | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("router did not start")
        if self._error:
            raise self._error
        assert self.router is not None
        self.url = f"http://127.0.0.1:{self.router.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self.router = Router(self.config)
            await self.router.start()

        try:
            self.loop.run_until_complete(start())
        except BaseException as exc:  # surface start failures in the test thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the router's loop thread (the router is single-threaded by design)."""
        fut: asyncio.Future[Any] = asyncio.run_coroutine_threadsafe(self._call(fn), self.loop)  # type: ignore[assignment]
        return fut.result(10)

    @staticmethod
    async def _call(fn: Callable[[], Any]) -> Any:
        return fn()

    def stop(self) -> None:
        assert self.router is not None
        asyncio.run_coroutine_threadsafe(self.router.stop(grace_s=1.0), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture
def backends() -> Iterator[Callable[..., Backend]]:
    made: list[Backend] = []

    def make(name: str = "b", **behaviour: Any) -> Backend:
        b = Backend(f"{name}", Behaviour(**behaviour))
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def router() -> Iterator[Callable[..., RunningRouter]]:
    made: list[RunningRouter] = []

    def make(**config: Any) -> RunningRouter:
        r = RunningRouter(config)
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


def primaries(*bs: Backend, **extra: Any) -> list[dict[str, Any]]:
    return [{"name": b.name, "url": b.url, "tier": "primary", **extra} for b in bs]


def fallbacks(*bs: Backend, **extra: Any) -> list[dict[str, Any]]:
    return [{"name": b.name, "url": b.url, "tier": "fallback", **extra} for b in bs]
