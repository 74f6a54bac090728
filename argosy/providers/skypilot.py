"""SkyPilot: spot vLLM replicas as a SkyServe service, for users who already run SkyPilot.

Optional (`pip install 'argosy[skypilot]'`): SkyPilot is a large install, so Argosy never imports it
until a user asks for this provider. `plan_endpoint` renders the SkyServe task YAML (service
readiness probe on vLLM's `/health`, replica policy with spot and on-demand fallback, GPU resources,
setup and run); deploy calls `sky.serve.up`, status `sky.serve.status`, destroy `sky.serve.down`.
SkyPilot 0.9+ returns request ids from its SDK (resolved with `sky.get`); older releases return
results directly; both are handled.

Auth: vLLM's API key travels in the task's `secrets` (SkyPilot redacts those in its own output); the
router sends it as a bearer token. The printed plan shows a placeholder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import yaml

from argosy.catalog.types import Offering
from argosy.core.clock import Clock
from argosy.core.config import Settings
from argosy.core.errors import ArgosyError, NotFoundError, ProviderError
from argosy.providers.base import MANAGED_LABEL, CheckResult, EndpointRequest, Plan
from argosy.providers.common import environ, import_sdk
from argosy.providers.templates.serverless import (
    HEALTH_PATH,
    VLLM_PORT,
    ColdStart,
    EndpointFacts,
    ServerlessEndpoint,
    bearer,
    check_extra,
    cold_start,
    fill_secrets,
    new_token,
    requested_gpu,
    resource_name,
    secret_ref,
    served_name,
)

PROVIDER = "skypilot"
VLLM_VERSION = "0.10.1.1"
PUBLISHED_COLD_START = ColdStart(
    None,
    "a new spot VM, `pip install vllm` and weight download: minutes, varying by cloud; measure with bench/",
)
OPTIONS = (
    "use_spot",
    "target_qps_per_replica",
    "ondemand_fallback",
    "initial_delay_s",
    "max_model_len",
    "disk_gb",
)
READY = {"READY"}
FAILED = {"FAILED", "FAILED_CLEANUP", "CONTROLLER_FAILED", "NO_REPLICA"}


class SkyBackend(Protocol):
    """The SkyServe operations Argosy uses (the real one is `SkySdk`)."""

    def up(self, task: Mapping[str, Any], service_name: str) -> str | None: ...

    def status(self, service_name: str) -> Mapping[str, Any] | None: ...

    def down(self, service_name: str) -> None: ...


def _resolve(sky: Any, result: Any) -> Any:
    # SkyPilot >= 0.9: SDK calls return a request id to wait on; older ones return the result.
    if isinstance(result, str) and hasattr(sky, "get"):
        return sky.get(result)
    return result


@contextlib.contextmanager
def _sky_errors(what: str, service: str) -> Iterator[None]:
    # SkyPilot raises many types (sky.exceptions.*, ValueError for bad YAML, API-server errors);
    # each is a failed call whose message the user needs, so all are re-raised typed, not swallowed.
    try:
        yield
    except ArgosyError:
        raise
    except Exception as exc:
        raise ProviderError(
            f"skypilot: {what} for {service} failed: {exc}",
            fix=f"see `sky serve status {service}` and `sky serve logs --controller {service}`",
            provider=PROVIDER,
        ) from exc


class SkySdk:
    """SkyBackend over the real `sky` package (imported only when used)."""

    def _sky(self) -> Any:
        return import_sdk("sky", "skypilot", "the skypilot provider needs SkyPilot")

    def up(self, task: Mapping[str, Any], service_name: str) -> str | None:
        sky = self._sky()
        with _sky_errors("serve up", service_name):
            result = _resolve(sky, sky.serve.up(sky.Task.from_yaml_config(dict(task)), service_name))
        if isinstance(result, tuple) and len(result) == 2:
            return str(result[1]) if result[1] else None
        return None

    def status(self, service_name: str) -> Mapping[str, Any] | None:
        sky = self._sky()
        with _sky_errors("serve status", service_name):
            records = _resolve(sky, sky.serve.status([service_name]))
        for r in records or []:
            if r.get("name") == service_name:
                return r
        return None

    def down(self, service_name: str) -> None:
        sky = self._sky()
        with _sky_errors("serve down", service_name):
            _resolve(sky, sky.serve.down([service_name]))


def render_task(request: EndpointRequest) -> dict[str, Any]:
    """The SkyServe task YAML (as a dict) for a vLLM service (pure)."""
    check_extra(PROVIDER, request.extra, OPTIONS)
    gpu, count = requested_gpu(request, "L4")
    use_spot = bool(request.extra.get("use_spot", True))
    name = resource_name(request.name)
    max_len = request.extra.get("max_model_len")
    run = [
        "vllm serve $MODEL --served-model-name $SERVED_MODEL_NAME --host 0.0.0.0 --port " + str(VLLM_PORT),
        "  --tensor-parallel-size $SKYPILOT_NUM_GPUS_PER_NODE",
    ]
    if max_len:
        run.append(f"  --max-model-len {int(max_len)}")
    policy: dict[str, Any] = {
        "min_replicas": max(1, request.min_workers),
        "max_replicas": max(1, request.max_workers, request.min_workers),
        "target_qps_per_replica": float(request.extra.get("target_qps_per_replica", 5)),
    }
    if use_spot and request.extra.get("ondemand_fallback", True):
        # When spot capacity is gone, SkyServe launches on-demand replicas instead of serving nothing.
        policy["dynamic_ondemand_fallback"] = True
    return {
        "name": name,
        "service": {
            "readiness_probe": {
                "path": HEALTH_PATH,
                "initial_delay_seconds": int(request.extra.get("initial_delay_s", 1200)),
            },
            "replica_policy": policy,
        },
        "resources": {
            "accelerators": {gpu: count},
            "use_spot": use_spot,
            "ports": VLLM_PORT,
            "disk_size": int(request.extra.get("disk_gb", 256)),
            "labels": {MANAGED_LABEL: "true"},
        },
        "envs": {"MODEL": request.model, "SERVED_MODEL_NAME": served_name(request)},
        # vLLM reads VLLM_API_KEY itself; SkyPilot keeps `secrets` out of its displays and logs.
        "secrets": {"VLLM_API_KEY": secret_ref("API_KEY")},
        "setup": f"pip install vllm=={VLLM_VERSION}\n",
        "run": " \\\n".join(run) + "\n",
    }


class SkyPilotProvider:
    name = PROVIDER

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        env: Mapping[str, str] | None = None,
        backend: SkyBackend | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._env = environ(env)
        self._backend = backend

    def _sky(self) -> SkyBackend:
        if self._backend is None:
            self._backend = SkySdk()
        return self._backend

    def preflight(self) -> list[CheckResult]:
        try:
            import sky  # noqa: F401
        except ImportError:
            return [
                CheckResult(
                    "skypilot",
                    self._backend is not None,
                    "SkyPilot is not installed",
                    fix="pip install 'argosy[skypilot]', then `sky check` to enable your clouds",
                )
            ]
        return [CheckResult("skypilot", True, "installed; run `sky check` to see which clouds it can use")]

    def offerings(self) -> list[Offering]:
        # SkyPilot is a broker over other clouds: their offerings are in the catalog already.
        return []

    def facts(self, request: EndpointRequest) -> EndpointFacts:
        gpu, count = requested_gpu(request, "L4")
        use_spot = bool(request.extra.get("use_spot", True))
        cheapest = _cheapest(gpu, count, "spot" if use_spot else "vm", self.settings)
        return EndpointFacts(
            price_per_second=None if cheapest is None else cheapest.price_per_hour / 3600,  # type: ignore[operator]
            price_source=(
                "no catalog price for this GPU; SkyPilot's optimizer picks at launch"
                if cheapest is None
                else f"cheapest {cheapest.kind} {gpu}x{count} in the Argosy catalog ({cheapest.provider} "
                f"{cheapest.region}, {cheapest.source}, {cheapest.fetched_at}); SkyPilot's optimizer picks at launch"
            ),
            cold_start=cold_start(request, PUBLISHED_COLD_START),
            auth_scheme="Authorization: Bearer <vLLM API key passed in the task's secrets>",
            billing_note="per replica VM while it runs, plus the SkyServe controller VM",
        )

    def plan_endpoint(self, request: EndpointRequest) -> Plan:
        task = render_task(request)
        facts = self.facts(request)
        return Plan(
            provider=PROVIDER,
            action="deploy",
            offering=request.offering,
            payload={"service_name": task["name"], "task": task},
            artifacts={"service.yaml": yaml.safe_dump(task, sort_keys=False)},
            estimated_cost_per_hour=None
            if facts.price_per_second is None
            else facts.price_per_second * 3600 * task["service"]["replica_policy"]["min_replicas"],
            notes=facts.notes(),
        )

    def deploy(self, plan: Plan) -> ServerlessEndpoint:
        token = plan.secrets.get("API_KEY") or new_token()
        task = fill_secrets(plan.payload["task"], {**plan.secrets, "API_KEY": token})
        name = plan.payload["service_name"]
        try:
            endpoint = self._sky().up(task, name)
        except ArgosyError:
            self.destroy(name)  # the controller may have started replicas before failing
            raise
        per_s = None if plan.estimated_cost_per_hour is None else plan.estimated_cost_per_hour / 3600
        return self._endpoint(name, "deploying", endpoint, token, per_s)

    def endpoint_status(self, endpoint_id: str) -> ServerlessEndpoint:
        record = self._sky().status(endpoint_id)
        if record is None:
            raise NotFoundError(
                f"skypilot: no service '{endpoint_id}'", fix="run `sky serve status` to see services"
            )
        status = str(getattr(record.get("status"), "name", record.get("status", ""))).upper()
        state = "ready" if status in READY else "failed" if status in FAILED else "deploying"
        return self._endpoint(endpoint_id, state, record.get("endpoint"), "", None, detail=status.lower())

    def destroy(self, endpoint_id: str) -> None:
        if not endpoint_id.startswith("argosy-"):
            raise ArgosyError(
                f"skypilot: service '{endpoint_id}' was not created by Argosy", fix="use `sky serve down`"
            )
        if self._sky().status(endpoint_id) is None:
            return
        self._sky().down(endpoint_id)

    def _endpoint(
        self, name: str, state: str, endpoint: Any, token: str, per_s: float | None, detail: str = ""
    ) -> ServerlessEndpoint:
        url = None
        if endpoint:
            e = str(endpoint)
            url = (e if e.startswith("http") else f"http://{e}").rstrip("/") + "/v1"
        return ServerlessEndpoint(
            provider=PROVIDER,
            endpoint_id=name,
            name=name,
            state=state,
            url=url,
            auth_header=bearer(token) if token else {},
            price_per_second=per_s,
            cold_start_s=PUBLISHED_COLD_START.seconds,
            cold_start_source=PUBLISHED_COLD_START.source,
            auth_scheme="Authorization: Bearer <vLLM API key>",
            resources={"service": name},
            detail=detail,
        )


def _cheapest(gpu: str, count: int, kind: str, settings: Settings) -> Offering | None:
    from argosy.catalog.offerings import load_offerings
    from argosy.providers.templates.serverless import canonical_gpu

    want = canonical_gpu(gpu)
    priced = [
        o
        for o in load_offerings(settings)
        if o.gpu == want
        and o.gpu_count == count
        and o.kind == kind
        and o.price_per_hour is not None
        and o.available
    ]
    return min(priced, key=lambda o: o.price_per_hour or 0.0, default=None)
