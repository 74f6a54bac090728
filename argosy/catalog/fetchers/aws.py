"""AWS: on-demand prices from the Price List Query API (GetProducts) and spot prices from
EC2 DescribeSpotPriceHistory. Both need credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and
SigV4-signed requests, signed here with the standard library so no SDK is needed.

Docs: https://docs.aws.amazon.com/aws-cost-management/latest/APIReference/API_pricing_GetProducts.html
      https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeSpotPriceHistory.html
      https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html
"""

from __future__ import annotations

import hashlib
import hmac
import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import datetime
from urllib.parse import quote, urlsplit

from argosy.catalog.fetchers.base import FetchContext, FetchResult, check_response, iso_now
from argosy.catalog.types import Offering

DOC_URL = "https://docs.aws.amazon.com/aws-cost-management/latest/APIReference/API_pricing_GetProducts.html"
SPOT_DOC_URL = "https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeSpotPriceHistory.html"
PRICING_REGION = "us-east-1"  # the Price List API endpoint lives in us-east-1 and covers every region
EC2_NS = "{http://ec2.amazonaws.com/doc/2016-11-15/}"
MAX_PAGES = 20


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def sign(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    *,
    service: str,
    region: str,
    access_key: str,
    secret_key: str,
    now: datetime,
    session_token: str | None = None,
) -> dict[str, str]:
    """Headers for an AWS Signature Version 4 request (the documented algorithm, step for step)."""
    parts = urlsplit(url)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    out = {**headers, "host": parts.netloc, "x-amz-date": amz_date}
    if session_token:
        out["x-amz-security-token"] = session_token
    payload_hash = hashlib.sha256(body).hexdigest()
    out["x-amz-content-sha256"] = payload_hash
    query = sorted(
        (quote(k, safe="-_.~"), quote(v, safe="-_.~"))
        for k, _, v in (p.partition("=") for p in parts.query.split("&") if p)
    )
    canonical_query = "&".join(f"{k}={v}" for k, v in query)
    lower = {k.lower(): " ".join(v.strip().split()) for k, v in out.items()}
    signed = ";".join(sorted(lower))
    canonical_headers = "".join(f"{k}:{lower[k]}\n" for k in sorted(lower))
    canonical = "\n".join(
        [
            method,
            quote(parts.path or "/", safe="/-_.~"),
            canonical_query,
            canonical_headers,
            signed,
            payload_hash,
        ]
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret_key}".encode(), date), region), service), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    return out


def _creds(ctx: FetchContext) -> dict[str, str | None]:
    return {
        "access_key": ctx.env["AWS_ACCESS_KEY_ID"],
        "secret_key": ctx.env["AWS_SECRET_ACCESS_KEY"],
        "session_token": ctx.env.get("AWS_SESSION_TOKEN") or None,
    }


def parse_products(price_list: list[str]) -> list[tuple[str, str, float]]:
    """(instanceType, regionCode, USD/h) from GetProducts' PriceList (each item a JSON document)."""
    out = []
    for doc in price_list:
        item = json.loads(doc)
        attrs = item.get("product", {}).get("attributes", {})
        for term in (item.get("terms", {}).get("OnDemand") or {}).values():
            for dim in (term.get("priceDimensions") or {}).values():
                usd = dim.get("pricePerUnit", {}).get("USD")
                if usd is not None and dim.get("unit") in ("Hrs", "Hours", "Hour") and float(usd) > 0:
                    out.append((attrs.get("instanceType", ""), attrs.get("regionCode", ""), float(usd)))
    return out


def fetch_on_demand(ctx: FetchContext, instance_types: list[str]) -> list[tuple[str, str, float]]:
    url = f"{ctx.base_url}/"
    found: list[tuple[str, str, float]] = []
    for itype in instance_types:
        token: str | None = None
        for _ in range(MAX_PAGES):
            req = {
                "ServiceCode": "AmazonEC2",
                "FormatVersion": "aws_v1",
                "MaxResults": 100,
                "Filters": [
                    {"Type": "TERM_MATCH", "Field": "instanceType", "Value": itype},
                    {"Type": "TERM_MATCH", "Field": "operatingSystem", "Value": "Linux"},
                    {"Type": "TERM_MATCH", "Field": "tenancy", "Value": "Shared"},
                    {"Type": "TERM_MATCH", "Field": "preInstalledSw", "Value": "NA"},
                    {"Type": "TERM_MATCH", "Field": "capacitystatus", "Value": "Used"},
                ],
            }
            if token:
                req["NextToken"] = token
            body = json.dumps(req).encode()
            headers = sign(
                "POST",
                url,
                {
                    "content-type": "application/x-amz-json-1.1",
                    "x-amz-target": "AWSPriceListService.GetProducts",
                },
                body,
                service="pricing",
                region=PRICING_REGION,
                now=ctx.now,
                **_creds(ctx),  # type: ignore[arg-type]
            )
            resp = ctx.client.post(url, content=body, headers=headers)
            check_response(resp, "aws")
            data = resp.json()
            found.extend(parse_products(data.get("PriceList") or []))
            token = data.get("NextToken")
            if not token:
                break
    return found


def parse_spot_history(xml_text: str) -> tuple[list[tuple[str, str, float, str]], str | None]:
    """(instanceType, availabilityZone, USD/h, timestamp) items and the nextToken."""
    root = ET.fromstring(xml_text)
    items = []
    for item in root.iter(f"{EC2_NS}item"):

        def text(tag: str, item: ET.Element = item) -> str:
            el = item.find(f"{EC2_NS}{tag}")
            return el.text or "" if el is not None else ""

        items.append(
            (text("instanceType"), text("availabilityZone"), float(text("spotPrice")), text("timestamp"))
        )
    token_el = root.find(f"{EC2_NS}nextToken")
    return items, (token_el.text or None) if token_el is not None else None


def fetch_spot(
    ctx: FetchContext, region: str, instance_types: list[str], ec2_url: str
) -> list[tuple[str, str, float, str]]:
    items: list[tuple[str, str, float, str]] = []
    token: str | None = None
    for _ in range(MAX_PAGES):
        params = [
            ("Action", "DescribeSpotPriceHistory"),
            ("Version", "2016-11-15"),
            ("ProductDescription.1", "Linux/UNIX"),
        ]
        params += [(f"InstanceType.{i}", t) for i, t in enumerate(sorted(instance_types), start=1)]
        # StartTime = now asks for the price in effect now (one item per zone), not 90 days of history.
        params.append(("StartTime", ctx.now.strftime("%Y-%m-%dT%H:%M:%SZ")))
        if token:
            params.append(("NextToken", token))
        query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in params)
        url = f"{ec2_url}/?{query}"
        headers = sign("GET", url, {}, b"", service="ec2", region=region, now=ctx.now, **_creds(ctx))  # type: ignore[arg-type]
        resp = ctx.client.get(url, headers=headers)
        check_response(resp, "aws")
        page, token = parse_spot_history(resp.text)
        items.extend(page)
        if not token:
            break
    return items


def fetch(ctx: FetchContext) -> FetchResult:
    when = iso_now(ctx.now)
    shapes = {o.instance_type: o for o in ctx.snapshot}
    regions = sorted({o.region for o in ctx.snapshot})
    out: dict[tuple[str, str, str], Offering] = {}
    for itype, region, price in fetch_on_demand(ctx, sorted(shapes)):
        if itype in shapes and region:
            out[(itype, region, "vm")] = replace(
                shapes[itype], region=region, kind="vm", price_per_hour=price, fetched_at=when,
                source="AWS Price List API GetProducts", extra={"origin": "live"},
            )  # fmt: skip
    # The EC2 endpoint is per region; in tests `base_url` is a local server and the region goes in the path.
    ec2_template = ctx.env.get("ARGOSY_AWS_EC2_URL") or "https://ec2.{region}.amazonaws.com"
    for region in regions:
        cheapest: dict[str, tuple[float, str]] = {}
        for itype, zone, price, _ts in fetch_spot(
            ctx, region, sorted(shapes), ec2_template.format(region=region)
        ):
            if itype in shapes and (itype not in cheapest or price < cheapest[itype][0]):
                cheapest[itype] = (price, zone)
        for itype, (price, zone) in cheapest.items():
            out[(itype, region, "spot")] = replace(
                shapes[itype], region=region, kind="spot", price_per_hour=price, fetched_at=when,
                source="AWS EC2 DescribeSpotPriceHistory", extra={"origin": "live", "zone": zone},
            )  # fmt: skip
    return FetchResult(list(out.values()), replaces_kinds=())
