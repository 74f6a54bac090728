"""OfferingIndex: offerings grouped by everything placement filters on, each group sorted by price.

Placement then decides per group (a few thousand at most, however many offerings) and walks the
groups' price-sorted lists lazily for the top few. Build one per catalog load and reuse it for every
plan; `place()` builds one itself when given a plain list.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from operator import attrgetter
from typing import Any, NamedTuple

from argosy.catalog.types import Offering

_price = attrgetter("price_per_hour")


class OfferingGroup(NamedTuple):
    """Offerings that placement cannot tell apart except by price (and name). A NamedTuple, not a
    dataclass: thousands are built per index and tuple construction is several times cheaper."""

    provider: str
    region: str
    kind: str
    gpu: str | None
    gpu_count: int
    available: bool
    tier: str
    ram_gb: float | None  # CPU offerings only: RAM decides whether a model fits
    priced: tuple[Offering, ...]  # cheapest first
    prices: tuple[float, ...]  # the same order
    unpriced: tuple[Offering, ...]  # unknown price: never free, never placed
    size: int  # len(priced) + len(unpriced), stored: placement reads it for every group

    @property
    def sample(self) -> Offering:
        return self.priced[0] if self.priced else self.unpriced[0]


# The fields every offering is grouped by, read in C by one call. RAM refines a group only for CPU
# offerings (it decides whether a model fits there); for GPUs it would only split groups.
_shape = attrgetter("provider", "region", "kind", "gpu", "gpu_count", "available", "tier")


class OfferingIndex:
    """An immutable grouping of a list of offerings (the list itself is kept, unchanged)."""

    __slots__ = ("offerings", "groups", "providers", "regions")

    def __init__(self, offerings: Iterable[Offering]) -> None:
        offs = self.offerings = tuple(offerings)
        # One sequential pass reads each offering's shape and price. Everything after works on
        # (price, position) pairs: touching the offerings again group by group would jump around
        # memory, and at 50,000 offerings those cache misses cost more than the rest of the build.
        priced_at: defaultdict[tuple[Any, ...], list[tuple[float, int]]] = defaultdict(list)
        unpriced_at: defaultdict[tuple[Any, ...], list[int]] = defaultdict(list)
        for i, (key, price) in enumerate(zip(map(_shape, offs), map(_price, offs), strict=True)):
            if price is None:
                unpriced_at[key].append(i)
            else:
                priced_at[key].append((price, i))
        groups: list[OfferingGroup] = []
        for key in dict.fromkeys([*priced_at, *unpriced_at]):
            provider, region, kind, gpu, count, available, tier = key
            pairs = priced_at.get(key, [])
            blanks = unpriced_at.get(key, [])
            # CPU offerings split further by RAM, which decides whether a model fits on them.
            rams: dict[float | None, tuple[list[tuple[float, int]], list[int]]] = {None: (pairs, blanks)}
            if gpu is None:
                rams = {}
                for price, i in pairs:
                    rams.setdefault(offs[i].ram_gb, ([], []))[0].append((price, i))
                for i in blanks:
                    rams.setdefault(offs[i].ram_gb, ([], []))[1].append(i)
            for ram, (ps, us) in rams.items():
                ps.sort()  # (price, position): ties keep input order, no offering is compared
                groups.append(
                    OfferingGroup(
                        provider,
                        region,
                        kind,
                        gpu,
                        count,
                        available,
                        tier,
                        ram,
                        tuple(offs[i] for _, i in ps),
                        tuple(p for p, _ in ps),
                        tuple(offs[i] for i in us),
                        len(ps) + len(us),
                    )
                )
        self.groups: tuple[OfferingGroup, ...] = tuple(groups)
        self.providers: frozenset[str] = frozenset(g.provider for g in groups)
        self.regions: frozenset[str] = frozenset(g.region for g in groups)

    def __len__(self) -> int:
        return len(self.offerings)
