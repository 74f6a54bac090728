"""Placement strategies by name. A strategy scores every eligible offering at once: lower is better.

A scorer gets the eligible offerings' columns (price, gCO2/h, tokens/s, group codes) and returns one
score per offering. Round-robin is the exception (`rotating`): it takes the index's stable order and
rotates it by the caller's counter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from argosy.core.errors import unknown_name
from argosy.placement.index import FloatArray, IntArray, OfferingIndex
from argosy.placement.types import PlacementRequest

# Availability ranking: how likely the machine stays up. Interruptible capacity goes last;
# marketplace/community hosts come after data-centre capacity of the same kind.
_KIND_RISK = MappingProxyType({"local": 0.0, "vm": 1.0, "serverless": 2.0, "spot": 3.0})
_TIER_RISK = MappingProxyType({"community": 0.5, "interruptible": 0.5})
_RANK = 1e6  # a rank step outweighs any hourly price


@dataclass(frozen=True)
class Columns:
    """The eligible offerings, as columns."""

    index: OfferingIndex
    gid: IntArray  # each one's group
    price: FloatArray
    gco2: FloatArray
    tps: FloatArray  # NaN where no estimate


Scorer = Callable[[Columns, PlacementRequest], FloatArray]


@dataclass(frozen=True)
class Strategy:
    name: str
    summary: str
    score: Scorer
    needs_throughput: bool = False
    rotating: bool = False


def _cost(c: Columns, req: PlacementRequest) -> FloatArray:
    return c.price


def _cost_per_token(c: Columns, req: PlacementRequest) -> FloatArray:
    # $ per million generated tokens; offerings with no throughput estimate sort last.
    with np.errstate(divide="ignore", invalid="ignore"):
        out = c.price / (c.tps * 3600) * 1e6
    return np.where(np.isfinite(out) & (c.tps > 0), out, np.inf)


def _carbon(c: Columns, req: PlacementRequest) -> FloatArray:
    return c.gco2 + c.price * 1e-3  # price only breaks ties: a dollar weighs a milligram


def _balanced(c: Columns, req: PlacementRequest) -> FloatArray:
    # Each axis relative to its best eligible offering, equally weighted: 2.0 is the ideal.
    pos_p = c.price[c.price > 0]
    pos_g = c.gco2[c.gco2 > 0]
    bp = float(pos_p.min()) if pos_p.size else 1.0
    bg = float(pos_g.min()) if pos_g.size else 1.0
    return np.maximum(c.price, bp) / bp + np.maximum(c.gco2, bg) / bg


def _priority(c: Columns, req: PlacementRequest) -> FloatArray:
    ix = c.index
    last = float(len(req.priority))
    by_provider = np.full(len(ix.provider_names), last)
    by_pair = np.full(len(ix.pair_names), last)
    by_gpu = np.full(len(ix.gpu_names), last)
    for rank, name in reversed(list(enumerate(req.priority))):  # earlier entries win
        for i, p in enumerate(ix.provider_names):
            if p == name:
                by_provider[i] = rank
        for i, (p, r) in enumerate(ix.pair_names):  # type: ignore[misc]
            if f"{p}/{r}" == name:
                by_pair[i] = rank
        for i, g in enumerate(ix.gpu_names):
            if g == name:
                by_gpu[i] = rank
    rank = np.minimum(np.minimum(by_provider[ix.g_provider], by_pair[ix.g_pair]), by_gpu[ix.g_gpu])
    return rank[c.gid] * _RANK + c.price


def _availability(c: Columns, req: PlacementRequest) -> FloatArray:
    ix = c.index
    kind_risk = np.array([_KIND_RISK.get(str(k), 3.0) for k in ix.kind_names])
    tier_risk = np.array([_TIER_RISK.get(str(t), 0.0) for t in ix.tier_names])
    risk = kind_risk[ix.g_kind] + tier_risk[ix.g_tier]
    return risk[c.gid] * _RANK + c.price


STRATEGIES: MappingProxyType[str, Strategy] = MappingProxyType(
    {
        s.name: s
        for s in (
            Strategy("cost", "lowest $ per hour", _cost),
            Strategy(
                "cost-per-token",
                "lowest $ per million tokens, decode speed estimated from memory bandwidth",
                _cost_per_token,
                needs_throughput=True,
            ),
            Strategy("carbon", "lowest gCO2 per hour (GPU TDP x grid intensity)", _carbon),
            Strategy(
                "balanced",
                "price and carbon, each relative to the best candidate, equally weighted",
                _balanced,
            ),
            Strategy(
                "priority",
                "the request's priority list (providers, provider/region or GPUs), then price",
                _priority,
            ),
            Strategy(
                "availability",
                "least interruptible first (local, vm, serverless, spot), then price",
                _availability,
            ),
            Strategy(
                "round-robin", "rotate through eligible offerings in a stable order", _cost, rotating=True
            ),
        )
    }
)


def get_strategy(name: str) -> Strategy:
    strategy = STRATEGIES.get(name)
    if strategy is None:
        raise unknown_name("placement strategy", name, STRATEGIES, fix="pick one with --objective")
    return strategy
