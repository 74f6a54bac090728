"""Lambda Cloud against a loopback fake of its REST API (request shapes from docs-api.lambda.ai)."""

from __future__ import annotations

import pytest

from argosy.catalog.types import Offering
from argosy.core.errors import CapacityError, ProviderAuthError, QuotaError, RateLimitError
from argosy.providers.base import MANAGED_LABEL, Instances, Offerings, Preflight
from argosy.providers.common import key_fingerprint
from argosy.providers.lambda_cloud import LambdaProvider

from .fakehttp import FakeApi, ListOf, Reply, Shape
from .vmhelpers import SSH_KEY, TOKEN, make_request

KEY = "secret_lambda_key_abc"
LAUNCH = Shape(
    required={"region_name": str, "instance_type_name": str, "ssh_key_names": ListOf(str)},
    optional={
        "file_system_names": ListOf(str),
        "quantity": int,
        "name": str,
        "user_data": str,
        "tags": ListOf(Shape(required={"key": str, "value": str})),
        "hostname": str,
        "image": Shape(optional={"id": str, "family": str}),
    },
)
TYPES = {
    "data": {
        "gpu_1x_a100_sxm4": {
            "instance_type": {
                "name": "gpu_1x_a100_sxm4",
                "description": "1x A100 (40 GB SXM4)",
                "gpu_description": "A100 (40 GB SXM4)",
                "price_cents_per_hour": 129,
                "specs": {"vcpus": 30, "memory_gib": 200, "storage_gib": 512, "gpus": 1},
            },
            "regions_with_capacity_available": [{"name": "us-east-1", "description": "Virginia, USA"}],
        },
        "gpu_8x_h100_sxm5": {
            "instance_type": {
                "name": "gpu_8x_h100_sxm5",
                "description": "8x H100 (80 GB SXM5)",
                "gpu_description": "H100 (80 GB SXM5)",
                "price_cents_per_hour": 2392,
                "specs": {"vcpus": 208, "memory_gib": 1800, "storage_gib": 24780, "gpus": 8},
            },
            "regions_with_capacity_available": [],
        },
    }
}


def _instance(status: str, tags: bool = True, name: str = "argosy-llama-1", iid: str = "0920582c") -> dict:
    d = {
        "id": iid,
        "name": name,
        "ip": "198.51.100.2",
        "status": status,
        "ssh_key_names": ["argosy-x"],
        "file_system_names": [],
        "region": {"name": "us-east-1", "description": "Virginia, USA"},
        "instance_type": {"name": "gpu_1x_a100_sxm4", "price_cents_per_hour": 129},
        "hostname": "10-0-8-196.cloud.lambdalabs.com",
    }
    if tags:
        d["tags"] = [{"key": MANAGED_LABEL, "value": "true"}]
    return d


@pytest.fixture
def fake():
    with FakeApi(auth_value=f"Bearer {KEY}") as f:
        f.route("GET", "/instance-types", Reply(200, TYPES))
        yield f


def _provider(fake, settings, clock, **env):
    return LambdaProvider(settings, clock, env={"LAMBDA_API_KEY": KEY, **env}, base_url=fake.url)


def _offering() -> Offering:
    return Offering("lambda", "us-east-1", "gpu_1x_a100_sxm4", "A100-40GB", 1, "vm", 1.29)


def test_capabilities(settings, clock):
    p = LambdaProvider(settings, clock, env={})
    assert isinstance(p, Instances) and isinstance(p, Offerings) and isinstance(p, Preflight)


def test_preflight_without_key_says_what_to_set(settings, clock, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    checks = LambdaProvider(settings, clock, env={}).preflight()
    cred = checks[0]
    assert not cred.ok and "LAMBDA_API_KEY" in cred.fix
    ssh = checks[-1]
    assert not ssh.ok and "ssh-keygen" in ssh.fix


def test_offerings_from_instance_types(fake, settings, clock):
    offs = _provider(fake, settings, clock).offerings()
    a100, h100 = offs
    assert (a100.region, a100.gpu, a100.gpu_count, a100.price_per_hour, a100.available) == (
        "us-east-1",
        "A100-40GB",
        1,
        1.29,
        True,
    )
    assert (h100.region, h100.gpu, h100.gpu_count, h100.available) == ("", "H100-SXM", 8, False)
    assert a100.source.endswith("/instance-types") and a100.fetched_at
    assert fake.errors == []


def test_lifecycle(fake, settings, clock):
    fake.route("GET", "/ssh-keys", Reply(200, {"data": []}))
    fake.route(
        "POST",
        "/ssh-keys",
        Reply(200, {"data": {"id": "k1", "name": "x", "public_key": SSH_KEY}}),
        body=Shape(required={"name": str, "public_key": str}),
    )
    fake.route(
        "POST",
        "/instance-operations/launch",
        Reply(200, {"data": {"instance_ids": ["0920582c"]}}),
        body=LAUNCH,
    )
    fake.route(
        "GET",
        "/instances/0920582c",
        Reply(200, {"data": _instance("booting")}),
        Reply(200, {"data": _instance("active")}),
        Reply(200, {"data": _instance("terminated")}),
    )
    fake.route(
        "POST",
        "/instance-operations/terminate",
        Reply(200, {"data": {"terminated_instances": [_instance("terminating")]}}),
        body=Shape(required={"instance_ids": ListOf(str)}),
    )
    p = _provider(fake, settings, clock)

    assert all(c.ok for c in p.preflight()[:2])
    plan = p.plan(make_request(_offering()))
    assert plan.payload["instance_type_name"] == "gpu_1x_a100_sxm4"
    assert plan.payload["user_data"] == plan.artifacts["cloud-init"]
    assert {"key": MANAGED_LABEL, "value": "true"} in plan.payload["tags"]
    assert plan.estimated_cost_per_hour == 1.29

    inst = p.provision(plan)
    assert (inst.instance_id, inst.state) == ("0920582c", "provisioning")
    assert p.status("0920582c").state == "provisioning"
    running = p.status("0920582c")
    assert running.state == "running" and running.address == "198.51.100.2"
    # (the agent registers with the server here; the provider has nothing to do)
    p.terminate("0920582c")
    assert p.status("0920582c").state == "terminated"
    fake.route(
        "GET",
        "/instances",
        Reply(200, {"data": [_instance("active", tags=False, name="their-box", iid="x")]}),
    )
    assert p.list() == []
    assert fake.errors == []
    launch_body = next(c.body for c in fake.calls if c.path == "/instance-operations/launch")
    assert launch_body == plan.payload  # what was planned is exactly what was sent


def test_list_only_managed(fake, settings, clock):
    mine = _instance("active")
    theirs = _instance("active", iid="other", name="prod-db")
    theirs["tags"] = [{"key": "team", "value": "db"}]
    legacy = _instance("active", tags=False, iid="legacy")  # no tags field: falls back to the prefix
    fake.route("GET", "/instances", Reply(200, {"data": [mine, theirs, legacy]}))
    ids = [i.instance_id for i in _provider(fake, settings, clock).list()]
    assert ids == ["0920582c", "legacy"]


@pytest.mark.parametrize(
    ("status", "code", "err"),
    [
        (400, "instance-operations/launch/insufficient-capacity", CapacityError),
        (400, "global/quota-exceeded", QuotaError),
        (401, "global/invalid-api-key", ProviderAuthError),
    ],
)
def test_launch_errors_are_typed(fake, settings, clock, status, code, err):
    uploaded = {"id": "1", "name": f"argosy-{key_fingerprint(SSH_KEY)}", "public_key": SSH_KEY}
    fake.route("GET", "/ssh-keys", Reply(200, {"data": [uploaded]}))
    body = {
        "error": {
            "code": code,
            "message": "Not enough capacity to fulfill launch request.",
            "suggestion": "Try a different region",
        }
    }
    fake.route("POST", "/instance-operations/launch", Reply(status, body), body=LAUNCH)
    p = _provider(fake, settings, clock)
    with pytest.raises(err) as info:
        p.provision(p.plan(make_request(_offering())))
    assert info.value.provider == "lambda" and info.value.fix
    assert KEY not in str(info.value)


def test_rate_limit_honours_retry_after(fake, settings, clock):
    fake.route(
        "GET",
        "/instances",
        Reply(429, {"error": {"code": "global/rate-limited", "message": "slow"}}, {"Retry-After": "7"}),
        Reply(200, {"data": []}),
    )
    start = clock.now()
    assert _provider(fake, settings, clock).list() == []
    assert clock.now() - start == 7


def test_rate_limit_gives_up_with_retry_after(fake, settings, clock):
    fake.route("POST", "/instance-operations/terminate", Reply(429, None, {"Retry-After": "3600"}))
    with pytest.raises(RateLimitError) as info:
        _provider(fake, settings, clock).terminate("abc")
    assert info.value.retry_after == 3600


def test_plan_is_pure_and_refuses_spot(settings, clock):
    p = LambdaProvider(settings, clock, env={})  # no credentials, no network: plan still works
    plan = p.plan(make_request(_offering()))
    assert TOKEN in plan.artifacts["cloud-init"]
    spot = Offering("lambda", "us-east-1", "gpu_1x_a100_sxm4", "A100-40GB", 1, "spot", 1.0)
    with pytest.raises(Exception, match="cannot provision a 'spot'"):
        p.plan(make_request(spot))
