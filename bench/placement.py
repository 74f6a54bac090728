"""Placement over 50,000 offerings: median wall time per strategy, against the 50 ms target.

    python bench/placement.py [--offerings 50000] [--runs 21] [--regions-per-row 20]

The offerings are the snapshot rows repeated over synthetic regions (20 per real region by default,
like a provider with many zones or a marketplace with many hosts per country) with jittered prices,
so the mix of GPUs, kinds and fits is the real catalog's. Three ways are timed:
  - index:       building the OfferingIndex (once per catalog load in a server)
  - place(list): place() given a plain list, index build included (what a one-shot CLI call pays)
  - place(index): place() over a prebuilt index (every plan after the first)
For scale, the same run times a bare `min(offerings, key=price)` pass and prints ratios to it.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import replace

from argosy.catalog import Offering, load_offerings, size_model
from argosy.placement import STRATEGIES, PlacementRequest, place
from argosy.placement.index import OfferingIndex

TARGET_MS = 50.0


def synthetic(n: int, regions_per_row: int = 20, seed: int = 7) -> list[Offering]:
    rng = random.Random(seed)
    base = [o for o in load_offerings() if o.price_per_hour is not None]
    out = []
    for i in range(n):
        o = base[i % len(base)]
        zone = rng.randrange(regions_per_row)
        out.append(
            replace(
                o,
                region=o.region if zone == 0 else f"{o.region}-{zone}",
                instance_type=f"{o.instance_type}#{i}",
                price_per_hour=round((o.price_per_hour or 1.0) * rng.uniform(0.7, 1.3), 4),
                available=rng.random() > 0.05,
            )
        )
    return out


def median_ms(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm caches (data files, shape tables) outside the timing
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--offerings", type=int, default=50_000)
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--regions-per-row", type=int, default=20, help="synthetic regions per snapshot region")
    args = ap.parse_args()
    offerings = synthetic(args.offerings, args.regions_per_row)
    index = OfferingIndex(offerings)
    request = PlacementRequest(requirement=size_model("llama-3.1-8b"))
    floor = median_ms(lambda: min(offerings, key=lambda o: o.price_per_hour or 0.0), args.runs)
    print(
        f"{len(offerings)} offerings in {index.n_groups} groups, {args.runs} runs, median wall time; "
        f"target {TARGET_MS:.0f} ms"
    )

    def line(label: str, ms: float) -> str:
        verdict = "ok" if ms < TARGET_MS else "OVER"
        return f"{label:38} {ms:8.2f} ms  x{ms / floor:5.1f} of reference  {verdict}"

    print(f"{'reference: min() by price':38} {floor:8.2f} ms")
    print(line("index: OfferingIndex(offerings)", median_ms(lambda: OfferingIndex(offerings), args.runs)))
    worst_list = worst_index = 0.0
    for name in STRATEGIES:
        ms = median_ms(lambda name=name: place(request, index, name), args.runs)
        worst_index = max(worst_index, ms)
        print(line(f"place(index, {name})", ms))
    filtered = PlacementRequest(requirement=request.requirement, kinds=("vm", "spot"), max_price_per_hour=5.0)
    ms = median_ms(lambda: place(filtered, index, "cost"), args.runs)
    worst_index = max(worst_index, ms)
    print(line("place(index, cost, kinds+budget)", ms))
    for name in ("cost", "balanced"):
        ms = median_ms(lambda name=name: place(request, offerings, name), args.runs)
        worst_list = max(worst_list, ms)
        print(line(f"place(list, {name}) incl. index", ms))
    print(f"worst: {worst_index:.2f} ms over a prebuilt index, {worst_list:.2f} ms from a plain list")
    return 0 if worst_index < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
