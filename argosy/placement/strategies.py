"""Placement strategies by name. A strategy turns the eligible candidates' figures into a score:
lower is better. Each is a pure function of (candidate figures, request, all candidates' figures)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from argosy.catalog.types import Offering
from argosy.core.errors import unknown_name
from argosy.placement.types import PlacementRequest

# (offering, price $/h, gCO2/h, tokens/s or None) -> score
Row = tuple[Offering, float, float, float | None]
Scorer = Callable[[Sequence[Row], PlacementRequest], list[float]]

# Availability ranking: how likely the machine stays up. Interruptible capacity goes last;
# marketplace/community hosts come after data-centre capacity of the same kind.
_KIND_RISK = MappingProxyType({"local": 0.0, "vm": 1.0, "serverless": 2.0, "spot": 3.0})
_TIER_RISK = MappingProxyType({"community": 0.5, "interruptible": 0.5})


@dataclass(frozen=True)
class Strategy:
    name: str
    summary: str
    score: Scorer
    needs_throughput: bool = False


def _cost(rows: Sequence[Row], _req: PlacementRequest) -> list[float]:
    return [price for _, price, _, _ in rows]


def _cost_per_token(rows: Sequence[Row], _req: PlacementRequest) -> list[float]:
    # $ per million generated tokens; offerings with no throughput estimate sort last.
    return [price / (tps * 3600) * 1e6 if tps else float("inf") for _, price, _, tps in rows]


def _carbon(rows: Sequence[Row], _req: PlacementRequest) -> list[float]:
    # gCO2/h, with price as a tie-break a thousand times smaller than a gram.
    return [g + price * 1e-3 for _, price, g, _ in rows]


def _balanced(rows: Sequence[Row], _req: PlacementRequest) -> list[float]:
    # Each axis relative to its best candidate, equally weighted: 1.0 + 1.0 is the ideal.
    best_price = min((p for _, p, _, _ in rows if p > 0), default=1.0)
    best_g = min((g for _, _, g, _ in rows if g > 0), default=1.0)
    return [max(p, best_price) / best_price + max(g, best_g) / best_g for _, p, g, _ in rows]


def _priority(rows: Sequence[Row], req: PlacementRequest) -> list[float]:
    order = {name: i for i, name in enumerate(req.priority)}
    last = len(order)
    out = []
    for o, price, _, _ in rows:
        rank = min(
            order.get(f"{o.provider}/{o.region}", last),
            order.get(o.provider, last),
            order.get(o.gpu or "", last),
        )
        out.append(rank * 1e6 + price)  # price breaks ties within a rank
    return out


def _availability(rows: Sequence[Row], _req: PlacementRequest) -> list[float]:
    out = []
    for o, price, _, _ in rows:
        risk = _KIND_RISK.get(o.kind, 3.0) + _TIER_RISK.get(o.extra.get("tier", ""), 0.0)
        out.append(risk * 1e6 + price)
    return out


def _round_robin(rows: Sequence[Row], req: PlacementRequest) -> list[float]:
    # A stable order (by key), rotated by the caller's counter: the i-th call gets the i-th offering.
    order = sorted(
        range(len(rows)),
        key=lambda i: (rows[i][0].provider, rows[i][0].region, rows[i][0].instance_type, rows[i][0].kind),
    )
    n = len(rows)
    scores = [0.0] * n
    for pos, i in enumerate(order):
        scores[i] = float((pos - req.round_robin_index) % n) if n else 0.0
    return scores


STRATEGIES: MappingProxyType[str, Strategy] = MappingProxyType(
    {
        s.name: s
        for s in (
            Strategy("cost", "lowest $ per hour", _cost),
            Strategy(
                "cost-per-token",
                "lowest $ per million tokens, decode speed estimated from memory bandwidth",
                _cost_per_token,
                True,
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
            Strategy("round-robin", "rotate through eligible offerings in a stable order", _round_robin),
        )
    }
)


def get_strategy(name: str) -> Strategy:
    strategy = STRATEGIES.get(name)
    if strategy is None:
        raise unknown_name("placement strategy", name, STRATEGIES, fix="pick one with --objective")
    return strategy
