"""Vast.ai against a loopback fake of its REST API v0 (shapes from docs.vast.ai/api-reference)."""

from __future__ import annotations

import pytest

from argosy.catalog.types import Offering
from argosy.core.errors import ArgosyError, CapacityError, ProviderAuthError, QuotaError
from argosy.providers.vast import VastProvider

from .fakehttp import FakeApi, Reply, Shape
from .vmhelpers import TOKEN, make_request

KEY = "vast_secret_456"
CREATE = Shape(
    required={"image": str},
    optional={
        "client_id": str,
        "disk": (int, float),
        "label": str,
        "runtype": str,
        "onstart": str,
        "env": Shape(extra_ok=True),
        "price": (int, float),
        "target_state": str,
        "template_hash_id": str,
        "args_str": str,
    },
)
SEARCH = Shape(
    optional={
        "verified": dict,
        "rentable": dict,
        "rented": dict,
        "num_gpus": dict,
        "gpu_name": dict,
        "type": str,
        "order": list,
        "limit": int,
    }
)
OFFER = {
    "id": 4242,
    "machine_id": 77,
    "gpu_name": "RTX 4090",
    "num_gpus": 1,
    "gpu_ram": 24564,
    "dph_total": 0.41,
    "min_bid": 0.22,
    "cpu_cores_effective": 16.0,
    "cpu_ram": 64312,
    "geolocation": "Texas, US",
    "reliability2": 0.995,
    "verified": True,
    "rentable": True,
}


def _inst(actual: str | None, is_bid: bool = True, label: str = "argosy-llama-1") -> dict:
    return {
        "id": 990011,
        "label": label,
        "actual_status": actual,
        "intended_status": "running",
        "cur_state": actual or "stopped",
        "public_ipaddr": "192.0.2.44",
        "dph_total": 0.22,
        "geolocation": "Texas, US",
        "is_bid": is_bid,
        "status_msg": "",
    }


@pytest.fixture
def fake():
    with FakeApi(auth_value=f"Bearer {KEY}") as f:
        f.route("POST", "/bundles/", Reply(200, {"offers": [OFFER]}), body=SEARCH)
        yield f


def _provider(fake, settings, clock):
    return VastProvider(settings, clock, env={"VAST_API_KEY": KEY}, base_url=fake.url)


def test_offerings_on_demand_and_bid(fake, settings, clock):
    offs = _provider(fake, settings, clock).offerings()
    assert [(o.instance_type, o.kind, o.price_per_hour, o.gpu, o.region) for o in offs] == [
        ("4242", "vm", 0.41, "RTX4090", "us"),  # the country code: the catalog's Vast regions
        ("4242", "spot", 0.22, "RTX4090", "us"),
    ]
    assert offs[0].extra["location"] == "Texas, US" and offs[1].tier == "interruptible"
    assert fake.errors == []


def test_lifecycle_bid_preempted_then_destroyed(fake, settings, clock):
    fake.route("GET", "/users/current/", Reply(200, {"id": 1, "credit": 12.5}))
    fake.route("PUT", "/asks/4242/", Reply(200, {"success": True, "new_contract": 990011}), body=CREATE)
    fake.route(
        "GET",
        "/instances/990011/",
        Reply(200, {"instances": _inst("loading")}),
        Reply(200, {"instances": _inst("running")}),
        Reply(200, {"instances": _inst("stopped")}),
        Reply(200, {"instances": None}),
    )
    fake.route("DELETE", "/instances/990011/", Reply(200, {"success": True}))
    fake.route("GET", "/instances/", Reply(200, {"instances": [_inst("running", label="someone-else")]}))
    p = _provider(fake, settings, clock)
    assert all(c.ok for c in p.preflight())
    offering = next(o for o in p.offerings() if o.kind == "spot")
    plan = p.plan(make_request(offering))
    assert plan.payload["body"]["price"] == 0.22 and TOKEN in plan.payload["body"]["onstart"]
    inst = p.provision(plan)
    assert inst.instance_id == "990011"
    assert p.status("990011").state == "provisioning"
    assert p.status("990011").state == "running"
    pre = p.status("990011")
    assert pre.state == "preempted" and "outbid" in pre.reason
    p.terminate("990011")
    assert p.status("990011").state == "terminated"
    assert p.list() == []
    assert fake.errors == []


@pytest.mark.parametrize(
    ("status", "body", "err"),
    [
        (
            400,
            {"success": False, "error": "no_such_ask", "msg": "Instance type no longer available."},
            CapacityError,
        ),
        (
            402,
            {"success": False, "error": "insufficient_credit", "msg": "Your credit is too low"},
            QuotaError,
        ),
        (401, {"success": False, "error": "auth_error", "msg": "Invalid user key"}, ProviderAuthError),
    ],
)
def test_create_errors_typed(fake, settings, clock, status, body, err):
    fake.route("PUT", "/asks/4242/", Reply(status, body), body=CREATE)
    p = _provider(fake, settings, clock)
    offering = Offering("vast", "Texas, US", "4242", "RTX4090", 1, "vm", 0.41)
    with pytest.raises(err):
        p.provision(p.plan(make_request(offering)))
    assert fake.errors == []


def test_plan_needs_an_offer_id(settings, clock):
    bad = Offering("vast", "any", "RTX4090", "RTX4090", 1, "vm", 0.4)
    with pytest.raises(ArgosyError, match="not an offer id"):
        VastProvider(settings, clock, env={}).plan(make_request(bad))
