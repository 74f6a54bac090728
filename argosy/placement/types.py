"""Placement vocabulary: what is asked (PlacementRequest) and what is answered (Placement)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from argosy.catalog.offerings import human_age, offering_key
from argosy.catalog.sizing import Requirement
from argosy.catalog.types import Offering
from argosy.core.errors import ArgosyError


@dataclass(frozen=True)
class PlacementRequest:
    """Where may this workload run? Empty tuples mean "no restriction"."""

    requirement: Requirement | None = None  # what a model needs; None = no memory need (e.g. a sandbox)
    min_vram_gb: float | None = None  # a raw per-GPU VRAM floor, for workloads that are not models
    gpu: str | None = None  # require this GPU (any spelling; resolved to the canonical name)
    kinds: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    exclude_providers: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    exclude_regions: tuple[str, ...] = ()
    max_price_per_hour: float | None = None
    allow_cpu: bool | None = None  # None: only for models small enough (data/cpu.yaml max_auto_weights_gb)
    priority: tuple[
        str, ...
    ] = ()  # for the `priority` strategy: providers, "provider/region" or GPUs, best first
    round_robin_index: int = 0  # for `round-robin`: the caller keeps the counter (no hidden state here)
    max_fallbacks: int = 5


@dataclass(frozen=True)
class Candidate:
    """An offering that passed the filters, with the figures strategies score on."""

    offering: Offering
    price_per_hour: float
    gco2_per_hour: float
    tp: int  # tensor-parallel size used (0 for CPU)
    tokens_per_s: float | None
    score: float

    @property
    def usd_per_mtok(self) -> float | None:
        if not self.tokens_per_s:
            return None
        return self.price_per_hour / (self.tokens_per_s * 3600) * 1e6

    def label(self) -> str:
        o = self.offering
        hw = f"{o.gpu_count}x {o.gpu}" if o.gpu else "CPU"
        tier = f" {o.tier}" if o.tier else ""
        return f"{o.provider} {o.instance_type} ({hw}, {o.kind}{tier}, {o.region})"

    def to_dict(self) -> dict[str, Any]:
        o = self.offering
        return {
            "key": offering_key(o),
            "provider": o.provider,
            "region": o.region,
            "instance_type": o.instance_type,
            "gpu": o.gpu,
            "gpu_count": o.gpu_count,
            "kind": o.kind,
            "tier": o.tier or None,
            "price_per_hour": self.price_per_hour,
            "per_second_billing": o.per_second_billing,
            "gco2_per_hour": round(self.gco2_per_hour, 1),
            "tensor_parallel": self.tp,
            "tokens_per_s": round(self.tokens_per_s, 1) if self.tokens_per_s else None,
            "usd_per_mtok": round(self.usd_per_mtok, 4) if self.usd_per_mtok else None,
            "score": self.score,
            "source": o.source,
            "fetched_at": o.fetched_at,
        }


@dataclass(frozen=True)
class Rejection:
    offering: Offering
    reason: str  # a code: see REASONS
    detail: str

    def to_dict(self) -> dict[str, Any]:
        o = self.offering
        return {
            "key": offering_key(o),
            "gpu": o.gpu,
            "gpu_count": o.gpu_count,
            "price_per_hour": o.price_per_hour,
            "reason": self.reason,
            "detail": self.detail,
        }


REASONS = {
    "gpu": "a different GPU than asked for",
    "kind": "kind not allowed",
    "provider": "provider not allowed",
    "region": "region not allowed",
    "unavailable": "no capacity reported",
    "no-price": "price unknown (never treated as free)",
    "over-budget": "over the price cap",
    "vram": "not enough GPU memory",
    "ram": "not enough RAM for CPU inference",
    "cpu": "CPU-only, and the model is too big for CPU inference",
    "unknown-gpu": "GPU not in the spec table",
}


@dataclass
class Placement:
    strategy: str
    choice: Candidate
    fallbacks: list[Candidate]
    considered: int
    eligible: int
    rejected: dict[str, int]
    notable_rejections: list[Rejection]
    explanation: list[str]
    requirement: Requirement | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "requirement": self.requirement.to_dict() if self.requirement else None,
            "choice": self.choice.to_dict(),
            "fallbacks": [c.to_dict() for c in self.fallbacks],
            "considered": self.considered,
            "eligible": self.eligible,
            "rejected": self.rejected,
            "notable_rejections": [r.to_dict() for r in self.notable_rejections],
            "explanation": self.explanation,
        }


class NoPlacementError(ArgosyError):
    """Nothing passes the filters. `details` carries the requirement and the counts, for the API."""

    http_status = 422

    def __init__(self, message: str, fix: str | None = None, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, fix)
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {**super().to_dict(), "details": self.details}


def describe_age(seconds: float | None, stale: bool) -> str:
    return f"{human_age(seconds)} old{', stale' if stale else ''}"
