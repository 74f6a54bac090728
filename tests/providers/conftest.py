"""Shared fixtures for the cloud provider tests: settings and a clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from argosy.core.clock import FakeClock
from argosy.core.config import Settings, parse_config


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return parse_config("", env={"ARGOSY_HOME": str(tmp_path / "home")})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
