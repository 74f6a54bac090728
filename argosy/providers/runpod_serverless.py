"""RunPod Serverless: a vLLM worker endpoint through RunPod's REST API (https://rest.runpod.io/v1).

Deploy creates a serverless template (worker image + env) and then an endpoint on it (GPU types,
workers min/max, idle timeout, FlashBoot). Clients reach it through RunPod's OpenAI-compatible route
`https://api.runpod.ai/v2/{endpoint_id}/openai/v1`, authenticated with a RunPod API key as a bearer
token. Destroy scales the endpoint to zero, deletes it, then deletes its template.

RunPod has no labels on endpoints, so ownership is marked twice: the `argosy-` name prefix and an
`ARGOSY_MANAGED=true` variable in the template env. Destroy refuses anything without both.
This module holds only the serverless calls; the pods provider (issue 5) owns its own.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from argosy.catalog.types import Offering
from argosy.core.clock import Clock
from argosy.core.config import Settings
from argosy.core.errors import (
    ArgosyError,
    CapacityError,
    ConflictError,
    NotFoundError,
    ProviderAuthError,
    ProviderError,
    QuotaError,
)
from argosy.providers.base import CheckResult, EndpointRequest, Plan, UsageRecord
from argosy.providers.clients.http import ApiKeyEndpoints
from argosy.providers.common import environ
from argosy.providers.templates.serverless import (
    ColdStart,
    EndpointFacts,
    ServerlessEndpoint,
    bearer,
    check_extra,
    cold_start,
    fill_secrets,
    price_for,
    price_offerings,
    prices,
    requested_gpu,
    resource_name,
    secret_ref,
    served_name,
)

PROVIDER = "runpod-serverless"
REST_URL = "https://rest.runpod.io/v1"
OPENAI_URL = "https://api.runpod.ai/v2/{endpoint_id}/openai/v1"
# Pinned worker release: the image is cached on RunPod hosts, which is most of its cold-start story.
WORKER_IMAGE = "runpod/worker-v1-vllm:v2.7.0stable-cuda12.1.0"
API_KEY_VARS = ("RUNPOD_API_KEY",)
# A key restricted to invoking endpoints, if the user made one: the router then never holds a key
# that can create or delete resources.
INVOKE_KEY_VARS = ("RUNPOD_ENDPOINT_API_KEY", "RUNPOD_API_KEY")
MANAGED_ENV = "ARGOSY_MANAGED"
PUBLISHED_COLD_START = ColdStart(
    None,
    "no reliable published figure: FlashBoot restores a snapshot only on the same host; third-party "
    "tests saw 7 s to 7 min for vLLM (dev.to/sergeyshmakov, 2026-05); measure with bench/",
)
OPTIONS = (
    "idle_timeout_s",
    "flashboot",
    "container_disk_gb",
    "max_model_len",
    "hf_token_env",
    "execution_timeout_ms",
    "scaler_value",
)


def _classify(status: int, body: Any, text: str) -> ProviderError | None:
    msg = text.lower()
    if status in (401, 403):
        return ProviderAuthError(
            f"{PROVIDER}: RunPod rejected the API key (HTTP {status}): {text}",
            fix="create a key with read/write access at https://www.runpod.io/console/user/settings, "
            "then `export RUNPOD_API_KEY=...`",
            provider=PROVIDER,
        )
    if status == 404:
        return NotFoundError(f"{PROVIDER}: not found: {text}", fix="run `argosy list` to see live endpoints")
    if "already exists" in msg or status == 409:
        return ConflictError(
            f"{PROVIDER}: a resource with that name already exists: {text}",
            fix="destroy the old endpoint first (`argosy destroy NAME`) or pick another name",
        )
    if "quota" in msg or ("limit" in msg and "worker" in msg):
        return QuotaError(
            f"{PROVIDER}: account limit reached: {text}",
            fix="lower workers max, or raise the serverless worker quota in the RunPod console",
            provider=PROVIDER,
        )
    if "no available" in msg or "out of stock" in msg or "insufficient" in msg:
        return CapacityError(
            f"{PROVIDER}: no capacity: {text}", fix="try another GPU type", provider=PROVIDER
        )
    return None


class RunpodServerlessProvider(ApiKeyEndpoints):
    name = PROVIDER
    KEY_VAR = "RUNPOD_API_KEY"
    KEYS_URL = "https://www.runpod.io/console/user/settings"
    AUTH_SCHEME = "Bearer"
    classify_error = staticmethod(_classify)

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        env: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        base_url: str = REST_URL,
        openai_url: str = OPENAI_URL,
    ) -> None:
        self.settings = settings
        self.clock = clock
        # Credentials are read once, here; never logged or put into a plan.
        self._env = environ(env)
        self._key = self._env.get("RUNPOD_API_KEY", "").strip()
        self._invoke_key = next(
            (self._env[v].strip() for v in INVOKE_KEY_VARS if self._env.get(v, "").strip()), ""
        )
        self._transport = transport
        self._base_url = base_url
        self._openai_url = openai_url

    # -- capabilities -----------------------------------------------------------------------------
    def preflight(self) -> list[CheckResult]:
        if self._key:
            checks = [CheckResult("runpod credentials", True, "RUNPOD_API_KEY is set")]
        else:
            checks = [
                CheckResult(
                    "runpod credentials",
                    False,
                    "RUNPOD_API_KEY is not set",
                    fix="create an API key at https://www.runpod.io/console/user/settings, "
                    "then `export RUNPOD_API_KEY=...`",
                )
            ]
        if self._env.get("RUNPOD_ENDPOINT_API_KEY"):
            checks.append(
                CheckResult("runpod router key", True, "RUNPOD_ENDPOINT_API_KEY is set (router uses it)")
            )
        else:
            checks.append(
                CheckResult(
                    "runpod router key",
                    True,
                    "the router will use RUNPOD_API_KEY (optional: a restricted key in RUNPOD_ENDPOINT_API_KEY)",
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
            auth_scheme="Authorization: Bearer <RunPod API key> (RUNPOD_ENDPOINT_API_KEY, else RUNPOD_API_KEY)",
            billing_note="flex workers bill per second while running, including idle_timeout after the last request",
        )

    def plan_endpoint(self, request: EndpointRequest) -> Plan:
        check_extra(PROVIDER, request.extra, OPTIONS)
        gpu, count = requested_gpu(request, "L4")
        price = price_for(PROVIDER, gpu)
        name = resource_name(request.name, limit=48)
        env = {
            "MODEL_NAME": request.model,
            "OPENAI_SERVED_MODEL_NAME_OVERRIDE": served_name(request),
            "TENSOR_PARALLEL_SIZE": str(count),
            MANAGED_ENV: "true",
        }
        if request.extra.get("max_model_len"):
            env["MAX_MODEL_LEN"] = str(int(request.extra["max_model_len"]))
        secret_names: list[str] = []
        hf_env = str(request.extra.get("hf_token_env", "HF_TOKEN"))
        if hf_env and self._env.get(hf_env):
            # Gated models need the token inside the worker; the printed plan shows a placeholder only.
            env["HF_TOKEN"] = secret_ref("HF_TOKEN")
            secret_names.append("HF_TOKEN")
        template = {
            "name": name,
            "imageName": WORKER_IMAGE,
            "isServerless": True,
            "containerDiskInGb": int(request.extra.get("container_disk_gb", 50)),
            "env": env,
        }
        endpoint = {
            "name": name,
            "templateId": "<from create template>",
            "computeType": "GPU",
            "gpuTypeIds": [price.provider_gpu],
            "gpuCount": count,
            "workersMin": request.min_workers,
            "workersMax": request.max_workers,
            "idleTimeout": int(request.extra.get("idle_timeout_s", 60)),
            "flashboot": bool(request.extra.get("flashboot", True)),
            "scalerType": "QUEUE_DELAY",
            "scalerValue": int(request.extra.get("scaler_value", 4)),
            "executionTimeoutMs": int(request.extra.get("execution_timeout_ms", 600_000)),
        }
        facts = self.facts(request)
        plan = Plan(
            provider=PROVIDER,
            action="deploy",
            offering=request.offering,
            payload={"template": template, "endpoint": endpoint},
            artifacts={
                "template.json": json.dumps(template, indent=2, sort_keys=True),
                "endpoint.json": json.dumps(endpoint, indent=2, sort_keys=True),
            },
            estimated_cost_per_hour=None if facts.price_per_second is None else facts.price_per_second * 3600,
            notes=[
                *facts.notes(),
                f"OpenAI route: {self._openai_url.format(endpoint_id='<endpoint id>')}",
                f"model '{request.model}' served as '{served_name(request)}' on {count}x {gpu} ({price.provider_gpu})",
            ],
            secrets={n: self._env[hf_env] for n in secret_names},
        )
        return plan

    # -- effects ----------------------------------------------------------------------------------
    def deploy(self, plan: Plan) -> ServerlessEndpoint:
        payload = fill_secrets(plan.payload, plan.secrets)
        api = self._api()
        try:
            template = api.request("POST", "/templates", json_body=payload["template"])
            template_id = str(template["id"])
            body = {**payload["endpoint"], "templateId": template_id}
            try:
                created = api.request("POST", "/endpoints", json_body=body)
            except ArgosyError as exc:
                # Nothing is left billing or lying around: the template we just made goes too.
                try:
                    api.request("DELETE", f"/templates/{template_id}")
                except ArgosyError as cleanup:
                    raise ProviderError(
                        f"{PROVIDER}: creating the endpoint failed ({exc.message}) and template {template_id} "
                        f"could not be removed ({cleanup.message})",
                        fix=f"delete template {template_id} in the RunPod console",
                        provider=PROVIDER,
                    ) from exc
                raise
        finally:
            api.close()
        created = {**created, "template": created.get("template") or payload["template"]}
        return self._endpoint(created, template_id=template_id, state="deploying")

    def endpoint_status(self, endpoint_id: str) -> ServerlessEndpoint:
        api = self._api()
        try:
            data = api.request(
                "GET",
                f"/endpoints/{endpoint_id}",
                params={"includeWorkers": "true", "includeTemplate": "true"},
            )
        finally:
            api.close()
        workers = data.get("workers") or []
        running = [w for w in workers if str(w.get("desiredStatus", "")).upper() == "RUNNING"]
        # A serverless endpoint with zero workers is still "ready": the first request starts one.
        state = "ready"
        return self._endpoint(
            data,
            template_id=str(data.get("templateId", "")),
            state=state,
            detail=f"{len(running)} running worker(s) of max {data.get('workersMax')}",
        )

    def destroy(self, endpoint_id: str) -> None:
        api = self._api()
        try:
            try:
                data = api.request("GET", f"/endpoints/{endpoint_id}", params={"includeTemplate": "true"})
            except NotFoundError:
                return  # already gone: destroy is idempotent
            template = data.get("template") or {}
            managed = (
                str(data.get("name", "")).startswith("argosy-")
                and (template.get("env") or {}).get(MANAGED_ENV) == "true"
            )
            if not managed:
                raise ArgosyError(
                    f"{PROVIDER}: endpoint {endpoint_id} ('{data.get('name')}') was not created by Argosy",
                    fix="delete it in the RunPod console if you really mean to",
                )
            # RunPod will not delete an endpoint that still has workers assigned; scale to zero first.
            api.request("PATCH", f"/endpoints/{endpoint_id}", json_body={"workersMin": 0, "workersMax": 0})
            api.request("DELETE", f"/endpoints/{endpoint_id}")
            template_id = str(data.get("templateId") or template.get("id") or "")
            if template_id:
                # Someone may have removed it already; the endpoint is what billed.
                with contextlib.suppress(NotFoundError):
                    api.request("DELETE", f"/templates/{template_id}")
        finally:
            api.close()

    # Serverless billing history (docs.runpod.io/api-reference/billing/GET/billing/endpoints, read
    # 2026-11): records of {amount (USD), timeBilledMs, endpointId, time (bucket start), ...}.
    usage_source = "RunPod GET /billing/endpoints"

    def endpoint_usage(self, endpoint_id: str, since: float, until: float) -> list[UsageRecord]:
        start = since - since % 3600  # hour buckets: ask from the start of the one `since` is in
        api = self._api()
        try:
            data = api.request(
                "GET",
                "/billing/endpoints",
                params={
                    "endpointId": endpoint_id,
                    "bucketSize": "hour",
                    "grouping": "endpointId",
                    "startTime": _rfc3339(start),
                    "endTime": _rfc3339(until),
                },
            )
        finally:
            api.close()
        if not isinstance(data, list):
            raise ProviderError(
                f"{PROVIDER}: GET /billing/endpoints answered {type(data).__name__}, not a list of records",
                fix="RunPod may have changed its billing API: report it, with the answer",
                provider=PROVIDER,
            )
        out = []
        for rec in data:
            if not isinstance(rec, dict) or rec.get("endpointId") not in (None, endpoint_id):
                continue
            at = datetime.fromisoformat(str(rec["time"]).replace("Z", "+00:00")).timestamp()
            ms = rec.get("timeBilledMs")
            out.append(
                UsageRecord(
                    start_ts=at,
                    end_ts=at + 3600,
                    cost_usd=float(rec.get("amount") or 0.0),
                    seconds=None if ms is None else float(ms) / 1000.0,
                )
            )
        return out

    def _endpoint(
        self,
        data: Mapping[str, Any],
        *,
        template_id: str,
        state: str,
        detail: str = "",
    ) -> ServerlessEndpoint:
        endpoint_id = str(data["id"])
        gpu_ids = data.get("gpuTypeIds") or []
        count = int(data.get("gpuCount") or 1)
        price = next((p for p in prices(PROVIDER) if p.provider_gpu in gpu_ids), None)
        env = ((data.get("template") or {}).get("env")) or {}
        return ServerlessEndpoint(
            provider=PROVIDER,
            endpoint_id=endpoint_id,
            name=str(data.get("name", "")),
            state=state,
            url=self._openai_url.format(endpoint_id=endpoint_id),
            auth_header=bearer(self._invoke_key) if self._invoke_key else {},
            price_per_second=None if price is None else price.per_second(count),
            cold_start_s=PUBLISHED_COLD_START.seconds,
            cold_start_source=PUBLISHED_COLD_START.source,
            auth_scheme="Authorization: Bearer <RunPod API key>",
            model=str(env.get("MODEL_NAME", "")),
            resources={"template": template_id, "endpoint": endpoint_id},
            detail=detail,
        )


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
