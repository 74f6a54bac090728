"""Placement strategies by name. A strategy scores an eligible offering: lower is better.

Scores must not decrease as price rises among offerings that are otherwise alike (same group in the
OfferingIndex): that lets placement walk each group cheapest-first and stop after the top few.
Round-robin is the exception (`rotating`): it orders by a stable key and rotates by the caller's counter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from argosy.catalog.types import Offering
from argosy.core.errors import unknown_name
from argosy.placement.index import OfferingGroup
from argosy.placement.types import PlacementRequest

# What prepare() sees of each eligible group: its cheapest price and its gCO2/h.
GroupFigures = tuple[float, float]
Context = Mapping[str, float]
# (offering, $/h, gCO2/h, tokens/s or None, request, context) -> score
Scorer = Callable[[Offering, float, float, float | None, PlacementRequest, Context], float]

# Availability ranking: how likely the machine stays up. Interruptible capacity goes last;
# marketplace/community hosts come after data-centre capacity of the same kind.
_KIND_RISK = MappingProxyType({"local": 0.0, "vm": 1.0, "serverless": 2.0, "spot": 3.0})
_TIER_RISK = MappingProxyType({"community": 0.5, "interruptible": 0.5})
_RANK = 1e6  # a rank step outweighs any hourly price


@dataclass(frozen=True)
class Strategy:
    name: str
    summary: str
    score: Scorer
    prepare: Callable[[Sequence[GroupFigures], PlacementRequest], Context] | None = None
    needs_throughput: bool = False
    rotating: bool = False


def _cost(
    o: Offering, price: float, g: float, tps: float | None, req: PlacementRequest, ctx: Context
) -> float:
    return price


def _cost_per_token(
    o: Offering, price: float, g: float, tps: float | None, req: PlacementRequest, ctx: Context
) -> float:
    # $ per million generated tokens; offerings with no throughput estimate sort last.
    return price / (tps * 3600) * 1e6 if tps else float("inf")


def _carbon(
    o: Offering, price: float, g: float, tps: float | None, req: PlacementRequest, ctx: Context
) -> float:
    return g + price * 1e-3  # price only breaks ties: a dollar weighs a milligram


def _balanced_prepare(groups: Sequence[GroupFigures], req: PlacementRequest) -> Context:
    return {
        "best_price": min((p for p, _ in groups if p > 0), default=1.0),
        "best_g": min((g for _, g in groups if g > 0), default=1.0),
    }


def _balanced(
    o: Offering, price: float, g: float, tps: float | None, req: PlacementRequest, ctx: Context
) -> float:
    # Each axis relative to its best candidate, equally weighted: 2.0 is the ideal.
    bp, bg = ctx["best_price"], ctx["best_g"]
    return max(price, bp) / bp + max(g, bg) / bg


def _priority(
    o: Offering, price: float, g: float, tps: float | None, req: PlacementRequest, ctx: Context
) -> float:
    order = req.priority
    last = len(order)
    rank = last
    for i, name in enumerate(order):
        if name in (o.provider, f"{o.provider}/{o.region}", o.gpu):
            rank = i
            break
    return rank * _RANK + price


def _availability(
    o: Offering, price: float, g: float, tps: float | None, req: PlacementRequest, ctx: Context
) -> float:
    risk = _KIND_RISK.get(o.kind, 3.0) + _TIER_RISK.get(o.tier, 0.0)
    return risk * _RANK + price


def group_order_key(g: OfferingGroup) -> tuple[str, str, str, str, int, str, float]:
    """The stable order round-robin rotates through (an OfferingGroup's identity)."""
    return (g.provider, g.region, g.kind, g.gpu or "", g.gpu_count, g.tier, g.ram_gb or 0.0)


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
                _balanced_prepare,
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
