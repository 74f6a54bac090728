"""Lambda Cloud: GET /api/v1/instance-types (prices in cents per hour, regions with capacity now).

Docs: https://docs-api.lambda.ai/api/cloud#listInstanceTypes
"""

from __future__ import annotations

import re
from dataclasses import replace

from argosy.catalog.fetchers.base import FetchContext, FetchResult, check_response, iso_now
from argosy.catalog.gpus import load_gpus
from argosy.catalog.types import Offering

DOC_URL = "https://docs-api.lambda.ai/api/cloud#listInstanceTypes"
# "H100 (80 GB SXM5)", "A10 (24 GB PCIe)", "GH200 (96 GB)"
_GPU_DESC = re.compile(r"^\s*(?P<model>.+?)\s*\((?P<mem>\d+)\s*GB(?:\s+(?P<form>[\w ]+?))?\)\s*$")


def parse_gpu(description: str) -> tuple[str | None, float | None]:
    m = _GPU_DESC.match(description)
    gpus = load_gpus()
    if not m:
        return gpus.find(description), None
    mem = float(m["mem"])
    model = m["model"]
    for spelling in (f"{model} {m['form']}" if m["form"] else None, model):
        if spelling:
            found = gpus.find(spelling, mem)
            if found:
                return found, mem
    return None, mem


def fetch(ctx: FetchContext) -> FetchResult:
    key = ctx.env["LAMBDA_API_KEY"]
    resp = ctx.client.get(f"{ctx.base_url}/api/v1/instance-types", headers={"Authorization": f"Bearer {key}"})
    check_response(resp, "lambda")
    when = iso_now(ctx.now)
    source = f"Lambda API {ctx.base_url}/api/v1/instance-types"
    known_regions: dict[str, list[str]] = {}
    for o in ctx.snapshot:
        known_regions.setdefault(o.instance_type, []).append(o.region)
    out: list[Offering] = []
    skipped: list[str] = []
    for name, item in (resp.json().get("data") or {}).items():
        it = item["instance_type"]
        specs = it.get("specs") or {}
        gpu, _ = parse_gpu(it.get("gpu_description") or it.get("description", ""))
        if gpu is None:
            skipped.append(f"{name}: unknown GPU '{it.get('gpu_description')}'")
            continue
        cents = it.get("price_cents_per_hour")
        base = Offering(
            provider="lambda",
            region="",
            instance_type=it.get("name", name),
            gpu=gpu,
            gpu_count=int(specs.get("gpus") or 1),
            kind="vm",
            price_per_hour=None if cents is None else cents / 100.0,
            vcpus=specs.get("vcpus"),
            ram_gb=specs.get("memory_gib"),
            per_second_billing=False,
            source=source,
            fetched_at=when,
            extra={"origin": "live"},
        )
        regions = [r["name"] for r in item.get("regions_with_capacity_available") or []]
        for region in regions:
            out.append(replace(base, region=region))
        if not regions:
            # No capacity anywhere now: keep the type visible (with its price) but not placeable.
            for region in known_regions.get(base.instance_type, ["us-east-1"]):
                out.append(replace(base, region=region, available=False))
    return FetchResult(out, replaces_kinds=("vm",), skipped=skipped)
