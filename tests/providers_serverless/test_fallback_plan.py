"""`argosy deploy MODEL --fallback P --dry-run`: spot/VM plan and serverless plan side by side."""

from __future__ import annotations

import pytest

from argosy.core.errors import ArgosyError
from argosy.providers.base import InstanceRequest
from argosy.providers.fake import FakeProvider
from argosy.providers.templates.fallback import plan_fallback, render_fallback_plan


@pytest.fixture
def primary(settings, clock):
    fake = FakeProvider(settings, clock)
    spot = next(o for o in fake.offerings() if o.kind == "spot")
    return fake.plan(InstanceRequest(name="chat", offering=spot))


def test_modal_fallback_side_by_side(primary, settings, clock, monkeypatch):
    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    fp = plan_fallback(primary, "Qwen/Qwen2.5-7B-Instruct", "modal", settings, name="chat", clock=clock)
    text = render_fallback_plan(fp)
    assert "PRIMARY (spot/VM)" in text and "FALLBACK (serverless)" in text
    assert f"${primary.estimated_cost_per_hour:,.4f}/h" in text
    assert fp.request.extra["gpu"] == "L4"  # follows the primary's GPU when the fallback sells it
    assert f"${fp.facts.price_per_second:.6f}/s" in text
    assert "~96s (published" in text and "Authorization: Bearer" in text
    assert "--- modal_app.py" in text and "vllm" in text
    assert "$0/h (scales to zero)" in text
    assert 0 < fp.break_even_utilisation < 1 and "busy under" in text
    d = fp.to_dict()
    assert d["fallback"]["provider"] == "modal" and d["fallback"]["cold_start_s"] == pytest.approx(95.7)


@pytest.mark.parametrize("provider", ["runpod-serverless", "cloudrun", "baseten", "kubernetes", "skypilot"])
def test_every_endpoint_provider_renders_without_credentials(primary, settings, clock, provider, monkeypatch):
    for var in ("RUNPOD_API_KEY", "BASETEN_API_KEY", "GOOGLE_CLOUD_PROJECT", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    text = render_fallback_plan(
        plan_fallback(primary, "Qwen/Qwen2.5-0.5B-Instruct", provider, settings, name="chat")
    )
    assert "FALLBACK (serverless)" in text and "router auth" in text and "cold start" in text


def test_non_endpoint_provider_is_refused_with_choices(primary, settings, clock):
    with pytest.raises(ArgosyError) as info:
        plan_fallback(primary, "m", "local", settings, clock=clock)  # local runs machines, not endpoints
    assert "cannot run serverless endpoints" in str(info.value) and "modal" in (info.value.fix or "")
