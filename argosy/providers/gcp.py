"""GCP Compute Engine GPU VMs through `google-cloud-compute` (`pip install 'argosy[gcp]'`).

Credentials: Application Default Credentials (`gcloud auth application-default login`, or
`GOOGLE_APPLICATION_CREDENTIALS`) and a project (`GOOGLE_CLOUD_PROJECT`). Families: A3 (H100), A2
(A100), G2 (L4) with attached GPUs, and N1 with T4s attached as guest accelerators. Spot VMs use the
SPOT provisioning model with `instanceTerminationAction: DELETE`, so a preempted node stops billing
at once; Argosy recognises the preemption from the zone's `compute.instances.preempted` operation.

An offering's region is a zone (instances are zonal), and `instance_id` is `zone/name`. The Compute
API has no prices: offerings carry `price_per_hour=None` (unknown, never free) for the catalog to
price from its data files.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from argosy.catalog.types import Offering
from argosy.core.clock import Clock, SystemClock, iso
from argosy.core.config import Settings
from argosy.core.errors import (
    ArgosyError,
    CapacityError,
    NotFoundError,
    ProviderAuthError,
    ProviderError,
    QuotaError,
    RateLimitError,
)
from argosy.providers.base import MANAGED_LABEL, CheckResult, Instance, InstanceRequest, InstanceState, Plan
from argosy.providers.bootstrap import render_startup_script
from argosy.providers.clients.http import RetryPolicy
from argosy.providers.common import (
    NODE_LABEL,
    bootstrap_spec,
    canonical_gpu,
    check_control_plane,
    environ,
    first_env,
    import_sdk,
    managed_labels,
    node_name,
    require_kind,
)
from argosy.providers.sdk_errors import call_with_retry, transient

PROJECT_VARS = ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "GCLOUD_PROJECT")
# Deep Learning VM images ship the NVIDIA driver installer (`install-nvidia-driver` metadata).
DEFAULT_IMAGE = "projects/deeplearning-platform-release/global/images/family/common-cu124-debian-11-py310"
GPU_FAMILIES = ("a2", "a3", "g2")
# GCP accelerator type -> a spelling and memory the catalog's GPU table resolves (canonical_gpu).
ACCELERATORS: Mapping[str, tuple[str, float]] = MappingProxyType(
    {
        "nvidia-tesla-t4": ("T4", 16),
        "nvidia-l4": ("L4", 24),
        "nvidia-tesla-a100": ("A100", 40),
        "nvidia-a100-80gb": ("A100", 80),
        "nvidia-h100-80gb": ("H100 SXM", 80),  # A3 machines carry SXM parts
        "nvidia-h100-mega-80gb": ("H100 SXM", 80),
        "nvidia-h200-141gb": ("H200", 141),
        "nvidia-tesla-v100": ("V100", 16),
    }
)
# N1 shapes offered with T4s attached (GCP allows 1, 2 or 4 T4s on N1).
N1_T4_SHAPES = (("n1-standard-8", 1), ("n1-standard-16", 2), ("n1-standard-32", 4))
_STATES: Mapping[str, InstanceState] = MappingProxyType(
    {
        "PROVISIONING": "provisioning",
        "STAGING": "provisioning",
        "RUNNING": "running",
        "REPAIRING": "unknown",
        "STOPPING": "terminated",
        "SUSPENDING": "unknown",
        "SUSPENDED": "failed",
        "TERMINATED": "terminated",
    }
)
_CAPACITY_CODES = (
    "ZONE_RESOURCE_POOL_EXHAUSTED",
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
    "RESOURCE_NOT_AVAILABLE",
)
_QUOTA_CODES = ("QUOTA_EXCEEDED",)
_LABEL_BAD = re.compile(r"[^a-z0-9_-]")


def gcp_label(value: str) -> str:
    """GCP labels allow lowercase letters, digits, '_' and '-', up to 63 characters."""
    return _LABEL_BAD.sub("_", value.lower())[:63]


def translate(exc: Exception) -> ProviderError | None:
    from google.api_core import exceptions as gexc

    if not isinstance(exc, gexc.GoogleAPICallError):
        import requests

        if isinstance(exc, requests.RequestException):  # the REST transport's timeouts and resets
            return transient(
                ProviderError(
                    f"gcp: cannot reach the API: {type(exc).__name__}",
                    fix="check your network",
                    provider="gcp",
                )
            )
        if isinstance(exc, gexc.RetryError):
            return transient(ProviderError(f"gcp: {exc}", provider="gcp"))
        try:
            from google.auth.exceptions import DefaultCredentialsError, RefreshError
        except ImportError:  # pragma: no cover - google-auth comes with google-cloud-compute
            return None
        if isinstance(exc, DefaultCredentialsError | RefreshError):
            return ProviderAuthError(
                f"gcp: {exc}", fix="gcloud auth application-default login", provider="gcp"
            )
        return None
    text = exc.message or str(exc)
    msg = f"gcp: {text} (HTTP {exc.code})"
    low = text.lower()
    if isinstance(exc, gexc.TooManyRequests) or "rate limit" in low:
        return RateLimitError(msg, fix="wait and retry", provider="gcp")
    if "quota" in low:
        return QuotaError(
            msg,
            fix="request more GPU quota: https://console.cloud.google.com/iam-admin/quotas",
            provider="gcp",
        )
    if any(c.lower() in low for c in _CAPACITY_CODES) or "does not have enough resources" in low:
        return CapacityError(msg, fix="try another zone or machine type", provider="gcp")
    if isinstance(exc, gexc.Unauthenticated | gexc.PermissionDenied | gexc.Forbidden | gexc.Unauthorized):
        return ProviderAuthError(
            msg,
            fix="gcloud auth application-default login (and grant roles/compute.instanceAdmin.v1)",
            provider="gcp",
        )
    if isinstance(exc, gexc.NotFound):
        return NotFoundError(msg, fix="check the project, zone and name (`argosy nodes list`)")
    if isinstance(exc, gexc.ServerError):
        return transient(
            ProviderError(msg, fix="retry later; see https://status.cloud.google.com", provider="gcp")
        )
    return ProviderError(msg, provider="gcp")


def operation_error(codes_and_messages: list[tuple[str, str]]) -> ProviderError:
    """Type a failed zone operation by its error codes (capacity and quota arrive this way)."""
    text = "; ".join(f"{c}: {m}" for c, m in codes_and_messages)
    codes = {c for c, _ in codes_and_messages}
    if codes & set(_CAPACITY_CODES):
        return CapacityError(f"gcp: {text}", fix="try another zone or machine type", provider="gcp")
    if codes & set(_QUOTA_CODES):
        return QuotaError(
            f"gcp: {text}",
            fix="request more GPU quota: https://console.cloud.google.com/iam-admin/quotas",
            provider="gcp",
        )
    return ProviderError(f"gcp: {text}", provider="gcp")


class GcpProvider:
    name = "gcp"

    def __init__(
        self,
        settings: Settings,
        clock: Clock | None = None,
        *,
        env: Mapping[str, str] | None = None,
        project: str | None = None,
        credentials: Any = None,
        api_endpoint: str | None = None,
        retry: RetryPolicy | None = None,
        operation_timeout_s: float = 300.0,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self._env = environ(env)
        found = first_env(self._env, PROJECT_VARS)
        self.project = project or (found[1] if found else None)
        self._credentials = credentials
        self._endpoint = api_endpoint or self._env.get("ARGOSY_GCP_API_ENDPOINT")
        self._retry = retry
        self._op_timeout = operation_timeout_s
        self._clients: dict[str, Any] = {}

    # -- SDK clients ---------------------------------------------------------------------------
    def _client(self, kind: str) -> Any:
        if kind not in self._clients:
            compute_v1 = import_sdk("google.cloud.compute_v1", "gcp")

            opts = {"api_endpoint": self._endpoint} if self._endpoint else None
            cls = getattr(compute_v1, kind)
            self._clients[kind] = cls(credentials=self._credentials, transport="rest", client_options=opts)
        return self._clients[kind]

    def _project(self) -> str:
        if not self.project:
            raise ArgosyError(
                "gcp: no project is set",
                fix="export GOOGLE_CLOUD_PROJECT=<your-project-id> (see `gcloud projects list`)",
            )
        return self.project

    def _call(self, fn: Any, idempotent: bool = True) -> Any:
        return call_with_retry(
            fn, clock=self.clock, translate=translate, idempotent=idempotent, retry=self._retry
        )

    # -- Preflight -----------------------------------------------------------------------------
    # -- SpotNotice (runs on the node itself) -------------------------------------------------------
    def spot_notice(self) -> str | None:
        from argosy.providers.preemption import GCP_METADATA, METADATA_URL_ENV, gcp_preemption_notice

        return gcp_preemption_notice(self._env.get(METADATA_URL_ENV) or GCP_METADATA)

    def preflight(self) -> list[CheckResult]:
        try:
            import google.cloud.compute_v1  # noqa: F401
        except ImportError:
            return [
                CheckResult(
                    "gcp sdk", False, "google-cloud-compute is not installed", fix="pip install 'argosy[gcp]'"
                )
            ]
        checks: list[CheckResult] = []
        if not self.project:
            checks.append(
                CheckResult(
                    "gcp project",
                    False,
                    f"none of {', '.join(PROJECT_VARS)} is set",
                    fix="export GOOGLE_CLOUD_PROJECT=<your-project-id>",
                )
            )
            return checks
        checks.append(CheckResult("gcp project", True, self.project))
        checks.append(check_control_plane(self.settings))
        if self._credentials is None:
            try:
                import google.auth

                google.auth.default()
            except Exception as exc:  # DefaultCredentialsError: no ADC anywhere
                checks.append(
                    CheckResult(
                        "gcp credentials",
                        False,
                        f"no Application Default Credentials ({exc})",
                        fix=_login_fix(),
                    )
                )
                return checks
        try:
            proj = self._call(lambda: self._client("ProjectsClient").get(project=self.project))
        except ProviderError as exc:
            checks.append(CheckResult("gcp api", False, exc.message, fix=exc.fix))
            return checks
        checks.append(CheckResult("gcp api", True, "credentials accepted"))
        gpu_quota = next((q for q in proj.quotas if q.metric == "GPUS_ALL_REGIONS"), None)
        if gpu_quota is not None and gpu_quota.limit < 1:
            checks.append(
                CheckResult(
                    "gcp gpu quota",
                    False,
                    "GPUS_ALL_REGIONS quota is 0",
                    fix="request GPU quota: https://console.cloud.google.com/iam-admin/quotas",
                )
            )
        elif gpu_quota is not None:
            checks.append(
                CheckResult(
                    "gcp gpu quota",
                    True,
                    f"GPUS_ALL_REGIONS {gpu_quota.usage:.0f}/{gpu_quota.limit:.0f} in use",
                )
            )
        return checks

    # -- Offerings -----------------------------------------------------------------------------
    def offerings(self) -> list[Offering]:
        project = self._project()
        fetched = iso(self.clock.now())
        source = (
            "compute.googleapis.com aggregated/machineTypes+acceleratorTypes (no prices in the Compute API)"
        )
        families = " OR ".join(f'(name eq "{f}-.*")' for f in GPU_FAMILIES)

        compute_v1 = import_sdk("google.cloud.compute_v1", "gcp")

        def fetch() -> tuple[list[Any], list[Any]]:
            # Filters go in the request object: the flattened call signature has no `filter`.
            mts = self._client("MachineTypesClient").aggregated_list(
                request=compute_v1.AggregatedListMachineTypesRequest(project=project, filter=families)
            )
            accs = self._client("AcceleratorTypesClient").aggregated_list(
                request=compute_v1.AggregatedListAcceleratorTypesRequest(
                    project=project, filter='name eq "nvidia-tesla-t4"'
                )
            )
            machine_types = [m for _, scoped in mts for m in scoped.machine_types]
            t4_zones = [a.zone.rsplit("/", 1)[-1] for _, scoped in accs for a in scoped.accelerator_types]
            return machine_types, t4_zones

        machine_types, t4_zones = self._call(fetch)
        out: list[Offering] = []
        for m in machine_types:
            if not m.accelerators:
                continue
            acc = m.accelerators[0]
            for kind in ("vm", "spot"):
                out.append(
                    Offering(
                        provider=self.name,
                        region=m.zone.rsplit("/", 1)[-1],
                        instance_type=m.name,
                        gpu=canonical_gpu(
                            *ACCELERATORS.get(acc.guest_accelerator_type, (acc.guest_accelerator_type, 0))
                        ),
                        gpu_count=int(acc.guest_accelerator_count),
                        kind=kind,
                        price_per_hour=None,
                        vcpus=int(m.guest_cpus),
                        ram_gb=round(m.memory_mb / 1024, 1),
                        per_second_billing=True,
                        source=source,
                        fetched_at=fetched,
                    )
                )
        for zone in sorted(set(t4_zones)):
            for shape, count in N1_T4_SHAPES:
                for kind in ("vm", "spot"):
                    out.append(
                        Offering(
                            provider=self.name,
                            region=zone,
                            instance_type=shape,
                            gpu="T4",
                            gpu_count=count,
                            kind=kind,
                            price_per_hour=None,
                            per_second_billing=True,
                            source=source,
                            fetched_at=fetched,
                            extra={"accelerator_type": "nvidia-tesla-t4"},
                        )
                    )
        return out

    # -- Instances -----------------------------------------------------------------------------
    def plan(self, request: InstanceRequest) -> Plan:
        off = request.offering
        require_kind(self.name, off.kind, ["vm", "spot"])
        project = self._project()
        zone = off.region
        script = render_startup_script(bootstrap_spec(request, self._env, self.settings))
        name = node_name(request.name)
        metadata = [
            {"key": "startup-script", "value": script},
            {"key": "install-nvidia-driver", "value": "True"},
        ]
        if request.ssh_public_key:
            metadata.append({"key": "ssh-keys", "value": f"argosy:{request.ssh_public_key}"})
        body: dict[str, Any] = {
            "name": name,
            "machineType": f"zones/{zone}/machineTypes/{off.instance_type}",
            "labels": {gcp_label(k): gcp_label(v) for k, v in sorted(managed_labels(request).items())},
            "metadata": {"items": metadata},
            "disks": [
                {
                    "boot": True,
                    "autoDelete": True,
                    "initializeParams": {
                        "sourceImage": self._env.get("ARGOSY_GCP_IMAGE") or DEFAULT_IMAGE,
                        "diskSizeGb": str(request.disk_gb),
                    },
                }
            ],
            "networkInterfaces": [
                {
                    "network": "global/networks/default",
                    "accessConfigs": [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}],
                }
            ],
            # GPUs cannot live-migrate: host maintenance must stop the VM.
            "scheduling": {"onHostMaintenance": "TERMINATE", "automaticRestart": off.kind != "spot"},
        }
        accelerator = off.extra.get("accelerator_type")
        if accelerator:  # N1 takes GPUs as attached accelerators; A2/A3/G2 have them built in
            body["guestAccelerators"] = [
                {
                    "acceleratorType": f"zones/{zone}/acceleratorTypes/{accelerator}",
                    "acceleratorCount": off.gpu_count,
                }
            ]
        if off.kind == "spot":
            body["scheduling"].update({"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE"})
        return Plan(
            provider=self.name,
            action="provision",
            offering=off,
            payload={"project": project, "zone": zone, "instance_resource": body},
            artifacts={"startup-script": script},
            estimated_cost_per_hour=off.price_per_hour,
            notes=["Spot VMs are deleted on preemption; Argosy reports them as 'preempted'."]
            if off.kind == "spot"
            else [],
        )

    def provision(self, plan: Plan) -> Instance:
        compute_v1 = import_sdk("google.cloud.compute_v1", "gcp")

        p = plan.payload
        resource = compute_v1.Instance.from_json(json.dumps(p["instance_resource"]))
        instances = self._client("InstancesClient")
        op = self._call(
            lambda: instances.insert(project=p["project"], zone=p["zone"], instance_resource=resource),
            idempotent=False,
        )
        # Capacity and quota failures arrive on the operation, not the insert call: wait for it.
        # Polled with our own ZoneOperationsClient (the SDK's built-in poller ignores a custom
        # endpoint and sleeps in real time; ours honours both and the injectable clock).
        current = op._extended_operation
        ops = self._client("ZoneOperationsClient")
        deadline = self.clock.now() + self._op_timeout
        done = compute_v1.Operation.Status.DONE
        op_name = current.name
        while current.status != done and self.clock.now() < deadline:
            self.clock.sleep(2.0)
            current = self._call(lambda: ops.get(project=p["project"], zone=p["zone"], operation=op_name))
        if current.status == done and current.error and current.error.errors:
            raise operation_error([(e.code, e.message) for e in current.error.errors])
        name = p["instance_resource"]["name"]
        return Instance(
            provider=self.name,
            instance_id=f"{p['zone']}/{name}",
            name=name,
            state="provisioning",
            region=p["zone"],
            labels=dict(p["instance_resource"]["labels"]),
            price_per_hour=plan.estimated_cost_per_hour,
        )

    def _split(self, instance_id: str) -> tuple[str, str]:
        zone, _, name = instance_id.partition("/")
        if not name:
            raise ArgosyError(
                f"gcp instance id '{instance_id}' is not zone/name",
                fix="use the id `argosy nodes list` shows",
            )
        return zone, name

    def status(self, instance_id: str) -> Instance:
        zone, name = self._split(instance_id)
        try:
            inst = self._call(
                lambda: self._client("InstancesClient").get(project=self._project(), zone=zone, instance=name)
            )
        except NotFoundError:
            if self._was_preempted(zone, name):
                return Instance(
                    self.name,
                    instance_id,
                    name,
                    "preempted",
                    region=zone,
                    reason="gcp preempted the spot VM (compute.instances.preempted)",
                )
            return Instance(
                self.name, instance_id, name, "terminated", region=zone, reason="no longer exists at gcp"
            )
        out = _to_instance(inst, zone)
        if out.state == "terminated" and self._was_preempted(zone, name):
            out.state, out.reason = "preempted", "gcp preempted the spot VM (compute.instances.preempted)"
        return out

    def _was_preempted(self, zone: str, name: str) -> bool:
        compute_v1 = import_sdk("google.cloud.compute_v1", "gcp")

        def fetch() -> list[Any]:
            req = compute_v1.ListZoneOperationsRequest(
                project=self._project(), zone=zone, filter='operationType="compute.instances.preempted"'
            )
            return list(self._client("ZoneOperationsClient").list(request=req))

        return any(op.target_link.rsplit("/", 1)[-1] == name for op in self._call(fetch))

    def list(self) -> list[Instance]:
        compute_v1 = import_sdk("google.cloud.compute_v1", "gcp")

        def fetch(filtered: bool) -> list[tuple[str, Any]]:
            req = compute_v1.AggregatedListInstancesRequest(project=self._project())
            if filtered:
                req.filter = f'labels.{MANAGED_LABEL} = "true"'
            pages = self._client("InstancesClient").aggregated_list(request=req)
            return [(scope.rsplit("/", 1)[-1], i) for scope, scoped in pages for i in scoped.instances]

        try:
            found = self._call(lambda: fetch(True))
        except ProviderError as exc:
            if "HTTP 400" not in exc.message:
                raise
            # The filter runs server-side only as an optimisation: if the API rejects it, list all.
            found = self._call(lambda: fetch(False))
        # The label is checked again here so cleanup can never touch other resources.
        return [_to_instance(i, zone) for zone, i in found if i.labels.get(MANAGED_LABEL) == "true"]

    def terminate(self, instance_id: str) -> None:
        zone, name = self._split(instance_id)
        try:
            self._call(
                lambda: self._client("InstancesClient").delete(
                    project=self._project(), zone=zone, instance=name
                )
            )
        except NotFoundError:
            return  # already gone: terminate is idempotent


def _to_instance(inst: Any, zone: str) -> Instance:
    status = str(inst.status)
    address = None
    for nic in inst.network_interfaces:
        for ac in nic.access_configs:
            if ac.nat_i_p:
                address = ac.nat_i_p
    labels = dict(inst.labels)
    return Instance(
        provider="gcp",
        instance_id=f"{zone}/{inst.name}",
        name=inst.name,
        state=_STATES.get(status, "unknown"),
        region=zone,
        address=address,
        labels=labels if labels.get(MANAGED_LABEL) == "true" or NODE_LABEL in labels else {},
        reason="" if status in ("RUNNING", "PROVISIONING", "STAGING") else f"gcp status: {status}",
    )


def _login_fix() -> str:
    # The login command needs the gcloud CLI; say how to get it when it is missing.
    login = "gcloud auth application-default login"
    if shutil.which("gcloud"):
        return login
    return f"install the gcloud CLI (https://cloud.google.com/sdk/docs/install), then {login}"
