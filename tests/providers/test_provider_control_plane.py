"""Cloud nodes must be able to reach the server: `server.public_url`, and a preflight that says so."""

from __future__ import annotations

import pytest

from argosy.catalog.types import Offering
from argosy.core.config import parse_config
from argosy.core.errors import ArgosyError
from argosy.providers.bootstrap import render_cloud_init
from argosy.providers.common import bootstrap_spec, check_control_plane, is_unreachable_from_cloud
from argosy.providers.lambda_cloud import LambdaProvider
from argosy.providers.runpod import RunPodProvider
from argosy.providers.vast import VastProvider

from .vmhelpers import TOKEN, make_request

OFFERING = Offering("lambda", "us-east-1", "gpu_1x_a100_sxm4", "A100-40GB", 1, "vm", 1.29)


@pytest.mark.parametrize(
    ("url", "unreachable"),
    [
        ("http://127.0.0.1:8750", True),
        ("http://localhost:8750", True),
        ("http://0.0.0.0:8750", True),
        ("http://[::1]:8750", True),
        ("http://169.254.169.254", True),
        ("https://argosy.example.com:8750", False),
        ("http://10.0.0.5:8750", False),  # a private address: reachable inside a VPC
    ],
)
def test_loopback_is_unreachable_from_a_cloud(url, unreachable):
    assert is_unreachable_from_cloud(url) is unreachable


def test_plan_refuses_a_loopback_server_with_a_fix(loopback_settings, clock):
    req = make_request(OFFERING)
    req.server_url = "http://127.0.0.1:8750"  # what a server on the default host reports
    with pytest.raises(ArgosyError) as info:
        LambdaProvider(loopback_settings, clock, env={}).plan(req)
    assert "127.0.0.1" in info.value.message and "cannot reach" in info.value.message
    assert "ARGOSY_SERVER_PUBLIC_URL" in (info.value.fix or "")


def test_public_url_is_what_the_node_dials(tmp_path):
    settings = parse_config(
        "server:\n  public_url: https://cp.example.org/\n", env={"ARGOSY_HOME": str(tmp_path)}
    )
    req = make_request(OFFERING)
    req.server_url = "http://127.0.0.1:8750"
    spec = bootstrap_spec(req, {}, settings)
    assert spec.server_url == "https://cp.example.org"
    text = render_cloud_init(spec)
    assert "ARGOSY_SERVER=https://cp.example.org\n" in text and "127.0.0.1" not in text
    assert TOKEN in text


def test_public_url_from_the_environment(tmp_path):
    settings = parse_config(
        "", env={"ARGOSY_HOME": str(tmp_path), "ARGOSY_SERVER_PUBLIC_URL": "https://x.example"}
    )
    assert settings.server.public_url == "https://x.example"
    assert check_control_plane(settings).ok


@pytest.mark.parametrize("cls", [LambdaProvider, RunPodProvider, VastProvider])
def test_preflight_fails_on_loopback_with_the_fix(cls, loopback_settings, clock, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    checks = {c.name: c for c in cls(loopback_settings, clock, env={}).preflight()}
    cp = checks["control plane reachable"]
    assert not cp.ok and "127.0.0.1" in cp.detail and "ARGOSY_SERVER_PUBLIC_URL" in (cp.fix or "")
