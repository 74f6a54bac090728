"""Small capability interfaces that providers implement. Callers check capabilities, never names.

- `Instances`: machines we hold (plan -> provision -> status/list -> terminate).
- `Endpoints`: serverless endpoints (plan -> deploy -> status -> destroy).
- `EndpointUsage`: the usage an endpoint was billed, from the provider's billing API.
- `Offerings`: live instance types and prices.
- `PriceListing`: `Offerings` from an API that needs the account's credentials; the catalog's
  `argosy catalog refresh` uses these (see `argosy.providers.price_sources`).
- `SpotNotice`: how a node learns, from the inside, that its spot VM is about to be reclaimed.
- `Preflight`: are credentials, tools and quotas in place; each failed check carries a `fix`.
- `SharedFilesystem`: the provider's nodes see the server's filesystem (the same machine), so a
  workload may use the server's paths directly instead of having its inputs and output shipped.

`plan()` is pure: it renders the exact payload a provider will receive, so it can be printed
(`--dry-run`) and unit-tested byte for byte. Only `provision`/`deploy`/`terminate`/`destroy` act.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from argosy.catalog.types import Offering

InstanceState = Literal["provisioning", "running", "terminated", "preempted", "failed", "unknown"]
# Every resource Argosy creates carries this label/tag so list() and cleanup never touch others.
MANAGED_LABEL = "argosy-managed"


@dataclass
class InstanceRequest:
    """What a caller wants: a node for a workload, on a chosen offering."""

    name: str
    offering: Offering
    server_url: str = ""
    agent_token: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    ssh_public_key: str | None = None
    disk_gb: int = 100


@dataclass
class Plan:
    """The pure, printable result of deciding what to create."""

    provider: str
    action: str  # "provision" | "deploy" | ...
    offering: Offering | None
    payload: dict[str, Any]  # the exact API payload
    artifacts: dict[str, str] = field(default_factory=dict)  # rendered files: cloud-init, engine command...
    estimated_cost_per_hour: float | None = None
    notes: list[str] = field(default_factory=list)
    # Tokens the apply step needs but a printed plan must never show.
    secrets: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass
class Instance:
    provider: str
    instance_id: str
    name: str
    state: InstanceState
    region: str = ""
    address: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    price_per_hour: float | None = None
    reason: str = ""  # e.g. why it was preempted or failed


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str = ""
    fix: str | None = None


@runtime_checkable
class Instances(Protocol):
    name: str

    def plan(self, request: InstanceRequest) -> Plan: ...

    def provision(self, plan: Plan) -> Instance: ...

    def status(self, instance_id: str) -> Instance: ...

    def list(self) -> list[Instance]: ...

    def terminate(self, instance_id: str) -> None: ...


@dataclass
class EndpointRequest:
    name: str
    model: str
    offering: Offering | None = None
    min_workers: int = 0
    max_workers: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Endpoint:
    provider: str
    endpoint_id: str
    name: str
    state: str
    url: str | None = None
    auth_header: dict[str, str] = field(default_factory=dict, repr=False)  # injected by the router only
    price_per_second: float | None = None


@runtime_checkable
class Endpoints(Protocol):
    name: str

    def plan_endpoint(self, request: EndpointRequest) -> Plan: ...

    def deploy(self, plan: Plan) -> Endpoint: ...

    def endpoint_status(self, endpoint_id: str) -> Endpoint: ...

    def destroy(self, endpoint_id: str) -> None: ...


@dataclass(frozen=True)
class UsageRecord:
    """One billing bucket of one endpoint, as the provider's own billing API reports it."""

    start_ts: float  # the bucket's start (epoch seconds, UTC)
    end_ts: float  # its end, exclusive
    cost_usd: float  # what the provider billed for the bucket
    seconds: float | None = None  # billed time, where the provider reports it (RunPod does, Modal not)


@runtime_checkable
class EndpointUsage(Protocol):
    """`Endpoints` whose provider documents an API for the usage it billed an endpoint.

    Without it the server estimates a fallback's spend from the router's busy seconds.
    """

    name: str
    usage_source: str  # the documented call read, for people (shown with every measured ledger row)

    def endpoint_usage(self, endpoint_id: str, since: float, until: float) -> list[UsageRecord] | None:
        """Billed buckets overlapping [since, until); None if this account or endpoint has no usage
        to read (the caller then estimates). Buckets still in progress may grow on a later call."""
        ...


@runtime_checkable
class Offerings(Protocol):
    name: str

    def offerings(self) -> list[Offering]: ...


@runtime_checkable
class PriceListing(Protocol):
    """`Offerings` read from the provider's own API with the account's credentials.

    Implementers take `(settings, clock, env=...)` so the refresh can hand them its environment.
    """

    name: str
    price_api: str  # what is called, for people
    price_doc_url: str
    credential_vars: tuple[str, ...]  # any one of these environment variables is enough

    def offerings(self) -> list[Offering]: ...


@runtime_checkable
class SpotNotice(Protocol):
    """A spot machine's advance notice of its own reclaim, read on the node (instance metadata)."""

    name: str

    def spot_notice(self) -> str | None:
        """A reason if this machine was told it will be reclaimed, else None; never raises."""
        ...


@runtime_checkable
class Preflight(Protocol):
    name: str

    def preflight(self) -> list[CheckResult]: ...


@runtime_checkable
class SharedFilesystem(Protocol):
    """Nodes of this provider read and write the server's own paths (e.g. `local`). Without this,
    a training job's dataset and base model are fetched by the node and its output uploaded back."""

    shares_server_filesystem: bool
