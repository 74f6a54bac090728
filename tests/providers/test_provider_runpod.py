"""RunPod pods against a loopback fake of its GraphQL API (shapes from docs.runpod.io GraphQL spec)."""

from __future__ import annotations

import base64

import pytest

from argosy.catalog.types import Offering
from argosy.core.errors import CapacityError, ProviderAuthError, QuotaError
from argosy.providers.base import MANAGED_LABEL
from argosy.providers.runpod import RunPodProvider

from .fakehttp import FakeApi, ListOf, Reply, Shape
from .vmhelpers import TOKEN, make_request

KEY = "rp_secret_key_123"
POD_INPUT = Shape(
    required={"gpuTypeId": str, "gpuCount": int, "imageName": str, "name": str, "cloudType": str},
    optional={
        "dockerArgs": str,
        "containerDiskInGb": int,
        "volumeInGb": int,
        "volumeMountPath": str,
        "ports": str,
        "supportPublicIp": bool,
        "minVcpuCount": int,
        "minMemoryInGb": int,
        "env": ListOf(Shape(required={"key": str, "value": str})),
        "bidPerGpu": (float, int),
        "dataCenterId": str,
        "startSsh": bool,
    },
)
GQL = Shape(required={"query": str}, optional={"variables": Shape(extra_ok=True)})


def _gql_router(fake: FakeApi, responses: dict[str, list[Reply]]) -> None:
    """Serve GraphQL by operation name: the fake checks the body, the test scripts each operation."""
    fake.route("POST", "/graphql", Reply(500, {"errors": [{"message": "fake: unscripted"}]}), body=GQL)
    fake.gql = responses  # type: ignore[attr-defined]
    original = fake._match

    def match(call):
        reply, problem = original(call)
        if problem or call.path != "/graphql":
            return reply, problem
        q = call.body["query"]
        op = q.split("(")[0].split("{")[0].split()[1]
        if op in ("Deploy", "Rent"):
            errs = POD_INPUT.check(call.body["variables"]["input"], "input")
            if errs:
                return Reply(400, {"errors": [{"message": "; ".join(errs)}]}), "; ".join(errs)
        queue = responses.get(op)
        if not queue:
            return Reply(500, {}), f"unscripted GraphQL operation {op}"
        return (queue.pop(0) if len(queue) > 1 else queue[0]), None

    fake._match = match  # type: ignore[method-assign]


def _pod(status: str, pod_type: str = "RESERVED", runtime: bool = True, name: str = "argosy-llama-1") -> dict:
    return {
        "id": "pod-abc",
        "name": name,
        "desiredStatus": status,
        "podType": pod_type,
        "costPerHr": 0.69,
        "gpuCount": 1,
        "imageName": "runpod/pytorch",
        "env": ["ARGOSY_MANAGED=true", "ARGOSY_NODE=argosy-llama-1"],
        "lastStatusChange": "Rented by User: Sun Nov 22 2026",
        "machine": {"gpuDisplayName": "RTX 4090"},
        "runtime": {
            "uptimeInSeconds": 12,
            "ports": [
                {
                    "ip": "203.0.113.5",
                    "isIpPublic": True,
                    "privatePort": 22,
                    "publicPort": 40022,
                    "type": "tcp",
                }
            ],
        }
        if runtime
        else None,
    }


@pytest.fixture
def fake():
    with FakeApi(auth_value=f"Bearer {KEY}") as f:
        yield f


def _provider(fake, settings, clock):
    return RunPodProvider(settings, clock, env={"RUNPOD_API_KEY": KEY}, base_url=fake.url)


def _offering(kind: str = "vm", price: float = 0.69) -> Offering:
    return Offering("runpod", "secure", "NVIDIA GeForce RTX 4090", "RTX4090", 1, kind, price)


def test_offerings(fake, settings, clock):
    gpu = {
        "id": "NVIDIA GeForce RTX 4090",
        "displayName": "RTX 4090",
        "memoryInGb": 24,
        "secureCloud": True,
        "communityCloud": True,
        "securePrice": 0.69,
        "communityPrice": 0.34,
        "secureSpotPrice": 0.35,
        "communitySpotPrice": None,
    }
    _gql_router(fake, {"GpuTypes": [Reply(200, {"data": {"gpuTypes": [gpu]}})]})
    offs = _provider(fake, settings, clock).offerings()
    got = [(o.region, o.kind, o.price_per_hour, o.gpu) for o in offs]
    assert got == [
        ("secure", "vm", 0.69, "RTX4090"),
        ("secure", "spot", 0.35, "RTX4090"),
        ("community", "vm", 0.34, "RTX4090"),
    ]
    assert fake.errors == []


def test_lifecycle_interruptible_preempted(fake, settings, clock):
    _gql_router(
        fake,
        {
            "User": [Reply(200, {"data": {"myself": {"id": "u1"}}})],
            "Rent": [
                Reply(
                    200,
                    {
                        "data": {
                            "podRentInterruptable": {
                                "id": "pod-abc",
                                "name": "argosy-llama-1",
                                "desiredStatus": "RUNNING",
                                "costPerHr": 0.35,
                            }
                        }
                    },
                )
            ],
            "Pod": [
                Reply(200, {"data": {"pod": _pod("RUNNING", "INTERRUPTABLE", runtime=False)}}),
                Reply(200, {"data": {"pod": _pod("RUNNING", "INTERRUPTABLE")}}),
                Reply(200, {"data": {"pod": _pod("EXITED", "INTERRUPTABLE")}}),
                Reply(200, {"data": {"pod": _pod("EXITED", "INTERRUPTABLE")}}),
                Reply(200, {"data": {"pod": None}}),
            ],
            "Terminate": [Reply(200, {"data": {"podTerminate": None}})],
            "Myself": [
                Reply(200, {"data": {"myself": {"id": "u1", "pods": [_pod("RUNNING", name="their-pod")]}}})
            ],
        },
    )
    p = _provider(fake, settings, clock)
    assert all(c.ok for c in p.preflight())
    plan = p.plan(make_request(_offering("spot", 0.35)))
    pod = plan.payload["input"]
    assert plan.payload["interruptible"] is True and pod["bidPerGpu"] == 0.35
    env = {e["key"]: e["value"] for e in pod["env"]}
    script = base64.b64decode(env["ARGOSY_BOOTSTRAP"]).decode()
    assert script == plan.artifacts["startup-script"] and TOKEN in script
    inst = p.provision(plan)
    assert inst.instance_id == "pod-abc" and inst.labels[MANAGED_LABEL] == "true"
    assert p.status("pod-abc").state == "provisioning"
    running = p.status("pod-abc")
    assert running.state == "running" and running.address == "203.0.113.5"
    pre = p.status("pod-abc")
    assert pre.state == "preempted" and "interruptible" in pre.reason
    p.terminate("pod-abc")
    assert p.status("pod-abc").state == "terminated"
    assert p.list() == []  # only someone else's pod is left
    assert fake.errors == []
    sent = next(c.body for c in fake.calls if c.body["query"].startswith("mutation Rent"))
    assert sent["variables"]["input"] == pod


def test_on_demand_exited_is_failed_not_preempted(fake, settings, clock):
    _gql_router(fake, {"Pod": [Reply(200, {"data": {"pod": _pod("EXITED", "RESERVED")}})]})
    assert _provider(fake, settings, clock).status("pod-abc").state == "failed"


@pytest.mark.parametrize(
    ("message", "err"),
    [
        (
            "There are no longer any instances available with the requested specifications. "
            "Please refresh and try again.",
            CapacityError,
        ),
        ("Insufficient balance to deploy this pod", QuotaError),
        ("Unauthorized request, please check your API key.", ProviderAuthError),
    ],
)
def test_errors_typed(fake, settings, clock, message, err):
    _gql_router(fake, {"Deploy": [Reply(200, {"data": None, "errors": [{"message": message}]})]})
    p = _provider(fake, settings, clock)
    with pytest.raises(err) as info:
        p.provision(p.plan(make_request(_offering())))
    assert KEY not in str(info.value) and info.value.fix


def test_http_401_is_auth(fake, settings, clock):
    fake.route("POST", "/graphql", Reply(401, None))
    api = next(c for c in _provider(fake, settings, clock).preflight() if c.name == "runpod api")
    assert not api.ok and "API key" in api.fix


def test_pod_not_found_error_means_terminated(fake, settings, clock):
    _gql_router(
        fake, {"Pod": [Reply(200, {"data": {"pod": None}, "errors": [{"message": "Pod not found"}]})]}
    )
    p = _provider(fake, settings, clock)
    assert p.status("gone").state == "terminated"
    p.terminate("gone")  # idempotent
