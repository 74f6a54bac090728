"""Linode (Akamai) GPU instances through the official `linode_api4` SDK (`pip install 'argosy[linode]'`).

Credentials: `LINODE_TOKEN` (or linode-cli's `LINODE_CLI_TOKEN`), a personal access token with
Linodes and Firewalls read/write. Nodes run Ubuntu with the Argosy cloud-init passed as Metadata
user data; Linode's images carry no NVIDIA driver, so the bootstrap installs it. Every node sits
behind one Cloud Firewall, `argosy-nodes`, that admits only SSH: the agent dials out to the server.
No spot market.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import secrets
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from argosy.catalog.types import Offering
from argosy.core.clock import Clock, SystemClock, iso
from argosy.core.config import Settings
from argosy.core.errors import (
    CapacityError,
    NotFoundError,
    ProviderAuthError,
    ProviderError,
    QuotaError,
    RateLimitError,
)
from argosy.providers.base import MANAGED_LABEL, CheckResult, Instance, InstanceRequest, InstanceState, Plan
from argosy.providers.bootstrap import render_cloud_init
from argosy.providers.clients.http import RetryPolicy, parse_retry_after
from argosy.providers.common import (
    NODE_LABEL,
    bootstrap_spec,
    canonical_gpu,
    check_control_plane,
    check_credential,
    environ,
    first_env,
    import_sdk,
    managed_labels,
    node_name,
    require_kind,
)
from argosy.providers.sdk_errors import call_with_retry, transient

KEY_VARS = ("LINODE_TOKEN", "LINODE_CLI_TOKEN")
TOKENS_URL = "https://cloud.linode.com/profile/tokens"
DEFAULT_BASE_URL = "https://api.linode.com/v4"
DEFAULT_IMAGE = "linode/ubuntu22.04"
FIREWALL_LABEL = "argosy-nodes"
# Copied into each plan (deepcopy) so a caller editing a plan cannot change the next one.
FIREWALL_RULES: dict[str, Any] = {
    "inbound_policy": "DROP",
    "outbound_policy": "ACCEPT",
    "inbound": [
        {
            "action": "ACCEPT",
            "protocol": "TCP",
            "ports": "22",
            "addresses": {"ipv4": ["0.0.0.0/0"], "ipv6": ["::/0"]},
            "label": "argosy-ssh",
        }
    ],
    "outbound": [],
}
_STATES: Mapping[str, InstanceState] = MappingProxyType(
    {
        "provisioning": "provisioning",
        "booting": "provisioning",
        "running": "running",
        "offline": "failed",
        "stopped": "failed",
        "shutting_down": "terminated",
        "deleting": "terminated",
    }
)
_CAPACITY = ("capacity", "out of stock", "not available in this region", "sold out", "unavailable in")
_QUOTA = ("limit", "exceed", "not authorized to create gpu", "contact support")


def _tags(labels: Mapping[str, str]) -> list[str]:
    # Linode tags are plain strings: the marker is a bare tag, other labels are "key:value".
    return sorted(MANAGED_LABEL if k == MANAGED_LABEL else f"{k}:{v}" for k, v in labels.items())


def _labels(tags: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for t in tags:
        if t == MANAGED_LABEL:
            out[MANAGED_LABEL] = "true"
        else:
            k, _, v = t.partition(":")
            out[k] = v
    return out


def translate(exc: Exception) -> ProviderError | None:
    from linode_api4.errors import ApiError

    if not isinstance(exc, ApiError):
        import requests

        if isinstance(exc, requests.RequestException):
            return transient(
                ProviderError(
                    f"linode: cannot reach the API: {type(exc).__name__}",
                    fix="check your network connection",
                    provider="linode",
                )
            )
        return None
    status = exc.status
    detail = "; ".join(exc.errors) if getattr(exc, "errors", None) else str(exc)
    msg = f"linode: {detail} (HTTP {status})"
    low = detail.lower()
    if status == 429:
        headers = exc.response.headers if exc.response is not None else {}
        return RateLimitError(
            msg,
            fix="wait and retry",
            provider="linode",
            retry_after=parse_retry_after(headers.get("Retry-After"), 0.0),
        )
    if status in (401, 403) and "limit" not in low:
        return ProviderAuthError(
            msg, fix=f"create a token with Linodes read/write at {TOKENS_URL}", provider="linode"
        )
    if status == 404:
        return NotFoundError(msg, fix="run `argosy nodes list` to see what exists")
    if any(p in low for p in _CAPACITY):
        return CapacityError(msg, fix="try another region or GPU plan", provider="linode")
    if any(p in low for p in _QUOTA):
        return QuotaError(
            msg,
            fix="ask Linode support to enable or raise GPU limits: https://cloud.linode.com/support/tickets",
            provider="linode",
        )
    if status >= 500:
        return transient(
            ProviderError(msg, fix="retry later; see https://status.linode.com", provider="linode")
        )
    return ProviderError(msg, provider="linode")


class LinodeProvider:
    name = "linode"

    def __init__(
        self,
        settings: Settings,
        clock: Clock | None = None,
        *,
        env: Mapping[str, str] | None = None,
        base_url: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self._env = environ(env)
        self._base_url = base_url or self._env.get("ARGOSY_LINODE_BASE_URL") or DEFAULT_BASE_URL
        self._retry = retry
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            found = first_env(self._env, KEY_VARS)
            if not found:
                raise ProviderAuthError(
                    "linode: LINODE_TOKEN is not set",
                    fix=f"create a personal access token at {TOKENS_URL}, then `export LINODE_TOKEN=...`",
                    provider=self.name,
                )
            LinodeClient = import_sdk("linode_api4", "linode").LinodeClient

            # The SDK's own retry sleeps in real time; Argosy retries on its injectable clock instead.
            self._client = LinodeClient(found[1], base_url=self._base_url, user_agent="argosy", retry=False)
        return self._client

    def _call(self, fn: Any, idempotent: bool = True) -> Any:
        return call_with_retry(
            fn, clock=self.clock, translate=translate, idempotent=idempotent, retry=self._retry
        )

    def preflight(self) -> list[CheckResult]:
        cred = check_credential(self._env, KEY_VARS, self.name, TOKENS_URL)
        checks = [cred, check_control_plane(self.settings)]
        try:
            import linode_api4  # noqa: F401
        except ImportError:
            return [
                *checks,
                CheckResult(
                    "linode sdk", False, "linode_api4 is not installed", fix="pip install 'argosy[linode]'"
                ),
            ]
        if cred.ok:
            try:
                profile = self._call(lambda: self.client.profile())
                checks.append(CheckResult("linode api", True, f"token accepted (user {profile.username})"))
            except ProviderError as exc:
                checks.append(CheckResult("linode api", False, exc.message, fix=exc.fix))
        return checks

    def offerings(self) -> list[Offering]:
        fetched = iso(self.clock.now())

        def fetch() -> tuple[list[Any], list[Any]]:
            return list(self.client.linode.types()), list(self.client.regions())

        types, regions = self._call(fetch)
        gpu_regions = [r.id for r in regions if "GPU Linodes" in (r.capabilities or [])]
        out: list[Offering] = []
        for t in types:
            if not t.gpus:
                continue
            overrides = {p.id: p.hourly for p in (t.region_prices or [])}
            for region in gpu_regions:
                out.append(
                    Offering(
                        provider=self.name,
                        region=region,
                        instance_type=t.id,
                        gpu=canonical_gpu(_gpu_model(t.label)),
                        gpu_count=int(t.gpus),
                        kind="vm",
                        price_per_hour=float(overrides.get(region, t.price.hourly)),
                        vcpus=t.vcpus,
                        ram_gb=round(t.memory / 1024, 1),
                        source=f"{self._base_url}/linode/types",
                        fetched_at=fetched,
                        extra={"label": t.label},
                    )
                )
        return out

    def plan(self, request: InstanceRequest) -> Plan:
        off = request.offering
        require_kind(self.name, off.kind, ["vm"])
        spec = bootstrap_spec(request, self._env, self.settings)
        cloud_init = render_cloud_init(dataclasses.replace(spec, install_nvidia_driver=True))
        body: dict[str, Any] = {
            "type": off.instance_type,
            "region": off.region,
            "image": self._env.get("ARGOSY_LINODE_IMAGE") or DEFAULT_IMAGE,
            "label": node_name(request.name, 64),
            "tags": _tags(managed_labels(request)),
            "metadata": {"user_data": base64.b64encode(cloud_init.encode()).decode()},
            "booted": True,
        }
        notes = [f"The node joins Cloud Firewall '{FIREWALL_LABEL}' (SSH in only), created if missing."]
        if request.ssh_public_key:
            body["authorized_keys"] = [request.ssh_public_key]
        else:
            notes.append("No SSH key: a random root password is generated at provision time and not kept.")
        return Plan(
            provider=self.name,
            action="provision",
            offering=off,
            payload={
                "instance": body,
                "firewall": {"label": FIREWALL_LABEL, "rules": copy.deepcopy(FIREWALL_RULES)},
            },
            artifacts={"cloud-init": cloud_init},
            estimated_cost_per_hour=off.price_per_hour,
            notes=notes,
        )

    def _ensure_firewall(self, spec: dict[str, Any]) -> int:
        Firewall = import_sdk("linode_api4", "linode").Firewall

        def find_or_create() -> int:
            existing = list(self.client.networking.firewalls(Firewall.label == spec["label"]))
            if existing:
                return int(existing[0].id)
            fw = self.client.networking.firewall_create(spec["label"], spec["rules"], tags=[MANAGED_LABEL])
            return int(fw.id)

        return self._call(find_or_create, idempotent=False)

    def provision(self, plan: Plan) -> Instance:
        body = dict(plan.payload["instance"])
        firewall_id = self._ensure_firewall(plan.payload["firewall"])
        if "authorized_keys" not in body:
            body["root_pass"] = secrets.token_urlsafe(32)  # required by the API without keys; never stored
        ltype, region = body.pop("type"), body.pop("region")
        inst = self._call(
            lambda: self.client.linode.instance_create(ltype, region, firewall=firewall_id, **body),
            idempotent=False,
        )
        return Instance(
            provider=self.name,
            instance_id=str(inst.id),
            name=body["label"],
            state="provisioning",
            region=region,
            labels=_labels(body["tags"]),
            price_per_hour=plan.estimated_cost_per_hour,
        )

    def status(self, instance_id: str) -> Instance:
        LinodeInstance = import_sdk("linode_api4", "linode").Instance

        try:
            inst = self._call(lambda: self._loaded(LinodeInstance, instance_id))
        except NotFoundError:
            return Instance(self.name, instance_id, "", "terminated", reason="no longer exists at linode")
        return _to_instance(inst)

    def _loaded(self, cls: Any, instance_id: str) -> Any:
        return self.client.load(cls, int(instance_id))

    def list(self) -> list[Instance]:
        LinodeInstance = import_sdk("linode_api4", "linode").Instance

        def fetch() -> list[Any]:
            # Filter server-side by the tag, then check again here: cleanup must never touch others.
            return list(self.client.linode.instances(LinodeInstance.tags.contains(MANAGED_LABEL)))

        return [_to_instance(i) for i in self._call(fetch) if MANAGED_LABEL in (i.tags or [])]

    def terminate(self, instance_id: str) -> None:
        LinodeInstance = import_sdk("linode_api4", "linode").Instance

        def delete() -> None:
            self.client.load(LinodeInstance, int(instance_id)).delete()

        try:
            self._call(delete)
        except NotFoundError:
            return  # already gone: terminate is idempotent


def _gpu_model(label: str) -> str:
    """'Dedicated 32GB + RTX6000 GPU x1' -> 'RTX6000'; 'RTX4000 Ada x1 Small' -> 'RTX4000 Ada'."""
    text = label.split("+", 1)[-1]
    text = text.split(" GPU")[0].split(" x")[0]
    return text.strip()


def _to_instance(inst: Any) -> Instance:
    status = str(inst.status)
    ipv4 = list(inst.ipv4 or [])
    labels = _labels(list(inst.tags or []))
    return Instance(
        provider="linode",
        instance_id=str(inst.id),
        name=inst.label,
        state=_STATES.get(status, "unknown"),
        region=str(inst.region.id if hasattr(inst.region, "id") else inst.region),
        address=ipv4[0] if ipv4 else None,
        labels=labels if NODE_LABEL in labels or MANAGED_LABEL in labels else {},
        reason="" if status in ("running", "provisioning", "booting") else f"linode status: {status}",
    )
