"""Constants and request builders shared by the cloud provider tests."""

from __future__ import annotations

from argosy.catalog.types import Offering
from argosy.providers.base import InstanceRequest

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly user@host"
TOKEN = "reg-tok-0123456789abcdef"
SERVER = "https://argosy.example.com:8750"


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
