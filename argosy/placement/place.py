"""filter -> score -> pick over catalog offerings, with an explanation of every choice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np

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
from argosy.placement.index import BoolArray, FloatArray, IntArray, OfferingIndex
from argosy.placement.strategies import Columns, Strategy, get_strategy
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


# Rejection reasons by code; 0 = eligible. Group-level reasons first, then the two per-offering ones.
_CODES = (
    "",
    "kind",
    "provider",
    "region",
    "gpu",
    "unavailable",
    "cpu",
    "ram",
    "unknown-gpu",
    "vram",
    "no-price",
    "over-budget",
)
_CODE = {name: i for i, name in enumerate(_CODES)}


@dataclass
class _Tally:
    """What the filters decided: the eligible offerings (positions in the index) with their figures,
    rejection counts by reason, and the cheapest rejected offering per reason (to explain)."""

    positions: IntArray
    gco2: FloatArray
    tps: FloatArray
    g_tp: IntArray
    rejected: dict[str, int]
    cheapest: dict[str, Offering]


def _filter(request: PlacementRequest, index: OfferingIndex, want_tps: bool) -> _Tally:
    """Decide per group (vectorised), then per offering only price: known, and under the cap."""
    cpu = load_cpu_defaults()
    req = request.requirement
    ix = index
    reason = np.zeros(ix.n_groups, dtype=np.int64)

    def mark(code: str, bad: BoolArray) -> None:
        reason[(reason == 0) & bad] = _CODE[code]

    if request.kinds:
        mark("kind", ~np.isin(ix.g_kind, ix.code(ix.kind_names, request.kinds)))
    if request.providers:
        mark("provider", ~np.isin(ix.g_provider, ix.code(ix.provider_names, request.providers)))
    if request.exclude_providers:
        mark("provider", np.isin(ix.g_provider, ix.code(ix.provider_names, request.exclude_providers)))
    if request.regions:
        mark("region", ~np.isin(ix.g_region, ix.code(ix.region_names, request.regions)))
    if request.exclude_regions:
        mark("region", np.isin(ix.g_region, ix.code(ix.region_names, request.exclude_regions)))
    if request.gpu is not None:
        mark("gpu", ~np.isin(ix.g_gpu, ix.code(ix.gpu_names, [request.gpu])))
    mark("unavailable", ~ix.g_available)
    # Per (gpu, count) shape: a few dozen, however many offerings.
    measured = [_measure(gpu, cnt, req, request.min_vram_gb, want_tps) for gpu, cnt in ix.shape_names]  # type: ignore[misc]
    s_tp = np.array([m[0] for m in measured], dtype=np.int64).reshape(len(measured))
    s_watts = np.array([m[1] for m in measured], dtype=np.float64).reshape(len(measured))
    s_tps = np.array([np.nan if m[2] is None else m[2] for m in measured], dtype=np.float64).reshape(
        len(measured)
    )
    s_cpu = np.array([gpu is None for gpu, _ in ix.shape_names], dtype=bool).reshape(len(measured))  # type: ignore[misc]
    g_cpu = s_cpu[ix.g_shape]
    g_tp = s_tp[ix.g_shape]
    cpu_allowed = request.allow_cpu
    if cpu_allowed is None:
        cpu_allowed = req is None or req.weights_gb <= cpu.max_auto_weights_gb
    if not cpu_allowed:
        mark("cpu", g_cpu)
    if req is not None and g_cpu.any():
        # CPU groups are few (one per machine and RAM size): ask the requirement for each.
        cpu_groups = np.flatnonzero(g_cpu)
        ram_ok = np.array(
            [r == r and req.fits_ram(float(r), cpu.usable_ram_fraction) for r in ix.g_ram[cpu_groups]],
            dtype=bool,
        )
        bad_ram = np.zeros(len(reason), dtype=bool)
        bad_ram[cpu_groups[~ram_ok]] = True
        mark("ram", bad_ram)
    mark("unknown-gpu", ~g_cpu & (g_tp < 0))
    mark("vram", ~g_cpu & (g_tp == 0))
    # Per offering: only the price is left to look at.
    off_reason = reason[ix.gid]
    group_ok = off_reason == 0
    unknown = np.isnan(ix.price)
    off_reason = np.where(group_ok & unknown, _CODE["no-price"], off_reason)
    if request.max_price_per_hour is not None:
        with np.errstate(invalid="ignore"):
            over = group_ok & ~unknown & (ix.price > request.max_price_per_hour)
        off_reason = np.where(over, _CODE["over-budget"], off_reason)
    counts = np.bincount(off_reason, minlength=len(_CODES))
    rejected = {_CODES[c]: int(counts[c]) for c in range(1, len(_CODES)) if counts[c]}
    cheapest: dict[str, Offering] = {}
    if rejected:
        filled = np.where(unknown, np.inf, ix.price)
        for name in rejected:
            mine = off_reason == _CODE[name]
            at = int(np.argmin(np.where(mine, filled, np.inf)))
            if not mine[at]:
                at = int(np.argmax(mine))  # all unpriced: any one of them
            cheapest[name] = ix.offerings[at]
    positions = np.flatnonzero(off_reason == 0)
    g_gco2 = s_watts[ix.g_shape] * ix.g_intensity / 1000.0
    g_tps = s_tps[ix.g_shape]
    eg = ix.gid[positions]
    return _Tally(positions, g_gco2[eg], g_tps[eg], g_tp[eg], rejected, cheapest)


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
    tps = None
    if req and tp and want_tps:
        # GPUs beyond one tensor-parallel group serve more replicas (data parallel): all are paid for.
        replicas = count // tp
        tps = replicas * req.decode_tokens_per_s(spec.bandwidth_gbps * tp, spec.tflops * tp)
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


def _top(
    strat: Strategy, tally: _Tally, index: OfferingIndex, request: PlacementRequest, k: int
) -> list[Candidate]:
    """The k best eligible offerings, best first; ties go to the earlier offering in the input."""
    pos = tally.positions
    m = len(pos)
    k = min(k, m)
    if strat.rotating:
        eligible = np.zeros(len(index), dtype=bool)
        eligible[pos] = True
        ordered = index.rr_order[eligible[index.rr_order]]  # the stable order, eligible only
        start = request.round_robin_index % m
        picks = ordered[(start + np.arange(k)) % m]
        at = np.searchsorted(pos, picks)  # positions are sorted (flatnonzero)
        chosen = [(int(i), float(r)) for r, i in enumerate(at)]
    else:
        cols = Columns(index, index.gid[pos], index.price[pos], tally.gco2, tally.tps)
        scores = strat.score(cols, request)
        part = np.argpartition(scores, k - 1)[:k] if m > k else np.arange(m)
        part = part[np.lexsort((pos[part], scores[part]))]
        chosen = [(int(i), float(scores[i])) for i in part]
    out = []
    for i, score in chosen:
        o = index.offerings[int(pos[i])]
        tps = float(tally.tps[i])
        out.append(
            Candidate(
                o,
                float(index.price[pos[i]]),
                float(tally.gco2[i]),
                int(tally.g_tp[i]),
                None if tps != tps else tps,
                score,
            )
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
    if not len(tally.positions):
        raise _nothing_fits(request, index, tally)
    ranked = _top(strat, tally, index, request, 1 + max(0, request.max_fallbacks))
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
        eligible=len(tally.positions),
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
        replicas = o.gpu_count // c.tp if c.tp else 1
        dp = f" x {replicas} replicas" if replicas > 1 else ""
        where = (
            "in RAM (CPU inference)"
            if o.gpu is None
            else f"{r.per_gpu_gb(c.tp):.1f} GB per GPU at TP={c.tp}{dp}"
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
        len(
            _filter(
                replace(request, requirement=None, min_vram_gb=None, allow_cpu=False), index, False
            ).positions
        )
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
        if not len(tally.positions):
            return None
        return index.offerings[int(tally.positions[np.argmin(index.price[tally.positions])])]

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
    multi = [o for o in index.offerings if o.gpu in specs and o.gpu_count >= 8]
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
