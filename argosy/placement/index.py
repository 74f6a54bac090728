"""OfferingIndex: the offerings as NumPy columns, grouped by everything placement filters on.

Placement decides filters once per group (vectorised over groups) and scores every eligible offering
in one array expression, so a plan over 50,000 offerings costs a few array passes, not 50,000 Python
steps. Build one index per catalog load and plan many times against it; `place()` builds one itself
when given a plain list.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cached_property
from operator import attrgetter

import numpy as np
import numpy.typing as npt

from argosy.catalog.regions import load_regions
from argosy.catalog.types import Offering

_price = attrgetter("price_per_hour")

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def _codes(values: Sequence[object]) -> tuple[list[object], IntArray]:
    """Distinct values (first-seen order) and each value's position among them."""
    names = list(dict.fromkeys(values))
    at = {v: i for i, v in enumerate(names)}
    return names, np.fromiter(map(at.__getitem__, values), dtype=np.int64, count=len(values))


class OfferingIndex:
    """Immutable columns over a list of offerings (the list itself is kept, unchanged).

    Per offering: `price` (NaN = unknown) and `gid` (its group). Per group: categorical codes
    (`g_provider`, `g_region`, `g_kind`, `g_gpu`, `g_tier`, `g_shape` for (gpu, count), `g_pair` for
    (provider, region)), `g_count`, `g_available`, `g_ram` (CPU groups) and the grid intensity."""

    def __init__(self, offerings: Iterable[Offering]) -> None:
        offs = self.offerings = tuple(offerings)
        n = len(offs)
        # One C-level pass per column; strings become small integer codes, and a group is a distinct
        # row of codes (np.unique over rows), so no Python code runs per offering or per group.
        self.provider_names, p = _codes(list(map(attrgetter("provider"), offs)))
        self.region_names, r = _codes(list(map(attrgetter("region"), offs)))
        self.kind_names, k = _codes(list(map(attrgetter("kind"), offs)))
        self.gpu_names, g = _codes(list(map(attrgetter("gpu"), offs)))
        self.tier_names, t = _codes(list(map(attrgetter("tier"), offs)))
        counts = np.fromiter(map(attrgetter("gpu_count"), offs), dtype=np.int64, count=n)
        avail = np.fromiter(map(attrgetter("available"), offs), dtype=bool, count=n)
        ram = np.array(list(map(attrgetter("ram_gb"), offs)), dtype=np.float64).reshape(n)
        self.price: FloatArray = np.array(list(map(_price, offs)), dtype=np.float64).reshape(n)
        # RAM only matters for CPU offerings (whether a model fits in memory): GPUs ignore it.
        is_cpu = np.isin(g, [i for i, name in enumerate(self.gpu_names) if name is None])
        ram_key = np.where(is_cpu, np.nan_to_num(ram, nan=-1.0), -2.0)
        _, ram_code = np.unique(ram_key, return_inverse=True)
        columns = [p, r, k, g, counts, avail.astype(np.int64), t, ram_code.reshape(n)]
        radices = [int(c.max(initial=0)) + 1 for c in columns]
        if np.prod([float(x) for x in radices]) < 2.0**62:
            # Mixed radix: each distinct row of codes is one int64, and a 1-D unique sorts plain integers.
            key = np.zeros(n, dtype=np.int64)
            for column, radix in zip(columns, radices, strict=True):
                key = key * radix + column
            _, first, gid = np.unique(key, return_index=True, return_inverse=True)
        else:  # astronomically many distinct values: sort rows instead (slower, same groups)
            _, first, gid = np.unique(
                np.stack(columns, axis=1), axis=0, return_index=True, return_inverse=True
            )
        self.gid: IntArray = gid.reshape(n)
        self.n_groups = len(first)
        self.g_provider, self.g_region, self.g_kind, self.g_gpu = p[first], r[first], k[first], g[first]
        self.g_tier, self.g_count = t[first], counts[first]
        self.g_available: BoolArray = avail[first]
        self.g_ram: FloatArray = np.where(is_cpu[first], ram[first], np.nan)
        self.g_size: IntArray = np.bincount(self.gid, minlength=self.n_groups)
        shape_ids, shape_first, self.g_shape = np.unique(
            self.g_gpu * (int(counts.max(initial=0)) + 1) + self.g_count,
            return_index=True,
            return_inverse=True,
        )
        self.shape_names: list[tuple[str | None, int]] = [
            (self.gpu_names[self.g_gpu[i]], int(self.g_count[i]))
            for i in shape_first  # type: ignore[misc]
        ]
        pair_ids, pair_first, self.g_pair = np.unique(
            self.g_provider * max(len(self.region_names), 1) + self.g_region,
            return_index=True,
            return_inverse=True,
        )
        self.pair_names: list[tuple[str, str]] = [
            (str(self.provider_names[self.g_provider[i]]), str(self.region_names[self.g_region[i]]))
            for i in pair_first
        ]
        table = load_regions()
        pair_intensity = np.array([table.intensity(pv, rg) for pv, rg in self.pair_names], dtype=np.float64)
        self.g_intensity: FloatArray = pair_intensity[self.g_pair] if self.n_groups else np.zeros(0)
        self.providers: frozenset[str] = frozenset(map(str, self.provider_names))
        self.regions: frozenset[str] = frozenset(map(str, self.region_names))
        del shape_ids, pair_ids

    @cached_property
    def rr_order(self) -> IntArray:
        """Round-robin's stable order of all offerings: by provider, region, kind, GPU, count, tier,
        RAM (names, not codes, so the order does not depend on input order), then price, then input
        position. Computed on first use: most plans never rotate."""

        def rank(names: list[object], codes: IntArray) -> IntArray:
            order = np.argsort(np.array([str(n) for n in names]), kind="stable")
            ranks = np.empty(len(names), dtype=np.int64)
            ranks[order] = np.arange(len(names))
            return ranks[codes] if len(names) else codes

        n = len(self.offerings)
        if not n:
            return np.zeros(0, dtype=np.int64)
        counts = self.g_count
        g_sort = np.lexsort(
            (
                np.nan_to_num(self.g_ram, nan=0.0),
                rank(self.tier_names, self.g_tier),
                counts,
                rank(self.gpu_names, self.g_gpu),
                rank(self.kind_names, self.g_kind),
                rank(self.region_names, self.g_region),
                rank(self.provider_names, self.g_provider),
            )
        )
        g_rank = np.empty(len(g_sort), dtype=np.int64)
        g_rank[g_sort] = np.arange(len(g_sort))
        filled = np.where(np.isnan(self.price), np.inf, self.price)
        return np.lexsort((np.arange(n), filled, g_rank[self.gid]))

    def __len__(self) -> int:
        return len(self.offerings)

    def code(self, names: list[object], wanted: Iterable[object]) -> IntArray:
        """Codes of the `wanted` values that occur (others cannot match any group)."""
        at = {v: i for i, v in enumerate(names)}
        return np.array([at[w] for w in wanted if w in at], dtype=np.int64)
