"""What every serverless/orchestrator endpoint provider shares: prices, cold starts, auth, vLLM args.

Every endpoint Argosy creates reports three things the router and `argosy cost` need:

- its price per second (from `serverless_prices.yaml`, a published list price with its source),
- a cold-start estimate and where the figure comes from (our benchmark when the caller passes one,
  else the provider's published figure, else "unknown" — never a made-up number),
- how the router authenticates to it (`auth_scheme`, printable) and the header it injects
  (`auth_header`, never printed, never shown to clients, never logged).

Plans are printable, so secrets never appear in a payload: a payload holds a placeholder
(`<secret:NAME>`) and `fill_secrets` substitutes the value from `Plan.secrets` only at apply time.
"""

from __future__ import annotations

import re
import secrets as _secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from argosy.catalog.types import Offering
from argosy.core.errors import ConfigError, did_you_mean, unknown_name
from argosy.providers.base import MANAGED_LABEL, Endpoint, EndpointRequest

ENDPOINT_LABEL = "argosy-endpoint"
NAME_PREFIX = "argosy-"
# vLLM serves /health without the API key and guards /v1/* with it, so probes need no token.
VLLM_PORT = 8000
HEALTH_PATH = "/health"
# One pinned vLLM image for the container-based providers (Cloud Run, Baseten, Kubernetes):
# a floating tag would make the same plan deploy different engines on different days.
VLLM_IMAGE = "vllm/vllm-openai:v0.10.1.1"
_SECRET_RE = re.compile(r"<secret:([A-Z0-9_]+)>")


# -- prices ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerlessPrice:
    provider: str
    gpu: str  # canonical name
    provider_gpu: str  # what the provider's API calls it
    gpu_per_second: float
    billing: str  # "per-second" | "per-minute"
    source: str
    read_at: str
    verified: bool = True
    cpu_core_per_second: float = 0.0
    memory_gib_per_second: float = 0.0

    def per_second(self, gpu_count: int = 1, cpu: float = 0.0, memory_gib: float = 0.0) -> float:
        """The price of one running replica per second: GPUs plus any separately billed CPU/memory."""
        return (
            self.gpu_per_second * gpu_count
            + self.cpu_core_per_second * cpu
            + self.memory_gib_per_second * memory_gib
        )

    @property
    def source_line(self) -> str:
        flag = "" if self.verified else " (recalled figure, not re-read: verify)"
        return f"{self.source}, read {self.read_at}, billed {self.billing}{flag}"


def _price_table() -> dict[str, Any]:
    # Re-read on each call: a few KB, and no module-level cache to go stale under tests.
    text = resources.files("argosy.providers.templates").joinpath("serverless_prices.yaml").read_text()
    return yaml.safe_load(text)


def prices(provider: str) -> list[ServerlessPrice]:
    table = _price_table().get(provider)
    if table is None:
        raise unknown_name("serverless price table", provider, _price_table())
    return [
        ServerlessPrice(
            provider=provider,
            gpu=row["gpu"],
            provider_gpu=row["id"],
            gpu_per_second=float(row["per_second"]),
            billing=table["billing"],
            source=table["source"],
            read_at=str(table["read_at"]),
            verified=bool(row.get("verified", True)),
            cpu_core_per_second=float(table.get("cpu_core_per_second", 0.0)),
            memory_gib_per_second=float(table.get("memory_gib_per_second", 0.0)),
        )
        for row in table["gpus"]
    ]


def canonical_gpu(name: str) -> str:
    """The catalog's canonical name for `name` ('H100' -> 'H100-SXM'), or `name` if the catalog has none."""
    from argosy.catalog.gpus import load_gpus

    return load_gpus().find(name) or name


def price_for(provider: str, gpu: str) -> ServerlessPrice:
    table = prices(provider)
    wanted = {gpu, canonical_gpu(gpu)}
    for p in table:
        if wanted & {p.gpu, p.provider_gpu}:
            return p
    names = [p.gpu for p in table]
    near = did_you_mean(gpu, names)
    raise ConfigError(
        f"{provider} has no serverless GPU '{gpu}'" + (f"; did you mean '{near}'?" if near else ""),
        fix=f"pick one of: {', '.join(names)}",
    )


def price_offerings(provider: str, region: str = "any") -> list[Offering]:
    """Published prices as catalog offerings (kind `serverless`), labelled as list prices, not live."""
    return [
        Offering(
            provider=provider,
            region=region,
            instance_type=p.provider_gpu,
            gpu=p.gpu,
            gpu_count=1,
            kind="serverless",
            price_per_hour=round(p.gpu_per_second * 3600, 6),
            per_second_billing=p.billing == "per-second",
            source=f"published list price: {p.source_line}",
            fetched_at=p.read_at,
            extra={"gpu_price_per_second": f"{p.gpu_per_second:.8f}", "billing": p.billing},
        )
        for p in prices(provider)
    ]


# -- cold starts and auth -------------------------------------------------------------------------


@dataclass(frozen=True)
class ColdStart:
    seconds: float | None  # None: no measured or published figure; say so rather than guess
    source: str
    measured: bool = False

    def line(self) -> str:
        if self.seconds is None:
            return f"cold start: unknown ({self.source})"
        kind = "measured" if self.measured else "published"
        return f"cold start: ~{self.seconds:.0f}s ({kind}: {self.source})"


def cold_start(request: EndpointRequest, published: ColdStart) -> ColdStart:
    """Our own benchmark figure when the caller passes one (`extra['cold_start_s']`), else the published one."""
    measured = request.extra.get("cold_start_s")
    if measured is not None:
        source = str(request.extra.get("cold_start_source", "argosy benchmark"))
        return ColdStart(float(measured), source, measured=True)
    return published


@dataclass(frozen=True)
class EndpointFacts:
    """What `--dry-run` prints about an endpoint besides its payload."""

    price_per_second: float | None
    price_source: str
    cold_start: ColdStart
    auth_scheme: str  # how the router authenticates; never the secret itself
    billing_note: str = ""

    def notes(self) -> list[str]:
        price = "unknown" if self.price_per_second is None else f"${self.price_per_second:.6f}/s per replica"
        lines = [
            f"price: {price} ({self.price_source})",
            self.cold_start.line(),
            f"router auth: {self.auth_scheme} (injected by the router; never shown to clients)",
        ]
        if self.billing_note:
            lines.append(f"billing: {self.billing_note}")
        return lines


@dataclass
class ServerlessEndpoint(Endpoint):
    """An Endpoint plus what the router and the ledger need to know about it."""

    cold_start_s: float | None = None
    cold_start_source: str = ""
    auth_scheme: str = ""
    model: str = ""
    # Everything created for this endpoint (kind -> provider id), so a partial deploy can be destroyed.
    resources: dict[str, str] = field(default_factory=dict)
    detail: str = ""


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_token() -> str:
    """A fresh 256-bit endpoint token (vLLM `--api-key`); made at apply time, never in a plan."""
    return _secrets.token_urlsafe(32)


# -- names, labels, request checking --------------------------------------------------------------


def resource_name(name: str, limit: int = 63) -> str:
    """A DNS-1123 style name (lowercase, digits, dashes) starting with `argosy-`."""
    base = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "endpoint"
    if not base.startswith(NAME_PREFIX):
        base = NAME_PREFIX + base
    return base[:limit].rstrip("-")


def labels(name: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Labels for everything we create; the managed marker wins over anything a caller passed."""
    return {**(extra or {}), MANAGED_LABEL: "true", ENDPOINT_LABEL: resource_name(name)}


def served_name(request: EndpointRequest) -> str:
    """The model name clients send: the router's deployment name unless the caller overrides it."""
    return str(request.extra.get("served_model_name") or request.name)


def check_extra(provider: str, extra: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Strict options: an unknown `extra` key is an error naming the nearest valid one."""
    allowed = sorted({*allowed, "cold_start_s", "cold_start_source", "served_model_name", "gpu"})
    for key in extra:
        if key not in allowed:
            near = did_you_mean(key, allowed)
            raise ConfigError(
                f"{provider}: unknown endpoint option '{key}'"
                + (f"; did you mean '{near}'?" if near else ""),
                fix=f"valid options for {provider}: {', '.join(allowed)}",
            )


def requested_gpu(request: EndpointRequest, default: str) -> tuple[str, int]:
    """(canonical GPU, count) from the offering, else `extra['gpu']` ('L4' or 'L4:2'), else the default."""
    if request.offering is not None and request.offering.gpu:
        return request.offering.gpu, max(1, request.offering.gpu_count)
    spec = str(request.extra.get("gpu") or default)
    name, _, count = spec.partition(":")
    try:
        n = int(count) if count else 1
    except ValueError as exc:
        raise ConfigError(
            f"bad GPU spec '{spec}'", fix="write GPU or GPU:COUNT, e.g. L4 or H100-80GB:2"
        ) from exc
    return name, n


def vllm_args(
    model: str, served: str, *, port: int = VLLM_PORT, gpu_count: int = 1, max_model_len: int | None = None
) -> list[str]:
    """`vllm serve` arguments shared by every provider that runs vLLM itself."""
    args = [model, "--served-model-name", served, "--host", "0.0.0.0", "--port", str(port)]
    if gpu_count > 1:
        args += ["--tensor-parallel-size", str(gpu_count)]
    if max_model_len:
        args += ["--max-model-len", str(max_model_len)]
    return args


# -- secret placeholders --------------------------------------------------------------------------


def secret_ref(name: str) -> str:
    return f"<secret:{name}>"


def fill_secrets(value: Any, secrets: Mapping[str, str]) -> Any:
    """A deep copy of `value` with every `<secret:NAME>` replaced; a missing secret is an error."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in secrets:
                raise ConfigError(
                    f"the plan needs secret {m.group(1)} but it was not provided",
                    fix=f"export {m.group(1)}=... before deploying (it is never stored in the plan)",
                )
            return secrets[m.group(1)]

        return _SECRET_RE.sub(sub, value)
    if isinstance(value, dict):
        return {k: fill_secrets(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_secrets(v, secrets) for v in value]
    return value
