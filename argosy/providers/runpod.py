"""RunPod GPU pods: on-demand and interruptible (spot), through RunPod's GraphQL API.

Credentials: `RUNPOD_API_KEY`. A pod is a container, not a VM: there is no cloud-init or systemd, so
the pod's start command runs Argosy's bootstrap script (delivered base64-encoded in an environment
variable) which installs Argosy and keeps the agent running under a restart loop.

Offerings are per GPU type and cloud (secure/community): RunPod picks the data center, so the
offering's region is the cloud type. Prices are per GPU and scale with the GPU count.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from argosy.catalog.types import Offering
from argosy.core.clock import iso
from argosy.core.errors import ProviderError
from argosy.providers.base import MANAGED_LABEL, CheckResult, Instance, InstanceRequest, InstanceState, Plan
from argosy.providers.bootstrap import render_startup_script
from argosy.providers.clients.runpod_api import DEFAULT_URL, KEYS_URL, RunPodClient
from argosy.providers.common import (
    NAME_PREFIX,
    NODE_LABEL,
    KeyedApiProvider,
    bootstrap_spec,
    canonical_gpu,
    check_control_plane,
    check_credential,
    managed_labels,
    node_name,
    require_kind,
)

KEY_VARS = ("RUNPOD_API_KEY",)
# An image with python3, pip and CUDA; override with ARGOSY_RUNPOD_IMAGE.
DEFAULT_IMAGE = "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04"
CLOUDS: Mapping[str, str] = MappingProxyType({"secure": "SECURE", "community": "COMMUNITY"})
# Pod env keys that mark a pod as ours; pods have no labels, env is what the API returns.
MANAGED_ENV = "ARGOSY_MANAGED"
START_CMD = "bash -c 'echo \"$ARGOSY_BOOTSTRAP\" | base64 -d | bash; sleep infinity'"


class RunPodProvider(KeyedApiProvider):
    name = "runpod"
    price_api = "GraphQL gpuTypes"
    price_doc_url = "https://docs.runpod.io/sdks/graphql/manage-pods"
    KEY_VARS = KEY_VARS
    KEYS_URL = KEYS_URL
    URL_ENV = "ARGOSY_RUNPOD_URL"
    DEFAULT_URL = DEFAULT_URL
    client_class = RunPodClient

    def preflight(self) -> list[CheckResult]:
        cred = check_credential(self._env, KEY_VARS, self.name, KEYS_URL)
        checks = [cred, check_control_plane(self.settings)]
        if cred.ok:
            try:
                self.client.user()
                checks.append(CheckResult("runpod api", True, "key accepted"))
            except ProviderError as exc:
                checks.append(CheckResult("runpod api", False, exc.message, fix=exc.fix))
        return checks

    def offerings(self) -> list[Offering]:
        fetched = iso(self.clock.now())
        out: list[Offering] = []
        for g in self.client.gpu_types():
            gpu = canonical_gpu(g.get("displayName") or g["id"], g.get("memoryInGb"))
            for region, cloud_key in (("secure", "secure"), ("community", "community")):
                if not g.get(f"{cloud_key}Cloud"):
                    continue
                for kind, price_key in (("vm", f"{cloud_key}Price"), ("spot", f"{cloud_key}SpotPrice")):
                    price = g.get(price_key)
                    if not price:  # 0/None: not offered this way right now
                        continue
                    out.append(
                        Offering(
                            provider=self.name,
                            region=region,
                            instance_type=g["id"],
                            gpu=gpu,
                            gpu_count=1,
                            kind=kind,
                            price_per_hour=float(price),
                            per_second_billing=True,
                            tier=region,
                            source=f"{self._base_url}/graphql gpuTypes",
                            fetched_at=fetched,
                            extra={"per_gpu": "true", "display_name": str(g.get("displayName") or "")},
                        )
                    )
        return out

    def plan(self, request: InstanceRequest) -> Plan:
        off = request.offering
        require_kind(self.name, off.kind, ["vm", "spot"])
        spec = bootstrap_spec(request, self._env, self.settings)
        script = render_startup_script(spec, foreground=True)
        labels = managed_labels(request)
        env = {
            MANAGED_ENV: "true",
            "ARGOSY_NODE": labels[NODE_LABEL],
            "ARGOSY_BOOTSTRAP": base64.b64encode(script.encode()).decode(),
        }
        if request.ssh_public_key:
            env["PUBLIC_KEY"] = request.ssh_public_key  # RunPod images install this as authorized_keys
        gpus = max(1, off.gpu_count)
        pod: dict[str, Any] = {
            "cloudType": CLOUDS.get(off.region, "ALL"),
            "gpuCount": gpus,
            "gpuTypeId": off.instance_type,
            "name": node_name(request.name),
            "imageName": self._env.get("ARGOSY_RUNPOD_IMAGE") or DEFAULT_IMAGE,
            "dockerArgs": START_CMD,
            "containerDiskInGb": request.disk_gb,
            "volumeInGb": 0,
            "ports": "22/tcp",
            "supportPublicIp": True,
            "env": [{"key": k, "value": v} for k, v in env.items()],
        }
        per_gpu = off.price_per_hour
        if off.kind == "spot":
            if per_gpu is None:
                raise ProviderError(
                    "runpod: an interruptible pod needs a bid; the offering has no price",
                    fix="refresh RunPod offerings (`argosy catalog refresh`)",
                    provider=self.name,
                )
            pod["bidPerGpu"] = per_gpu
        cost = per_gpu * gpus if per_gpu is not None else None
        return Plan(
            provider=self.name,
            action="provision",
            offering=off,
            payload={"interruptible": off.kind == "spot", "input": pod},
            artifacts={"startup-script": script},
            estimated_cost_per_hour=cost,
            notes=["Interruptible pods stop when outbid; Argosy reports that as 'preempted'."]
            if off.kind == "spot"
            else [],
        )

    def provision(self, plan: Plan) -> Instance:
        pod = self.client.deploy(plan.payload["input"], plan.payload["interruptible"])
        if not pod or not pod.get("id"):
            raise ProviderError("runpod: deploy returned no pod id", provider=self.name)
        env = {e["key"]: e["value"] for e in plan.payload["input"]["env"]}
        return Instance(
            provider=self.name,
            instance_id=pod["id"],
            name=plan.payload["input"]["name"],
            state="provisioning",
            region=plan.offering.region if plan.offering else "",
            labels={MANAGED_LABEL: "true", NODE_LABEL: env["ARGOSY_NODE"]},
            price_per_hour=pod.get("costPerHr", plan.estimated_cost_per_hour),
        )

    def status(self, instance_id: str) -> Instance:
        pod = self.client.pod(instance_id)
        if pod is None:
            return Instance(self.name, instance_id, "", "terminated", reason="no longer exists at runpod")
        return _to_instance(pod)

    def list(self) -> list[Instance]:
        return [_to_instance(p) for p in self.client.pods() if _is_managed(p)]

    def terminate(self, instance_id: str) -> None:
        if self.client.pod(instance_id) is None:
            return  # already gone: terminate is idempotent
        self.client.terminate(instance_id)


def _env_map(pod: dict[str, Any]) -> dict[str, str]:
    # GraphQL returns env as ["KEY=value", ...].
    out: dict[str, str] = {}
    for item in pod.get("env") or []:
        k, _, v = str(item).partition("=")
        out[k] = v
    return out


def _is_managed(pod: dict[str, Any]) -> bool:
    named = str(pod.get("name", "")).startswith(NAME_PREFIX)
    if pod.get("env") is None:  # env not returned (e.g. a key without read access to it): the name decides
        return named
    return named and _env_map(pod).get(MANAGED_ENV) == "true"


def _state(pod: dict[str, Any]) -> tuple[InstanceState, str]:
    desired = str(pod.get("desiredStatus", ""))
    interruptible = str(pod.get("podType", "")).upper().startswith("INTERRUPT")
    if desired == "RUNNING":
        return ("running", "") if pod.get("runtime") else ("provisioning", "container starting")
    if desired == "EXITED":
        # Argosy never stops pods, only terminates them: an interruptible pod that exited was outbid.
        if interruptible:
            return (
                "preempted",
                f"runpod stopped the interruptible pod: {pod.get('lastStatusChange') or 'outbid'}",
            )
        return "failed", f"the pod's container exited: {pod.get('lastStatusChange') or ''}".rstrip(": ")
    if desired == "TERMINATED":
        return "terminated", ""
    return "unknown", f"runpod status: {desired}"


def _to_instance(pod: dict[str, Any]) -> Instance:
    state, reason = _state(pod)
    address = None
    for port in (pod.get("runtime") or {}).get("ports") or []:
        if port.get("isIpPublic"):
            address = port.get("ip")
            break
    env = _env_map(pod)
    labels = {MANAGED_LABEL: "true", NODE_LABEL: env.get("ARGOSY_NODE", "")} if MANAGED_ENV in env else {}
    return Instance(
        provider="runpod",
        instance_id=pod["id"],
        name=pod.get("name") or "",
        state=state,
        region="",  # RunPod picks the data center; the GraphQL pod fields do not name it
        address=address,
        labels=labels,
        price_per_hour=pod.get("costPerHr"),
        reason=reason,
    )
