"""Routing policies, registered by name and composed as filter -> score -> pick.

Every policy first filters (healthy, not already tried for this request, not saturated) and applies
the tier rule: fallback backends (serverless, billed per request) are used only when no primary can
take the request. `spot-first` additionally spills to the fallback tier as soon as every primary is
saturated; the other policies would rather queue for a primary slot. Then the policy's scorer ranks
what is left and the picker takes the best.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from argosy.core.registry import Entry, Registry
from argosy.router.backends import Backend


@dataclass
class RouteContext:
    """What a policy may know about the request. `affinity_key` is only filled for policies that ask."""

    path: str
    affinity_key: bytes | None = None


class Policy(Protocol):
    name: str
    needs_body: bool  # True if the policy reads the request body (the proxy then parses it)

    def pick(self, candidates: Sequence[Backend], ctx: RouteContext) -> Backend | None: ...


def usable(
    backends: Sequence[Backend],
    now: float,
    exclude: frozenset[Backend] | set[Backend],
    spill_on_saturation: bool,
) -> list[Backend]:
    """The filter stage, tier rule included. Empty means: wait (queue) or give up."""
    primaries: list[Backend] = []
    fallbacks: list[Backend] = []
    saturated_primary = False
    for b in backends:
        if b in exclude or not b.available(now):
            continue
        if b.saturated:
            if b.spec.tier == "primary":
                saturated_primary = True
            continue
        (primaries if b.spec.tier == "primary" else fallbacks).append(b)
    if primaries:
        return primaries
    if saturated_primary and not spill_on_saturation:
        return []
    return fallbacks


class RoundRobin:
    name = "round-robin"
    needs_body = False
    spill_on_saturation = False

    def __init__(self) -> None:
        self._current: dict[str, float] = {}

    def pick(self, candidates: Sequence[Backend], ctx: RouteContext) -> Backend | None:
        """nginx's smooth weighted round robin: exact shares, and heavy backends are interleaved."""
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        cur = self._current
        if len(cur) > 4 * len(candidates):  # forget backends that left the table
            cur.clear()
        total = 0.0
        best = None
        best_w = 0.0
        for b in candidates:
            w = cur.get(b.name, 0.0) + b.spec.weight
            cur[b.name] = w
            total += b.spec.weight
            if best is None or w > best_w:
                best, best_w = b, w
        assert best is not None
        cur[best.name] = best_w - total
        return best


class LeastOutstanding:
    """Fewest in-flight requests per unit of weight; ties go round-robin so idle backends share."""

    name = "least-outstanding"
    needs_body = False
    spill_on_saturation = False

    def __init__(self) -> None:
        self._n = 0

    def pick(self, candidates: Sequence[Backend], ctx: RouteContext) -> Backend | None:
        if not candidates:
            return None
        self._n += 1
        n = len(candidates)
        start = self._n % n
        best = None
        best_score = 0.0
        for i in range(n):
            b = candidates[(start + i) % n]
            s = (b.in_flight + 1) / b.spec.weight
            if best is None or s < best_score:
                best, best_score = b, s
        return best


class SpotFirst(LeastOutstanding):
    """Least-outstanding over primaries (spot/VM/local); fallbacks once all primaries are down or full."""

    name = "spot-first"
    spill_on_saturation = True


class PowerOfTwo:
    """Two random candidates, keep the less loaded: near least-outstanding without scanning all."""

    name = "power-of-two"
    needs_body = False
    spill_on_saturation = False

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def pick(self, candidates: Sequence[Backend], ctx: RouteContext) -> Backend | None:
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        a, b = self._rng.sample(list(candidates), 2)
        return a if (a.in_flight + 1) / a.spec.weight <= (b.in_flight + 1) / b.spec.weight else b


class PrefixAffinity:
    """Consistent hashing on the prompt's leading text (or the `user` field), with bounded load.

    Requests sharing a prefix land on the same replica so its KV cache is reused. Bounded load
    (Mirrokni et al.): a backend whose in-flight count exceeds `load_factor` times the average is
    skipped for the next one on the ring, so a hot prefix cannot melt one replica.
    """

    name = "prefix-affinity"
    needs_body = True
    spill_on_saturation = False
    VNODES = 64

    def __init__(self, load_factor: float = 1.25) -> None:
        self.load_factor = load_factor
        self._ring_for: tuple[tuple[str, ...], list[int], list[str]] | None = None
        self._fallback = LeastOutstanding()

    @staticmethod
    def _h(data: bytes) -> int:
        return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")

    def _ring(self, names: tuple[str, ...]) -> tuple[list[int], list[str]]:
        if self._ring_for is None or self._ring_for[0] != names:
            points = sorted((self._h(f"{n}#{i}".encode()), n) for n in names for i in range(self.VNODES))
            self._ring_for = (names, [p for p, _ in points], [n for _, n in points])
        return self._ring_for[1], self._ring_for[2]

    def pick(self, candidates: Sequence[Backend], ctx: RouteContext) -> Backend | None:
        if not candidates:
            return None
        if ctx.affinity_key is None:
            return self._fallback.pick(candidates, ctx)
        by_name = {b.name: b for b in candidates}
        hashes, names = self._ring(tuple(sorted(by_name)))
        total = sum(b.in_flight for b in candidates) + 1
        bound = max(1.0, self.load_factor * total / len(candidates))
        i = bisect.bisect(hashes, self._h(ctx.affinity_key)) % len(hashes)
        seen: set[str] = set()
        for k in range(len(hashes)):
            name = names[(i + k) % len(hashes)]
            if name in seen:
                continue
            seen.add(name)
            b = by_name[name]
            if b.in_flight + 1 <= bound:
                return b
            if len(seen) == len(by_name):
                break
        return by_name[names[i]]


POLICIES = Registry(
    kind="routing policy",
    entry_point_group="argosy.routing_policies",
    entries={
        "round-robin": Entry("argosy.router.policies:RoundRobin", summary="cycle through backends by weight"),
        "least-outstanding": Entry(
            "argosy.router.policies:LeastOutstanding", summary="fewest in-flight (default)"
        ),
        "power-of-two": Entry("argosy.router.policies:PowerOfTwo", summary="less loaded of two random"),
        "spot-first": Entry(
            "argosy.router.policies:SpotFirst", summary="primaries until full or down, then fallbacks"
        ),
        "prefix-affinity": Entry(
            "argosy.router.policies:PrefixAffinity",
            summary="consistent hash on the prompt prefix, bounded load",
        ),
    },
)


def make_policy(name: str, load_factor: float = 1.25) -> Policy:
    cls = POLICIES.load(name)
    if cls is PrefixAffinity:
        return PrefixAffinity(load_factor)
    return cls()
