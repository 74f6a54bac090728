"""OfferingIndex: offerings grouped by everything placement filters on, each group sorted by price.

Placement then decides per group (a few thousand at most, however many offerings) and walks the
groups' price-sorted lists lazily for the top few. Build one per catalog load and reuse it for every
plan; `place()` builds one itself when given a plain list.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
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

    @property
    def size(self) -> int:
        return len(self.priced) + len(self.unpriced)

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
        self.offerings: Sequence[Offering] = tuple(offerings)
        buckets: defaultdict[tuple[Any, ...], list[Offering]] = defaultdict(list)
        for o in self.offerings:
            buckets[_shape(o)].append(o)
        groups: list[OfferingGroup] = []
        for (provider, region, kind, gpu, count, available, tier), members in buckets.items():
            split: dict[float | None, list[Offering]] = {None: members}
            if gpu is None:
                split = defaultdict(list)
                for o in members:
                    split[o.ram_gb].append(o)
            for ram, part in split.items():
                prices = list(map(_price, part))
                if None in prices:
                    priced = [o for o in part if o.price_per_hour is not None]
                    unpriced = tuple(o for o in part if o.price_per_hour is None)
                else:
                    priced, unpriced = list(part), ()
                priced.sort(key=_price)
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
                        tuple(priced),
                        tuple(map(_price, priced)),
                        unpriced,
                    )
                )
        self.groups: tuple[OfferingGroup, ...] = tuple(groups)
        self.providers: frozenset[str] = frozenset(g.provider for g in groups)
        self.regions: frozenset[str] = frozenset(g.region for g in groups)

    def __len__(self) -> int:
        return len(self.offerings)
