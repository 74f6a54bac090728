"""Capacity fallback, the registration-deadline reaper and the all-providers preflight table."""

from __future__ import annotations

import pytest

from argosy.catalog.types import Offering
from argosy.core.errors import ArgosyError, CapacityError, ProviderAuthError, QuotaError
from argosy.providers.base import CheckResult, Instance, InstanceRequest, Plan
from argosy.providers.lifecycle import LaunchedNode, preflight_all, provision_with_fallback, reap_unregistered

from .vmhelpers import make_request


class Scripted:
    """An Instances implementation whose provision outcome per instance type is scripted."""

    def __init__(self, name: str, outcomes: dict[str, Exception | None]) -> None:
        self.name = name
        self.outcomes = outcomes
        self.provisioned: list[str] = []
        self.terminated: list[str] = []

    def plan(self, request: InstanceRequest) -> Plan:
        return Plan(self.name, "provision", request.offering, {"type": request.offering.instance_type})

    def provision(self, plan: Plan) -> Instance:
        err = self.outcomes.get(plan.payload["type"])
        if err is not None:
            raise err
        self.provisioned.append(plan.payload["type"])
        return Instance(self.name, f"id-{plan.payload['type']}", "n", "provisioning")

    def status(self, instance_id: str) -> Instance:
        return Instance(self.name, instance_id, "n", "running")

    def list(self) -> list[Instance]:
        return []

    def terminate(self, instance_id: str) -> None:
        self.terminated.append(instance_id)

    def preflight(self) -> list[CheckResult]:
        return [CheckResult("creds", False, "not set", fix="export X=1")]


def _off(provider: str, region: str, itype: str) -> Offering:
    return Offering(provider, region, itype, "A100-80GB", 1, "spot", 1.0)


def test_capacity_falls_back_and_quota_skips_the_region():
    a = Scripted("a", {"t1": CapacityError("no t1"), "t2": QuotaError("quota"), "t3": None, "t4": None})
    b = Scripted("b", {"u1": None})
    providers = {"a": a, "b": b}
    reqs = [
        make_request(_off("a", "r1", "t1")),
        make_request(_off("a", "r1", "t2")),
        make_request(_off("a", "r1", "t3")),  # same provider+region as the quota error: skipped
        make_request(_off("b", "r9", "u1")),
    ]
    result = provision_with_fallback(reqs, providers.__getitem__)
    assert result.instance.instance_id == "id-u1"
    assert [x.kind for x in result.attempts] == ["capacity", "quota", "skipped", ""]
    assert a.provisioned == []


def test_other_errors_stop_the_fallback():
    a = Scripted("a", {"t1": ProviderAuthError("bad key")})
    with pytest.raises(ProviderAuthError):
        provision_with_fallback([make_request(_off("a", "r", "t1"))], {"a": a}.__getitem__)


def test_all_out_of_capacity_is_a_capacity_error_listing_attempts():
    a = Scripted("a", {"t1": CapacityError("none here")})
    with pytest.raises(CapacityError, match="a/r/t1/spot: capacity: none here"):
        provision_with_fallback([make_request(_off("a", "r", "t1"))], {"a": a}.__getitem__)


def test_reaper_terminates_only_overdue_unregistered_nodes():
    a = Scripted("a", {})
    nodes = [
        LaunchedNode("a", "old-silent", launched_at=0, registered=False),
        LaunchedNode("a", "old-registered", launched_at=0, registered=True),
        LaunchedNode("a", "young-silent", launched_at=950, registered=False),
    ]
    reaped = reap_unregistered(nodes, {"a": a}.__getitem__, now=1000, deadline_s=900)
    assert [n.instance_id for n in reaped] == ["old-silent"] and a.terminated == ["old-silent"]


def test_preflight_all_collects_every_provider_and_install_hints():
    def lookup(name: str):
        if name == "gcp":
            raise ArgosyError("provider 'gcp' needs a package", fix="pip install 'argosy[gcp]'")
        return Scripted(name, {})

    rows = preflight_all(["a", "gcp"], lookup)
    assert [(n, c.ok, c.fix) for n, c in rows] == [
        ("a", False, "export X=1"),
        ("gcp", False, "pip install 'argosy[gcp]'"),
    ]


def test_registry_lists_the_cloud_providers(settings):
    from argosy.providers.registry import PROVIDERS, get_provider

    for name in ("lambda", "runpod", "vast", "linode", "gcp", "aws"):
        assert name in PROVIDERS.names()
        assert get_provider(name, settings).name == name


def test_missing_sdk_names_the_extra():
    from argosy.providers.common import import_sdk

    with pytest.raises(ArgosyError) as info:
        import_sdk("argosy_no_such_sdk_module", "gcp")
    assert info.value.fix == "pip install 'argosy[gcp]'"
