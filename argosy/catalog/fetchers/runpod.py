"""RunPod: the GraphQL `gpuTypes` query (secure, community and spot prices per GPU, per hour).

Docs: https://docs.runpod.io/sdks/graphql/manage-pods (gpuTypes) and https://graphql-spec.runpod.io/
"""

from __future__ import annotations

from argosy.catalog.fetchers.base import FetchContext, FetchResult, check_response, iso_now
from argosy.catalog.gpus import load_gpus
from argosy.catalog.types import Offering
from argosy.core.errors import ProviderError

DOC_URL = "https://docs.runpod.io/sdks/graphql/manage-pods"
QUERY = """query GpuTypes {
  gpuTypes {
    id
    displayName
    memoryInGb
    secureCloud
    communityCloud
    securePrice
    communityPrice
    secureSpotPrice
    communitySpotPrice
  }
}"""
# The gpuTypes listing does not say which data centre: live rows go to these pooled regions.
REGIONS = {"secure": "secure-any", "community": "community-any"}


def fetch(ctx: FetchContext) -> FetchResult:
    key = ctx.env["RUNPOD_API_KEY"]
    resp = ctx.client.post(
        f"{ctx.base_url}/graphql", json={"query": QUERY}, headers={"Authorization": f"Bearer {key}"}
    )
    check_response(resp, "runpod")
    body = resp.json()
    if body.get("errors"):
        raise ProviderError(f"RunPod GraphQL errors: {body['errors']}", provider="runpod")
    when = iso_now(ctx.now)
    source = f"RunPod GraphQL {ctx.base_url}/graphql gpuTypes"
    gpus = load_gpus()
    out: list[Offering] = []
    skipped: list[str] = []
    for t in body["data"]["gpuTypes"]:
        gpu = gpus.find(t.get("id") or "", t.get("memoryInGb")) or gpus.find(
            t.get("displayName") or "", t.get("memoryInGb")
        )
        if gpu is None:
            skipped.append(f"{t.get('id')}: unknown GPU")
            continue
        for tier, kind, field, offered in (
            ("secure", "vm", "securePrice", t.get("secureCloud")),
            ("community", "vm", "communityPrice", t.get("communityCloud")),
            ("secure", "spot", "secureSpotPrice", t.get("secureCloud")),
            ("community", "spot", "communitySpotPrice", t.get("communityCloud")),
        ):
            price = t.get(field)
            # RunPod reports 0 for "not offered in this tier"; a zero price is never a free GPU.
            if not offered or not price:
                continue
            out.append(
                Offering(
                    provider="runpod",
                    region=REGIONS[tier],
                    instance_type=t.get("displayName") or t["id"],
                    gpu=gpu,
                    gpu_count=1,
                    kind=kind,  # type: ignore[arg-type]
                    price_per_hour=float(price),
                    per_second_billing=True,
                    source=source,
                    fetched_at=when,
                    tier=tier,
                    extra={"origin": "live", "gpu_type_id": t["id"]},
                )
            )
    return FetchResult(out, replaces_kinds=("vm", "spot"), skipped=skipped)
