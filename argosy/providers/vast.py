"""Vast.ai: a marketplace of single machines, on-demand or interruptible (bid), through its REST API.

Credentials: `VAST_API_KEY`. Each offer is one host: an Offering's `instance_type` is the offer
(ask) id, which a later search may no longer return; renting a vanished offer is a CapacityError
so placement moves to the next one. Instances are containers; the bootstrap script runs as Vast's
`onstart` command. Vast has no tags, so the `argosy-` label prefix marks what Argosy created.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from argosy.catalog.types import Offering
from argosy.core.clock import iso
from argosy.core.errors import ArgosyError, NotFoundError, ProviderError
from argosy.providers.base import MANAGED_LABEL, CheckResult, Instance, InstanceRequest, InstanceState, Plan
from argosy.providers.bootstrap import render_startup_script
from argosy.providers.clients.vast_api import DEFAULT_BASE_URL, KEYS_URL, VastClient
from argosy.providers.common import (
    NAME_PREFIX,
    NODE_LABEL,
    KeyedApiProvider,
    bootstrap_spec,
    canonical_gpu,
    check_control_plane,
    check_credential,
    node_name,
    require_kind,
)

KEY_VARS = ("VAST_API_KEY",)
DEFAULT_IMAGE = "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime"
# Verified, rentable hosts only: unverified hosts fail often enough to waste a placement attempt.
SEARCH: Mapping[str, Any] = MappingProxyType(
    {
        "verified": {"eq": True},
        "rentable": {"eq": True},
        "rented": {"eq": False},
        "num_gpus": {"gte": 1},
        "type": "on-demand",
        "order": [["dph_total", "asc"]],
    }
)


def region_of(geolocation: str | None) -> str:
    """'Sweden, SE' -> 'se'; 'California, US' -> 'us': Vast.ai reports the country code last, and the
    catalog's regions (carbon intensity) are per country for Vast."""
    if not geolocation:
        return "unknown"
    return geolocation.rsplit(",", 1)[-1].strip().lower() or "unknown"


class VastProvider(KeyedApiProvider):
    name = "vast"
    price_api = "POST /api/v0/bundles/ (search offers)"
    price_doc_url = "https://docs.vast.ai/api-reference/search/search-offers"
    KEY_VARS = KEY_VARS
    KEYS_URL = KEYS_URL
    URL_ENV = "ARGOSY_VAST_BASE_URL"
    DEFAULT_URL = DEFAULT_BASE_URL
    client_class = VastClient

    def preflight(self) -> list[CheckResult]:
        cred = check_credential(self._env, KEY_VARS, self.name, KEYS_URL)
        checks = [cred, check_control_plane(self.settings)]
        if cred.ok:
            try:
                user = self.client.current_user()
                credit = user.get("credit")
                checks.append(CheckResult("vast api", True, "key accepted"))
                if credit is not None and float(credit) <= 0:
                    checks.append(
                        CheckResult(
                            "vast credit",
                            False,
                            f"account credit is {credit}",
                            fix="add credit at https://cloud.vast.ai/billing/",
                        )
                    )
            except ProviderError as exc:
                checks.append(CheckResult("vast api", False, exc.message, fix=exc.fix))
        return checks

    def offerings(self, *, limit: int = 500) -> list[Offering]:
        fetched = iso(self.clock.now())
        out: list[Offering] = []
        for o in self.client.search_offers({**SEARCH, "limit": limit}):
            gpu_ram_gb = (o.get("gpu_ram") or 0) / 1024 or None
            reliability = o.get("reliability2", o.get("reliability"))
            common: dict[str, Any] = {
                "provider": self.name,
                "region": region_of(o.get("geolocation")),
                "instance_type": str(o["id"]),
                "gpu": canonical_gpu(o["gpu_name"], gpu_ram_gb),
                "gpu_count": int(o["num_gpus"]),
                "vcpus": int(o["cpu_cores_effective"]) if o.get("cpu_cores_effective") else None,
                "ram_gb": round(o["cpu_ram"] / 1024, 1) if o.get("cpu_ram") else None,
                "per_second_billing": True,
                "available": bool(o.get("rentable", True)),
                "source": f"{self._base_url}/bundles/",
                "fetched_at": fetched,
                "extra": {
                    "machine_id": str(o.get("machine_id", "")),
                    "location": str(o.get("geolocation") or ""),
                    **({"reliability": f"{float(reliability):.3f}"} if reliability is not None else {}),
                },
            }
            out.append(Offering(kind="vm", price_per_hour=float(o["dph_total"]), **common))
            if o.get("min_bid"):
                out.append(
                    Offering(kind="spot", price_per_hour=float(o["min_bid"]), tier="interruptible", **common)
                )
        return out

    def plan(self, request: InstanceRequest) -> Plan:
        off = request.offering
        require_kind(self.name, off.kind, ["vm", "spot"])
        if not off.instance_type.isdigit():
            raise ArgosyError(
                f"vast offering '{off.instance_type}' is not an offer id",
                fix="plan from a fresh Vast offering (`argosy catalog refresh --provider vast`)",
            )
        script = render_startup_script(bootstrap_spec(request, self._env, self.settings), foreground=True)
        payload: dict[str, Any] = {
            "client_id": "me",
            "image": self._env.get("ARGOSY_VAST_IMAGE") or DEFAULT_IMAGE,
            "disk": request.disk_gb,
            "label": node_name(request.name),
            "runtype": "ssh",
            "onstart": script,
            "env": {"ARGOSY_MANAGED": "true"},
        }
        if off.kind == "spot":
            if off.price_per_hour is None:
                raise ArgosyError(
                    "vast: an interruptible instance needs a bid price; the offering has none",
                    fix="refresh Vast offerings",
                )
            payload["price"] = off.price_per_hour
        return Plan(
            provider=self.name,
            action="provision",
            offering=off,
            payload={"offer_id": int(off.instance_type), "body": payload},
            artifacts={"startup-script": script},
            estimated_cost_per_hour=off.price_per_hour,
            notes=["Interruptible instances stop when outbid; Argosy reports that as 'preempted'."]
            if off.kind == "spot"
            else [],
        )

    def provision(self, plan: Plan) -> Instance:
        iid = self.client.create_instance(plan.payload["offer_id"], plan.payload["body"])
        label = plan.payload["body"]["label"]
        return Instance(
            provider=self.name,
            instance_id=str(iid),
            name=label,
            state="provisioning",
            region=plan.offering.region if plan.offering else "",
            labels={MANAGED_LABEL: "true", NODE_LABEL: label},
            price_per_hour=plan.estimated_cost_per_hour,
        )

    def status(self, instance_id: str) -> Instance:
        try:
            inst = self.client.instance(instance_id)
        except NotFoundError:
            inst = None
        if inst is None:
            return Instance(self.name, instance_id, "", "terminated", reason="no longer exists at vast")
        return _to_instance(inst)

    def list(self) -> list[Instance]:
        return [
            _to_instance(i)
            for i in self.client.instances()
            if str(i.get("label") or "").startswith(NAME_PREFIX)
        ]

    def terminate(self, instance_id: str) -> None:
        try:
            self.client.destroy(instance_id)
        except NotFoundError:
            return  # already gone: terminate is idempotent


def _state(i: dict[str, Any]) -> tuple[InstanceState, str]:
    actual = i.get("actual_status")
    msg = str(i.get("status_msg") or "").strip()
    if actual in (None, "created", "loading", "scheduling"):
        return "provisioning", msg
    if actual == "running":
        return "running", ""
    if actual in ("stopped", "exited") and i.get("is_bid"):
        # Argosy never stops instances: a stopped interruptible instance was outbid.
        return "preempted", f"vast stopped the interruptible instance (outbid){': ' + msg if msg else ''}"
    if actual == "exited":
        return "failed", f"the container exited{': ' + msg if msg else ''}"
    if actual == "stopped":
        return "failed", f"vast stopped the instance{': ' + msg if msg else ''}"
    return "unknown", f"vast status: {actual}{': ' + msg if msg else ''}"


def _to_instance(i: dict[str, Any]) -> Instance:
    state, reason = _state(i)
    label = str(i.get("label") or "")
    return Instance(
        provider="vast",
        instance_id=str(i["id"]),
        name=label,
        state=state,
        region=region_of(i.get("geolocation")),
        address=i.get("public_ipaddr") or None,
        labels={MANAGED_LABEL: "true", NODE_LABEL: label} if label.startswith(NAME_PREFIX) else {},
        price_per_hour=i.get("dph_total"),
        reason=reason,
    )
