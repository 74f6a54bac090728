"""RunPod Serverless against a loopback REST server that checks request shapes (RunPod REST v1)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest

from argosy.core.errors import ArgosyError, ConfigError, ProviderAuthError, QuotaError
from argosy.providers.base import EndpointRequest, Endpoints, Offerings, Preflight
from argosy.providers.runpod_serverless import WORKER_IMAGE, RunpodServerlessProvider

from .fakeapi import Req

KEY = "rp_test_key_0123456789"
ENDPOINT_FIELDS = {
    "allowedCudaVersions",
    "computeType",
    "cpuFlavorIds",
    "dataCenterIds",
    "executionTimeoutMs",
    "flashboot",
    "gpuCount",
    "gpuTypeIds",
    "idleTimeout",
    "name",
    "networkVolumeId",
    "scalerType",
    "scalerValue",
    "templateId",
    "vcpuCount",
    "workersMax",
    "workersMin",
}
BILLING_QUERY = {
    "bucketSize",
    "dataCenterId",
    "endpointId",
    "endTime",
    "gpuTypeId",
    "grouping",
    "imageName",
    "startTime",
    "templateId",
}
KNOWN_GPUS = {"NVIDIA L4", "NVIDIA A100 80GB PCIe", "NVIDIA H100 80GB HBM3", "NVIDIA GeForce RTX 4090"}


class RunpodFake:
    """In-memory RunPod REST v1 with the response shapes of docs.runpod.io/api-reference."""

    def __init__(self, fail_endpoint_create: tuple[int, Any] | None = None) -> None:
        self.templates: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.ids = itertools.count(1)
        self.fail_endpoint_create = fail_endpoint_create
        self.billing: list[dict[str, Any]] = []  # GET /billing/endpoints records

    def __call__(self, req: Req) -> tuple[int, Any]:
        if req.headers.get("authorization") != f"Bearer {KEY}":
            return 401, {"error": "Unauthorized"}
        parts = req.path.strip("/").split("/")
        assert parts[0] == "v1", req.path
        kind, ident = parts[1], (parts[2] if len(parts) > 2 else None)
        if (req.method, kind, ident) == ("POST", "templates", None):
            b = req.body
            assert set(b) <= {"name", "imageName", "isServerless", "containerDiskInGb", "env", "readme"}, b
            assert b["isServerless"] is True and b["imageName"] and b["name"].startswith("argosy-")
            assert all(isinstance(v, str) for v in b["env"].values()), "env values must be strings"
            assert "<secret:" not in str(b), "a secret placeholder reached the API"
            if any(t["name"] == b["name"] for t in self.templates.values()):
                return 400, {"error": f"Template name '{b['name']}' already exists"}
            tid = f"tpl{next(self.ids)}"
            self.templates[tid] = {**b, "id": tid}
            return 200, self.templates[tid]
        if (req.method, kind, ident) == ("POST", "endpoints", None):
            b = req.body
            # EndpointCreateInput (docs.runpod.io/api-reference/endpoints/POST/endpoints): nothing else.
            assert set(b) <= ENDPOINT_FIELDS, set(b) - ENDPOINT_FIELDS
            assert b["templateId"] in self.templates, "endpoint must reference a created template"
            assert set(b["gpuTypeIds"]) <= KNOWN_GPUS, b["gpuTypeIds"]
            assert 0 <= b["workersMin"] <= b["workersMax"], b
            assert isinstance(b["idleTimeout"], int) and isinstance(b["flashboot"], bool)
            assert b["computeType"] == "GPU" and b["scalerType"] in ("QUEUE_DELAY", "REQUEST_COUNT")
            if self.fail_endpoint_create:
                return self.fail_endpoint_create
            eid = f"ep{next(self.ids)}"
            self.endpoints[eid] = {**b, "id": eid, "workers": []}
            return 200, {k: v for k, v in self.endpoints[eid].items() if k != "workers"}
        if kind == "endpoints" and ident:
            ep = self.endpoints.get(ident)
            if ep is None:
                return 404, {"error": "endpoint not found"}
            if req.method == "GET":
                out = dict(ep)
                if req.query.get("includeTemplate") == "true":
                    out["template"] = self.templates[ep["templateId"]]
                if req.query.get("includeWorkers") != "true":
                    out.pop("workers")
                return 200, out
            if req.method == "PATCH":
                assert set(req.body) <= {"workersMin", "workersMax", "idleTimeout", "gpuTypeIds", "name"}
                ep.update(req.body)
                return 200, ep
            if req.method == "DELETE":
                if ep["workersMax"] != 0:
                    return 400, {"error": "endpoint still has workers; set workers to 0 first"}
                del self.endpoints[ident]
                return 204, None
        if (req.method, kind, ident) == ("GET", "billing", "endpoints"):
            # Query parameters of docs.runpod.io/api-reference/billing/GET/billing/endpoints.
            q = req.query
            assert set(q) <= BILLING_QUERY, set(q) - BILLING_QUERY
            assert q.get("bucketSize") in (None, "hour", "day", "week", "month", "year")
            assert q.get("grouping") in (None, "endpointId", "podId", "gpuTypeId")
            for k in ("startTime", "endTime"):
                if k in q:
                    datetime.strptime(q[k], "%Y-%m-%dT%H:%M:%SZ")  # RFC 3339, UTC
            if not isinstance(self.billing, list):
                return 200, self.billing  # a test's odd answer, as is
            return 200, [
                r
                for r in self.billing
                if r["endpointId"] == q.get("endpointId", r["endpointId"])
                and q.get("startTime", "") <= r["time"] < q.get("endTime", "9999")
            ]
        if kind == "templates" and ident and req.method == "DELETE":
            assert not any(e["templateId"] == ident for e in self.endpoints.values()), "template still in use"
            return (204, None) if self.templates.pop(ident, None) else (404, {"error": "template not found"})
        raise AssertionError(f"unexpected call {req.method} {req.path}")


@pytest.fixture
def runpod(fake_api, settings, clock):
    fake = RunpodFake()
    server = fake_api(fake)
    env = {"RUNPOD_API_KEY": KEY, "HF_TOKEN": "hf_secret_value"}
    p = RunpodServerlessProvider(settings, clock, env=env, base_url=server.url + "/v1")
    return p, fake, server


def test_capabilities_and_plan_shape(runpod):
    p, _, _ = runpod
    assert isinstance(p, Endpoints) and isinstance(p, Offerings) and isinstance(p, Preflight)
    plan = p.plan_endpoint(
        EndpointRequest(
            "chat", "meta-llama/Llama-3.1-8B-Instruct", min_workers=0, max_workers=3, extra={"gpu": "L4"}
        )
    )
    t, e = plan.payload["template"], plan.payload["endpoint"]
    assert t["imageName"] == WORKER_IMAGE and t["isServerless"] is True
    assert t["env"]["MODEL_NAME"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert t["env"]["OPENAI_SERVED_MODEL_NAME_OVERRIDE"] == "chat"
    assert t["env"]["HF_TOKEN"] == "<secret:HF_TOKEN>"  # the printed plan never shows the token
    assert "hf_secret_value" not in repr(plan) and "hf_secret_value" not in str(plan.payload)
    assert e["gpuTypeIds"] == ["NVIDIA L4"] and e["workersMax"] == 3 and e["flashboot"] is True
    assert plan.estimated_cost_per_hour == pytest.approx(0.00019 * 3600)
    text = "\n".join(plan.notes)
    assert (
        "price: $0.000190/s" in text
        and "cold start:" in text
        and "router auth: Authorization: Bearer" in text
    )


def test_lifecycle_deploy_status_destroy(runpod):
    p, fake, server = runpod
    plan = p.plan_endpoint(EndpointRequest("chat", "Qwen/Qwen2.5-0.5B-Instruct", max_workers=2))
    ep = p.deploy(plan)
    assert ep.url == f"https://api.runpod.ai/v2/{ep.endpoint_id}/openai/v1"
    assert ep.auth_header == {"Authorization": f"Bearer {KEY}"} and KEY not in repr(ep)
    assert ep.price_per_second == pytest.approx(0.00019)
    assert fake.templates[ep.resources["template"]]["env"]["HF_TOKEN"] == "hf_secret_value"
    st = p.endpoint_status(ep.endpoint_id)
    assert st.state == "ready" and st.model == "Qwen/Qwen2.5-0.5B-Instruct"
    p.destroy(ep.endpoint_id)
    assert fake.endpoints == {} and fake.templates == {}
    assert server.calls()[-3:] == [
        f"PATCH /v1/endpoints/{ep.endpoint_id}",
        f"DELETE /v1/endpoints/{ep.endpoint_id}",
        f"DELETE /v1/templates/{ep.resources['template']}",
    ]
    p.destroy(ep.endpoint_id)  # idempotent
    assert server.errors == []


def test_failed_endpoint_create_removes_template(fake_api, settings, clock):
    fake = RunpodFake(fail_endpoint_create=(400, {"error": "Max workers quota exceeded for this account"}))
    server = fake_api(fake)
    p = RunpodServerlessProvider(settings, clock, env={"RUNPOD_API_KEY": KEY}, base_url=server.url + "/v1")
    with pytest.raises(QuotaError) as info:
        p.deploy(p.plan_endpoint(EndpointRequest("chat", "m", max_workers=5)))
    assert "fix:" in str(info.value)
    assert fake.templates == {}  # nothing left behind
    assert server.errors == []


def test_destroy_refuses_unmanaged(runpod):
    p, fake, _ = runpod
    fake.templates["t0"] = {"id": "t0", "name": "mine", "env": {}}
    fake.endpoints["e0"] = {"id": "e0", "name": "mine", "templateId": "t0", "workersMax": 1, "workers": []}
    with pytest.raises(ArgosyError, match="not created by Argosy"):
        p.destroy("e0")
    assert "e0" in fake.endpoints


def test_wrong_key_is_an_auth_error_with_fix(fake_api, settings, clock):
    server = fake_api(RunpodFake())
    p = RunpodServerlessProvider(
        settings, clock, env={"RUNPOD_API_KEY": "wrong"}, base_url=server.url + "/v1"
    )
    with pytest.raises(ProviderAuthError) as info:
        p.endpoint_status("ep1")
    assert "wrong" not in str(info.value) and "RUNPOD_API_KEY" in str(info.value)


def test_preflight_without_credentials_says_what_to_set(settings, clock):
    p = RunpodServerlessProvider(settings, clock, env={})
    bad = [c for c in p.preflight() if not c.ok]
    assert len(bad) == 1 and "export RUNPOD_API_KEY=" in (bad[0].fix or "")
    with pytest.raises(ProviderAuthError, match="RUNPOD_API_KEY"):
        p.endpoint_status("x")


def test_unknown_option_and_gpu_are_config_errors(runpod):
    p, _, _ = runpod
    with pytest.raises(ConfigError, match="idle_timeout_s"):
        p.plan_endpoint(EndpointRequest("c", "m", extra={"idle_timeout": 5}))
    with pytest.raises(ConfigError, match="fix|pick one"):
        p.plan_endpoint(EndpointRequest("c", "m", extra={"gpu": "K80"}))


def test_offerings_are_labelled_list_prices(runpod):
    p, _, _ = runpod
    offs = p.offerings()
    assert all(o.kind == "serverless" and o.source.startswith("published list price") for o in offs)
    assert {o.gpu for o in offs} >= {"L4", "A100-80GB", "H100-SXM"}


def test_billed_usage_is_read_from_the_billing_api(runpod):
    from argosy.providers.base import EndpointUsage

    p, fake, server = runpod
    assert isinstance(p, EndpointUsage)
    hour = datetime(2026, 11, 3, 10, tzinfo=UTC).timestamp()
    fake.billing = [
        {"amount": 0.42, "diskSpaceBilledGb": 50, "endpointId": "ep7", "gpuTypeId": "NVIDIA L4",
         "time": "2026-11-03T10:00:00Z", "timeBilledMs": 1_260_000},
        {"amount": 0.1, "endpointId": "ep7", "time": "2026-11-03T11:00:00Z"},
        {"amount": 9.0, "endpointId": "other", "time": "2026-11-03T10:00:00Z", "timeBilledMs": 1},
    ]  # fmt: skip
    records = p.endpoint_usage("ep7", hour + 1800, hour + 7200)
    assert [(r.start_ts, r.end_ts, r.cost_usd, r.seconds) for r in records] == [
        (hour, hour + 3600, 0.42, 1260.0),
        (hour + 3600, hour + 7200, 0.1, None),  # no time reported for this bucket
    ]
    [req] = [r for r in server.requests if r.path == "/v1/billing/endpoints"]
    assert req.method == "GET" and req.query == {
        "endpointId": "ep7",
        "bucketSize": "hour",
        "grouping": "endpointId",
        "startTime": "2026-11-03T10:00:00Z",  # from the start of the hour `since` falls in
        "endTime": "2026-11-03T12:00:00Z",
    }


def test_a_billing_answer_of_the_wrong_shape_is_an_error(runpod):
    p, fake, _ = runpod
    fake.billing = {"unexpected": True}  # type: ignore[assignment]
    with pytest.raises(ArgosyError, match="not a list of records"):
        p.endpoint_usage("ep7", 0.0, 3600.0)
