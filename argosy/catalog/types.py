"""Catalog vocabulary shared by placement, providers and the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

OfferingKind = Literal["vm", "spot", "serverless", "local"]


@dataclass(frozen=True)
class Offering:
    """One thing we can buy: provider x region x instance type x GPU x count x kind, at a price."""

    provider: str
    region: str
    instance_type: str
    gpu: str | None  # canonical GPU name, None for CPU-only
    gpu_count: int
    kind: OfferingKind
    price_per_hour: float | None  # USD; None means unknown, never free
    vcpus: int | None = None
    ram_gb: float | None = None
    per_second_billing: bool = False
    available: bool = True
    source: str = ""
    fetched_at: str = ""  # ISO date or datetime
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    # A provider's sub-offer of the same instance type: RunPod "secure"/"community", Vast.ai
    # "interruptible". Part of the identity (two tiers of one GPU type are two offerings).
    tier: str = ""

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.region}/{self.instance_type}/{self.kind}"
