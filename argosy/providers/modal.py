"""Modal: a rendered Modal app serving vLLM, deployed through Modal's Python SDK (`argosy[modal]`).

`plan_endpoint` renders the app source (GPU type and count, concurrency, scale-down window, a
volume for weights, optional GPU memory snapshot) and the names of everything it will create. Deploy
stores a fresh vLLM API key in a Modal Secret, deploys the app from the rendered source, and
resolves the web URL from the SDK. Destroy stops the app and deletes the Secret and weights volume.

Auth: vLLM reads `VLLM_API_KEY` from the Secret and guards `/v1/*` with it; the router sends
`Authorization: Bearer <key>`. Modal's own proxy auth is not used because its tokens can only be
minted in the dashboard. The SDK is hidden behind `ModalBackend` so tests can check every call.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from argosy.catalog.types import Offering
from argosy.core.clock import Clock
from argosy.core.config import Settings
from argosy.core.errors import ArgosyError, ConflictError, NotFoundError, ProviderAuthError, ProviderError
from argosy.providers.base import MANAGED_LABEL, CheckResult, EndpointRequest, Plan, UsageRecord
from argosy.providers.common import environ, import_sdk
from argosy.providers.templates.serverless import (
    ENDPOINT_LABEL,
    ColdStart,
    EndpointFacts,
    ServerlessEndpoint,
    bearer,
    check_extra,
    cold_start,
    new_token,
    price_for,
    price_offerings,
    requested_gpu,
    resource_name,
    served_name,
    vllm_args,
)

PROVIDER = "modal"
VLLM_VERSION = "0.10.1.1"
FUNCTION = "serve"
CPU_CORES = 4.0
MEMORY_MIB = 16384
_COLD_SOURCE = (
    "Modal's published vLLM boot times over Feb-Apr 2026 restores "
    "(byteiota.com/gpu-inference-cold-starts-cut-40x-heres-the-stack/)"
)
COLD_START = ColdStart(95.7, f"mean vLLM boot without snapshots; {_COLD_SOURCE}")
COLD_START_SNAPSHOT = ColdStart(13.8, f"mean vLLM boot with GPU memory snapshots; {_COLD_SOURCE}")
OPTIONS = (
    "concurrency",
    "scaledown_window_s",
    "gpu_snapshot",
    "max_model_len",
    "environment",
    "hf_secret",
    "startup_timeout_s",
)

APP_TEMPLATE = '''\
"""Modal app rendered by Argosy for endpoint {name!r}: vLLM serving {model!r}. Generated; do not edit."""

import subprocess

import modal

APP_NAME = {app!r}
VLLM_CMD = {cmd!r}

image = (
    modal.Image.debian_slim(python_version="3.12")
    .pip_install("vllm=={vllm_version}", "huggingface_hub[hf_transfer]")
    .env({{"HF_HUB_ENABLE_HF_TRANSFER": "1"}})
)
weights = modal.Volume.from_name({volume!r}, create_if_missing=True)
app = modal.App(APP_NAME, tags={tags!r})


def start_vllm() -> subprocess.Popen:
    # vLLM reads VLLM_API_KEY from the endpoint Secret and requires it on every /v1 request.
    return subprocess.Popen(VLLM_CMD)
{snapshot_block}

@app.function(
    image=image,
    gpu={gpu!r},
    cpu={cpu!r},
    memory={memory!r},
    min_containers={min_containers!r},
    max_containers={max_containers!r},
    scaledown_window={scaledown!r},
    timeout=24 * 3600,
    volumes={{"/root/.cache/huggingface": weights}},
    secrets=[{secrets}],{snapshot_args}
)
@modal.concurrent(max_inputs={concurrency!r})
@modal.web_server(port={port!r}, startup_timeout={startup!r})
def {function}():
    {serve_body}
'''

SNAPSHOT_BLOCK = """

# GPU memory snapshot: start vLLM in global scope so the snapshot taken after container start-up
# already holds the loaded engine; restores skip download, load and compilation.
if not modal.is_local():
    _server = start_vllm()
"""


class ModalBackend(Protocol):
    """The few Modal SDK operations Argosy uses (the real one is `ModalSdk`)."""

    def create_secret(self, name: str, env: Mapping[str, str], environment: str | None) -> None: ...

    def deploy(self, app_name: str, source: str, environment: str | None) -> str: ...

    def web_url(self, app_name: str, function: str, environment: str | None) -> str | None: ...

    def running_containers(self, app_name: str, function: str, environment: str | None) -> int: ...

    def app_tags(self, app_name: str, environment: str | None) -> dict[str, str]: ...

    def stop(self, app_name: str, environment: str | None) -> None: ...

    def delete_secret(self, name: str, environment: str | None) -> None: ...

    def delete_volume(self, name: str, environment: str | None) -> None: ...

    def billing_report(self, start: datetime, end: datetime, tag: str) -> list[Mapping[str, Any]]: ...


@contextlib.contextmanager
def _sdk_errors(what: str) -> Iterator[None]:
    import modal.exception as mexc

    try:
        yield
    except mexc.AuthError as exc:
        raise ProviderAuthError(
            f"modal: {what}: Modal rejected the token: {exc}",
            fix="run `modal token new`, or export MODAL_TOKEN_ID and MODAL_TOKEN_SECRET",
            provider=PROVIDER,
        ) from exc
    except mexc.NotFoundError as exc:
        raise NotFoundError(f"modal: {what}: {exc}", fix="run `argosy list` to see live endpoints") from exc
    except mexc.AlreadyExistsError as exc:
        raise ConflictError(
            f"modal: {what}: {exc}", fix="a previous deploy left it behind: `argosy destroy NAME`, then retry"
        ) from exc
    except mexc.PermissionDeniedError as exc:
        raise ProviderAuthError(
            f"modal: {what}: {exc}",
            fix="use a token of a workspace member with deploy rights",
            provider=PROVIDER,
        ) from exc
    except (mexc.ResourceExhaustedError, mexc.InvalidError, mexc.ImageBuildError) as exc:
        raise ProviderError(
            f"modal: {what}: {exc}",
            fix="check the rendered modal_app.py (`--dry-run`) and your workspace's GPU limits",
            provider=PROVIDER,
        ) from exc
    except mexc.Error as exc:
        raise ProviderError(
            f"modal: {what}: {exc}", fix="retry; see https://status.modal.com", provider=PROVIDER
        ) from exc


class ModalSdk:
    """ModalBackend over the real `modal` package (imported only when used)."""

    def create_secret(self, name: str, env: Mapping[str, str], environment: str | None) -> None:
        import modal

        with _sdk_errors(f"create secret {name}"):
            modal.Secret.objects.create(name, dict(env), environment_name=environment)

    def deploy(self, app_name: str, source: str, environment: str | None) -> str:
        # Deploying the rendered file itself (not an equivalent built in memory) keeps what was
        # printed with --dry-run and what runs on Modal the same bytes.
        with tempfile.TemporaryDirectory(prefix="argosy-modal-") as tmp:
            path = Path(tmp) / f"{app_name.replace('-', '_')}.py"
            path.write_text(source)
            spec = importlib.util.spec_from_file_location(path.stem, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            try:
                with _sdk_errors(f"deploy app {app_name}"):
                    spec.loader.exec_module(module)  # Modal validates decorators and tags here
                    module.app.deploy(name=app_name, environment_name=environment)
                return str(module.app.app_id)
            finally:
                sys.modules.pop(path.stem, None)

    def web_url(self, app_name: str, function: str, environment: str | None) -> str | None:
        import modal

        with _sdk_errors(f"look up {app_name}.{function}"):
            return modal.Function.from_name(app_name, function, environment_name=environment).get_web_url()

    def running_containers(self, app_name: str, function: str, environment: str | None) -> int:
        import modal

        with _sdk_errors(f"read stats of {app_name}.{function}"):
            stats = modal.Function.from_name(
                app_name, function, environment_name=environment
            ).get_current_stats()
        return int(stats.num_total_runners)

    def app_tags(self, app_name: str, environment: str | None) -> dict[str, str]:
        import modal

        with _sdk_errors(f"read tags of {app_name}"):
            return dict(modal.App.lookup(app_name, environment_name=environment).get_tags())

    def stop(self, app_name: str, environment: str | None) -> None:
        import modal

        with _sdk_errors(f"stop app {app_name}"):
            modal.App.lookup(app_name, environment_name=environment).stop()

    def delete_secret(self, name: str, environment: str | None) -> None:
        import modal

        with _sdk_errors(f"delete secret {name}"):
            modal.Secret.objects.delete(name, allow_missing=True, environment_name=environment)

    def delete_volume(self, name: str, environment: str | None) -> None:
        import modal

        with _sdk_errors(f"delete volume {name}"):
            modal.Volume.objects.delete(name, allow_missing=True, environment_name=environment)

    def billing_report(self, start: datetime, end: datetime, tag: str) -> list[Mapping[str, Any]]:
        # Hourly cost per object with our tag (modal.com/docs/sdk/py/latest/billing, read 2026-11);
        # `Workspace.billing.report` replaced `billing.workspace_billing_report` (deprecated 2026-06).
        import modal

        with _sdk_errors("read the workspace billing report"):
            if hasattr(modal, "Workspace"):
                report = modal.Workspace.from_context().billing.report
            else:
                report = modal.billing.workspace_billing_report
            items = report(start=start, end=end, resolution="h", tag_names=[tag])
        return [
            {"interval_start": i["interval_start"], "cost": i["cost"], "tags": dict(i["tags"])} for i in items
        ]


def names(request_name: str) -> dict[str, str]:
    """Everything one endpoint creates on Modal, by kind: the app, its auth Secret, its weights volume."""
    app = resource_name(request_name, limit=48)
    return {"app": app, "secret": f"{app}-auth", "volume": f"{app}-weights"}


def app_tags(request: EndpointRequest) -> dict[str, str]:
    """Tags on the Modal app: ownership, plus what `endpoint_status` reports without our store.

    Modal tags allow only [A-Za-z0-9._-], up to 63 characters: the model id's '/' is written '__'.
    """
    facts = ModalProvider.facts_for(request)
    model = re.sub(r"[^A-Za-z0-9._-]", "-", request.model.replace("/", "__"))[:63]
    tags = {
        MANAGED_LABEL: "true",
        ENDPOINT_LABEL: names(request.name)["app"],
        "argosy-model": model,
    }
    if facts.price_per_second is not None:
        tags["argosy-price-per-second"] = f"{facts.price_per_second:.8f}"
    if facts.cold_start.seconds is not None:
        tags["argosy-cold-start-s"] = f"{facts.cold_start.seconds:g}"
    return tags


def render_app(request: EndpointRequest) -> str:
    """The Modal app source for `request` (pure; byte-for-byte testable)."""
    check_extra(PROVIDER, request.extra, OPTIONS)
    gpu, count = requested_gpu(request, "L4")
    price = price_for(PROVIDER, gpu)
    n = names(request.name)
    snapshot = bool(request.extra.get("gpu_snapshot", False))
    max_len = request.extra.get("max_model_len")
    cmd = [
        "vllm",
        "serve",
        *vllm_args(
            request.model,
            served_name(request),
            gpu_count=count,
            max_model_len=int(max_len) if max_len else None,
        ),
    ]
    secrets = [f"modal.Secret.from_name({n['secret']!r})"]
    if request.extra.get("hf_secret"):
        secrets.append(f"modal.Secret.from_name({str(request.extra['hf_secret'])!r})")
    return APP_TEMPLATE.format(
        name=request.name,
        model=request.model,
        app=n["app"],
        cmd=cmd,
        vllm_version=VLLM_VERSION,
        volume=n["volume"],
        tags=app_tags(request),
        snapshot_block=SNAPSHOT_BLOCK if snapshot else "",
        gpu=f"{price.provider_gpu}:{count}" if count > 1 else price.provider_gpu,
        cpu=CPU_CORES,
        memory=MEMORY_MIB,
        min_containers=request.min_workers,
        max_containers=max(1, request.max_workers),
        scaledown=int(request.extra.get("scaledown_window_s", 300)),
        secrets=", ".join(secrets),
        snapshot_args=(
            '\n    enable_memory_snapshot=True,\n    experimental_options={"enable_gpu_snapshot": True},'
            if snapshot
            else ""
        ),
        concurrency=int(request.extra.get("concurrency", 32)),
        port=8000,
        startup=int(request.extra.get("startup_timeout_s", 1200)),
        function=FUNCTION,
        serve_body="pass  # vLLM was started in global scope (snapshot)" if snapshot else "start_vllm()",
    )


class ModalProvider:
    name = PROVIDER

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        env: Mapping[str, str] | None = None,
        backend: ModalBackend | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._env = environ(env)
        self._backend = backend
        self.environment = self._env.get("MODAL_ENVIRONMENT") or None

    def _sdk(self) -> ModalBackend:
        if self._backend is None:
            import_sdk("modal", "modal", "the modal provider needs the modal SDK")
            self._backend = ModalSdk()
        return self._backend

    def preflight(self) -> list[CheckResult]:
        checks = []
        try:
            import modal  # noqa: F401

            checks.append(CheckResult("modal sdk", True, "installed"))
        except ImportError:
            checks.append(CheckResult("modal sdk", False, "not installed", fix="pip install 'argosy[modal]'"))
        toml = Path(self._env.get("MODAL_CONFIG_PATH") or Path("~/.modal.toml").expanduser())
        if self._env.get("MODAL_TOKEN_ID") and self._env.get("MODAL_TOKEN_SECRET"):
            checks.append(
                CheckResult("modal credentials", True, "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET are set")
            )
        elif toml.is_file():
            checks.append(CheckResult("modal credentials", True, f"token in {toml}"))
        else:
            checks.append(
                CheckResult(
                    "modal credentials",
                    False,
                    "no MODAL_TOKEN_ID/MODAL_TOKEN_SECRET and no ~/.modal.toml",
                    fix="run `modal token new`, or create a token at https://modal.com/settings/tokens and "
                    "`export MODAL_TOKEN_ID=... MODAL_TOKEN_SECRET=...`",
                )
            )
        return checks

    def offerings(self) -> list[Offering]:
        return price_offerings(PROVIDER)

    def facts(self, request: EndpointRequest) -> EndpointFacts:
        return self.facts_for(request)

    @staticmethod
    def facts_for(request: EndpointRequest) -> EndpointFacts:
        gpu, count = requested_gpu(request, "L4")
        price = price_for(PROVIDER, gpu)
        published = COLD_START_SNAPSHOT if request.extra.get("gpu_snapshot") else COLD_START
        return EndpointFacts(
            price_per_second=price.per_second(count, cpu=CPU_CORES, memory_gib=MEMORY_MIB / 1024),
            price_source=f"{price.source_line}; includes {CPU_CORES:g} CPU cores and {MEMORY_MIB // 1024} GiB",
            cold_start=cold_start(request, published),
            auth_scheme="Authorization: Bearer <vLLM API key stored in the endpoint's Modal Secret>",
            billing_note="per second while a container runs, including the scale-down window after the last request",
        )

    def plan_endpoint(self, request: EndpointRequest) -> Plan:
        source = render_app(request)
        facts = self.facts(request)
        n = names(request.name)
        return Plan(
            provider=PROVIDER,
            action="deploy",
            offering=request.offering,
            payload={
                **n,
                "function": FUNCTION,
                "environment": request.extra.get("environment") or self.environment,
                "model": request.model,
                "secret_keys": ["VLLM_API_KEY"],
                "cold_start": {"seconds": facts.cold_start.seconds, "source": facts.cold_start.source},
            },
            artifacts={"modal_app.py": source},
            estimated_cost_per_hour=None if facts.price_per_second is None else facts.price_per_second * 3600,
            notes=[*facts.notes(), f"creates: app {n['app']}, secret {n['secret']}, volume {n['volume']}"],
        )

    def deploy(self, plan: Plan) -> ServerlessEndpoint:
        sdk = self._sdk()
        p = plan.payload
        token = plan.secrets.get("API_KEY") or new_token()
        env = p.get("environment")
        sdk.create_secret(p["secret"], {"VLLM_API_KEY": token}, env)
        try:
            sdk.deploy(p["app"], plan.artifacts["modal_app.py"], env)
            url = sdk.web_url(p["app"], FUNCTION, env)
        except ArgosyError:
            # Leave nothing behind: an app that half-deployed is stopped and its secret removed.
            self._teardown(p["app"], env)
            raise
        price = None if plan.estimated_cost_per_hour is None else plan.estimated_cost_per_hour / 3600
        return self._endpoint(
            p["app"], "ready" if url else "deploying", url, token, price=price, model=p.get("model", "")
        )

    def endpoint_status(self, endpoint_id: str) -> ServerlessEndpoint:
        sdk = self._sdk()
        url = sdk.web_url(endpoint_id, FUNCTION, self.environment)
        running = sdk.running_containers(endpoint_id, FUNCTION, self.environment)
        tags = sdk.app_tags(endpoint_id, self.environment)
        if tags.get(MANAGED_LABEL) != "true":
            raise ArgosyError(
                f"modal: app '{endpoint_id}' was not created by Argosy", fix="manage it with the modal CLI"
            )
        price = tags.get("argosy-price-per-second")
        cold_s = tags.get("argosy-cold-start-s")
        cold = (
            ColdStart(float(cold_s), "recorded at deploy (see plan notes for its source)")
            if cold_s
            else COLD_START
        )
        # The token lives only in the Modal Secret (write-only through the SDK): the server keeps
        # the one deploy returned and the router injects it; status cannot read it back.
        return self._endpoint(
            endpoint_id,
            "ready" if url else "deploying",
            url,
            "",
            price=float(price) if price else None,
            cold=cold,
            model=tags.get("argosy-model", "").replace("__", "/"),
            detail=f"{running} container(s) running",
        )

    usage_source = "Modal workspace billing report"

    def endpoint_usage(self, endpoint_id: str, since: float, until: float) -> list[UsageRecord]:
        """Hourly cost of the app (found by its `argosy-endpoint` tag). Modal reports cost, not time,
        and only whole intervals: the hour in progress appears once it has closed."""
        start = datetime.fromtimestamp(since - since % 3600, tz=UTC)
        items = self._sdk().billing_report(start, datetime.fromtimestamp(until, tz=UTC), ENDPOINT_LABEL)
        cost: dict[float, float] = {}
        for item in items:
            if item["tags"].get(ENDPOINT_LABEL) != endpoint_id:
                continue
            at = item["interval_start"].timestamp()
            cost[at] = cost.get(at, 0.0) + float(item["cost"])
        return [UsageRecord(at, at + 3600, c) for at, c in sorted(cost.items())]

    def destroy(self, endpoint_id: str) -> None:
        if not endpoint_id.startswith("argosy-"):
            raise ArgosyError(
                f"modal: app '{endpoint_id}' was not created by Argosy", fix="stop it with `modal app stop`"
            )
        self._teardown(endpoint_id, self.environment)

    def _teardown(self, app: str, environment: str | None) -> None:
        sdk = self._sdk()
        n = names(app)
        with contextlib.suppress(NotFoundError):  # never deployed, or already stopped
            sdk.stop(app, environment)
        sdk.delete_secret(n["secret"], environment)
        sdk.delete_volume(n["volume"], environment)

    def _endpoint(
        self,
        app: str,
        state: str,
        url: str | None,
        token: str,
        *,
        price: float | None = None,
        cold: ColdStart = COLD_START,
        model: str = "",
        detail: str = "",
    ) -> ServerlessEndpoint:
        n = names(app)
        return ServerlessEndpoint(
            provider=PROVIDER,
            endpoint_id=app,
            name=app,
            state=state,
            url=f"{url.rstrip('/')}/v1" if url else None,
            auth_header=bearer(token) if token else {},
            price_per_second=price,
            cold_start_s=cold.seconds,
            cold_start_source=cold.source,
            auth_scheme="Authorization: Bearer <vLLM API key in Modal Secret>",
            model=model,
            resources=n,
            detail=detail,
        )
