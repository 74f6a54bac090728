"""Backends and the backend table.

A `Backend` is the live state of one upstream: load, health, latency. The table is an immutable
tuple swapped in one assignment, so a request that picked a backend keeps using that object (and
finishes there) even if the admin API replaces the table meanwhile.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from argosy.router.config import BackendSpec, HealthConfig
from argosy.router.upstream import Pool

# Health states. `ejected` backends get no traffic until `retry_at`, then one trial (half-open).
HEALTHY = "healthy"
UNHEALTHY = "unhealthy"  # failed an active probe
EJECTED = "ejected"  # too many consecutive request failures
HALF_OPEN = "half-open"

EWMA_ALPHA = 0.2


@dataclass(eq=False)
class Backend:
    spec: BackendSpec
    pool: Pool
    in_flight: int = 0
    state: str = HEALTHY
    consecutive_failures: int = 0
    ejections: int = 0
    retry_at: float = 0.0
    trial_in_flight: bool = False
    ewma_latency_s: float | None = None
    ewma_ttft_s: float | None = None
    requests: int = 0
    failures: int = 0
    last_error: str | None = None
    models: list[dict[str, object]] = field(default_factory=list)
    rejects_stream_options: bool = False  # learnt from a 400: do not ask this upstream for usage
    extra_head: bytes = b""  # spec.headers as request-header lines, encoded once

    def __post_init__(self) -> None:
        self.set_spec(self.spec)

    def set_spec(self, spec: BackendSpec) -> None:
        self.spec = spec
        self.extra_head = b"".join(k.encode() + b": " + v.encode() + b"\r\n" for k, v in spec.headers.items())

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def tier(self) -> str:
        return self.spec.tier

    @property
    def saturated(self) -> bool:
        m = self.spec.max_concurrency
        return m is not None and self.in_flight >= m

    def available(self, now: float) -> bool:
        """May this backend take a request now (health only, not load)?"""
        if self.state == HEALTHY:
            return True
        if self.state == EJECTED and now >= self.retry_at:
            self.state = HALF_OPEN
        return self.state == HALF_OPEN and not self.trial_in_flight

    # outcomes, reported by the proxy
    def on_success(self, latency_s: float, ttft_s: float | None) -> None:
        self.consecutive_failures = 0
        if self.state in (HALF_OPEN, EJECTED):
            self.state = HEALTHY
            self.ejections = 0
        a = EWMA_ALPHA
        self.ewma_latency_s = (
            latency_s if self.ewma_latency_s is None else a * latency_s + (1 - a) * self.ewma_latency_s
        )
        if ttft_s is not None:
            self.ewma_ttft_s = ttft_s if self.ewma_ttft_s is None else a * ttft_s + (1 - a) * self.ewma_ttft_s

    def on_failure(self, error: str, health: HealthConfig, now: float) -> bool:
        """Record a failed request; True when this failure ejects the backend."""
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = error
        if self.state == HALF_OPEN or (
            self.state == HEALTHY and self.consecutive_failures >= health.eject_after_failures
        ):
            self.ejections += 1
            backoff = min(health.eject_max_s, health.eject_base_s * 2 ** (self.ejections - 1))
            self.state = EJECTED
            self.retry_at = now + backoff
            return True
        return False

    def on_probe(self, ok: bool, error: str | None) -> None:
        if ok:
            if self.state == UNHEALTHY:
                self.state = HEALTHY
                self.consecutive_failures = 0
            elif self.state == EJECTED:
                # A passing probe shortens the back-off to a half-open trial, not full re-admission:
                # /health can pass while completions still fail.
                self.retry_at = min(self.retry_at, time.monotonic())
        else:
            self.last_error = error
            if self.state in (HEALTHY, HALF_OPEN):
                self.state = UNHEALTHY

    def status(self) -> dict[str, object]:
        return {
            "name": self.name,
            "url": self.spec.url,
            "tier": self.tier,
            "weight": self.spec.weight,
            "max_concurrency": self.spec.max_concurrency,
            "state": self.state,
            "in_flight": self.in_flight,
            "ewma_latency_ms": None if self.ewma_latency_s is None else round(self.ewma_latency_s * 1000, 3),
            "ewma_ttft_ms": None if self.ewma_ttft_s is None else round(self.ewma_ttft_s * 1000, 3),
            "requests": self.requests,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
        }


def build_table(specs: list[BackendSpec], old: tuple[Backend, ...] = ()) -> tuple[Backend, ...]:
    """A new table; a backend with the same name and URL keeps its pool, health and latency."""
    by_key = {(b.name, b.spec.url): b for b in old}
    out = []
    for spec in specs:
        prev = by_key.get((spec.name, spec.url))
        if prev is not None:
            prev.set_spec(spec)  # weight, tier, limits and headers may change in place
            out.append(prev)
        else:
            out.append(Backend(spec=spec, pool=Pool(spec.url)))
    return tuple(out)
