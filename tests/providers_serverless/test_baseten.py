"""Baseten: Truss rendering, a checking fake pusher, and the management API on a loopback server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from argosy.core.errors import ArgosyError, ProviderAuthError
from argosy.providers.base import MANAGED_LABEL, EndpointRequest, Endpoints, Preflight
from argosy.providers.baseten import BasetenProvider

from .fakeapi import Req

KEY = "bt_key_123456"


class FakeBaseten:
    def __init__(self) -> None:
        self.models: dict[str, dict[str, Any]] = {}
        self.autoscaling: dict[str, dict[str, Any]] = {}
        self.pushed: list[dict[str, Any]] = []

    # TrussPusher
    def push(self, directory: Path, model_name: str, api_key: str) -> tuple[str, str]:
        config = yaml.safe_load((directory / "config.yaml").read_text())
        assert api_key == KEY and config["model_name"] == model_name
        ds = config["docker_server"]
        assert ds["server_port"] == 8000 and ds["readiness_endpoint"] == "/health"
        assert ds["start_command"].startswith("sh -c 'vllm serve ")
        assert config["resources"]["use_gpu"] is True
        assert config["model_metadata"][MANAGED_LABEL] == "true"
        self.pushed.append(config)
        mid = f"m{len(self.pushed)}"
        self.models[mid] = {"id": mid, "name": model_name, "instance_type_name": "A10Gx4x16"}
        return mid, f"d{len(self.pushed)}"

    # management API
    def __call__(self, req: Req) -> tuple[int, Any]:
        if req.headers.get("authorization") != f"Api-Key {KEY}":
            return 401, {"error": "invalid api key"}
        parts = req.path.strip("/").split("/")
        assert parts[:2] == ["v1", "models"], req.path
        mid = parts[2]
        if mid not in self.models:
            return 404, {"error": "Model not found"}
        rest = parts[3:]
        if req.method == "GET" and rest == []:
            return 200, self.models[mid]
        if req.method == "GET" and rest == ["deployments", "production"]:
            return 200, {
                "id": "d1",
                "model_id": mid,
                "status": self.models[mid].get("status", "BUILDING"),
                "active_replica_count": 0,
                "instance_type_name": "A10Gx4x16",
            }
        if req.method == "PATCH" and rest == ["deployments", "production", "autoscaling_settings"]:
            allowed = {
                "min_replica",
                "max_replica",
                "autoscaling_window",
                "scale_down_delay",
                "concurrency_target",
            }
            assert set(req.body) <= allowed and req.body["min_replica"] <= req.body["max_replica"]
            self.autoscaling[mid] = req.body
            return 200, {"status": "ACCEPTED", "message": "ok"}
        if req.method == "DELETE" and rest == []:
            del self.models[mid]
            self.autoscaling.pop(mid, None)
            return 200, {"id": mid, "deleted": True}
        raise AssertionError(f"unexpected {req.method} {req.path}")


@pytest.fixture
def baseten(fake_api, settings, clock):
    fake = FakeBaseten()
    server = fake_api(fake)
    p = BasetenProvider(settings, clock, env={"BASETEN_API_KEY": KEY}, pusher=fake, base_url=server.url)
    return p, fake, server


def test_truss_config(baseten):
    p, _, _ = baseten
    assert isinstance(p, Endpoints) and isinstance(p, Preflight)
    plan = p.plan_endpoint(
        EndpointRequest("chat", "Qwen/Qwen2.5-7B-Instruct", max_workers=3, extra={"gpu": "A10G"})
    )
    cfg = yaml.safe_load(plan.artifacts["config.yaml"])
    assert cfg["model_name"] == "argosy-chat" and cfg["resources"]["accelerator"] == "A10G"
    assert cfg["base_image"]["image"].startswith("vllm/vllm-openai:")
    assert "--served-model-name chat" in cfg["docker_server"]["start_command"]
    assert plan.payload["autoscaling"]["max_replica"] == 3
    assert any("verify" in n for n in plan.notes)  # unverified price figures say so


def test_lifecycle(baseten):
    p, fake, server = baseten
    ep = p.deploy(
        p.plan_endpoint(EndpointRequest("chat", "m", min_workers=0, max_workers=2, extra={"gpu": "A10G"}))
    )
    assert ep.endpoint_id == "m1" and ep.state == "deploying"
    assert fake.autoscaling["m1"]["max_replica"] == 2
    assert ep.url == "https://model-m1.api.baseten.co/environments/production/sync/v1"
    assert ep.auth_header == {"Authorization": f"Api-Key {KEY}"} and KEY not in repr(ep)
    assert ep.price_per_second == pytest.approx(0.00033533)
    fake.models["m1"]["status"] = "ACTIVE"
    assert p.endpoint_status("m1").state == "ready"
    p.destroy("m1")
    assert fake.models == {}
    p.destroy("m1")
    assert server.errors == []


def test_refuses_unmanaged_and_needs_key(baseten, settings, clock):
    p, fake, _ = baseten
    fake.models["x"] = {"id": "x", "name": "prod-model"}
    with pytest.raises(ArgosyError, match="not created by Argosy"):
        p.destroy("x")
    assert "x" in fake.models
    nokey = BasetenProvider(settings, clock, env={}, pusher=fake)
    bad = [c for c in nokey.preflight() if not c.ok]
    assert bad and "export BASETEN_API_KEY=" in (bad[0].fix or "")
    with pytest.raises(ProviderAuthError):
        nokey.deploy(nokey.plan_endpoint(EndpointRequest("chat", "m")))
    assert len(fake.pushed) == 0  # nothing pushed without a key
