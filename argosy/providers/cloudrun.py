"""Google Cloud Run: a vLLM service with an L4 GPU through `google-cloud-run` (Admin API v2).

The plan renders the Service exactly as the REST API receives it (image, GPU node selector, CPU and
memory, a startup probe sized to the model's weights, concurrency, min/max instances) plus the IAM
policy that lets only the router's service account invoke it. Deploy creates the service (without
waiting for the first revision, which can take many minutes for a large model) and sets the IAM
policy; status reads the service's terminal condition; destroy deletes the service.

Auth: the service is private (no `allUsers`); the router presents a Google ID token whose audience
is the service URL, minted from the invoker service account's credentials. Tokens last an hour, so
`endpoint_status` mints a fresh one each time it is called (the router refreshes through it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from argosy.catalog.types import Offering
from argosy.core.clock import Clock
from argosy.core.config import Settings
from argosy.core.errors import (
    ArgosyError,
    ConfigError,
    ConflictError,
    NotFoundError,
    ProviderAuthError,
    ProviderError,
    QuotaError,
)
from argosy.providers.base import MANAGED_LABEL, CheckResult, EndpointRequest, Plan
from argosy.providers.common import environ, import_sdk
from argosy.providers.templates.serverless import (
    HEALTH_PATH,
    VLLM_IMAGE,
    VLLM_PORT,
    ColdStart,
    EndpointFacts,
    ServerlessEndpoint,
    bearer,
    check_extra,
    cold_start,
    labels,
    price_for,
    price_offerings,
    requested_gpu,
    resource_name,
    served_name,
    vllm_args,
)

PROVIDER = "cloudrun"
DEFAULT_REGION = "europe-west4"  # has L4 GPUs and a low-carbon grid
CPU = 8  # L4 needs at least 4 CPU / 16 GiB; vLLM's tokenizer and scheduler like more
MEMORY_GIB = 32
PUBLISHED_COLD_START = ColdStart(
    5.0,
    "Cloud Run docs: an instance with an L4 GPU and drivers starts in ~5 s "
    "(cloud.google.com/run/docs/configuring/services/gpu); excludes downloading and loading weights",
)
OPTIONS = (
    "region",
    "invoker",
    "concurrency",
    "max_model_len",
    "weights_gb",
    "image",
    "hf_token_secret",
    "service_account",
)
PROBE_PERIOD_S = 10
PROJECT_PLACEHOLDER = "<GOOGLE_CLOUD_PROJECT>"
INVOKER_PLACEHOLDER = "<ARGOSY_CLOUDRUN_INVOKER>"
# Generous time to download and load weights: a timeout, not an estimate of the cold start.
STARTUP_BASE_S = 240
STARTUP_S_PER_GB = 10
STARTUP_MAX_S = 3600
TokenSource = Callable[[str], str]


def weights_gb(request: EndpointRequest) -> float | None:
    if request.extra.get("weights_gb"):
        return float(request.extra["weights_gb"])
    from argosy.catalog.sizing import find_builtin

    spec = find_builtin(request.model)
    # bf16 weights: two bytes per parameter.
    return None if spec is None else round(spec.params * 2 / 1e9, 1)


def startup_budget_s(request: EndpointRequest) -> int:
    gb = weights_gb(request)
    if gb is None:
        return STARTUP_MAX_S // 2
    return min(STARTUP_MAX_S, int(STARTUP_BASE_S + gb * STARTUP_S_PER_GB))


def render_service(request: EndpointRequest, project: str, region: str) -> dict[str, Any]:
    """The Service in Cloud Run Admin API v2 JSON (what `create_service` sends)."""
    check_extra(PROVIDER, request.extra, OPTIONS)
    gpu, count = requested_gpu(request, "L4")
    price = price_for(PROVIDER, gpu)
    if count != 1:
        raise ConfigError("Cloud Run attaches exactly one GPU per instance", fix="use gpu 'L4' (count 1)")
    lbl = labels(request.name)
    budget = startup_budget_s(request)
    max_len = request.extra.get("max_model_len")
    container: dict[str, Any] = {
        "image": str(request.extra.get("image", VLLM_IMAGE)),
        "command": ["vllm", "serve"],
        "args": vllm_args(
            request.model, served_name(request), max_model_len=int(max_len) if max_len else None
        ),
        "ports": [{"containerPort": VLLM_PORT}],
        "resources": {
            "limits": {"cpu": str(CPU), "memory": f"{MEMORY_GIB}Gi", "nvidia.com/gpu": "1"},
            # GPU services require instance-based billing (CPU always allocated).
            "cpuIdle": False,
            "startupCpuBoost": True,
        },
        "startupProbe": {
            "httpGet": {"path": HEALTH_PATH, "port": VLLM_PORT},
            "periodSeconds": PROBE_PERIOD_S,
            "timeoutSeconds": 5,
            "failureThreshold": math.ceil(budget / PROBE_PERIOD_S),
        },
        "livenessProbe": {
            "httpGet": {"path": HEALTH_PATH, "port": VLLM_PORT},
            "periodSeconds": 30,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
    }
    if request.extra.get("hf_token_secret"):
        # A Secret Manager secret name: the token never passes through Argosy.
        container["env"] = [
            {
                "name": "HF_TOKEN",
                "valueSource": {
                    "secretKeyRef": {"secret": str(request.extra["hf_token_secret"]), "version": "latest"}
                },
            }
        ]
    template: dict[str, Any] = {
        "labels": lbl,
        "scaling": {"minInstanceCount": request.min_workers, "maxInstanceCount": max(1, request.max_workers)},
        "maxInstanceRequestConcurrency": int(request.extra.get("concurrency", 32)),
        "timeout": "3600s",
        "nodeSelector": {"accelerator": price.provider_gpu},
        "gpuZonalRedundancyDisabled": True,  # the cheaper GPU tier; capacity is best effort per zone
        "containers": [container],
    }
    if request.extra.get("service_account"):
        template["serviceAccount"] = str(request.extra["service_account"])
    return {
        "labels": lbl,
        "ingress": "INGRESS_TRAFFIC_ALL",
        "invokerIamDisabled": False,
        "template": template,
    }


def render_iam_policy(invoker: str) -> dict[str, Any]:
    member = invoker if ":" in invoker else f"serviceAccount:{invoker}"
    return {"bindings": [{"role": "roles/run.invoker", "members": [member]}]}


def default_token_source(audience: str) -> str:
    """An ID token for `audience` from Application Default Credentials (service account or metadata)."""
    import google.auth.transport.requests
    from google.oauth2 import id_token

    return str(id_token.fetch_id_token(google.auth.transport.requests.Request(), audience))


class CloudRunProvider:
    name = PROVIDER

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        env: Mapping[str, str] | None = None,
        client: Any | None = None,
        token_source: TokenSource | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._env = environ(env)
        self.project = self._env.get("GOOGLE_CLOUD_PROJECT") or self._env.get("CLOUDSDK_CORE_PROJECT") or ""
        self.region = self._env.get("ARGOSY_CLOUDRUN_REGION") or DEFAULT_REGION
        self.invoker = self._env.get("ARGOSY_CLOUDRUN_INVOKER", "")
        self._client = client  # a run_v2.ServicesClient; tests point one at a loopback server
        self._token_source = token_source

    # -- client --------------------------------------------------------------------------------
    def _services(self) -> Any:
        if self._client is None:
            run_v2 = import_sdk("google.cloud.run_v2", "gcp", "the cloudrun provider needs google-cloud-run")
            import google.auth.exceptions

            try:
                self._client = run_v2.ServicesClient()
            except google.auth.exceptions.DefaultCredentialsError as exc:
                raise ProviderAuthError(
                    f"{PROVIDER}: no Google credentials: {exc}",
                    fix="run `gcloud auth application-default login`, or export GOOGLE_APPLICATION_CREDENTIALS=key.json",
                    provider=PROVIDER,
                ) from exc
        return self._client

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        from google.api_core import exceptions as gexc

        try:
            return fn(**kwargs)
        except gexc.GoogleAPICallError as exc:
            raise _typed(what, exc) from exc

    # -- capabilities ---------------------------------------------------------------------------
    def preflight(self) -> list[CheckResult]:
        checks = []
        try:
            import google.cloud.run_v2  # noqa: F401

            checks.append(CheckResult("google-cloud-run", True, "installed"))
        except ImportError:
            checks.append(
                CheckResult("google-cloud-run", False, "not installed", fix="pip install 'argosy[gcp]'")
            )
        adc = Path("~/.config/gcloud/application_default_credentials.json").expanduser()
        if self._client is not None or self._env.get("GOOGLE_APPLICATION_CREDENTIALS") or adc.is_file():
            checks.append(CheckResult("google credentials", True, "application default credentials found"))
        else:
            checks.append(
                CheckResult(
                    "google credentials",
                    False,
                    "no GOOGLE_APPLICATION_CREDENTIALS and no gcloud application-default login",
                    fix="gcloud auth application-default login (or export GOOGLE_APPLICATION_CREDENTIALS=key.json)",
                )
            )
        checks.append(
            CheckResult("google project", True, self.project)
            if self.project
            else CheckResult(
                "google project", False, "no project set", fix="export GOOGLE_CLOUD_PROJECT=your-project-id"
            )
        )
        checks.append(
            CheckResult("cloud run invoker", True, self.invoker)
            if self.invoker
            else CheckResult(
                "cloud run invoker",
                False,
                "no service account for the router to invoke the service as",
                fix="export ARGOSY_CLOUDRUN_INVOKER=router@PROJECT.iam.gserviceaccount.com "
                "(the router's credentials must be that account's)",
            )
        )
        return checks

    def offerings(self) -> list[Offering]:
        return price_offerings(PROVIDER, region=self.region)

    def facts(self, request: EndpointRequest) -> EndpointFacts:
        gpu, count = requested_gpu(request, "L4")
        price = price_for(PROVIDER, gpu)
        return EndpointFacts(
            price_per_second=price.per_second(count, cpu=CPU, memory_gib=MEMORY_GIB),
            price_source=f"{price.source_line}; includes {CPU} vCPU and {MEMORY_GIB} GiB",
            cold_start=cold_start(request, PUBLISHED_COLD_START),
            auth_scheme="Authorization: Bearer <Google ID token, audience = service URL> minted from the invoker account",
            billing_note="instance-based: billed per second for each instance's whole life, min instances included",
        )

    def _parent(self, region: str) -> str:
        # A dry run without a project still renders, with a placeholder deploy refuses.
        return f"projects/{self.project or PROJECT_PLACEHOLDER}/locations/{region}"

    def plan_endpoint(self, request: EndpointRequest) -> Plan:
        region = str(request.extra.get("region") or self.region)
        service = render_service(request, self.project, region)
        invoker = str(request.extra.get("invoker") or self.invoker or INVOKER_PLACEHOLDER)
        service_id = resource_name(request.name, limit=49)
        facts = self.facts(request)
        payload = {
            "parent": self._parent(region),
            "service_id": service_id,
            "service": service,
            "iam_policy": render_iam_policy(invoker),
        }
        return Plan(
            provider=PROVIDER,
            action="deploy",
            offering=request.offering,
            payload=payload,
            artifacts={"service.json": json.dumps(service, indent=2, sort_keys=True)},
            estimated_cost_per_hour=None if facts.price_per_second is None else facts.price_per_second * 3600,
            notes=[
                *facts.notes(),
                f"startup probe budget {startup_budget_s(request)} s for the weights "
                f"({weights_gb(request) or 'unknown'} GB)",
            ],
        )

    def deploy(self, plan: Plan) -> ServerlessEndpoint:
        from google.cloud import run_v2
        from google.iam.v1 import iam_policy_pb2, policy_pb2
        from google.protobuf import json_format

        p = plan.payload
        if PROJECT_PLACEHOLDER in p["parent"]:
            raise ConfigError(
                f"{PROVIDER}: no Google Cloud project", fix="export GOOGLE_CLOUD_PROJECT=your-project-id"
            )
        if INVOKER_PLACEHOLDER in json.dumps(p["iam_policy"]):
            raise ConfigError(
                f"{PROVIDER}: no invoker service account for the router",
                fix="export ARGOSY_CLOUDRUN_INVOKER=router@PROJECT.iam.gserviceaccount.com",
            )
        client = self._services()
        service = run_v2.Service.from_json(json.dumps(p["service"]))
        name = f"{p['parent']}/services/{p['service_id']}"
        # Not waiting on the operation: the first revision of a large model can take many minutes,
        # and the reconciler polls endpoint_status instead of blocking a worker.
        self._call(
            "create the service",
            client.create_service,
            parent=p["parent"],
            service=service,
            service_id=p["service_id"],
        )
        try:
            policy = json_format.ParseDict(p["iam_policy"], policy_pb2.Policy())
            self._call(
                "allow the router to invoke it",
                client.set_iam_policy,
                request=iam_policy_pb2.SetIamPolicyRequest(resource=name, policy=policy),
            )
        except ArgosyError:
            self.destroy(name)  # a service nobody may call is useless and still bills min instances
            raise
        return self.endpoint_status(name, price=(plan.estimated_cost_per_hour or 0) / 3600 or None)

    def endpoint_status(self, endpoint_id: str, price: float | None = None) -> ServerlessEndpoint:
        svc = self._get(endpoint_id)
        data = json.loads(type(svc).to_json(svc, use_integers_for_enums=False))
        cond = (data.get("terminalCondition") or {}).get("state", "")
        if cond == "CONDITION_FAILED":
            state = "failed"
        elif cond == "CONDITION_SUCCEEDED" and not data.get("reconciling"):
            state = "ready"
        else:
            state = "deploying"
        uri = data.get("uri") or None
        token = ""
        if uri and state == "ready":
            source = self._token_source or default_token_source
            token = source(uri)
        if price is None:
            containers = (data.get("template") or {}).get("containers") or [{}]
            limits = (containers[0].get("resources") or {}).get("limits") or {}
            gpu = ((data.get("template") or {}).get("nodeSelector") or {}).get("accelerator")
            if gpu:
                cpu = float(limits.get("cpu", CPU))
                mem = float(str(limits.get("memory", f"{MEMORY_GIB}Gi")).removesuffix("Gi"))
                price = price_for(PROVIDER, gpu).per_second(1, cpu=cpu, memory_gib=mem)
        return ServerlessEndpoint(
            provider=PROVIDER,
            endpoint_id=endpoint_id,
            name=endpoint_id.rsplit("/", 1)[-1],
            state=state,
            url=f"{uri}/v1" if uri else None,
            auth_header=bearer(token) if token else {},
            price_per_second=price,
            cold_start_s=PUBLISHED_COLD_START.seconds,
            cold_start_source=PUBLISHED_COLD_START.source,
            auth_scheme="Authorization: Bearer <Google ID token for the service URL>",
            model=str(((data.get("template") or {}).get("containers") or [{}])[0].get("args", [""])[0]),
            resources={"service": endpoint_id},
            detail=(data.get("terminalCondition") or {}).get("message", ""),
        )

    def destroy(self, endpoint_id: str) -> None:
        try:
            svc = self._get(endpoint_id)
        except NotFoundError:
            return
        if dict(svc.labels).get(MANAGED_LABEL) != "true":
            raise ArgosyError(
                f"{PROVIDER}: {endpoint_id} was not created by Argosy", fix="delete it with gcloud instead"
            )
        try:
            self._call("delete the service", self._services().delete_service, name=endpoint_id)
        except NotFoundError:
            return

    def _get(self, name: str) -> Any:
        if "/services/" not in name:
            raise ConfigError(
                f"'{name}' is not a Cloud Run service name",
                fix="use projects/PROJECT/locations/REGION/services/NAME, as returned by deploy",
            )
        return self._call("read the service", self._services().get_service, name=name)


def _typed(what: str, exc: Any) -> ArgosyError:
    code = int(getattr(exc, "code", 0) or 0)
    text = f"{PROVIDER}: cannot {what}: {getattr(exc, 'message', str(exc))}"
    if code == 401:
        return ProviderAuthError(text, fix="gcloud auth application-default login", provider=PROVIDER)
    if code == 403:
        return ProviderAuthError(
            text,
            fix="grant roles/run.admin (and roles/iam.serviceAccountUser) to the deploying account; "
            "enable the API with `gcloud services enable run.googleapis.com`",
            provider=PROVIDER,
        )
    if code == 404:
        return NotFoundError(text, fix="check the project, region and service name")
    if code == 409:
        return ConflictError(text, fix="destroy the existing service first or pick another name")
    if code == 429 or "quota" in text.lower():
        return QuotaError(
            text,
            fix="request 'Total Nvidia L4 GPU allocation' quota for Cloud Run in this region, or try another region",
            provider=PROVIDER,
        )
    if code == 400:
        return ConfigError(
            text, fix="the service spec was rejected; compare the --dry-run output with the Cloud Run docs"
        )
    return ProviderError(text, fix="retry; see https://status.cloud.google.com", provider=PROVIDER)
