"""Modal provider: the rendered app is imported with the real SDK (offline); SDK calls go to a checking fake."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from argosy.core.errors import ArgosyError, ConfigError, NotFoundError, ProviderError
from argosy.providers.base import MANAGED_LABEL, EndpointRequest, Endpoints, Preflight
from argosy.providers.modal import ModalProvider, names, render_app
from argosy.providers.templates.serverless import ENDPOINT_LABEL

modal = pytest.importorskip("modal")
HOUR = timedelta(hours=1)


def load_app(source: str, tmp: Path):
    """Import rendered source the way ModalSdk.deploy does; this runs Modal's own decorator checks."""
    path = tmp / "rendered_app.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("rendered_app", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["rendered_app"] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop("rendered_app", None)
    return module


def sdk_view(app):
    """What the SDK registered locally for an app (its functions and tags), before any network call."""
    return app._local_state


class FakeModal:
    """Records SDK calls and keeps the state Modal would; checks the calls make sense."""

    def __init__(self, tmp: Path, fail_deploy: Exception | None = None) -> None:
        self.tmp = tmp
        self.secrets: dict[str, dict[str, str]] = {}
        self.volumes: set[str] = set()
        self.apps: dict[str, dict[str, str]] = {}
        self.calls: list[str] = []
        self.fail_deploy = fail_deploy
        self.billing: list[dict[str, Any]] = []  # billing report items

    def create_secret(self, name: str, env: Mapping[str, str], environment: str | None) -> None:
        self.calls.append(f"create_secret {name}")
        assert name not in self.secrets, "secret created twice"
        assert set(env) == {"VLLM_API_KEY"} and len(env["VLLM_API_KEY"]) >= 32
        self.secrets[name] = dict(env)

    def deploy(self, app_name: str, source: str, environment: str | None) -> str:
        self.calls.append(f"deploy {app_name}")
        if self.fail_deploy:
            raise self.fail_deploy
        module = load_app(source, self.tmp)
        assert module.app.name == app_name
        state = sdk_view(module.app)
        assert "serve" in state.functions and state.tags[MANAGED_LABEL] == "true"
        self.apps[app_name] = dict(state.tags)
        self.volumes.add(names(app_name)["volume"])
        return "ap-123"

    def web_url(self, app_name: str, function: str, environment: str | None) -> str | None:
        if app_name not in self.apps:
            raise NotFoundError(f"app {app_name} not found")
        return f"https://ws--{app_name}-{function}.modal.run"

    def running_containers(self, app_name: str, function: str, environment: str | None) -> int:
        return 0

    def app_tags(self, app_name: str, environment: str | None) -> dict[str, str]:
        return self.apps[app_name]

    def stop(self, app_name: str, environment: str | None) -> None:
        self.calls.append(f"stop {app_name}")
        if app_name not in self.apps:
            raise NotFoundError(f"app {app_name} not found")
        del self.apps[app_name]

    def delete_secret(self, name: str, environment: str | None) -> None:
        self.calls.append(f"delete_secret {name}")
        self.secrets.pop(name, None)

    def delete_volume(self, name: str, environment: str | None) -> None:
        self.calls.append(f"delete_volume {name}")
        self.volumes.discard(name)

    def billing_report(self, start, end, tag):  # type: ignore[no-untyped-def]
        # As Modal's report: whole hour intervals in [start, end), in UTC, with the requested tags.
        assert start.tzinfo is not None and end.tzinfo is not None and start.minute == 0
        self.calls.append(f"billing_report {start:%H:%M}-{end:%H:%M} {tag}")
        return [i for i in self.billing if start <= i["interval_start"] and i["interval_start"] + HOUR <= end]


@pytest.fixture
def modal_provider(settings, clock, tmp_path):
    fake = FakeModal(tmp_path)
    return ModalProvider(
        settings, clock, env={"MODAL_TOKEN_ID": "ak-x", "MODAL_TOKEN_SECRET": "as-y"}, backend=fake
    ), fake


def test_rendered_app_is_valid_modal_code(tmp_path):
    req = EndpointRequest(
        "chat",
        "Qwen/Qwen2.5-7B-Instruct",
        min_workers=0,
        max_workers=4,
        extra={"gpu": "H100:2", "concurrency": 64},
    )
    source = render_app(req)
    assert render_app(req) == source  # pure and deterministic
    module = load_app(source, tmp_path)
    assert module.APP_NAME == "argosy-chat" and list(sdk_view(module.app).functions) == ["serve"]
    assert module.VLLM_CMD[:3] == ["vllm", "serve", "Qwen/Qwen2.5-7B-Instruct"]
    assert "--tensor-parallel-size" in module.VLLM_CMD
    assert "gpu='H100:2'" in source and "max_containers=4" in source and "max_inputs=64" in source
    assert "scaledown_window=300" in source and "modal.Secret.from_name('argosy-chat-auth')" in source
    assert "enable_gpu_snapshot" not in source


def test_gpu_snapshot_option(tmp_path):
    source = render_app(EndpointRequest("chat", "m", extra={"gpu_snapshot": True}))
    assert (
        'experimental_options={"enable_gpu_snapshot": True}' in source
        and "enable_memory_snapshot=True" in source
    )
    load_app(source, tmp_path)


def test_plan_reports_price_cold_start_auth(modal_provider):
    p, _ = modal_provider
    assert isinstance(p, Endpoints) and isinstance(p, Preflight)
    plan = p.plan_endpoint(EndpointRequest("chat", "m", extra={"gpu": "L4"}))
    gpu_cpu_mem = 0.000222 + 4 * 0.0000131 + 16 * 0.00000222
    assert plan.estimated_cost_per_hour == pytest.approx(gpu_cpu_mem * 3600)
    text = "\n".join(plan.notes)
    assert "cold start: ~96s (published" in text and "router auth: Authorization: Bearer" in text
    snap = p.plan_endpoint(EndpointRequest("chat", "m", extra={"gpu_snapshot": True}))
    assert "cold start: ~14s" in "\n".join(snap.notes)
    measured = p.plan_endpoint(
        EndpointRequest("chat", "m", extra={"cold_start_s": 41, "cold_start_source": "bench/x"})
    )
    assert "cold start: ~41s (measured: bench/x)" in "\n".join(measured.notes)


def test_lifecycle(modal_provider):
    p, fake = modal_provider
    ep = p.deploy(p.plan_endpoint(EndpointRequest("chat", "Qwen/Qwen2.5-0.5B-Instruct")))
    assert ep.endpoint_id == "argosy-chat" and ep.url == "https://ws--argosy-chat-serve.modal.run/v1"
    assert ep.auth_header == {"Authorization": f"Bearer {fake.secrets['argosy-chat-auth']['VLLM_API_KEY']}"}
    assert ep.price_per_second and ep.cold_start_s == pytest.approx(95.7)
    st = p.endpoint_status("argosy-chat")
    assert (
        st.state == "ready"
        and st.model == "Qwen/Qwen2.5-0.5B-Instruct"
        and st.price_per_second == ep.price_per_second
    )
    p.destroy("argosy-chat")
    assert fake.apps == {} and fake.secrets == {} and fake.volumes == set()
    p.destroy("argosy-chat")  # idempotent: stop of a missing app is fine


def test_failed_deploy_cleans_up(settings, clock, tmp_path):
    fake = FakeModal(tmp_path, fail_deploy=ProviderError("modal: image build failed", provider="modal"))
    p = ModalProvider(settings, clock, env={}, backend=fake)
    with pytest.raises(ProviderError):
        p.deploy(p.plan_endpoint(EndpointRequest("chat", "m")))
    assert fake.secrets == {} and fake.calls[-2:] == [
        "delete_secret argosy-chat-auth",
        "delete_volume argosy-chat-weights",
    ]


def test_preflight_and_errors(settings, clock, tmp_path):
    p = ModalProvider(settings, clock, env={"MODAL_CONFIG_PATH": str(tmp_path / "none.toml")})
    bad = [c for c in p.preflight() if not c.ok]
    assert bad and "MODAL_TOKEN_ID" in (bad[0].fix or "") and "modal token new" in (bad[0].fix or "")
    with pytest.raises(ArgosyError, match="not created by Argosy"):
        p.destroy("someone-elses-app")
    with pytest.raises(ConfigError, match="concurrency"):
        p.plan_endpoint(EndpointRequest("c", "m", extra={"concurency": 3}))


def test_real_sdk_rejections_become_typed_errors():
    # Runs the real ModalSdk.deploy up to Modal's local validation (no network is reached).
    from argosy.providers.modal import ModalSdk

    with pytest.raises(ProviderError, match="Invalid tag key") as info:
        ModalSdk().deploy("argosy-x", 'import modal\napp = modal.App("x", tags={"bad tag": "v"})\n', None)
    assert "fix:" in str(info.value)


def test_billed_usage_from_the_workspace_billing_report(modal_provider):
    from datetime import UTC, datetime
    from decimal import Decimal

    from argosy.providers.base import EndpointUsage

    p, fake = modal_provider
    assert isinstance(p, EndpointUsage)
    h = datetime(2026, 11, 3, 10, tzinfo=UTC)
    mine = {ENDPOINT_LABEL: "argosy-m"}
    fake.billing = [
        {"interval_start": h, "cost": Decimal("0.30"), "tags": mine},
        {"interval_start": h, "cost": Decimal("0.02"), "tags": mine},  # another resource line, same hour
        {"interval_start": h + HOUR, "cost": Decimal("0.10"), "tags": mine},
        {"interval_start": h, "cost": Decimal("5"), "tags": {ENDPOINT_LABEL: "argosy-other"}},
        {"interval_start": h, "cost": Decimal("7"), "tags": {}},  # not ours
    ]
    t = h.timestamp()
    records = p.endpoint_usage("argosy-m", t + 600, t + 7200 + 900)
    assert [(r.start_ts, r.end_ts, r.cost_usd, r.seconds) for r in records] == [
        (t, t + 3600, pytest.approx(0.32), None),
        (t + 3600, t + 7200, pytest.approx(0.10), None),
    ]
    assert fake.calls[-1] == f"billing_report 10:00-12:15 {ENDPOINT_LABEL}"
