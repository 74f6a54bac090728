"""GCP through the real google-cloud-compute REST transport, pointed at a loopback fake of Compute v1."""

from __future__ import annotations

import pytest

from .fakehttp import FakeApi, ListOf, Reply, Shape
from .vmhelpers import TOKEN, make_request

pytest.importorskip("google.cloud.compute_v1")

from google.auth.credentials import AnonymousCredentials  # noqa: E402

from argosy.catalog.types import Offering  # noqa: E402
from argosy.core.errors import CapacityError, ProviderAuthError, QuotaError  # noqa: E402
from argosy.providers.base import MANAGED_LABEL  # noqa: E402
from argosy.providers.gcp import GcpProvider  # noqa: E402

PROJECT, ZONE = "demo-proj", "us-central1-a"
BASE = f"/compute/v1/projects/{PROJECT}"
INSERT = Shape(
    required={"name": str, "machineType": str, "disks": list, "networkInterfaces": list},
    optional={
        "labels": Shape(extra_ok=True),
        "metadata": Shape(optional={"items": ListOf(Shape(required={"key": str, "value": str}))}),
        "scheduling": Shape(
            optional={
                "onHostMaintenance": str,
                "automaticRestart": bool,
                "provisioningModel": str,
                "instanceTerminationAction": str,
            }
        ),
        "guestAccelerators": ListOf(Shape(required={"acceleratorType": str, "acceleratorCount": int})),
    },
)


def _op(status: str = "DONE", errors: list | None = None, name: str = "operation-1") -> dict:
    op = {
        "kind": "compute#operation",
        "name": name,
        "status": status,
        "operationType": "insert",
        "zone": f"https://www.googleapis.com{BASE}/zones/{ZONE}",
        "targetLink": f"https://www.googleapis.com{BASE}/zones/{ZONE}/instances/argosy-llama-1",
    }
    if errors:
        op["error"] = {"errors": errors}
        op["httpErrorStatusCode"] = 503
        op["httpErrorMessage"] = "SERVICE UNAVAILABLE"
    return op


def _vm(status: str, labels: dict | None = None, name: str = "argosy-llama-1") -> dict:
    return {
        "kind": "compute#instance",
        "id": "123",
        "name": name,
        "status": status,
        "zone": f"https://www.googleapis.com{BASE}/zones/{ZONE}",
        "labels": labels if labels is not None else {MANAGED_LABEL: "true", "argosy-node": name},
        "networkInterfaces": [
            {
                "network": "global/networks/default",
                "accessConfigs": [{"name": "External NAT", "natIP": "34.1.2.3"}],
            }
        ],
    }


@pytest.fixture
def fake():
    with FakeApi() as f:  # anonymous credentials: no auth header to check
        yield f


def _provider(fake, settings, clock):
    return GcpProvider(
        settings, clock, env={}, project=PROJECT, credentials=AnonymousCredentials(), api_endpoint=fake.url
    )


def _offering(kind: str = "spot", **extra: str) -> Offering:
    return Offering("gcp", ZONE, "a2-highgpu-1g", "A100-40GB", 1, kind, None, extra=dict(extra))


def test_offerings_from_machine_and_accelerator_types(fake, settings, clock):
    fake.route(
        "GET",
        f"{BASE}/aggregated/machineTypes",
        Reply(
            200,
            {
                "items": {
                    f"zones/{ZONE}": {
                        "machineTypes": [
                            {
                                "name": "a2-highgpu-1g",
                                "zone": ZONE,
                                "guestCpus": 12,
                                "memoryMb": 87040,
                                "accelerators": [
                                    {"guestAcceleratorType": "nvidia-tesla-a100", "guestAcceleratorCount": 1}
                                ],
                            },
                        ]
                    }
                }
            },
        ),
    )
    fake.route(
        "GET",
        f"{BASE}/aggregated/acceleratorTypes",
        Reply(
            200,
            {
                "items": {
                    "zones/us-east1-c": {
                        "acceleratorTypes": [
                            {"name": "nvidia-tesla-t4", "zone": f"https://x{BASE}/zones/us-east1-c"}
                        ]
                    }
                }
            },
        ),
    )
    offs = _provider(fake, settings, clock).offerings()
    a2 = [o for o in offs if o.instance_type == "a2-highgpu-1g"]
    assert [(o.region, o.gpu, o.kind, o.price_per_hour) for o in a2] == [
        (ZONE, "A100-40GB", "vm", None),
        (ZONE, "A100-40GB", "spot", None),
    ]
    t4 = [o for o in offs if o.gpu == "T4"]
    assert {(o.region, o.instance_type, o.gpu_count) for o in t4} == {
        ("us-east1-c", "n1-standard-8", 1),
        ("us-east1-c", "n1-standard-16", 2),
        ("us-east1-c", "n1-standard-32", 4),
    }
    assert fake.errors == []
    filt = next(c.query["filter"][0] for c in fake.calls if c.path.endswith("machineTypes"))
    assert '"a2-.*"' in filt and '"g2-.*"' in filt


def test_lifecycle_spot_preempted(fake, settings, clock):
    fake.route(
        "GET",
        BASE,
        Reply(200, {"name": PROJECT, "quotas": [{"metric": "GPUS_ALL_REGIONS", "limit": 4, "usage": 0}]}),
    )
    fake.route("POST", f"{BASE}/zones/{ZONE}/instances", Reply(200, _op("RUNNING")), body=INSERT)
    fake.route("GET", f"{BASE}/zones/{ZONE}/operations/operation-1", Reply(200, _op("DONE")))
    fake.route(
        "GET",
        f"{BASE}/zones/{ZONE}/instances/argosy-llama-1",
        Reply(200, _vm("STAGING")),
        Reply(200, _vm("RUNNING")),
        Reply(404, {"error": {"code": 404, "message": "not found"}}),
    )
    fake.route(
        "GET",
        f"{BASE}/zones/{ZONE}/operations",
        Reply(
            200,
            {
                "items": [
                    {
                        "name": "op-p",
                        "operationType": "compute.instances.preempted",
                        "status": "DONE",
                        "targetLink": f"https://www.googleapis.com{BASE}/zones/{ZONE}/instances/argosy-llama-1",
                    }
                ]
            },
        ),
    )
    fake.route(
        "DELETE",
        f"{BASE}/zones/{ZONE}/instances/argosy-llama-1",
        Reply(404, {"error": {"code": 404, "message": "not found"}}),
    )
    fake.route(
        "GET",
        f"{BASE}/aggregated/instances",
        Reply(
            200,
            {
                "items": {
                    f"zones/{ZONE}": {"instances": [_vm("RUNNING", labels={"team": "web"}, name="web-1")]}
                }
            },
        ),
    )
    p = _provider(fake, settings, clock)
    checks = p.preflight()
    assert all(c.ok for c in checks) and "0/4" in checks[-1].detail
    plan = p.plan(make_request(_offering("spot")))
    res = plan.payload["instance_resource"]
    assert res["scheduling"]["provisioningModel"] == "SPOT"
    assert res["metadata"]["items"][0]["value"] == plan.artifacts["startup-script"]
    assert TOKEN in plan.artifacts["startup-script"] and res["labels"][MANAGED_LABEL] == "true"
    inst = p.provision(plan)
    assert inst.instance_id == f"{ZONE}/argosy-llama-1"
    assert p.status(inst.instance_id).state == "provisioning"
    running = p.status(inst.instance_id)
    assert running.state == "running" and running.address == "34.1.2.3"
    pre = p.status(inst.instance_id)
    assert pre.state == "preempted" and "preempted" in pre.reason
    p.terminate(inst.instance_id)  # already gone: no error
    assert p.list() == []
    assert fake.errors == []
    sent = next(c for c in fake.calls if c.method == "POST")
    assert (
        sent.body["name"] == "argosy-llama-1"
        and sent.body["scheduling"]["instanceTerminationAction"] == "DELETE"
    )
    assert sent.body["disks"][0]["initializeParams"]["diskSizeGb"] == "100"


def test_n1_t4_attaches_accelerators(settings, clock):
    off = Offering(
        "gcp", ZONE, "n1-standard-16", "T4", 2, "vm", None, extra={"accelerator_type": "nvidia-tesla-t4"}
    )
    plan = GcpProvider(settings, clock, env={}, project=PROJECT).plan(make_request(off))
    assert plan.payload["instance_resource"]["guestAccelerators"] == [
        {"acceleratorType": f"zones/{ZONE}/acceleratorTypes/nvidia-tesla-t4", "acceleratorCount": 2}
    ]
    assert plan.payload["instance_resource"]["scheduling"] == {
        "onHostMaintenance": "TERMINATE",
        "automaticRestart": True,
    }


@pytest.mark.parametrize(
    ("code", "err"),
    [("ZONE_RESOURCE_POOL_EXHAUSTED", CapacityError), ("QUOTA_EXCEEDED", QuotaError)],
)
def test_operation_errors_typed(fake, settings, clock, code, err):
    errors = [{"code": code, "message": "The zone does not have enough resources available."}]
    fake.route("POST", f"{BASE}/zones/{ZONE}/instances", Reply(200, _op("DONE", errors)), body=INSERT)
    p = _provider(fake, settings, clock)
    with pytest.raises(err):
        p.provision(p.plan(make_request(_offering())))
    assert fake.errors == []


def test_http_errors_typed(fake, settings, clock):
    fake.route(
        "POST",
        f"{BASE}/zones/{ZONE}/instances",
        Reply(
            403,
            {
                "error": {
                    "code": 403,
                    "message": "Required 'compute.instances.create' permission",
                    "errors": [{"reason": "forbidden", "message": "denied"}],
                }
            },
        ),
        body=INSERT,
    )
    p = _provider(fake, settings, clock)
    with pytest.raises(ProviderAuthError):
        p.provision(p.plan(make_request(_offering())))


def test_rate_limited_then_ok(fake, settings, clock):
    fake.route(
        "GET",
        f"{BASE}/aggregated/instances",
        Reply(429, {"error": {"code": 429, "message": "Rate Limit Exceeded"}}),
        Reply(200, {"items": {}}),
    )
    start = clock.now()
    assert _provider(fake, settings, clock).list() == []
    assert clock.now() > start  # backed off on the injected clock


def test_preflight_without_project(settings, clock):
    checks = GcpProvider(settings, clock, env={}).preflight()
    assert not checks[0].ok and "GOOGLE_CLOUD_PROJECT" in checks[0].fix


def test_list_falls_back_when_the_filter_is_rejected(fake, settings, clock):
    mine = _vm("RUNNING")
    theirs = _vm("RUNNING", labels={"team": "web"}, name="web-1")
    fake.route(
        "GET",
        f"{BASE}/aggregated/instances",
        Reply(400, {"error": {"code": 400, "message": "Invalid filter"}}),
        Reply(200, {"items": {f"zones/{ZONE}": {"instances": [mine, theirs]}}}),
    )
    assert [i.instance_id for i in _provider(fake, settings, clock).list()] == [f"{ZONE}/argosy-llama-1"]
    calls = [c for c in fake.calls if c.path.endswith("aggregated/instances")]
    assert "filter" in calls[0].query and "filter" not in calls[1].query
