"""GCP: the Cloud Billing Catalog API, GET /v1/services/6F81-5844-456A/skus (Compute Engine SKUs).

Docs: https://cloud.google.com/billing/v1/how-tos/catalog-api
A GPU VM's price is the sum of SKUs: GPUs x the GPU SKU + vCPUs x the family's core SKU + GiB x the
family's RAM SKU, each for the region. Only machine shapes the snapshot knows are priced.
"""

from __future__ import annotations

import re
from dataclasses import replace

from argosy.catalog.fetchers.base import FetchContext, FetchResult, check_response, iso_now
from argosy.catalog.gpus import load_gpus
from argosy.catalog.types import Offering

DOC_URL = "https://cloud.google.com/billing/v1/how-tos/catalog-api"
COMPUTE_SERVICE = "6F81-5844-456A"  # Compute Engine's service id in the catalog
MAX_PAGES = 40
_GPU = re.compile(r"^(?:Spot Preemptible )?Nvidia (?:Tesla )?(?P<model>.+?) GPU running in", re.IGNORECASE)
_MACHINE = re.compile(
    r"^(?:Spot Preemptible )?(?P<family>[A-Z]\d+) (?:Predefined )?Instance (?P<what>Core|Ram) running in",
    re.IGNORECASE,
)
# GCP names the 40 GB A100 plain "A100"; everywhere else "A100" means the 80 GB part.
_GCP_GPU_NAMES = {"A100": "A100-40GB", "A100 80GB": "A100-80GB", "H100 80GB": "H100-SXM", "H100": "H100-SXM"}


def unit_price(sku: dict) -> float | None:
    """USD per usage unit from the latest pricingInfo's highest tier (tier 0 is sometimes a free allowance)."""
    infos = sku.get("pricingInfo") or []
    if not infos:
        return None
    rates = infos[-1].get("pricingExpression", {}).get("tieredRates") or []
    if not rates:
        return None
    price = rates[-1].get("unitPrice", {})
    return int(price.get("units") or 0) + int(price.get("nanos") or 0) / 1e9


def family_of(machine_type: str) -> str:
    return machine_type.split("-", 1)[0].upper()  # "g2-standard-4" -> "G2"


def fetch(ctx: FetchContext) -> FetchResult:
    key = ctx.env["GCP_API_KEY"]
    gpus = load_gpus()
    # price[(kind, what, name, region)] with what in gpu/core/ram and name a GPU or a machine family
    price: dict[tuple[str, str, str, str], float] = {}
    token = ""
    for _ in range(MAX_PAGES):
        params = {"key": key, "pageSize": "5000"}
        if token:
            params["pageToken"] = token
        resp = ctx.client.get(f"{ctx.base_url}/v1/services/{COMPUTE_SERVICE}/skus", params=params)
        check_response(resp, "gcp")
        body = resp.json()
        for sku in body.get("skus") or []:
            usage = sku.get("category", {}).get("usageType")
            kind = {"OnDemand": "vm", "Preemptible": "spot"}.get(usage or "")
            p = unit_price(sku)
            if kind is None or p is None:
                continue
            desc = sku.get("description", "")
            if m := _GPU.match(desc):
                name = _GCP_GPU_NAMES.get(m["model"]) or gpus.find(m["model"])
                entry = ("gpu", name) if name else None
            elif m := _MACHINE.match(desc):
                entry = (m["what"].lower(), m["family"].upper())
            else:
                entry = None
            if entry is None:
                continue
            for region in sku.get("serviceRegions") or []:
                price[(kind, entry[0], entry[1], region)] = p
        token = body.get("nextPageToken") or ""
        if not token:
            break
    when = iso_now(ctx.now)
    regions = sorted({r for (_, _, _, r) in price})
    out: dict[tuple[str, str, str], Offering] = {}
    skipped: list[str] = []
    for shape in ctx.snapshot:
        if shape.gpu is None or shape.vcpus is None or shape.ram_gb is None:
            continue
        fam = family_of(shape.instance_type.split("+")[0])
        for kind in ("vm", "spot"):
            for region in regions:
                parts = (
                    price.get((kind, "gpu", shape.gpu, region)),
                    price.get((kind, "core", fam, region)),
                    price.get((kind, "ram", fam, region)),
                )
                if None in parts:
                    continue
                gpu_p, core_p, ram_p = parts  # type: ignore[misc]
                total = shape.gpu_count * gpu_p + shape.vcpus * core_p + shape.ram_gb * ram_p
                out[(shape.instance_type, region, kind)] = replace(
                    shape, region=region, kind=kind, price_per_hour=round(total, 4), fetched_at=when,  # type: ignore[arg-type]
                    source="GCP Cloud Billing Catalog API (GPU + core + RAM SKUs)", extra={"origin": "live"},
                )  # fmt: skip
    if not out:
        skipped.append("no GPU machine shape had GPU, core and RAM SKUs in one region")
    return FetchResult(list(out.values()), replaces_kinds=(), skipped=skipped)
