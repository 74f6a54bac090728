"""Vast.ai: offer search, GET /api/v0/bundles/?q=<json> (per-offer $/h for the whole machine).

Docs: https://docs.vast.ai/api-reference/search/search-offers
"""

from __future__ import annotations

import json

from argosy.catalog.fetchers.base import FetchContext, FetchResult, check_response, iso_now
from argosy.catalog.gpus import load_gpus
from argosy.catalog.types import Offering

DOC_URL = "https://docs.vast.ai/api-reference/search/search-offers"
# Verified, rentable machines only: unverified hosts are not something placement should pick unattended.
QUERY = {
    "verified": {"eq": True},
    "rentable": {"eq": True},
    "rented": {"eq": False},
    "type": "on-demand",
    "order": [["dph_total", "asc"]],
    "limit": 500,
}


def region_of(geolocation: str | None) -> str:
    """'Sweden, SE' -> 'se'; 'California, US' -> 'us'. Vast.ai reports the country code last."""
    if not geolocation:
        return "unknown"
    return geolocation.rsplit(",", 1)[-1].strip().lower() or "unknown"


def fetch(ctx: FetchContext) -> FetchResult:
    key = ctx.env["VAST_API_KEY"]
    resp = ctx.client.get(
        f"{ctx.base_url}/api/v0/bundles/",
        params={"q": json.dumps(QUERY)},
        headers={"Authorization": f"Bearer {key}"},
    )
    check_response(resp, "vast")
    when = iso_now(ctx.now)
    source = f"Vast.ai API {ctx.base_url}/api/v0/bundles/"
    gpus = load_gpus()
    out: list[Offering] = []
    skipped: list[str] = []
    for offer in resp.json().get("offers") or []:
        vram = offer.get("gpu_ram")
        gpu = gpus.find(offer.get("gpu_name") or "", vram / 1024 if vram else None)
        if gpu is None:
            skipped.append(f"offer {offer.get('id')}: unknown GPU '{offer.get('gpu_name')}'")
            continue
        common = dict(
            provider="vast",
            region=region_of(offer.get("geolocation")),
            instance_type=f"offer-{offer['id']}",
            gpu=gpu,
            gpu_count=int(offer.get("num_gpus") or 1),
            vcpus=int(offer["cpu_cores_effective"]) if offer.get("cpu_cores_effective") else None,
            ram_gb=round(offer["cpu_ram"] / 1024, 1) if offer.get("cpu_ram") else None,
            per_second_billing=True,
            source=source,
            fetched_at=when,
            available=bool(offer.get("rentable", True)),
        )
        reliability = offer.get("reliability2") or offer.get("reliability")
        extra = {"origin": "live"}
        if reliability is not None:
            extra["reliability"] = f"{float(reliability):.3f}"
        if offer.get("dph_total") is not None:
            out.append(
                Offering(kind="vm", price_per_hour=float(offer["dph_total"]), extra=dict(extra), **common)
            )  # type: ignore[arg-type]
        if offer.get("min_bid"):
            out.append(
                Offering(
                    kind="spot",
                    price_per_hour=float(offer["min_bid"]),
                    tier="interruptible",
                    extra=dict(extra),
                    **common,
                )  # type: ignore[arg-type]
            )
    return FetchResult(out, replaces_kinds=("vm", "spot"), skipped=skipped)
