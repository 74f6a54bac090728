"""Shared fixtures for the cloud provider tests: settings and a clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from argosy.core.clock import FakeClock
from argosy.core.config import Settings, parse_config


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # A server that cloud nodes can reach (the same URL the requests carry, so goldens stay as they are).
    return parse_config(
        "",
        env={
            "ARGOSY_HOME": str(tmp_path / "home"),
            "ARGOSY_SERVER_PUBLIC_URL": "https://argosy.example.com:8750",
        },
    )


@pytest.fixture
def loopback_settings(tmp_path: Path) -> Settings:
    """The default: a server on 127.0.0.1 with no public URL, which no cloud node can reach."""
    return parse_config("", env={"ARGOSY_HOME": str(tmp_path / "home")})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
