from __future__ import annotations

from collections.abc import Iterator

import pytest

from argosy.core.clock import FakeClock
from argosy.core.config import Settings

from .fakeapi import FakeApi, Handler


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake_api() -> Iterator[type]:
    servers: list[FakeApi] = []

    def start(handler: Handler) -> FakeApi:
        s = FakeApi(handler)
        servers.append(s)
        return s

    yield start  # type: ignore[misc]
    for s in servers:
        s.close()
