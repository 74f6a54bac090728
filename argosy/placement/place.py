"""filter -> score -> pick over catalog offerings, with an explanation of every choice."""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import NamedTuple

from argosy.catalog.cpu import load_cpu_defaults
from argosy.catalog.gpus import load_gpus
from argosy.catalog.offerings import is_stale, price_age_s
from argosy.catalog.regions import load_regions
from argosy.catalog.sizing import (
    QUANTIZATIONS,
    WEIGHT_BYTES,
    Requirement,
    size_model,
    usable_vram_gb,
    with_context,
)
from argosy.catalog.types import Offering
from argosy.core.errors import unknown_name
from argosy.placement.index import OfferingGroup, OfferingIndex
from argosy.placement.strategies import Strategy, get_strategy, group_order_key
from argosy.placement.types import (
    REASONS,
    Candidate,
    NoPlacementError,
    Placement,
    PlacementRequest,
    Rejection,
    describe_age,
)


def _validate(request: PlacementRequest, index: OfferingIndex) -> PlacementRequest:
    """Unknown names in the request are errors with suggestions, not silently empty results."""
    for p in (*request.providers, *request.exclude_providers):
        if p not in index.providers:
            raise unknown_name(
                "provider", p, index.providers, fix="`argosy gpus` lists the providers with offerings"
            )
    for r in (*request.regions, *request.exclude_regions):
        if r not in index.regions:
            raise unknown_name(
                "region", r, index.regions, fix="`argosy gpus --provider P` lists a provider's regions"
            )
    for k in request.kinds:
        if k not in ("vm", "spot", "serverless", "local"):
            raise unknown_name("offering kind", k, ("vm", "spot", "serverless", "local"))
    if request.gpu:
        return replace(request, gpu=load_gpus().resolve(request.gpu))
    return request


class _Eligible(NamedTuple):
    """A group that passed the filters, and the slice of its price-sorted offerings under the cap.
    A NamedTuple: one is made per eligible group on every plan, so construction cost matters."""

    group: OfferingGroup
    end: int  # priced[:end] are within the budget
    gco2_per_hour: float
    tokens_per_s: float | None
    tp: int


@dataclass
class _Tally:
    eligible: list[_Eligible] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)
    cheapest: dict[str, Offering] = field(default_factory=dict)  # the cheapest rejected offering per reason

    def reject(self, reason: str, count: int, sample: Offering) -> None:
        if count <= 0:
            return
        self.rejected[reason] = self.rejected.get(reason, 0) + count
        prev = self.cheapest.get(reason)
        inf = float("inf")
        if prev is None or (sample.price_per_hour if sample.price_per_hour is not None else inf) < (
            prev.price_per_hour if prev.price_per_hour is not None else inf
        ):
            self.cheapest[reason] = sample


def _filter(request: PlacementRequest, index: OfferingIndex, want_tps: bool) -> _Tally:
    """Decide group by group; only the budget cap looks inside a group (a bisect on its sorted prices)."""
    specs = load_gpus().specs
    region_table = load_regions()
    cpu = load_cpu_defaults()
    req = request.requirement
    kinds = set(request.kinds) or None
    providers = set(request.providers) or None
    excl_providers = set(request.exclude_providers)
    regions = set(request.regions) or None
    excl_regions = set(request.exclude_regions)
    cap = request.max_price_per_hour
    cpu_allowed = request.allow_cpu
    if cpu_allowed is None:
        cpu_allowed = req is None or req.weights_gb <= cpu.max_auto_weights_gb
    shapes: dict[tuple[str | None, int], tuple[int, float, float | None]] = {}
    tally = _Tally()
    for grp in index.groups:
        n = grp.size
        if kinds is not None and grp.kind not in kinds:
            tally.reject("kind", n, grp.sample)
            continue
        if (providers is not None and grp.provider not in providers) or grp.provider in excl_providers:
            tally.reject("provider", n, grp.sample)
            continue
        if (regions is not None and grp.region not in regions) or grp.region in excl_regions:
            tally.reject("region", n, grp.sample)
            continue
        if request.gpu is not None and grp.gpu != request.gpu:
            tally.reject("gpu", n, grp.sample)
            continue
        if not grp.available:
            tally.reject("unavailable", n, grp.sample)
            continue
        shape = (grp.gpu, grp.gpu_count)
        measured = shapes.get(shape)
        if measured is None:
            measured = shapes[shape] = _measure(grp.gpu, grp.gpu_count, req, request.min_vram_gb, want_tps)
        tp, watts, tps = measured
        if grp.gpu is None:
            if not cpu_allowed:
                tally.reject("cpu", n, grp.sample)
                continue
            if req is not None and (
                grp.ram_gb is None or not req.fits_ram(grp.ram_gb, cpu.usable_ram_fraction)
            ):
                tally.reject("ram", n, grp.sample)
                continue
        elif tp < 0:
            tally.reject("unknown-gpu", n, grp.sample)
            continue
        elif tp == 0:
            tally.reject("vram", n, grp.sample)
            continue
        if grp.unpriced:
            tally.reject("no-price", len(grp.unpriced), grp.unpriced[0])
        end = len(grp.prices) if cap is None else bisect_right(grp.prices, cap)
        if end < len(grp.prices):
            tally.reject("over-budget", len(grp.prices) - end, grp.priced[end])
        if end == 0:
            continue
        g = watts * region_table.intensity(grp.provider, grp.region) / 1000.0
        tally.eligible.append(_Eligible(grp, end, g, tps, tp))
    del specs
    return tally


def _measure(
    gpu: str | None, count: int, req: Requirement | None, min_vram: float | None, want_tps: bool
) -> tuple[int, float, float | None]:
    """(tensor-parallel size: 0 = does not fit, -1 = unknown GPU; watts; tokens/s) for a GPU x count."""
    if gpu is None:
        cpu = load_cpu_defaults()
        tps = req.decode_tokens_per_s(cpu.memory_bandwidth_gbps, 0.0) if (req and want_tps) else None
        return 0, cpu.package_power_w, tps
    spec = load_gpus().specs.get(gpu)
    if spec is None:
        return -1, 0.0, None
    if min_vram is not None and spec.vram_gb < min_vram:
        return 0, 0.0, None
    tp = 1 if req is None else (req.tp_for(spec.vram_gb, count) or 0)
    watts = spec.tdp_w * count
    tps = (
        req.decode_tokens_per_s(spec.bandwidth_gbps * tp, spec.tflops * tp)
        if (req and tp and want_tps)
        else None
    )
    return tp, watts, tps


def _rejection_detail(reason: str, o: Offering, request: PlacementRequest) -> str:
    req = request.requirement
    if reason == "vram" and o.gpu:
        vram = load_gpus().specs[o.gpu].vram_gb
        if req is None:
            return f"{o.gpu} has {vram:g} GB; the request needs {request.min_vram_gb:g} GB per GPU"
        tp = min(max(o.gpu_count, 1), 8)
        return (
            f"{o.gpu_count}x {o.gpu} offers {usable_vram_gb(vram):.1f} GB usable per GPU; "
            f"{req.model.name} needs {req.per_gpu_gb(tp):.1f} GB per GPU even at TP={tp}"
        )
    if reason == "over-budget":
        return f"${o.price_per_hour:.2f}/h is over the cap of ${request.max_price_per_hour:.2f}/h"
    if reason == "ram" and req is not None:
        return f"{o.ram_gb or 0:g} GB RAM; CPU inference needs {req.weights_gb + req.kv_gb + 1:.1f} GB"
    if reason == "cpu" and req is not None:
        cap = load_cpu_defaults().max_auto_weights_gb
        return f"{req.weights_gb:.1f} GB of weights is over the {cap:g} GB CPU limit (allow_cpu to force)"
    return REASONS.get(reason, reason)


def _top(strat: Strategy, tally: _Tally, request: PlacementRequest, k: int) -> list[Candidate]:
    """The k best eligible offerings. Scores rise with price inside a group, so a heap holding each
    group's next-cheapest offering yields them in order after k pops."""
    ctx = (
        strat.prepare([(e.group.prices[0], e.gco2_per_hour) for e in tally.eligible], request)
        if strat.prepare
        else {}
    )
    score = strat.score
    if strat.rotating:
        # Groups in a stable order, each group's offerings cheapest first: the caller's counter picks
        # the start, and the next k follow (wrapping). Only group boundaries are walked, not offerings.
        ordered = sorted(tally.eligible, key=lambda e: group_order_key(e.group))
        total = sum(e.end for e in ordered)
        pos = request.round_robin_index % total
        gi = 0
        while pos >= ordered[gi].end:
            pos -= ordered[gi].end
            gi += 1
        picked: list[Candidate] = []
        while len(picked) < min(k, total):
            e = ordered[gi]
            o = e.group.priced[pos]
            picked.append(
                Candidate(o, e.group.prices[pos], e.gco2_per_hour, e.tp, e.tokens_per_s, float(len(picked)))
            )
            pos += 1
            if pos >= e.end:
                gi, pos = (gi + 1) % len(ordered), 0
        return picked
    heap = []
    for gi, e in enumerate(tally.eligible):
        o = e.group.priced[0]
        heap.append((score(o, e.group.prices[0], e.gco2_per_hour, e.tokens_per_s, request, ctx), gi, 0))
    heapq.heapify(heap)
    out: list[Candidate] = []
    while heap and len(out) < k:
        s, gi, pos = heapq.heappop(heap)
        e = tally.eligible[gi]
        o = e.group.priced[pos]
        out.append(Candidate(o, e.group.prices[pos], e.gco2_per_hour, e.tp, e.tokens_per_s, s))
        if pos + 1 < e.end:
            nxt = e.group.priced[pos + 1]
            heapq.heappush(
                heap,
                (
                    score(nxt, e.group.prices[pos + 1], e.gco2_per_hour, e.tokens_per_s, request, ctx),
                    gi,
                    pos + 1,
                ),
            )
    return out


def place(
    request: PlacementRequest,
    offerings: Sequence[Offering] | OfferingIndex,
    strategy: str = "cost",
    *,
    now: datetime | None = None,
) -> Placement:
    """Choose an offering for `request`: the best by `strategy`, an ordered fallback list, and why.

    Pass an OfferingIndex built once per catalog load to plan many requests over the same offerings."""
    strat = get_strategy(strategy)
    index = offerings if isinstance(offerings, OfferingIndex) else OfferingIndex(offerings)
    request = _validate(request, index)
    tally = _filter(request, index, strat.needs_throughput)
    if not tally.eligible:
        raise _nothing_fits(request, index, tally)
    ranked = _top(strat, tally, request, 1 + max(0, request.max_fallbacks))
    req = request.requirement
    if req is not None:  # throughput for the few shown, when the strategy did not need it for all
        ranked = [
            c
            if c.tokens_per_s is not None
            else replace(c, tokens_per_s=_measure(c.offering.gpu, c.offering.gpu_count, req, None, True)[2])
            for c in ranked
        ]
    notable = sorted(
        (Rejection(o, r, _rejection_detail(r, o, request)) for r, o in tally.cheapest.items()),
        key=lambda r: (r.offering.price_per_hour is None, r.offering.price_per_hour or 0.0),
    )
    placement = Placement(
        strategy=strat.name,
        choice=ranked[0],
        fallbacks=ranked[1:],
        considered=len(index),
        eligible=sum(e.end for e in tally.eligible),
        rejected=tally.rejected,
        notable_rejections=notable,
        explanation=[],
        requirement=req,
    )
    placement.explanation = explain(placement, strat.summary, now or datetime.now(tz=UTC))
    return placement


def explain(p: Placement, summary: str, now: datetime) -> list[str]:
    c = p.choice
    o = c.offering
    lines = []
    need = ""
    if p.requirement is not None:
        r = p.requirement
        where = (
            "in RAM (CPU inference)" if o.gpu is None else f"{r.per_gpu_gb(c.tp):.1f} GB per GPU at TP={c.tp}"
        )
        need = (
            f" for {r.model.name} ({r.quantization}, {r.max_model_len} tokens x {r.concurrency}: "
            f"{r.weights_gb:.1f} GB weights + {r.kv_gb:.1f} GB KV; {where})"
        )
    lines.append(f"Chose {c.label()} at ${c.price_per_hour:.4g}/h{need}.")
    lines.append(
        f"Why: best of {p.eligible} eligible offerings (of {p.considered}) by '{p.strategy}': {summary}."
    )
    region = load_regions().get(o.provider, o.region)
    power = "CPU package" if o.gpu is None else f"{o.gpu_count}x {o.gpu} TDP"
    lines.append(
        f"Carbon: {c.gco2_per_hour:.0f} gCO2/h ({power} x {region.gco2_per_kwh:g} g/kWh, "
        f"{region.location}, {region.intensity_source.split(' (')[0]} {region.intensity_year})."
    )
    if c.tokens_per_s:
        lines.append(
            f"Throughput estimate: {c.tokens_per_s:.0f} tokens/s decode, ${c.usd_per_mtok:.3f} per million tokens."
        )
    age = price_age_s(o, now)
    lines.append(f"Price source: {o.source} ({describe_age(age, is_stale(o, now))}).")
    for n, alt in enumerate(p.fallbacks, start=2):
        dp = alt.price_per_hour - c.price_per_hour
        dg = alt.gco2_per_hour - c.gco2_per_hour
        lines.append(f"  {n}. {alt.label()} ${alt.price_per_hour:.4g}/h ({dp:+.2f} $/h, {dg:+.0f} gCO2/h)")
    if p.rejected:
        parts = ", ".join(
            f"{n} {REASONS.get(r, r)}" for r, n in sorted(p.rejected.items(), key=lambda kv: -kv[1])
        )
        lines.append(f"Filtered out {sum(p.rejected.values())}: {parts}.")
        cheaper = [x for x in p.notable_rejections if (x.offering.price_per_hour or 1e18) < c.price_per_hour]
        for x in cheaper[:4]:
            xo = x.offering
            lines.append(
                f"  - {xo.provider} {xo.instance_type} ({xo.gpu or 'CPU'}, {xo.kind}) at ${xo.price_per_hour:.4g}/h is cheaper but: {x.detail}"
            )
    return lines


def _nothing_fits(request: PlacementRequest, index: OfferingIndex, tally: _Tally) -> NoPlacementError:
    req = request.requirement
    rejected = tally.rejected
    counts = ", ".join(f"{n} {REASONS.get(r, r)}" for r, n in sorted(rejected.items(), key=lambda kv: -kv[1]))
    details: dict[str, object] = {"rejected": rejected, "requirement": req.to_dict() if req else None}
    # Memory is the binding constraint only if something passes every other filter.
    memory_bound = req is not None and bool(
        _filter(replace(request, requirement=None, min_vram_gb=None, allow_cpu=False), index, False).eligible
    )
    if not memory_bound:
        return NoPlacementError(
            f"no offering passes the filters ({len(index)} considered: {counts or 'none given'})",
            fix="relax the filters (kinds, regions, providers, --max-price) or run `argosy catalog refresh`",
            details=details,
        )
    assert req is not None
    fixes = suggest_fixes(request, index)
    details["suggestions"] = fixes
    need = (
        f"{req.model.name} needs {req.weights_gb:.1f} GB of weights ({req.quantization}) + {req.kv_gb:.1f} GB KV cache "
        f"({req.max_model_len} tokens x {req.concurrency}) = {req.total_gb:.1f} GB on one GPU"
    )
    return NoPlacementError(
        f"no offering fits: {need}; {len(index)} considered ({counts})",
        fix="; ".join(fixes)
        if fixes
        else "no change we know of makes it fit the allowed offerings; allow more kinds/providers",
        details=details,
    )


def suggest_fixes(request: PlacementRequest, offerings: Sequence[Offering] | OfferingIndex) -> list[str]:
    """Changes that would make the model fit some allowed offering: quantization, shorter context, more GPUs."""
    index = offerings if isinstance(offerings, OfferingIndex) else OfferingIndex(offerings)
    req = request.requirement
    if req is None:
        return []
    out: list[str] = []

    def cheapest_fit(r: Requirement) -> Offering | None:
        tally = _filter(replace(request, requirement=r, allow_cpu=False), index, False)
        firsts = [e.group.priced[0] for e in tally.eligible]
        return min(firsts, key=lambda o: o.price_per_hour or 0.0) if firsts else None

    for q in QUANTIZATIONS:
        if WEIGHT_BYTES[q] < WEIGHT_BYTES[req.quantization] and q not in ("gptq", "mxfp4"):
            alt = size_model(req.model, q, req.max_model_len, req.concurrency, req.kv_dtype)
            hit = cheapest_fit(alt)
            if hit:
                out.append(
                    f"quantize to {q} ({alt.weights_gb:.1f} GB weights): fits {hit.gpu_count}x {hit.gpu} "
                    f"on {hit.provider} at ${hit.price_per_hour:.2f}/h"
                )
                break
    length = req.max_model_len // 2
    while length >= 1024:
        hit = cheapest_fit(with_context(req, length))
        if hit:
            out.append(
                f"shorten the context to --max-model-len {length}: fits {hit.gpu_count}x {hit.gpu} on {hit.provider}"
            )
            break
        length //= 2
    specs = load_gpus().specs
    multi = [g.sample for g in index.groups if g.gpu in specs and g.gpu_count >= 8]
    if multi:
        big = max(multi, key=lambda o: specs[o.gpu or ""].vram_gb)
        per = req.per_gpu_gb(8)
        usable = usable_vram_gb(specs[big.gpu or ""].vram_gb)
        verdict = "fits" if per <= usable else "still does not fit"
        outside = _filter(
            replace(request, requirement=None, min_vram_gb=None), OfferingIndex([big]), False
        ).rejected
        if outside:
            verdict += f" (outside the current filters: {', '.join(REASONS.get(r, r) for r in outside)})"
        out.append(
            f"tensor parallel 8 needs {per:.1f} GB per GPU; {verdict} on {big.provider} {big.instance_type} "
            f"(8x {big.gpu}, {usable:.0f} GB usable each)"
            + ("" if per <= usable else "; combine with quantization")
        )
    return out
