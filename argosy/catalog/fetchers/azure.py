"""Azure: the Retail Prices API, GET https://prices.azure.com/api/retail/prices (no credentials needed).

Docs: https://learn.microsoft.com/en-us/rest/api/cost-management/retail-prices/azure-retail-prices
Only VM sizes whose shape (GPU, count, vCPU, RAM) the snapshot knows are priced: the API gives prices,
not hardware.
"""

from __future__ import annotations

from dataclasses import replace

from argosy.catalog.fetchers.base import FetchContext, FetchResult, check_response, iso_now
from argosy.catalog.types import Offering
from argosy.core.errors import ProviderError

DOC_URL = "https://learn.microsoft.com/en-us/rest/api/cost-management/retail-prices/azure-retail-prices"
MAX_PAGES = 50  # the API pages 100 items at a time; a runaway NextPageLink chain must end


def build_filter(skus: list[str]) -> str:
    names = " or ".join(f"armSkuName eq '{s}'" for s in sorted(skus))
    return f"serviceName eq 'Virtual Machines' and priceType eq 'Consumption' and ({names})"


def fetch(ctx: FetchContext) -> FetchResult:
    shapes = {o.instance_type: o for o in ctx.snapshot}
    url: str | None = f"{ctx.base_url}/api/retail/prices"
    params: dict[str, str] | None = {"$filter": build_filter(list(shapes)), "currencyCode": "USD"}
    when = iso_now(ctx.now)
    source = f"Azure Retail Prices API {ctx.base_url}/api/retail/prices"
    out: dict[tuple[str, str, str], Offering] = {}
    skipped: list[str] = []
    for _ in range(MAX_PAGES):
        if url is None:
            break
        resp = ctx.client.get(url, params=params)
        check_response(resp, "azure")
        body = resp.json()
        for item in body.get("Items") or []:
            sku = item.get("armSkuName", "")
            shape = shapes.get(sku)
            product = item.get("productName", "")
            meter = item.get("meterName", "")
            if shape is None or "Windows" in product or "Low Priority" in meter:
                continue  # Linux pay-as-you-go and Spot only; Low Priority is the retired batch tier
            if item.get("unitOfMeasure") != "1 Hour" or item.get("currencyCode", "USD") != "USD":
                skipped.append(f"{sku}: unit {item.get('unitOfMeasure')} {item.get('currencyCode')}")
                continue
            kind = "spot" if "Spot" in meter or "Spot" in item.get("skuName", "") else "vm"
            region = item.get("armRegionName", "")
            o = replace(
                shape,
                region=region,
                kind=kind,
                price_per_hour=float(item["retailPrice"]),
                source=source,
                fetched_at=when,
                extra={"origin": "live", "meter_id": item.get("meterId", "")},
            )
            key = (sku, region, kind)
            # Several meters can price one SKU (e.g. a newer effectiveStartDate): keep the latest.
            prev = out.get(key)
            if prev is None or item.get("effectiveStartDate", "") >= prev.extra.get("effective", ""):
                out[key] = replace(o, extra={**o.extra, "effective": item.get("effectiveStartDate", "")})
        url = body.get("NextPageLink")
        params = None  # NextPageLink already carries the query
    else:
        raise ProviderError(f"Azure price listing did not end after {MAX_PAGES} pages", provider="azure")
    return FetchResult(list(out.values()), replaces_kinds=(), skipped=skipped)
