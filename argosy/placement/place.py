"""filter -> score -> pick over catalog offerings, with an explanation of every choice."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from datetime import UTC, datetime

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
from argosy.placement.strategies import get_strategy
from argosy.placement.types import (
    REASONS,
    Candidate,
    NoPlacementError,
    Placement,
    PlacementRequest,
    Rejection,
    describe_age,
)


def _validate(request: PlacementRequest, offerings: Sequence[Offering]) -> PlacementRequest:
    """Unknown names in the request are errors with suggestions, not silently empty results."""
    providers = {o.provider for o in offerings}
    regions = {o.region for o in offerings}
    for p in (*request.providers, *request.exclude_providers):
        if p not in providers:
            raise unknown_name(
                "provider", p, providers, fix="`argosy gpus` lists the providers with offerings"
            )
    for r in (*request.regions, *request.exclude_regions):
        if r not in regions:
            raise unknown_name(
                "region", r, regions, fix="`argosy gpus --provider P` lists a provider's regions"
            )
    for k in request.kinds:
        if k not in ("vm", "spot", "serverless", "local"):
            raise unknown_name("offering kind", k, ("vm", "spot", "serverless", "local"))
    if request.gpu:
        from dataclasses import replace

        return replace(request, gpu=load_gpus().resolve(request.gpu))
    return request


def _filter_and_measure(
    request: PlacementRequest, offerings: Sequence[Offering], want_tps: bool
) -> tuple[list[tuple[Offering, float, float, float | None, int]], dict[str, int], dict[str, Offering]]:
    """Eligible rows (offering, $/h, gCO2/h, tok/s, tp), rejection counts, and the cheapest rejected
    offering per reason (the notable ones to explain)."""
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
    gpu_want = request.gpu
    min_vram = request.min_vram_gb
    cpu_allowed = request.allow_cpu
    if cpu_allowed is None:
        cpu_allowed = req is None or req.weights_gb <= cpu.max_auto_weights_gb
    # Per (gpu, count): tensor-parallel size (0 = does not fit), watts, tokens/s. Offerings share few
    # shapes, so this is computed a few dozen times however many offerings there are.
    shape_cache: dict[tuple[str | None, int], tuple[int, float, float | None]] = {}
    intensity_cache: dict[tuple[str, str], float] = {}
    eligible: list[tuple[Offering, float, float, float | None, int]] = []
    rejected: dict[str, int] = {}
    cheapest_rejected: dict[str, Offering] = {}

    def reject(reason: str, o: Offering) -> None:
        rejected[reason] = rejected.get(reason, 0) + 1
        prev = cheapest_rejected.get(reason)
        if prev is None or (o.price_per_hour or float("inf")) < (prev.price_per_hour or float("inf")):
            cheapest_rejected[reason] = o

    for o in offerings:
        if kinds is not None and o.kind not in kinds:
            reject("kind", o)
            continue
        if (providers is not None and o.provider not in providers) or o.provider in excl_providers:
            reject("provider", o)
            continue
        if (regions is not None and o.region not in regions) or o.region in excl_regions:
            reject("region", o)
            continue
        if gpu_want is not None and o.gpu != gpu_want:
            reject("gpu", o)
            continue
        if not o.available:
            reject("unavailable", o)
            continue
        price = o.price_per_hour
        if price is None:
            reject("no-price", o)
            continue
        if cap is not None and price > cap:
            reject("over-budget", o)
            continue
        shape = (o.gpu, o.gpu_count)
        measured = shape_cache.get(shape)
        if measured is None:
            measured = _measure(o, req, min_vram, specs, cpu, want_tps)
            shape_cache[shape] = measured
        tp, watts, tps = measured
        if o.gpu is None:
            if not cpu_allowed:
                reject("cpu", o)
                continue
            if req is not None and (o.ram_gb is None or not req.fits_ram(o.ram_gb, cpu.usable_ram_fraction)):
                reject("ram", o)
                continue
        elif tp < 0:
            reject("unknown-gpu", o)
            continue
        elif tp == 0:
            reject("vram", o)
            continue
        where = (o.provider, o.region)
        g = intensity_cache.get(where)
        if g is None:
            g = region_table.intensity(o.provider, o.region)
            intensity_cache[where] = g
        eligible.append((o, price, watts * g / 1000.0, tps, tp))
    return eligible, rejected, cheapest_rejected


def _measure(o: Offering, req: Requirement | None, min_vram: float | None, specs, cpu, want_tps: bool):  # type: ignore[no-untyped-def]
    if o.gpu is None:
        tps = req.decode_tokens_per_s(cpu.memory_bandwidth_gbps, 0.0) if (req and want_tps) else None
        return 0, cpu.package_power_w, tps
    spec = specs.get(o.gpu)
    if spec is None:
        return -1, 0.0, None
    if min_vram is not None and spec.vram_gb < min_vram:
        return 0, 0.0, None
    tp = 1 if req is None else (req.tp_for(spec.vram_gb, o.gpu_count) or 0)
    watts = spec.tdp_w * o.gpu_count
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
        return (
            f"{o.gpu_count}x {o.gpu} offers {usable_vram_gb(vram):.1f} GB usable per GPU; "
            f"{req.model.name} needs {req.per_gpu_gb(min(o.gpu_count, 8)):.1f} GB per GPU even at TP={min(o.gpu_count, 8)}"
        )
    if reason == "over-budget":
        return f"${o.price_per_hour:.2f}/h is over the cap of ${request.max_price_per_hour:.2f}/h"
    if reason == "ram" and req is not None:
        return f"{o.ram_gb or 0:g} GB RAM; CPU inference needs {req.weights_gb + req.kv_gb + 1:.1f} GB"
    if reason == "cpu" and req is not None:
        cap = load_cpu_defaults().max_auto_weights_gb
        return f"{req.weights_gb:.1f} GB of weights is over the {cap:g} GB CPU limit (allow_cpu to force)"
    return REASONS.get(reason, reason)


def place(
    request: PlacementRequest,
    offerings: Sequence[Offering],
    strategy: str = "cost",
    *,
    now: datetime | None = None,
) -> Placement:
    """Choose an offering for `request`: the best by `strategy`, an ordered fallback list, and why."""
    strat = get_strategy(strategy)
    request = _validate(request, offerings)
    eligible, rejected, cheapest_rejected = _filter_and_measure(request, offerings, strat.needs_throughput)
    if not eligible:
        raise _nothing_fits(request, offerings, rejected, cheapest_rejected)
    rows = [(o, p, g, t) for o, p, g, t, _ in eligible]
    scores = strat.score(rows, request)
    k = 1 + max(0, request.max_fallbacks)
    best = heapq.nsmallest(k, range(len(eligible)), key=scores.__getitem__)
    req = request.requirement
    ranked = []
    for i in best:
        o, p, g, t, tp = eligible[i]
        if (
            t is None and req is not None
        ):  # throughput for the shown few only, when the strategy did not need it
            t = _measure(o, req, request.min_vram_gb, load_gpus().specs, load_cpu_defaults(), True)[2]
        ranked.append(Candidate(o, p, g, tp, t, scores[i]))
    notable = sorted(
        (Rejection(o, r, _rejection_detail(r, o, request)) for r, o in cheapest_rejected.items()),
        key=lambda r: (r.offering.price_per_hour is None, r.offering.price_per_hour or 0.0),
    )
    placement = Placement(
        strategy=strat.name,
        choice=ranked[0],
        fallbacks=ranked[1:],
        considered=len(offerings),
        eligible=len(eligible),
        rejected=rejected,
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


def _nothing_fits(
    request: PlacementRequest,
    offerings: Sequence[Offering],
    rejected: dict[str, int],
    cheapest: dict[str, Offering],
) -> NoPlacementError:
    req = request.requirement
    counts = ", ".join(f"{n} {REASONS.get(r, r)}" for r, n in sorted(rejected.items(), key=lambda kv: -kv[1]))
    details: dict[str, object] = {"rejected": rejected, "requirement": req.to_dict() if req else None}
    if req is None or "vram" not in rejected:
        return NoPlacementError(
            f"no offering passes the filters ({len(offerings)} considered: {counts or 'none given'})",
            fix="relax the filters (kinds, regions, providers, --max-price) or run `argosy catalog refresh`",
            details=details,
        )
    fixes = suggest_fixes(request, offerings)
    details["suggestions"] = fixes
    need = (
        f"{req.model.name} needs {req.weights_gb:.1f} GB of weights ({req.quantization}) + {req.kv_gb:.1f} GB KV cache "
        f"({req.max_model_len} tokens x {req.concurrency}) = {req.total_gb:.1f} GB on one GPU"
    )
    return NoPlacementError(
        f"no offering fits: {need}; {len(offerings)} considered ({counts})",
        fix="; ".join(fixes)
        if fixes
        else "no change we know of makes it fit the allowed offerings; allow more kinds/providers",
        details=details,
    )


def suggest_fixes(request: PlacementRequest, offerings: Sequence[Offering]) -> list[str]:
    """Changes that would make the model fit some allowed offering: quantization, shorter context, more GPUs."""
    from dataclasses import replace

    req = request.requirement
    assert req is not None
    out: list[str] = []

    def fits(r: Requirement) -> Offering | None:
        eligible, _, _ = _filter_and_measure(
            replace(request, requirement=r, allow_cpu=False), offerings, False
        )
        return min(eligible, key=lambda e: e[1])[0] if eligible else None

    for q in QUANTIZATIONS:
        if WEIGHT_BYTES[q] < WEIGHT_BYTES[req.quantization] and q not in ("gptq", "mxfp4"):
            alt = size_model(req.model, q, req.max_model_len, req.concurrency, req.kv_dtype)
            hit = fits(alt)
            if hit:
                out.append(
                    f"quantize to {q} ({alt.weights_gb:.1f} GB weights): fits {hit.gpu_count}x {hit.gpu} on {hit.provider} at ${hit.price_per_hour:.2f}/h"
                )
                break
    length = req.max_model_len // 2
    while length >= 1024:
        hit = fits(with_context(req, length))
        if hit:
            out.append(
                f"shorten the context to --max-model-len {length}: fits {hit.gpu_count}x {hit.gpu} on {hit.provider}"
            )
            break
        length //= 2
    specs = load_gpus().specs
    multi = [o for o in offerings if o.gpu and o.gpu_count >= 8 and o.gpu in specs]
    if multi:
        big = max(multi, key=lambda o: specs[o.gpu or ""].vram_gb)  # type: ignore[index]
        per = req.per_gpu_gb(8)
        usable = usable_vram_gb(specs[big.gpu or ""].vram_gb)
        verdict = "fits" if per <= usable else "still does not fit"
        _, outside, _ = _filter_and_measure(
            replace(request, requirement=None, min_vram_gb=None), [big], False
        )
        if outside:
            verdict += f" (outside the current filters: {', '.join(REASONS.get(r, r) for r in outside)})"
        out.append(
            f"tensor parallel 8 needs {per:.1f} GB per GPU; {verdict} on {big.provider} {big.instance_type} "
            f"(8x {big.gpu}, {usable:.0f} GB usable each)"
            + ("" if per <= usable else "; combine with quantization")
        )
    return out
