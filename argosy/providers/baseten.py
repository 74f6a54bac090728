"""Baseten: a rendered Truss (vLLM as a custom server) pushed with the `truss` SDK, managed over REST.

`plan_endpoint` renders the Truss `config.yaml`: the pinned vLLM image as `base_image`, a
`docker_server` block that starts `vllm serve` and exposes its OpenAI routes, the GPU as
`resources.accelerator`, and the replica bounds. Deploy pushes the Truss (a published deployment,
promoted to production), then sets autoscaling through the management API
(`PATCH /v1/models/{id}/deployments/production/autoscaling_settings`). Destroy deletes the model
with every deployment (`DELETE /v1/models/{id}`).

Auth: Baseten authenticates every call with `Authorization: Api-Key <key>`; the router injects the
key (a workspace key restricted to inference where the user has one, `BASETEN_INVOKE_API_KEY`).
Ownership: Baseten models have no labels, so Argosy's models are named `argosy-*` and carry
`model_metadata.argosy-managed`; destroy refuses any other name.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx
import yaml

from argosy.catalog.types import Offering
from argosy.core.clock import Clock
from argosy.core.config import Settings
from argosy.core.errors import ArgosyError, NotFoundError, ProviderAuthError, ProviderError
from argosy.providers.base import MANAGED_LABEL, CheckResult, EndpointRequest, Plan
from argosy.providers.clients.http import ApiKeyEndpoints
from argosy.providers.common import environ, import_sdk
from argosy.providers.templates.serverless import (
    HEALTH_PATH,
    VLLM_IMAGE,
    VLLM_PORT,
    ColdStart,
    EndpointFacts,
    ServerlessEndpoint,
    check_extra,
    cold_start,
    price_for,
    price_offerings,
    prices,
    requested_gpu,
    resource_name,
    served_name,
    vllm_args,
)

PROVIDER = "baseten"
API_URL = "https://api.baseten.co"
MODEL_URL = "https://model-{model_id}.api.baseten.co/environments/production/sync/v1"
PUBLISHED_COLD_START = ColdStart(None, "no published figure for custom vLLM servers; measure with bench/")
OPTIONS = ("scale_down_delay_s", "concurrency_target", "autoscaling_window_s", "max_model_len", "hf_secret")
# Statuses from the management API's deployment object, mapped to Argosy's endpoint states.
READY = {"ACTIVE", "SCALED_TO_ZERO", "WAKING_UP", "UPDATING"}
FAILED = {"BUILD_FAILED", "DEPLOY_FAILED", "FAILED", "UNHEALTHY", "BUILD_STOPPED"}


class TrussPusher(Protocol):
    """Pushes a Truss directory; returns (model_id, deployment_id). The real one is `TrussSdk`."""

    def push(self, directory: Path, model_name: str, api_key: str) -> tuple[str, str]: ...


class TrussSdk:
    """TrussPusher over the `truss` package (`pip install truss`), imported only when used."""

    def push(self, directory: Path, model_name: str, api_key: str) -> tuple[str, str]:
        truss_api = import_sdk("truss.api", "baseten", "the baseten provider needs the truss SDK")
        # truss reads the key from ~/.trussrc: login writes it there under the remote name "baseten".
        truss_api.login(api_key)
        try:
            deployment = truss_api.push(
                str(directory),
                remote="baseten",
                model_name=model_name,
                publish=True,
                environment="production",
            )
        except Exception as exc:  # truss raises plain exceptions; keep its message for the user
            raise ProviderError(
                f"baseten: truss push failed: {exc}",
                fix="check the rendered config.yaml (`--dry-run`) and `truss push` output",
                provider=PROVIDER,
            ) from exc
        return str(deployment.model_id), str(deployment.model_deployment_id)


def _classify(status: int, body: Any, text: str) -> ProviderError | None:
    if status in (401, 403):
        return ProviderAuthError(
            f"{PROVIDER}: Baseten rejected the API key (HTTP {status}): {text}",
            fix="create a key at https://app.baseten.co/settings/api_keys, then `export BASETEN_API_KEY=...`",
            provider=PROVIDER,
        )
    if status == 404:
        return NotFoundError(f"{PROVIDER}: not found: {text}", fix="run `argosy list` to see live endpoints")
    return None


def render_truss_config(request: EndpointRequest) -> dict[str, Any]:
    """The Truss config.yaml for a vLLM OpenAI server (pure)."""
    check_extra(PROVIDER, request.extra, OPTIONS)
    gpu, count = requested_gpu(request, "L4")
    price = price_for(PROVIDER, gpu)
    max_len = request.extra.get("max_model_len")
    args = vllm_args(
        request.model,
        served_name(request),
        port=VLLM_PORT,
        gpu_count=count,
        max_model_len=int(max_len) if max_len else None,
    )
    config: dict[str, Any] = {
        "model_name": resource_name(request.name),
        "base_image": {"image": VLLM_IMAGE},
        "docker_server": {
            # vLLM's image has no shell wrapper we depend on: sh -c keeps HF_TOKEN expansion working.
            "start_command": "sh -c " + _quote("vllm serve " + " ".join(_quote(a) for a in args)),
            "readiness_endpoint": HEALTH_PATH,
            "liveness_endpoint": HEALTH_PATH,
            "predict_endpoint": "/v1/chat/completions",
            "server_port": VLLM_PORT,
        },
        "resources": {
            "accelerator": f"{price.provider_gpu}:{count}" if count > 1 else price.provider_gpu,
            "use_gpu": True,
        },
        "runtime": {"predict_concurrency": int(request.extra.get("concurrency_target", 32)) * 4},
        "model_metadata": {
            MANAGED_LABEL: "true",
            "argosy-model": request.model,
            "tags": ["openai-compatible"],
        },
        "environment_variables": {},
    }
    if request.extra.get("hf_secret"):
        # A Baseten workspace secret name; truss mounts it, the value never passes through Argosy.
        config["secrets"] = {str(request.extra["hf_secret"]): None}
    return config


def render_autoscaling(request: EndpointRequest) -> dict[str, int]:
    return {
        "min_replica": request.min_workers,
        "max_replica": max(1, request.max_workers),
        "autoscaling_window": int(request.extra.get("autoscaling_window_s", 60)),
        "scale_down_delay": int(request.extra.get("scale_down_delay_s", 900)),
        "concurrency_target": int(request.extra.get("concurrency_target", 32)),
    }


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


class BasetenProvider(ApiKeyEndpoints):
    name = PROVIDER
    KEY_VAR = "BASETEN_API_KEY"
    KEYS_URL = "https://app.baseten.co/settings/api_keys"
    AUTH_SCHEME = "Api-Key"
    classify_error = staticmethod(_classify)

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        env: Mapping[str, str] | None = None,
        pusher: TrussPusher | None = None,
        transport: httpx.BaseTransport | None = None,
        base_url: str = API_URL,
        model_url: str = MODEL_URL,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._env = environ(env)
        self._key = self._env.get("BASETEN_API_KEY", "").strip()
        self._invoke_key = (self._env.get("BASETEN_INVOKE_API_KEY") or self._key).strip()
        self._pusher = pusher
        self._transport = transport
        self._base_url = base_url
        self._model_url = model_url

    def preflight(self) -> list[CheckResult]:
        checks = []
        if self._key:
            checks.append(CheckResult("baseten credentials", True, "BASETEN_API_KEY is set"))
        else:
            checks.append(
                CheckResult(
                    "baseten credentials",
                    False,
                    "BASETEN_API_KEY is not set",
                    fix="create an API key at https://app.baseten.co/settings/api_keys, then `export BASETEN_API_KEY=...`",
                )
            )
        try:
            import truss.api  # noqa: F401

            checks.append(CheckResult("truss sdk", True, "installed"))
        except ImportError:
            checks.append(
                CheckResult(
                    "truss sdk",
                    self._pusher is not None,
                    "not installed",
                    fix="pip install 'argosy[baseten]'",
                )
            )
        return checks

    def offerings(self) -> list[Offering]:
        return price_offerings(PROVIDER)

    def facts(self, request: EndpointRequest) -> EndpointFacts:
        gpu, count = requested_gpu(request, "L4")
        price = price_for(PROVIDER, gpu)
        return EndpointFacts(
            price_per_second=price.per_second(count),
            price_source=price.source_line,
            cold_start=cold_start(request, PUBLISHED_COLD_START),
            auth_scheme="Authorization: Api-Key <Baseten key> (BASETEN_INVOKE_API_KEY, else BASETEN_API_KEY)",
            billing_note="per minute while a replica is up, including model load and the scale-down delay",
        )

    def plan_endpoint(self, request: EndpointRequest) -> Plan:
        config = render_truss_config(request)
        facts = self.facts(request)
        return Plan(
            provider=PROVIDER,
            action="deploy",
            offering=request.offering,
            payload={
                "model_name": config["model_name"],
                "truss_config": config,
                "autoscaling": render_autoscaling(request),
            },
            artifacts={"config.yaml": yaml.safe_dump(config, sort_keys=False)},
            estimated_cost_per_hour=None if facts.price_per_second is None else facts.price_per_second * 3600,
            notes=[*facts.notes(), f"OpenAI route: {self._model_url.format(model_id='<model id>')}"],
        )

    # -- effects ----------------------------------------------------------------------------------
    def deploy(self, plan: Plan) -> ServerlessEndpoint:
        api = self._api()  # fail on a missing key before building anything
        pusher = self._pusher or TrussSdk()
        with tempfile.TemporaryDirectory(prefix="argosy-truss-") as tmp:
            directory = Path(tmp)
            (directory / "config.yaml").write_text(plan.artifacts["config.yaml"])
            model_id, _ = pusher.push(directory, plan.payload["model_name"], self._key)
        try:
            api.request(
                "PATCH",
                f"/v1/models/{model_id}/deployments/production/autoscaling_settings",
                json_body=plan.payload["autoscaling"],
            )
        except ArgosyError:
            api.close()
            self.destroy(model_id)  # a model with the wrong scaling bounds could bill min replicas forever
            raise
        api.close()
        return self.endpoint_status(model_id)

    def endpoint_status(self, endpoint_id: str) -> ServerlessEndpoint:
        api = self._api()
        try:
            model = api.request("GET", f"/v1/models/{endpoint_id}")
            dep = api.request("GET", f"/v1/models/{endpoint_id}/deployments/production")
        finally:
            api.close()
        status = str(dep.get("status", "")).upper()
        state = "ready" if status in READY else "failed" if status in FAILED else "deploying"
        instance = str(dep.get("instance_type_name") or model.get("instance_type_name") or "")
        price = _price_from_instance(instance)
        return ServerlessEndpoint(
            provider=PROVIDER,
            endpoint_id=endpoint_id,
            name=str(model.get("name", "")),
            state=state,
            url=self._model_url.format(model_id=endpoint_id),
            auth_header={"Authorization": f"Api-Key {self._invoke_key}"} if self._invoke_key else {},
            price_per_second=price,
            cold_start_s=PUBLISHED_COLD_START.seconds,
            cold_start_source=PUBLISHED_COLD_START.source,
            auth_scheme="Authorization: Api-Key <Baseten key>",
            resources={"model": endpoint_id, "deployment": str(dep.get("id", ""))},
            detail=f"{status.lower()}, {dep.get('active_replica_count', 0)} active replica(s), instance {instance}",
        )

    def destroy(self, endpoint_id: str) -> None:
        api = self._api()
        try:
            try:
                model = api.request("GET", f"/v1/models/{endpoint_id}")
            except NotFoundError:
                return
            if not str(model.get("name", "")).startswith("argosy-"):
                raise ArgosyError(
                    f"{PROVIDER}: model {endpoint_id} ('{model.get('name')}') was not created by Argosy",
                    fix="delete it in the Baseten dashboard if you really mean to",
                )
            api.request("DELETE", f"/v1/models/{endpoint_id}")
        finally:
            api.close()


def _price_from_instance(instance_type: str) -> float | None:
    """Per-second price from an instance type name like 'A10Gx4x16' or 'H100:2x...' (GPU first)."""
    head = instance_type.split("x", 1)[0] if instance_type else ""
    gpu, _, count = head.partition(":")
    for p in prices(PROVIDER):
        if gpu and gpu == p.provider_gpu:
            return p.per_second(int(count) if count.isdigit() else 1)
    return None
