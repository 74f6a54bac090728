"""Cloud Run through the real google-cloud-run REST transport, pointed at a loopback Admin API v2 fake."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("google.cloud.run_v2")

from google.api_core.client_options import ClientOptions  # noqa: E402
from google.auth.credentials import AnonymousCredentials  # noqa: E402
from google.cloud import run_v2  # noqa: E402

from argosy.core.errors import ArgosyError, ConfigError, QuotaError  # noqa: E402
from argosy.providers.base import MANAGED_LABEL, EndpointRequest, Endpoints, Preflight  # noqa: E402
from argosy.providers.cloudrun import CloudRunProvider  # noqa: E402

from .fakeapi import Req  # noqa: E402

PARENT = "projects/proj-1/locations/europe-west4"
INVOKER = "router@proj-1.iam.gserviceaccount.com"


class FakeRun:
    """Cloud Run Admin API v2: services and IAM, with operations that report done at once."""

    def __init__(self, create_error: tuple[int, Any] | None = None) -> None:
        self.services: dict[str, dict[str, Any]] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self.create_error = create_error

    def __call__(self, req: Req) -> tuple[int, Any]:
        p = req.path
        assert p.startswith("/v2/"), p
        name = p[len("/v2/") :]
        if req.method == "POST" and name == f"{PARENT}/services":
            if self.create_error:
                return self.create_error
            svc, sid = req.body, req.query["serviceId"]
            assert svc["labels"][MANAGED_LABEL] == "true"
            t = svc["template"]
            c = t["containers"][0]
            assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" and t["nodeSelector"] == {
                "accelerator": "nvidia-l4"
            }
            assert c["resources"].get("cpuIdle") in (False, None), "GPU services need CPU always allocated"
            assert int(c["resources"]["limits"]["cpu"]) >= 4 and c["resources"]["limits"]["memory"].endswith(
                "Gi"
            )
            assert c["startupProbe"]["httpGet"]["path"] == "/health"
            assert svc.get("invokerIamDisabled") in (False, None), "the service must not be public"
            full = f"{PARENT}/services/{sid}"
            if full in self.services:
                return 409, {
                    "error": {
                        "code": 409,
                        "message": f"Resource '{sid}' already exists.",
                        "status": "ALREADY_EXISTS",
                    }
                }
            self.services[full] = {**svc, "name": full, "reconciling": True, "uri": ""}
            return 200, {"name": f"{PARENT}/operations/op-create", "done": False}
        if req.method == "POST" and name.endswith(":setIamPolicy"):
            resource = name.removesuffix(":setIamPolicy")
            assert resource in self.services
            bindings = req.body["policy"]["bindings"]
            assert bindings == [{"role": "roles/run.invoker", "members": [f"serviceAccount:{INVOKER}"]}]
            self.policies[resource] = req.body["policy"]
            return 200, req.body["policy"]
        if name in self.services:
            if req.method == "GET":
                return 200, self.services[name]
            if req.method == "DELETE":
                del self.services[name]
                self.policies.pop(name, None)
                return 200, {"name": f"{PARENT}/operations/op-delete", "done": False}
        if req.method in ("GET", "DELETE"):
            return 404, {
                "error": {"code": 404, "message": f"Resource '{name}' was not found", "status": "NOT_FOUND"}
            }
        raise AssertionError(f"unexpected {req.method} {p}")


def make(fake_api, settings, clock, fake: FakeRun, **env: str) -> tuple[CloudRunProvider, Any, list[str]]:
    server = fake_api(fake)
    client = run_v2.ServicesClient(
        transport="rest",
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=server.url),
    )
    minted: list[str] = []

    def token_source(audience: str) -> str:
        minted.append(audience)
        return "id-token-for-" + audience

    full_env = {"GOOGLE_CLOUD_PROJECT": "proj-1", "ARGOSY_CLOUDRUN_INVOKER": INVOKER, **env}
    return (
        CloudRunProvider(settings, clock, env=full_env, client=client, token_source=token_source),
        server,
        minted,
    )


def test_plan_renders_service_sized_to_model(fake_api, settings, clock):
    p, _, _ = make(fake_api, settings, clock, FakeRun())
    assert isinstance(p, Endpoints) and isinstance(p, Preflight)
    plan = p.plan_endpoint(EndpointRequest("chat", "Qwen/Qwen2.5-7B-Instruct", min_workers=0, max_workers=2))
    svc = json.loads(plan.artifacts["service.json"])
    c = svc["template"]["containers"][0]
    probe = c["startupProbe"]
    # 15.2 GB of bf16 weights -> 240 + 152 s budget.
    assert probe["failureThreshold"] * probe["periodSeconds"] >= 392
    assert svc["template"]["scaling"] == {"minInstanceCount": 0, "maxInstanceCount": 2}
    assert plan.payload["iam_policy"]["bindings"][0]["members"] == [f"serviceAccount:{INVOKER}"]
    per_s = 0.0001867 + 8 * 0.000018 + 32 * 0.000002
    assert plan.estimated_cost_per_hour == pytest.approx(per_s * 3600)
    assert any("cold start: ~5s (published" in n for n in plan.notes)
    # The rendered JSON is exactly what the client library accepts.
    run_v2.Service.from_json(plan.artifacts["service.json"])


def test_lifecycle(fake_api, settings, clock):
    fake = FakeRun()
    p, server, minted = make(fake_api, settings, clock, fake)
    ep = p.deploy(p.plan_endpoint(EndpointRequest("chat", "Qwen/Qwen2.5-0.5B-Instruct", max_workers=1)))
    name = f"{PARENT}/services/argosy-chat"
    assert ep.endpoint_id == name and ep.state == "deploying" and ep.auth_header == {}
    assert fake.policies[name]["bindings"][0]["role"] == "roles/run.invoker"
    assert ep.price_per_second == pytest.approx(0.0001867 + 8 * 0.000018 + 32 * 0.000002)
    fake.services[name].update(
        reconciling=False,
        uri="https://argosy-chat-xyz.a.run.app",
        terminalCondition={"state": "CONDITION_SUCCEEDED"},
    )
    st = p.endpoint_status(name)
    assert st.state == "ready" and st.url == "https://argosy-chat-xyz.a.run.app/v1"
    assert st.auth_header == {"Authorization": "Bearer id-token-for-https://argosy-chat-xyz.a.run.app"}
    assert minted == ["https://argosy-chat-xyz.a.run.app"] and st.model == "Qwen/Qwen2.5-0.5B-Instruct"
    p.destroy(name)
    assert fake.services == {} and fake.policies == {}
    p.destroy(name)  # idempotent
    assert server.errors == []


def test_failed_revision_and_quota_errors(fake_api, settings, clock):
    fake = FakeRun()
    p, _, _ = make(fake_api, settings, clock, fake)
    ep = p.deploy(p.plan_endpoint(EndpointRequest("chat", "m")))
    fake.services[ep.endpoint_id].update(
        reconciling=False, terminalCondition={"state": "CONDITION_FAILED", "message": "startup probe failed"}
    )
    st = p.endpoint_status(ep.endpoint_id)
    assert st.state == "failed" and "startup probe" in st.detail
    q, _, _ = make(
        fake_api,
        settings,
        clock,
        FakeRun(
            create_error=(
                429,
                {
                    "error": {
                        "code": 429,
                        "message": "Quota exceeded for nvidia_l4_gpu_allocation",
                        "status": "RESOURCE_EXHAUSTED",
                    }
                },
            )
        ),
    )
    with pytest.raises(QuotaError) as info:
        q.deploy(q.plan_endpoint(EndpointRequest("chat", "m")))
    assert "Nvidia L4 GPU allocation" in str(info.value)


def test_refuses_unmanaged_and_bad_input(fake_api, settings, clock):
    fake = FakeRun()
    p, _, _ = make(fake_api, settings, clock, fake)
    fake.services[f"{PARENT}/services/theirs"] = {"name": f"{PARENT}/services/theirs", "labels": {}}
    with pytest.raises(ArgosyError, match="not created by Argosy"):
        p.destroy(f"{PARENT}/services/theirs")
    with pytest.raises(ConfigError, match="one GPU"):
        p.plan_endpoint(EndpointRequest("c", "m", extra={"gpu": "L4:2"}))
    with pytest.raises(ConfigError, match="services/NAME"):
        p.endpoint_status("argosy-chat")


def test_preflight_without_credentials_says_what_to_set(settings, clock, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    p = CloudRunProvider(settings, clock, env={})
    fixes = {c.name: c.fix for c in p.preflight() if not c.ok}
    assert "gcloud auth application-default login" in fixes["google credentials"]
    assert "GOOGLE_CLOUD_PROJECT" in fixes["google project"]
    assert "ARGOSY_CLOUDRUN_INVOKER" in fixes["cloud run invoker"]


def test_dry_run_without_settings_renders_placeholders_deploy_refuses(settings, clock):
    p = CloudRunProvider(settings, clock, env={}, client=object())
    plan = p.plan_endpoint(EndpointRequest("chat", "m"))
    assert plan.payload["parent"].startswith("projects/<GOOGLE_CLOUD_PROJECT>/")
    with pytest.raises(ConfigError, match="GOOGLE_CLOUD_PROJECT"):
        p.deploy(plan)
    p2 = CloudRunProvider(settings, clock, env={"GOOGLE_CLOUD_PROJECT": "x"}, client=object())
    with pytest.raises(ConfigError, match="ARGOSY_CLOUDRUN_INVOKER"):
        p2.deploy(p2.plan_endpoint(EndpointRequest("chat", "m")))
