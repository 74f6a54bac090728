"""Lambda Cloud: on-demand GPU VMs through the Lambda Cloud REST API. No spot market.

Credentials: `LAMBDA_API_KEY` (create one at https://cloud.lambda.ai/api-keys/cloud-api).
Nodes boot Lambda Stack (driver + CUDA preinstalled) and run the Argosy cloud-init as user data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from argosy.catalog.types import Offering
from argosy.core.clock import iso
from argosy.core.errors import ArgosyError, NotFoundError, ProviderError
from argosy.providers.base import MANAGED_LABEL, CheckResult, Instance, InstanceRequest, InstanceState, Plan
from argosy.providers.bootstrap import render_cloud_init
from argosy.providers.clients.lambda_api import DEFAULT_BASE_URL, KEYS_URL, LambdaClient
from argosy.providers.common import (
    NAME_PREFIX,
    KeyedApiProvider,
    bootstrap_spec,
    canonical_gpu,
    check_control_plane,
    check_credential,
    check_ssh_key,
    key_fingerprint,
    managed_labels,
    node_name,
    require_kind,
)

KEY_VARS = ("LAMBDA_API_KEY", "LAMBDA_CLOUD_API_KEY")
_STATES: Mapping[str, InstanceState] = MappingProxyType(
    {
        "booting": "provisioning",
        "active": "running",
        "unhealthy": "unknown",
        "terminating": "terminated",
        "terminated": "terminated",
        "preempted": "preempted",
    }
)


class LambdaProvider(KeyedApiProvider):
    name = "lambda"
    price_api = "GET /api/v1/instance-types"
    price_doc_url = "https://docs-api.lambda.ai/api/cloud#listInstanceTypes"
    KEY_VARS = KEY_VARS
    KEYS_URL = KEYS_URL
    URL_ENV = "ARGOSY_LAMBDA_BASE_URL"
    DEFAULT_URL = DEFAULT_BASE_URL
    client_class = LambdaClient

    # -- Preflight -----------------------------------------------------------------------------
    def preflight(self) -> list[CheckResult]:
        cred = check_credential(self._env, KEY_VARS, self.name, KEYS_URL)
        checks = [cred, check_control_plane(self.settings)]
        if cred.ok:
            try:
                keys = self.client.ssh_keys()  # cheap authenticated call
                checks.append(
                    CheckResult("lambda api", True, f"key accepted ({len(keys)} ssh key(s) on the account)")
                )
                # Capacity hint: Lambda often has none for a type; say so before a launch fails.
                types = self.client.instance_types()
                with_capacity = sorted(
                    n for n, e in types.items() if e.get("regions_with_capacity_available")
                )
                checks.append(
                    CheckResult(
                        "lambda capacity",
                        bool(with_capacity),
                        f"{len(with_capacity)} of {len(types)} instance types have capacity now"
                        + (
                            f" ({', '.join(with_capacity[:5])}{', ...' if len(with_capacity) > 5 else ''})"
                            if with_capacity
                            else ""
                        ),
                        fix=None if with_capacity else "retry later or use another provider",
                    )
                )
            except ProviderError as exc:
                checks.append(CheckResult("lambda api", False, exc.message, fix=exc.fix))
        checks.append(check_ssh_key(required=True))
        return checks

    # -- Offerings -----------------------------------------------------------------------------
    def offerings(self) -> list[Offering]:
        fetched = iso(self.clock.now())
        out: list[Offering] = []
        for type_name, entry in sorted(self.client.instance_types().items()):
            it = entry["instance_type"]
            specs = it.get("specs", {})
            gpus = int(specs.get("gpus", 0))
            gpu = _gpu_from_description(it.get("gpu_description", ""), gpus) if gpus else None
            price = it["price_cents_per_hour"] / 100.0
            regions = [r["name"] for r in entry.get("regions_with_capacity_available", [])]
            common: dict[str, Any] = {
                "provider": self.name,
                "instance_type": type_name,
                "gpu": gpu,
                "gpu_count": gpus,
                "kind": "vm",
                "price_per_hour": price,
                "vcpus": specs.get("vcpus"),
                "ram_gb": specs.get("memory_gib"),
                "source": f"{self._base_url}/instance-types",
                "fetched_at": fetched,
                "extra": {"description": it.get("description", "")},
            }
            # A type with no capacity anywhere still has a price the catalog wants; region "" marks it.
            for region in regions or [""]:
                out.append(Offering(region=region, available=bool(region), **common))
        return out

    # -- Instances -----------------------------------------------------------------------------
    def plan(self, request: InstanceRequest) -> Plan:
        off = request.offering
        require_kind(self.name, off.kind, ["vm"])
        if not request.ssh_public_key:
            raise ArgosyError(
                "lambda needs an SSH public key to launch an instance",
                fix="ssh-keygen -t ed25519 -f ~/.ssh/id_ed25519 -N '' (Argosy uploads the .pub key)",
            )
        if not off.region:
            raise ArgosyError(
                f"lambda has no capacity for {off.instance_type} in any region right now",
                fix="pick another instance type, or retry later",
            )
        cloud_init = render_cloud_init(bootstrap_spec(request, self._env, self.settings))
        labels = managed_labels(request)
        payload = {
            "region_name": off.region,
            "instance_type_name": off.instance_type,
            "ssh_key_names": [f"{NAME_PREFIX}{key_fingerprint(request.ssh_public_key)}"],
            "file_system_names": [],
            "quantity": 1,
            "name": node_name(request.name, 64),
            "user_data": cloud_init,
            "tags": [{"key": k, "value": v} for k, v in sorted(labels.items())],
        }
        return Plan(
            provider=self.name,
            action="provision",
            offering=off,
            payload=payload,
            artifacts={"cloud-init": cloud_init, "ssh_public_key": request.ssh_public_key},
            estimated_cost_per_hour=off.price_per_hour,
            notes=["Lambda bills per minute from boot until terminate; no spot market."],
        )

    def provision(self, plan: Plan) -> Instance:
        self._ensure_ssh_key(plan.payload["ssh_key_names"][0], plan.artifacts["ssh_public_key"])
        ids = self.client.launch(plan.payload)
        if len(ids) != 1:
            raise ProviderError(
                f"lambda: launch returned {len(ids)} instance ids, expected 1", provider=self.name
            )
        return Instance(
            provider=self.name,
            instance_id=ids[0],
            name=plan.payload["name"],
            state="provisioning",
            region=plan.payload["region_name"],
            labels={t["key"]: t["value"] for t in plan.payload["tags"]},
            price_per_hour=plan.estimated_cost_per_hour,
        )

    def _ensure_ssh_key(self, name: str, public_key: str) -> None:
        if any(k.get("name") == name for k in self.client.ssh_keys()):
            return
        self.client.add_ssh_key(name, public_key)

    def status(self, instance_id: str) -> Instance:
        try:
            data = self.client.instance(instance_id)
        except NotFoundError:
            return Instance(self.name, instance_id, "", "terminated", reason="no longer exists at lambda")
        return self._to_instance(data)

    def list(self) -> list[Instance]:
        return [self._to_instance(d) for d in self.client.instances() if _is_managed(d)]

    def terminate(self, instance_id: str) -> None:
        try:
            self.client.terminate([instance_id])
        except NotFoundError:
            return  # already gone: terminate is idempotent

    def _to_instance(self, d: dict[str, Any]) -> Instance:
        status = str(d.get("status", ""))
        it = d.get("instance_type") or {}
        price = it.get("price_cents_per_hour")
        return Instance(
            provider=self.name,
            instance_id=d["id"],
            name=d.get("name") or "",
            state=_STATES.get(status, "unknown"),
            region=(d.get("region") or {}).get("name", ""),
            address=d.get("ip"),
            labels=_tags(d),
            price_per_hour=price / 100.0 if price is not None else None,
            reason="" if status in ("active", "booting") else f"lambda status: {status}",
        )


def _tags(d: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in d.get("tags") or []}


def _is_managed(d: dict[str, Any]) -> bool:
    # Tags are authoritative; instances listed without a tags field (older API answers) fall back to
    # the name prefix Argosy gives every node.
    if "tags" in d and d["tags"] is not None:
        return _tags(d).get(MANAGED_LABEL) == "true"
    return str(d.get("name") or "").startswith(NAME_PREFIX)


def _gpu_from_description(desc: str, count: int) -> str:
    """'A100 (40 GB SXM4)' -> A100-40GB."""
    m = re.search(r"(\d+)\s*GB", desc)
    return canonical_gpu(desc, float(m.group(1)) if m else None)
