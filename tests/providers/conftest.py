"""Shared fixtures for the cloud provider tests: settings, a clock, requests on an offering."""

from __future__ import annotations

from pathlib import Path

import pytest

from argosy.catalog.types import Offering
from argosy.core.clock import FakeClock
from argosy.core.config import Settings, parse_config
from argosy.providers.base import InstanceRequest

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly user@host"
TOKEN = "reg-tok-0123456789abcdef"
SERVER = "https://argosy.example.com:8750"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return parse_config("", env={"ARGOSY_HOME": str(tmp_path / "home")})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_request(offering: Offering, name: str = "llama-1", **kw: object) -> InstanceRequest:
    return InstanceRequest(
        name=name,
        offering=offering,
        server_url=SERVER,
        agent_token=TOKEN,
        labels={"deployment": "llama"},
        ssh_public_key=SSH_KEY,
        **kw,  # type: ignore[arg-type]
    )
