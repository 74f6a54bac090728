"""The data files: every table complete, every figure with a source and a date, names resolvable."""

from __future__ import annotations

import pytest

from argosy.catalog import KINDS, load_gpus, load_regions, parse_when_ok, snapshot_offerings
from argosy.core.errors import NotFoundError

REQUIRED_GPUS = [
    "T4", "L4", "A10", "A10G", "L40", "L40S", "A100-40GB", "A100-80GB", "H100-PCIe", "H100-SXM", "H200", "B200",
    "GH200", "RTX3090", "RTX4090", "RTX5090", "RTX-A4000", "RTX-A6000", "RTX4000-Ada", "RTX6000-Ada",
    "Quadro-RTX6000", "MI250X", "MI300X",
]  # fmt: skip
REQUIRED_PROVIDERS = {
    "lambda",
    "runpod",
    "vast",
    "linode",
    "gcp",
    "aws",
    "azure",
}  # serverless providers' list prices come from their own table: test_serverless_list_prices_have_regions


def test_every_required_gpu_has_full_specs() -> None:
    gpus = load_gpus()
    for name in REQUIRED_GPUS:
        s = gpus.specs[name]
        assert s.vram_gb > 0 and s.bandwidth_gbps > 0 and s.tdp_w > 0 and s.tflops > 0, name
        assert s.source.startswith("https://") and s.as_of, name
        assert s.dense_bf16_tflops is None or s.bf16, name  # bf16 TFLOPs only where bf16 exists


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("A100", "A100-80GB"),
        ("4090", "RTX4090"),
        ("NVIDIA GeForce RTX 4090", "RTX4090"),
        ("rtx_4090", "RTX4090"),
        ("H100 SXM", "H100-SXM"),
        ("H100 80GB HBM3", "H100-SXM"),
        ("NVIDIA H100 PCIe", "H100-PCIe"),
        ("Tesla T4", "T4"),
        ("RTX 6000 Ada Generation", "RTX6000-Ada"),
        ("Quadro RTX 6000", "Quadro-RTX6000"),
        ("RTX A6000", "RTX-A6000"),
        ("AMD Instinct MI300X OAM", "MI300X"),
    ],
)
def test_aliases_resolve(spelling: str, canonical: str) -> None:
    assert load_gpus().resolve(spelling) == canonical


def test_vram_tells_same_named_parts_apart() -> None:
    gpus = load_gpus()
    assert gpus.find("A100 PCIE", 40) == "A100-40GB"
    assert gpus.find("A100 SXM4", 80) == "A100-80GB"
    assert gpus.find("A100", 40.0) == "A100-40GB"


def test_unknown_gpu_suggests() -> None:
    with pytest.raises(NotFoundError) as exc:
        load_gpus().resolve("H10")
    assert "Did you mean 'H100-SXM'?" in exc.value.message and exc.value.fix


def test_snapshot_rows_are_complete() -> None:
    rows = snapshot_offerings()
    assert len(rows) >= 90
    assert {o.provider for o in rows} >= REQUIRED_PROVIDERS
    gpus = load_gpus().specs
    for o in rows:
        assert o.kind in KINDS
        assert o.gpu in gpus, o
        assert o.gpu_count >= 1
        assert o.price_per_hour is not None and o.price_per_hour > 0, o
        assert o.source and parse_when_ok(o.fetched_at), o
    kinds_by_provider = {(o.provider, o.kind) for o in rows}
    for needed in [
        ("runpod", "vm"),
        ("runpod", "spot"),
        ("gcp", "spot"),
        ("aws", "spot"),
    ]:
        assert needed in kinds_by_provider
    assert {o.tier for o in rows if o.provider == "runpod"} >= {"secure", "community"}


def test_snapshot_keys_are_unique() -> None:
    from argosy.catalog import offering_key

    keys = [offering_key(o) for o in snapshot_offerings()]
    assert len(keys) == len(set(keys))


def test_every_offering_region_has_carbon_intensity() -> None:
    regions = load_regions()
    for o in snapshot_offerings():
        r = regions.rows.get((o.provider, o.region))
        assert r is not None, f"no region row for {o.provider}/{o.region}"
        assert 0 < r.gco2_per_kwh < 1200 and r.intensity_source and 2015 < r.intensity_year < 2030
    assert regions.get("nowhere", "x").country == "WORLD"  # unknown regions are not carbon-free


def test_every_gpu_in_the_table_is_offered_somewhere_or_specced() -> None:
    offered = {o.gpu for o in snapshot_offerings()}
    assert {"H100-SXM", "A100-80GB", "L4", "T4", "RTX4090", "MI300X", "B200"} <= offered


def test_live_offerings_get_canonical_gpu_names() -> None:
    from argosy.catalog import Offering, load_offerings

    live = Offering("vast", "us", "offer-1", "NVIDIA GeForce RTX 4090", 1, "vm", 0.3)
    weird = Offering("vast", "us", "offer-2", "Mystery 9000", 1, "vm", 0.1)
    merged = {o.instance_type: o for o in load_offerings(live=[live, weird])}
    assert merged["offer-1"].gpu == "RTX4090"
    assert merged["offer-2"].gpu == "Mystery 9000"  # left as is; placement rejects it as unknown


def test_snapshot_providers_are_registry_names() -> None:
    # A chosen offering must name the provider that can create it.
    from argosy.providers.registry import PROVIDERS

    registered = set(PROVIDERS.names())
    without_provider = {o.provider for o in snapshot_offerings()} - registered
    assert without_provider <= {"azure"}, without_provider  # Azure has prices but no provider module yet


def test_serverless_list_prices_have_regions(cat_settings) -> None:  # type: ignore[no-untyped-def]
    """Serverless prices come from the providers' list-price table; their regions must be in ours."""
    from argosy.cli.catalog_cmd import gather_offerings

    offers = gather_offerings(cat_settings)
    kinds = {(o.provider, o.kind) for o in offers}
    for needed in [
        ("modal", "serverless"),
        ("runpod-serverless", "serverless"),
        ("baseten", "serverless"),
        ("cloudrun", "serverless"),
        ("local", "local"),
    ]:
        assert needed in kinds
    regions = load_regions()
    for o in offers:
        if o.kind == "serverless":
            assert (o.provider, o.region) in regions.rows, f"no region row for {o.provider}/{o.region}"
