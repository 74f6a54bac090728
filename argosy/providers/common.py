"""Helpers shared by the cloud providers: names, managed labels, credentials, preflight checks.

Credentials come from each provider's own conventional environment variables (the ones its CLI and
SDK read), so a user who already uses the provider needs to set nothing new. They are read once into
the provider object and never logged or put into a Plan.
"""

from __future__ import annotations

import hashlib
import importlib
import ipaddress
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from argosy.core.errors import ArgosyError, ProviderAuthError
from argosy.providers.base import MANAGED_LABEL, CheckResult, InstanceRequest
from argosy.providers.bootstrap import BootstrapSpec, validate

NAME_PREFIX = "argosy-"
NODE_LABEL = "argosy-node"
# Where the pip spec for nodes comes from when the server does not pass one (a fork, a wheel URL).
PIP_SPEC_ENV = "ARGOSY_NODE_PIP_SPEC"
PIP_INDEX_ENV = "ARGOSY_NODE_PIP_INDEX_URL"


def first_env(env: Mapping[str, str], names: Sequence[str]) -> tuple[str, str] | None:
    """(name, value) of the first variable in `names` that is set and non-empty."""
    for n in names:
        v = env.get(n, "").strip()
        if v:
            return n, v
    return None


def node_name(name: str, limit: int = 63) -> str:
    """A cloud-safe name (lowercase, digits, dashes) that starts with `argosy-`."""
    base = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "node"
    if not base.startswith(NAME_PREFIX):
        base = NAME_PREFIX + base
    return base[:limit].rstrip("-")


def managed_labels(request: InstanceRequest) -> dict[str, str]:
    """Labels for everything we create: the managed marker wins over anything the caller passed."""
    return {**request.labels, MANAGED_LABEL: "true", NODE_LABEL: node_name(request.name)}


def is_managed(labels: Mapping[str, str]) -> bool:
    return labels.get(MANAGED_LABEL) == "true"


PUBLIC_URL_FIX = (
    "set the URL cloud nodes can reach this server at: `export ARGOSY_SERVER_PUBLIC_URL=https://argosy.example.com` "
    "(or server.public_url in argosy.yaml), and serve on an address they can reach "
    "(`argosy server --host 0.0.0.0` behind TLS, or a tunnel)"
)


def is_unreachable_from_cloud(url: str) -> bool:
    """True for loopback and unspecified hosts: a cloud VM dialling them reaches itself, not the server."""
    parts = urlsplit(url)
    if not parts.scheme:
        return False  # not a URL at all: the bootstrap's own validation says what is wrong
    host = (parts.hostname or "").lower()
    if host in ("localhost", "") or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a DNS name: reachable or not, only the network can tell
    return ip.is_loopback or ip.is_unspecified or ip.is_link_local


def control_plane_url(settings: Any, server_url: str) -> str:
    """The server URL a cloud node's agent dials: `server.public_url` when set, else the caller's."""
    public = getattr(getattr(settings, "server", None), "public_url", None)
    return (public or server_url).rstrip("/")


def check_control_plane(settings: Any) -> CheckResult:
    """Preflight: can a node this provider starts ever register with the server?"""
    server = settings.server
    url = server.public_url or server.url or f"http://{server.host}:{server.port}"
    if is_unreachable_from_cloud(url):
        return CheckResult(
            "control plane reachable",
            False,
            f"nodes would register at {url}, which a cloud machine cannot reach (loopback); "
            "they would boot, bill, and never join",
            fix=PUBLIC_URL_FIX,
        )
    return CheckResult("control plane reachable", True, f"nodes register at {url}")


def bootstrap_spec(request: InstanceRequest, env: Mapping[str, str], settings: Any = None) -> BootstrapSpec:
    if not request.server_url or not request.agent_token:
        raise ArgosyError(
            f"node '{request.name}' has no server URL or registration token to bootstrap with",
            fix="provision through the server (`argosy deploy ...`), which issues a one-time token per node",
        )
    server_url = control_plane_url(settings, request.server_url)
    if is_unreachable_from_cloud(server_url):
        # Refuse before anything is created: a VM that can never register only bills.
        raise ArgosyError(
            f"node '{request.name}' on {request.offering.provider} would register at {server_url}, "
            "a loopback address the cloud machine cannot reach",
            fix=PUBLIC_URL_FIX,
        )
    spec = BootstrapSpec(
        server_url=server_url,
        agent_token=request.agent_token,
        node_name=node_name(request.name),
        pip_spec=env.get(PIP_SPEC_ENV, ""),
        pip_index_url=env.get(PIP_INDEX_ENV) or None,
        gpu_count=request.offering.gpu_count if request.offering.gpu else 0,
        labels=tuple(sorted((k, v) for k, v in request.labels.items())),
        provider=request.offering.provider,
        preemptible=request.offering.kind == "spot",
    )
    try:
        validate(spec)
    except ValueError as exc:
        raise ArgosyError(
            f"cannot render the bootstrap for node '{request.name}': {exc}",
            fix=f"check the server URL, the node labels and {PIP_SPEC_ENV} / {PIP_INDEX_ENV}",
        ) from exc
    return spec


def key_fingerprint(public_key: str) -> str:
    """A short stable id for an SSH public key, for naming the key we upload."""
    return hashlib.sha256(public_key.strip().encode()).hexdigest()[:10]


def default_ssh_public_key(home: Path | None = None) -> str | None:
    """The user's usual SSH public key, for callers building an InstanceRequest."""
    ssh = (home or Path.home()) / ".ssh"
    for name in ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"):
        p = ssh / name
        if p.is_file():
            return p.read_text().strip()
    return None


def check_credential(env: Mapping[str, str], names: Sequence[str], provider: str, url: str) -> CheckResult:
    found = first_env(env, names)
    if found:
        return CheckResult(f"{provider} credentials", True, f"{found[0]} is set")
    return CheckResult(
        f"{provider} credentials",
        False,
        f"none of {', '.join(names)} is set",
        fix=f"create an API key at {url}, then `export {names[0]}=...`",
    )


def check_ssh_key(required: bool, home: Path | None = None) -> CheckResult:
    key = default_ssh_public_key(home)
    if key:
        return CheckResult("ssh key", True, "found a public key in ~/.ssh")
    return CheckResult(
        "ssh key",
        not required,
        "no public key in ~/.ssh" + ("" if required else " (optional: nodes are reached through the agent)"),
        fix="ssh-keygen -t ed25519 -f ~/.ssh/id_ed25519 -N ''",
    )


def check_tool(tool: str, why: str, fix: str) -> CheckResult:
    path = shutil.which(tool)
    if path:
        return CheckResult(f"{tool} tool", True, path)
    return CheckResult(f"{tool} tool", False, f"{tool} not found on PATH ({why})", fix=fix)


def environ(env: Mapping[str, str] | None) -> dict[str, str]:
    """A snapshot of the environment: providers read credentials once, at construction."""
    return dict(os.environ if env is None else env)


def require_kind(provider: str, kind: str, allowed: Sequence[str]) -> None:
    if kind not in allowed:
        raise ArgosyError(
            f"{provider} cannot provision a '{kind}' offering (it offers: {', '.join(allowed)})",
            fix=f"pick a {provider} offering of kind {' or '.join(allowed)}",
        )


# GPUs sold in more than one memory size carry it in the fallback name (A100-40GB vs A100-80GB).
_SIZED = ("H100", "H200", "A100", "V100", "B200", "GH200", "MI300X")
_DESCRIBED = re.compile(r"^\s*(?P<model>.+?)\s*\((?P<mem>\d+)\s*GB\s*(?P<form>[\w ]*)\)")


def canonical_gpu(model: str, memory_gb: float | None = None) -> str:
    """The catalog's canonical GPU name for a provider's spelling ('NVIDIA GeForce RTX 4090' -> RTX4090).

    The catalog's GPU table (argosy/catalog/data/gpus.yaml) is the one source of names and aliases;
    a GPU it does not know yet keeps a normalised name rather than being dropped, so a new card
    still shows up (and the table can learn its alias).
    """
    from argosy.catalog.gpus import load_gpus

    table = load_gpus()
    candidates = [model]
    m = _DESCRIBED.match(model)
    if m:  # Lambda style: "H100 (80 GB SXM5)"
        memory_gb = memory_gb or float(m["mem"])
        if m["form"].strip():
            candidates.append(f"{m['model']} {m['form'].strip()}")
        candidates.append(m["model"])
    fallback = _normalised(model, memory_gb)
    candidates.append(fallback)
    for spelling in candidates:
        found = table.find(spelling, memory_gb)
        if found:
            return found
    return fallback


def _normalised(model: str, memory_gb: float | None) -> str:
    m = model.upper().replace("NVIDIA", "").replace("GEFORCE", "").replace("TESLA", "")
    m = re.sub(r"\(.*?\)", "", m)
    m = re.sub(r"(^|[\s_-])\d+\s*GB\b", " ", m)  # "80GB", "80 GB": the size is added back below
    m = re.sub(r"[\s_]+", "", m).strip("-")
    for suffix in ("PCIE", "SXM5", "SXM4", "SXM", "NVL", "HBM3"):
        if m.endswith(suffix) and m != suffix:
            m = m[: -len(suffix)].rstrip("-")
    if m in _SIZED and memory_gb:
        return f"{m}-{round(memory_gb)}GB"
    return m


def import_sdk(module: str, extra: str, missing: str | None = None) -> ModuleType:
    """Import a provider SDK on first use; if it is missing, say which extra installs it.

    `missing` replaces the generic message with the provider's own (the serverless providers name
    the SDK as users know it: "the modal provider needs the modal SDK").
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ArgosyError(
            missing or f"this provider needs the '{module}' package, which is not installed",
            fix=f"pip install 'argosy[{extra}]'",
        ) from exc


class KeyedApiProvider:
    """Construction and the lazily built API client, shared by providers keyed by one API key.

    Subclasses set the class attributes; the client is built on first use so that `plan()` and
    dry runs need no credentials.
    """

    name: str
    KEY_VARS: tuple[str, ...]
    KEYS_URL: str
    URL_ENV: str  # overrides the API base URL (tests, proxies)
    DEFAULT_URL: str
    client_class: Any  # (api_key, clock, base_url, transport, retry) -> client

    @property
    def credential_vars(self) -> tuple[str, ...]:
        return self.KEY_VARS

    def __init__(
        self,
        settings: Any,
        clock: Any = None,
        *,
        env: Mapping[str, str] | None = None,
        base_url: str | None = None,
        transport: Any = None,
        retry: Any = None,
    ) -> None:
        from argosy.core.clock import SystemClock

        self.settings = settings
        self.clock = clock or SystemClock()
        self._env = environ(env)
        self._base_url = base_url or self._env.get(self.URL_ENV) or self.DEFAULT_URL
        self._transport = transport
        self._retry = retry
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            found = first_env(self._env, self.KEY_VARS)
            if not found:
                raise ProviderAuthError(
                    f"{self.name}: {' or '.join(self.KEY_VARS)} is not set",
                    fix=f"create a key at {self.KEYS_URL}, then `export {self.KEY_VARS[0]}=...`",
                    provider=self.name,
                )
            self._client = self.client_class(
                found[1], self.clock, self._base_url, self._transport, self._retry
            )
        return self._client
