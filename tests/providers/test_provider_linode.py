"""Linode through the real linode_api4 SDK, pointed at a loopback fake of API v4 (shapes from the v4 docs)."""

from __future__ import annotations

import base64
import json

import pytest

from .fakehttp import FakeApi, ListOf, Reply, Shape
from .vmhelpers import TOKEN, make_request

pytest.importorskip("linode_api4")

from argosy.catalog.types import Offering  # noqa: E402
from argosy.core.errors import CapacityError, ProviderAuthError, QuotaError  # noqa: E402
from argosy.providers.base import MANAGED_LABEL  # noqa: E402
from argosy.providers.linode import LinodeProvider  # noqa: E402

KEY = "linode_pat_789"
CREATE = Shape(
    required={"type": str, "region": str},
    optional={
        "image": str,
        "label": str,
        "tags": ListOf(str),
        "metadata": Shape(optional={"user_data": str}),
        "booted": bool,
        "authorized_keys": ListOf(str),
        "root_pass": str,
        "firewall_id": int,
        "private_ip": bool,
        "placement_group": dict,
        "interfaces": list,
        "disk_encryption": str,
    },
)
FIREWALL = Shape(required={"label": str, "rules": dict}, optional={"tags": ListOf(str), "devices": dict})
GPU_TYPE = {
    "id": "g1-gpu-rtx6000-1",
    "label": "Dedicated 32GB + RTX6000 GPU x1",
    "disk": 655360,
    "class": "gpu",
    "price": {"hourly": 1.5, "monthly": 1000.0},
    "region_prices": [{"id": "br-gru", "hourly": 1.8, "monthly": 1200}],
    "addons": {"backups": {"price": {"hourly": 0.18, "monthly": 120}}},
    "network_out": 10000,
    "memory": 32768,
    "transfer": 16000,
    "vcpus": 8,
    "gpus": 1,
    "successor": None,
    "accelerated_devices": 0,
}
CPU_TYPE = {**GPU_TYPE, "id": "g6-standard-2", "label": "Linode 4GB", "gpus": 0, "class": "standard"}
REGIONS = [
    {
        "id": "us-east",
        "label": "Newark, NJ",
        "country": "us",
        "status": "ok",
        "capabilities": ["Linodes", "GPU Linodes", "Metadata", "Cloud Firewall"],
    },
    {
        "id": "br-gru",
        "label": "Sao Paulo",
        "country": "br",
        "status": "ok",
        "capabilities": ["Linodes", "GPU Linodes", "Metadata"],
    },
    {"id": "us-west", "label": "Fremont", "country": "us", "status": "ok", "capabilities": ["Linodes"]},
]


def page(items: list) -> dict:
    return {"data": items, "page": 1, "pages": 1, "results": len(items)}


def _linode(
    status: str, tags: list[str] | None = None, iid: int = 5150, label: str = "argosy-llama-1"
) -> dict:
    return {
        "id": iid,
        "label": label,
        "region": "us-east",
        "type": "g1-gpu-rtx6000-1",
        "image": "linode/ubuntu22.04",
        "status": status,
        "ipv4": ["203.0.113.9"],
        "ipv6": "2600:3c03::f03c:91ff:fe24:3a2f/128",
        "tags": tags
        if tags is not None
        else [MANAGED_LABEL, "argosy-node:argosy-llama-1", "deployment:llama"],
        "created": "2026-11-22T13:00:00",
        "updated": "2026-11-22T13:00:00",
        "hypervisor": "kvm",
        "group": "",
        "specs": {"disk": 655360, "memory": 32768, "vcpus": 8, "gpus": 1, "transfer": 16000},
        "alerts": {},
        "backups": {"enabled": False},
        "watchdog_enabled": True,
    }


@pytest.fixture
def fake():
    with FakeApi(auth_value=f"Bearer {KEY}") as f:
        f.route("GET", "/v4/linode/types", Reply(200, page([GPU_TYPE, CPU_TYPE])))
        f.route("GET", "/v4/regions", Reply(200, page(REGIONS)))
        yield f


def _provider(fake, settings, clock):
    return LinodeProvider(settings, clock, env={"LINODE_TOKEN": KEY}, base_url=fake.url + "/v4")


def _offering() -> Offering:
    return Offering("linode", "us-east", "g1-gpu-rtx6000-1", "RTX6000", 1, "vm", 1.5)


def test_offerings_gpu_types_in_gpu_regions(fake, settings, clock):
    offs = _provider(fake, settings, clock).offerings()
    assert [(o.region, o.instance_type, o.gpu, o.price_per_hour) for o in offs] == [
        ("us-east", "g1-gpu-rtx6000-1", "Quadro-RTX6000", 1.5),
        ("br-gru", "g1-gpu-rtx6000-1", "Quadro-RTX6000", 1.8),  # region price override
    ]
    assert fake.errors == []


def test_lifecycle(fake, settings, clock):
    fake.route("GET", "/v4/profile", Reply(200, {"username": "alice", "email": "a@example.com", "uid": 1}))
    fake.route("GET", "/v4/networking/firewalls", Reply(200, page([])))
    fake.route(
        "POST",
        "/v4/networking/firewalls",
        Reply(200, {"id": 77, "label": "argosy-nodes", "status": "enabled", "rules": {}, "tags": []}),
        body=FIREWALL,
    )
    fake.route("POST", "/v4/linode/instances", Reply(200, _linode("provisioning")), body=CREATE)
    fake.route(
        "GET",
        "/v4/linode/instances/5150",
        Reply(200, _linode("provisioning")),
        Reply(200, _linode("running")),
        Reply(200, _linode("running")),
        Reply(404, {"errors": [{"reason": "Not found"}]}),
    )
    fake.route("DELETE", "/v4/linode/instances/5150", Reply(200, {}))
    fake.route(
        "GET", "/v4/linode/instances", Reply(200, page([_linode("running", tags=[], iid=1, label="web")]))
    )
    p = _provider(fake, settings, clock)
    assert all(c.ok for c in p.preflight())
    plan = p.plan(make_request(_offering()))
    user_data = base64.b64decode(plan.payload["instance"]["metadata"]["user_data"]).decode()
    assert user_data == plan.artifacts["cloud-init"] and TOKEN in user_data and "ubuntu-drivers" in user_data
    assert MANAGED_LABEL in plan.payload["instance"]["tags"]
    inst = p.provision(plan)
    assert inst.instance_id == "5150" and inst.labels[MANAGED_LABEL] == "true"
    assert p.status("5150").state == "provisioning"
    assert p.status("5150").state == "running"
    p.terminate("5150")
    assert p.status("5150").state == "terminated"
    assert p.list() == []
    assert fake.errors == []
    sent = next(c.body for c in fake.calls if c.method == "POST" and c.path == "/v4/linode/instances")
    assert sent == {**plan.payload["instance"], "firewall_id": 77}
    listed = next(c for c in fake.calls if c.method == "GET" and c.path == "/v4/linode/instances")
    assert json.loads(listed.headers["X-Filter"]) == {"tags": {"+contains": MANAGED_LABEL}}


@pytest.mark.parametrize(
    ("status", "reason", "err"),
    [
        (400, "Insufficient capacity for this plan in us-east; try another region.", CapacityError),
        (400, "Account limit reached for GPU instances. Please contact support.", QuotaError),
        (401, "Invalid Token", ProviderAuthError),
    ],
)
def test_create_errors_typed(fake, settings, clock, status, reason, err):
    fake.route("GET", "/v4/networking/firewalls", Reply(200, page([{"id": 77, "label": "argosy-nodes"}])))
    fake.route("POST", "/v4/linode/instances", Reply(status, {"errors": [{"reason": reason}]}), body=CREATE)
    p = _provider(fake, settings, clock)
    with pytest.raises(err) as info:
        p.provision(p.plan(make_request(_offering())))
    assert KEY not in str(info.value)
    assert fake.errors == []


def test_rate_limit_retry_after(fake, settings, clock):
    fake.route(
        "GET",
        "/v4/linode/instances",
        Reply(429, {"errors": [{"reason": "Too many requests"}]}, {"Retry-After": "5"}),
        Reply(200, page([])),
    )
    start = clock.now()
    assert _provider(fake, settings, clock).list() == []
    assert clock.now() - start == 5


def test_server_errors_are_retried_for_reads(fake, settings, clock):
    fake.route(
        "GET",
        "/v4/linode/instances",
        Reply(503, {"errors": [{"reason": "Service Unavailable"}]}),
        Reply(200, page([])),
    )
    assert _provider(fake, settings, clock).list() == []
    assert sum(1 for c in fake.calls if c.path == "/v4/linode/instances") == 2


def test_missing_token_says_what_to_set(settings, clock):
    checks = LinodeProvider(settings, clock, env={}).preflight()
    assert not checks[0].ok and "LINODE_TOKEN" in checks[0].fix
