"""Registries by name: lazy imports, install hints naming the extra, did-you-mean, entry-point plugins."""

from __future__ import annotations

import pytest

from argosy.core.clock import FakeClock
from argosy.core.config import Settings
from argosy.core.errors import ArgosyError, NotFoundError
from argosy.core.registry import Entry, Registry
from argosy.providers.base import Instances, Offerings, Preflight
from argosy.providers.registry import PROVIDERS, get_provider


def test_missing_dependency_names_the_extra_to_install() -> None:
    reg = Registry("provider", "argosy.test", {"x": Entry("argosy_no_such_module:X", extra="x-sdk")})
    with pytest.raises(ArgosyError) as exc:
        reg.load("x")
    assert exc.value.fix == "pip install 'argosy[x-sdk]'"


def test_unknown_name_suggests_the_nearest() -> None:
    with pytest.raises(NotFoundError, match="Did you mean 'local'"):
        PROVIDERS.load("locl")


def test_local_and_fake_implement_their_capabilities(settings: Settings) -> None:
    for name in ("local", "fake"):
        p = get_provider(name, settings, FakeClock())
        assert isinstance(p, Instances) and isinstance(p, Offerings) and isinstance(p, Preflight)
        assert all(o.price_per_hour is not None for o in p.offerings())


def test_local_offering_is_this_machine_and_plan_hides_the_token(settings: Settings) -> None:
    from argosy.providers.base import InstanceRequest

    p = get_provider("local", settings, FakeClock())
    [cpu, *_] = p.offerings()
    assert cpu.kind == "local" and cpu.gpu is None and cpu.vcpus and cpu.price_per_hour == 0.0
    plan = p.plan(InstanceRequest(name="n", offering=cpu, server_url="http://s", agent_token="ak_secret"))
    assert "ak_secret" not in repr(plan) and "ak_secret" not in str(plan.payload)
    assert plan.secrets["ARGOSY_AGENT_TOKEN"] == "ak_secret"
