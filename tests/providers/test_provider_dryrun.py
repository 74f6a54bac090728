"""Every cloud provider plans without credentials or network, and the plan prints for --dry-run."""

from __future__ import annotations

import pytest

from argosy.catalog.types import Offering
from argosy.core.errors import ArgosyError
from argosy.providers.base import InstanceRequest
from argosy.providers.registry import get_provider
from argosy.providers.render import DRY_RUN_TOKEN, plan_text

from .vmhelpers import SERVER, SSH_KEY

OFFERINGS = {
    "lambda": Offering("lambda", "us-east-1", "gpu_1x_a100_sxm4", "A100-40GB", 1, "vm", 1.29),
    "runpod": Offering("runpod", "secure", "NVIDIA GeForce RTX 4090", "RTX4090", 1, "spot", 0.35),
    "vast": Offering("vast", "Texas, US", "4242", "RTX4090", 1, "spot", 0.22),
    "linode": Offering("linode", "us-east", "g1-gpu-rtx6000-1", "RTX6000", 1, "vm", 1.5),
    "gcp": Offering("gcp", "us-central1-a", "g2-standard-8", "L4", 1, "spot", None),
    "aws": Offering("aws", "us-east-1", "g5.xlarge", "A10G", 1, "spot", 0.39),
}


def _request(name: str) -> InstanceRequest:
    return InstanceRequest(
        name="llama-1",
        offering=OFFERINGS[name],
        server_url=SERVER,
        agent_token=DRY_RUN_TOKEN,
        ssh_public_key=SSH_KEY,
    )


@pytest.mark.parametrize("name", sorted(OFFERINGS))
def test_dry_run_plan_prints_payload_price_reason(name, settings, monkeypatch):
    # No credentials anywhere: the plan must still render (GCP needs only a project id to name resources).
    for var in ("LAMBDA_API_KEY", "RUNPOD_API_KEY", "VAST_API_KEY", "LINODE_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-proj")
    plan = get_provider(name, settings).plan(_request(name))
    text = plan_text(plan, placement_reason="cheapest matching offering")
    assert f"provider: {name}" in text and "reason:   cheapest matching offering" in text
    assert "payload (sent exactly as shown):" in text
    assert ("$" in text) if OFFERINGS[name].price_per_hour else ("unknown" in text)
    assert text.count("---") >= 2  # the rendered cloud-init / startup script is shown


def test_gcp_plan_without_project_says_what_to_set(settings, monkeypatch):
    for var in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "GCLOUD_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ArgosyError) as info:
        get_provider("gcp", settings).plan(_request("gcp"))
    assert "GOOGLE_CLOUD_PROJECT" in info.value.fix


def test_real_tokens_are_redacted(settings):
    req = _request("lambda")
    req.agent_token = "real-one-time-token"
    plan = get_provider("lambda", settings).plan(req)
    assert "real-one-time-token" not in plan_text(plan, secrets=["real-one-time-token"])


def test_bad_server_url_is_an_error_for_people(loopback_settings):
    req = _request("lambda")
    req.server_url = "argosy.example.com"  # no scheme (and no server.public_url to stand in for it)
    with pytest.raises(ArgosyError) as info:
        get_provider("lambda", loopback_settings).plan(req)
    assert "http://" in info.value.message and info.value.fix
