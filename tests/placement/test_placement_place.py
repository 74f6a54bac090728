"""filter -> score -> pick over real catalog data (and hand-built offerings where a case needs one)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from argosy.catalog import Offering, load_offerings, size_model
from argosy.core.clock import FakeClock
from argosy.core.errors import NotFoundError
from argosy.placement import STRATEGIES, NoPlacementError, PlacementRequest, place


def _offer(provider: str, gpu: str | None, price: float | None, **kw) -> Offering:  # type: ignore[no-untyped-def]
    base = dict(
        provider=provider, region=kw.pop("region", "us-east-1"), instance_type=kw.pop("instance_type", f"{provider}-{gpu}"),
        gpu=gpu, gpu_count=kw.pop("gpu_count", 1 if gpu else 0), kind=kw.pop("kind", "vm"), price_per_hour=price,
        source="test", fetched_at="2026-11-22",
    )  # fmt: skip
    return Offering(**{**base, **kw})


@pytest.fixture(scope="module")
def catalog() -> list[Offering]:
    return load_offerings()


def test_cost_picks_cheapest_that_fits_and_explains(catalog) -> None:  # type: ignore[no-untyped-def]
    p = place(PlacementRequest(requirement=size_model("llama-3.1-8b")), catalog, "cost")
    fits = [o for o in catalog if o.gpu and o.price_per_hour is not None]
    assert p.choice.price_per_hour <= min(c.price_per_hour for c in p.fallbacks)
    assert p.choice.offering.gpu not in ("T4",)  # 16 GB cannot hold 16 GB of weights plus KV
    assert len(p.fallbacks) == 5
    prices = [p.choice.price_per_hour, *(c.price_per_hour for c in p.fallbacks)]
    assert prices == sorted(prices)
    text = "\n".join(p.explanation)
    assert text.startswith("Chose ") and "gCO2/h" in text and "Price source:" in text
    assert "not enough GPU memory" in text and "is cheaper but" in text  # T4s filtered out, with the reason
    assert p.rejected["vram"] > 0 and p.eligible + sum(p.rejected.values()) == len(catalog)
    assert len(fits) > p.eligible


def test_kinds_regions_providers_and_budget_filter(catalog) -> None:  # type: ignore[no-untyped-def]
    req = size_model("llama-3.1-8b")
    p = place(
        PlacementRequest(requirement=req, kinds=("vm",), providers=("aws", "gcp"), max_price_per_hour=1.0),
        catalog,
    )
    assert p.choice.offering.kind == "vm" and p.choice.offering.provider in ("aws", "gcp")
    assert all(c.price_per_hour <= 1.0 for c in [p.choice, *p.fallbacks])
    p2 = place(PlacementRequest(requirement=req, regions=("us-central1",), kinds=("spot",)), catalog)
    assert (p2.choice.offering.region, p2.choice.offering.kind) == ("us-central1", "spot")
    p3 = place(PlacementRequest(requirement=req, exclude_regions=(p.choice.offering.region,)), catalog)
    assert p3.choice.offering.region != p.choice.offering.region


def test_unknown_names_are_errors_with_suggestions(catalog) -> None:  # type: ignore[no-untyped-def]
    req = size_model("qwen2.5-7b")
    with pytest.raises(NotFoundError, match="Did you mean 'runpod'"):
        place(PlacementRequest(requirement=req, providers=("runpdo",)), catalog)
    with pytest.raises(NotFoundError, match="Did you mean 'us-central1'"):
        place(PlacementRequest(requirement=req, regions=("us-centrl1",)), catalog)
    with pytest.raises(NotFoundError, match="Did you mean 'carbon'"):
        place(PlacementRequest(requirement=req), catalog, "carbn")
    with pytest.raises(NotFoundError, match="unknown GPU"):
        place(PlacementRequest(requirement=req, gpu="H10"), catalog)


def test_gpu_alias_filter(catalog) -> None:  # type: ignore[no-untyped-def]
    p = place(PlacementRequest(requirement=size_model("qwen2.5-7b"), gpu="4090"), catalog)
    assert {c.offering.gpu for c in [p.choice, *p.fallbacks]} == {"RTX4090"}


def test_carbon_prefers_clean_grids(catalog) -> None:  # type: ignore[no-untyped-def]
    req = size_model("llama-3.1-8b")
    cost = place(PlacementRequest(requirement=req), catalog, "cost")
    carbon = place(PlacementRequest(requirement=req), catalog, "carbon")
    assert carbon.choice.gco2_per_hour < cost.choice.gco2_per_hour
    assert all(carbon.choice.gco2_per_hour <= c.gco2_per_hour for c in carbon.fallbacks)


def test_balanced_sits_between(catalog) -> None:  # type: ignore[no-untyped-def]
    req = size_model("llama-3.1-8b")
    cost = place(PlacementRequest(requirement=req), catalog, "cost").choice
    carbon = place(PlacementRequest(requirement=req), catalog, "carbon").choice
    bal = place(PlacementRequest(requirement=req), catalog, "balanced").choice
    assert bal.gco2_per_hour <= cost.gco2_per_hour and bal.price_per_hour <= carbon.price_per_hour


def test_cost_per_token_prefers_bandwidth_per_dollar() -> None:
    req = size_model("llama-3.1-8b", concurrency=8, max_model_len=2048)
    slow_cheap = _offer("a", "L40S", 0.86)  # 864 GB/s
    fast = _offer("b", "H100-SXM", 2.50)  # 3350 GB/s: 3.9x the bandwidth for 2.9x the price
    by_hour = place(PlacementRequest(requirement=req), [slow_cheap, fast], "cost")
    by_token = place(PlacementRequest(requirement=req), [slow_cheap, fast], "cost-per-token")
    assert by_hour.choice.offering.provider == "a"
    assert by_token.choice.offering.provider == "b"
    assert by_token.choice.usd_per_mtok < by_token.fallbacks[0].usd_per_mtok


def test_priority_and_availability() -> None:
    offers = [
        _offer("cheap", "L40S", 0.5, kind="spot"),
        _offer("mid", "L40S", 0.9, kind="vm"),
        _offer("pricey", "L40S", 1.5, kind="vm"),
        _offer("market", "L40S", 0.8, kind="vm", tier="community"),
    ]
    req = size_model("qwen2.5-7b")
    assert (
        place(
            PlacementRequest(requirement=req, priority=("pricey", "mid")), offers, "priority"
        ).choice.offering.provider
        == "pricey"
    )
    avail = place(PlacementRequest(requirement=req), offers, "availability")
    assert [c.offering.provider for c in [avail.choice, *avail.fallbacks]] == [
        "mid",
        "pricey",
        "market",
        "cheap",
    ]


def test_round_robin_rotates_with_the_callers_counter() -> None:
    offers = [_offer(p, "L4", 1.0) for p in ("a", "b", "c")]
    picks = [
        place(
            PlacementRequest(requirement=size_model("qwen2.5-0.5b"), round_robin_index=i, allow_cpu=False),
            offers,
            "round-robin",
        ).choice.offering.provider
        for i in range(4)
    ]
    assert picks == ["a", "b", "c", "a"]


def test_unknown_and_missing_prices_are_never_free() -> None:
    offers = [_offer("mystery", "H100-SXM", None), _offer("known", "H100-SXM", 3.0)]
    p = place(PlacementRequest(requirement=size_model("llama-3.1-8b")), offers, "cost")
    assert p.choice.offering.provider == "known" and p.rejected == {"no-price": 1}
    with pytest.raises(NoPlacementError):
        place(PlacementRequest(requirement=size_model("llama-3.1-8b")), offers[:1], "cost")


def test_unavailable_offerings_are_skipped_but_counted() -> None:
    offers = [_offer("gone", "A100-80GB", 1.0, available=False), _offer("here", "A100-80GB", 2.0)]
    p = place(PlacementRequest(requirement=size_model("llama-3.1-8b")), offers)
    assert p.choice.offering.provider == "here" and p.rejected == {"unavailable": 1}


def test_fallbacks_are_ordered_for_capacity_errors(catalog) -> None:  # type: ignore[no-untyped-def]
    p = place(PlacementRequest(requirement=size_model("llama-3.1-70b", "awq"), max_fallbacks=8), catalog)
    order = [p.choice, *p.fallbacks]
    assert len(order) == 9
    assert [c.score for c in order] == sorted(c.score for c in order)
    assert len({c.to_dict()["key"] for c in order}) == 9


def test_multi_gpu_tensor_parallel(catalog) -> None:  # type: ignore[no-untyped-def]
    p = place(
        PlacementRequest(
            requirement=size_model("llama-3.1-70b", "bf16"), kinds=("vm",), providers=("lambda",)
        ),
        catalog,
    )
    assert p.choice.offering.gpu_count >= 2 and p.choice.tp >= 2
    assert f"TP={p.choice.tp}" in p.explanation[0]


def test_nothing_fits_says_what_would(catalog) -> None:  # type: ignore[no-untyped-def]
    req = size_model("llama-3.1-405b", "bf16", max_model_len=131072, concurrency=12)
    with pytest.raises(NoPlacementError) as exc:
        place(PlacementRequest(requirement=req, kinds=("vm",)), catalog)
    err = exc.value
    assert "811.8 GB of weights" in err.message and "131072 tokens x 12" in err.message
    assert (
        err.fix
        and "quantize to fp8" in err.fix
        and "--max-model-len" in err.fix
        and "tensor parallel 8" in err.fix
    )
    assert err.http_status == 422 and err.to_dict()["details"]["suggestions"]


def test_filters_that_exclude_everything_say_so(catalog) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NoPlacementError, match="passes the filters") as exc:
        place(
            PlacementRequest(requirement=size_model("qwen2.5-7b"), max_price_per_hour=0.01, allow_cpu=False),
            catalog,
        )
    assert "--max-price" in (exc.value.fix or "")


def test_cpu_only_tiny_model_lands_on_the_local_machine(settings) -> None:  # type: ignore[no-untyped-def]
    from argosy.providers.local import LocalProvider

    local = LocalProvider(settings, FakeClock()).offerings()
    offers = load_offerings(live=local)
    p = place(PlacementRequest(requirement=size_model("smollm2-135m"), kinds=("local",)), offers, "cost")
    assert p.choice.offering.provider == "local" and p.choice.offering.gpu is None and p.choice.tp == 0
    assert "in RAM (CPU inference)" in p.explanation[0]
    assert p.choice.tokens_per_s and p.choice.tokens_per_s > 10
    # A big model is not put on the CPU unless asked: it would crawl.
    big = place(PlacementRequest(requirement=size_model("llama-3.1-8b")), offers, "cost")
    assert big.choice.offering.provider != "local" and big.rejected.get("cpu") == 1


def test_cpu_needs_the_ram() -> None:
    tiny_box = _offer("local", None, 0.0, kind="local", ram_gb=0.5, region="local")
    with pytest.raises(NoPlacementError):
        place(PlacementRequest(requirement=size_model("qwen2.5-0.5b")), [tiny_box])


def test_every_strategy_runs_on_the_catalog(catalog) -> None:  # type: ignore[no-untyped-def]
    req = size_model("mistral-7b")
    for name in STRATEGIES:
        p = place(PlacementRequest(requirement=req), catalog, name)
        assert p.strategy == name and p.to_dict()["choice"]["price_per_hour"] is not None


def test_request_without_a_model_uses_min_vram() -> None:
    offers = [_offer("small", "T4", 0.3), _offer("big", "L40S", 0.9)]
    p = place(PlacementRequest(min_vram_gb=40, allow_cpu=False), offers)
    assert p.choice.offering.provider == "big"


def test_place_does_not_mutate_its_inputs(catalog) -> None:  # type: ignore[no-untyped-def]
    before = [replace(o) for o in catalog]
    place(PlacementRequest(requirement=size_model("qwen2.5-7b")), catalog, "balanced")
    assert catalog == before


def test_round_robin_walks_into_and_across_groups() -> None:
    offers = [
        _offer("a", "L4", 1.0, instance_type="a1"),
        _offer("a", "L4", 2.0, instance_type="a2"),
        _offer("b", "L4", 1.5),
    ]
    req = size_model("qwen2.5-0.5b")
    picks = [
        place(
            PlacementRequest(requirement=req, round_robin_index=i, allow_cpu=False, max_fallbacks=0),
            offers,
            "round-robin",
        )
        for i in range(4)
    ]
    assert [p.choice.offering.instance_type for p in picks] == ["a1", "a2", "b-L4", "a1"]
    rest = place(
        PlacementRequest(requirement=req, round_robin_index=2, allow_cpu=False), offers, "round-robin"
    )
    assert [c.offering.instance_type for c in [rest.choice, *rest.fallbacks]] == ["b-L4", "a1", "a2"]


def test_vectorised_scores_match_a_plain_python_reference(catalog) -> None:  # type: ignore[no-untyped-def]
    """The columnar filter and scorers must rank exactly as a straightforward loop over offerings."""
    import random

    from argosy.catalog import load_gpus, load_regions
    from argosy.catalog.sizing import usable_vram_gb

    rng = random.Random(3)
    offers = [
        replace(
            o,
            price_per_hour=round((o.price_per_hour or 1) * rng.uniform(0.5, 1.5), 3),
            instance_type=f"{o.instance_type}#{i}",
        )
        for i, o in enumerate(catalog * 5)
    ]
    req = size_model("llama-3.1-8b")
    specs, regions = load_gpus().specs, load_regions()
    kind_risk = {"local": 0.0, "vm": 1.0, "serverless": 2.0, "spot": 3.0}
    prio = ("aws", "runpod/EU-RO-1", "L4")

    def rank(o: Offering) -> int:
        names = (o.provider, f"{o.provider}/{o.region}", o.gpu)
        return min([i for i, p in enumerate(prio) if p in names], default=len(prio))

    reference = {
        "cost": lambda o, g: o.price_per_hour,
        "carbon": lambda o, g: g + o.price_per_hour * 1e-3,
        "availability": lambda o, g: (
            (kind_risk[o.kind] + (0.5 if o.tier in ("community", "interruptible") else 0)) * 1e6
            + o.price_per_hour
        ),
        "priority": lambda o, g: rank(o) * 1e6 + o.price_per_hour,
    }
    eligible = []
    for o in offers:
        if o.gpu is None or not o.available or o.price_per_hour is None:
            continue
        tp = req.tp_for(specs[o.gpu].vram_gb, o.gpu_count)
        if tp is None:
            continue
        assert req.per_gpu_gb(tp) <= usable_vram_gb(specs[o.gpu].vram_gb)
        eligible.append(
            (o, specs[o.gpu].tdp_w * o.gpu_count * regions.intensity(o.provider, o.region) / 1000)
        )
    request = PlacementRequest(requirement=req, priority=prio, max_fallbacks=15)
    for name, fn in reference.items():
        expected = sorted(fn(o, g) for o, g in eligible)[:16]
        got = place(request, offers, name)
        assert got.eligible == len(eligible)
        assert [c.score for c in [got.choice, *got.fallbacks]] == pytest.approx(expected), name


def test_extra_gpus_count_as_replicas_for_throughput() -> None:
    req = size_model("llama-3.1-8b", max_model_len=2048)
    one = _offer("one", "H100-SXM", 3.0)
    eight = _offer("eight", "H100-SXM", 24.0, gpu_count=8)
    p = place(PlacementRequest(requirement=req), [one, eight], "cost-per-token")
    by = {c.offering.provider: c for c in [p.choice, *p.fallbacks]}
    assert by["eight"].tp == 1 and by["eight"].tokens_per_s == pytest.approx(8 * by["one"].tokens_per_s)
    assert by["eight"].usd_per_mtok == pytest.approx(by["one"].usd_per_mtok)
