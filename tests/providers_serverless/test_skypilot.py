"""SkyPilot provider: rendered SkyServe YAML and a lifecycle against a checking fake SDK."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import yaml

from argosy.core.errors import ArgosyError, ConfigError, NotFoundError
from argosy.providers.base import EndpointRequest, Endpoints, Preflight
from argosy.providers.skypilot import SkyPilotProvider


class FakeSky:
    """Keeps services like the SkyServe controller would and checks what it is given."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, Any]] = {}

    def up(self, task: Mapping[str, Any], service_name: str) -> str | None:
        assert service_name == task["name"] and service_name not in self.services
        assert "<secret:" not in str(task) and len(task["secrets"]["VLLM_API_KEY"]) >= 32
        assert task["service"]["readiness_probe"]["path"] == "/health"
        assert task["resources"]["ports"] == 8000
        self.services[service_name] = {
            "name": service_name,
            "status": "CONTROLLER_INIT",
            "endpoint": "34.1.2.3:30001",
        }
        return "34.1.2.3:30001"

    def status(self, service_name: str) -> Mapping[str, Any] | None:
        return self.services.get(service_name)

    def down(self, service_name: str) -> None:
        del self.services[service_name]


@pytest.fixture
def sky(settings, clock):
    fake = FakeSky()
    return SkyPilotProvider(settings, clock, env={}, backend=fake), fake


def test_rendered_service_yaml(sky):
    p, _ = sky
    assert isinstance(p, Endpoints) and isinstance(p, Preflight)
    plan = p.plan_endpoint(
        EndpointRequest(
            "chat", "Qwen/Qwen2.5-7B-Instruct", min_workers=1, max_workers=4, extra={"gpu": "A100-80GB:2"}
        )
    )
    task = yaml.safe_load(plan.artifacts["service.yaml"])
    assert task["resources"]["accelerators"] == {"A100-80GB": 2} and task["resources"]["use_spot"] is True
    assert task["service"]["replica_policy"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_qps_per_replica": 5.0,
        "dynamic_ondemand_fallback": True,
    }
    assert task["secrets"] == {"VLLM_API_KEY": "<secret:API_KEY>"}
    assert "vllm serve $MODEL" in task["run"] and task["envs"]["MODEL"] == "Qwen/Qwen2.5-7B-Instruct"
    text = "\n".join(plan.notes)
    assert "router auth: Authorization: Bearer" in text and "cold start: unknown" in text


def test_lifecycle(sky):
    p, fake = sky
    ep = p.deploy(p.plan_endpoint(EndpointRequest("chat", "m")))
    assert ep.endpoint_id == "argosy-chat" and ep.url == "http://34.1.2.3:30001/v1"
    assert ep.auth_header["Authorization"].startswith("Bearer ")
    assert p.endpoint_status("argosy-chat").state == "deploying"
    fake.services["argosy-chat"]["status"] = "READY"
    assert p.endpoint_status("argosy-chat").state == "ready"
    p.destroy("argosy-chat")
    assert fake.services == {}
    p.destroy("argosy-chat")
    with pytest.raises(NotFoundError):
        p.endpoint_status("argosy-chat")
    with pytest.raises(ArgosyError, match="not created by Argosy"):
        p.destroy("team-llm")


def test_strict_options(sky):
    p, _ = sky
    with pytest.raises(ConfigError, match="use_spot"):
        p.plan_endpoint(EndpointRequest("c", "m", extra={"spot": True}))
