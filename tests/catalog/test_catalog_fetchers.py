"""Live-price fetchers against recorded responses (see fixtures/SOURCES.md) served by a real local HTTP
server, the refresh/cache cycle, and the fallbacks when there are no credentials or the API fails."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from argosy.catalog import is_stale, load_offerings, offering_key
from argosy.catalog.fetchers import FETCHERS
from argosy.catalog.fetchers.aws import parse_spot_history, sign
from argosy.catalog.offerings import cache_path, snapshot_offerings
from argosy.catalog.refresh import refresh
from argosy.core.clock import FakeClock
from argosy.core.errors import NotFoundError
from argosy.providers.price_sources import price_sources

FIXTURES_DIR = Path(__file__).parent / "fixtures"
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


# Where each provider's own client finds its API (the env variable its provider reads), on the test server.
PROVIDER_URLS = {
    "lambda": ("ARGOSY_LAMBDA_BASE_URL", "/api/v1"),
    "runpod": ("ARGOSY_RUNPOD_URL", ""),
    "vast": ("ARGOSY_VAST_BASE_URL", "/api/v0"),
}


def _run(settings, server, provider, env):  # type: ignore[no-untyped-def]
    """Refresh one provider as `argosy catalog refresh` does: the providers' clients injected as sources."""
    env = dict(env)
    if provider in PROVIDER_URLS:
        var, path = PROVIDER_URLS[provider]
        env[var] = server.url + path
    # A fake clock: a retried 5xx must not sleep for real in a test.
    sources = price_sources(settings, FakeClock(), env=env)
    return refresh(settings, [provider], sources=sources, env=env, base_urls={provider: server.url}, now=NOW)


def _live(settings, provider):  # type: ignore[no-untyped-def]
    return [o for o in load_offerings(settings) if o.provider == provider and o.extra.get("origin") == "live"]


def test_lambda_instance_types(cat_settings, price_server):  # type: ignore[no-untyped-def]
    price_server.route("GET", "/api/v1/instance-types", fixture="lambda_instance_types.json")
    [outcome] = _run(cat_settings, price_server, "lambda", {"LAMBDA_API_KEY": "secret-lambda"})
    assert outcome.status == "live", outcome
    assert price_server.seen[0].headers["authorization"] == "Bearer secret-lambda"
    live = {(o.instance_type, o.region): o for o in _live(cat_settings, "lambda")}
    a10 = live[("gpu_1x_a10", "us-west-1")]
    assert (a10.gpu, a10.gpu_count, a10.price_per_hour, a10.vcpus, a10.ram_gb) == ("A10", 1, 0.75, 30, 200)
    assert live[("gpu_1x_a100_sxm4", "us-east-1")].gpu == "A100-40GB"  # 40 GB told apart from the 80 GB A100
    assert live[("gpu_1x_gh200", "us-east-3")].gpu == "GH200"
    # No capacity anywhere: still listed (price known) but not placeable.
    h100 = live[("gpu_8x_h100_sxm5", "us-south-1")]
    assert (h100.gpu, h100.gpu_count, h100.price_per_hour, h100.available) == ("H100-SXM", 8, 23.92, False)
    assert any("X9000" in s for s in outcome.skipped)
    # A complete listing replaces the snapshot's Lambda VMs: none of them remain.
    assert not [
        o
        for o in load_offerings(cat_settings)
        if o.provider == "lambda" and o.extra.get("origin") == "snapshot"
    ]
    assert all(o.fetched_at == NOW.isoformat(timespec="seconds") for o in live.values())


def test_runpod_gpu_types(cat_settings, price_server):  # type: ignore[no-untyped-def]
    price_server.route("POST", "/graphql", fixture="runpod_gpu_types.json")
    [outcome] = _run(cat_settings, price_server, "runpod", {"RUNPOD_API_KEY": "rp"})
    assert outcome.status == "live", outcome
    sent = json.loads(price_server.seen[0].body)
    assert "gpuTypes" in sent["query"] and "securePrice" in sent["query"]
    live = {(o.gpu, o.kind, o.tier): o.price_per_hour for o in _live(cat_settings, "runpod")}
    assert live[("RTX4090", "vm", "community")] == 0.34
    assert live[("RTX4090", "spot", "secure")] == 0.35
    assert live[("H100-SXM", "vm", "secure")] == 2.69
    assert live[("A100-80GB", "vm", "secure")] == 1.64
    assert live[("MI300X", "vm", "secure")] == 2.49
    # The instance type is RunPod's gpuTypeId: what the pods provider deploys (podFindAndDeployOnDemand).
    ids = {o.instance_type for o in _live(cat_settings, "runpod")}
    sent_ids = {
        t["id"] for t in json.loads((FIXTURES_DIR / "runpod_gpu_types.json").read_text())["data"]["gpuTypes"]
    }
    assert ids <= sent_ids
    # Price 0 means "not offered in this tier": never a free GPU.
    assert ("H100-SXM", "vm", "community") not in live
    assert all(p > 0 for p in live.values())
    # RunPod community rows of the snapshot are replaced too: a complete listing says what exists now.
    assert not [
        o for o in load_offerings(cat_settings) if o.provider == "runpod" and o.region == "community-EU"
    ]


def test_vastai_offer_search(cat_settings, price_server):  # type: ignore[no-untyped-def]
    price_server.route("POST", "/api/v0/bundles/", fixture="vastai_bundles.json")
    [outcome] = _run(cat_settings, price_server, "vast", {"VAST_API_KEY": "vk"})
    assert outcome.status == "live", outcome
    query = json.loads(price_server.seen[0].body)
    assert query["verified"] == {"eq": True} and query["rentable"] == {"eq": True}
    live = {(o.instance_type, o.kind): o for o in _live(cat_settings, "vast")}
    # The offer id is the instance type: it is what the Vast provider rents (PUT /asks/{id}/).
    rtx = live[("8123401", "vm")]
    assert (rtx.gpu, rtx.region, rtx.price_per_hour, rtx.extra["reliability"]) == (
        "RTX4090",
        "se",
        0.3512,
        "0.997",
    )
    assert live[("8123401", "spot")].price_per_hour == 0.2011
    assert live[("8123401", "spot")].tier == "interruptible"
    assert live[("8123402", "vm")].gpu == "A100-40GB"  # "A100 PCIE" with 40 GB of VRAM
    assert ("8123402", "spot") not in live  # no min_bid: no interruptible offer
    h100 = live[("8123403", "vm")]
    assert (h100.gpu, h100.gpu_count, h100.region) == ("H100-SXM", 8, "ca")


def test_azure_retail_prices_pages_without_credentials(cat_settings, price_server):  # type: ignore[no-untyped-def]
    # Page 2 is served when the NextPageLink's $skip is asked for, as the real API pages.
    price_server.routes["GET /api/retail/prices"] = lambda seen: (
        200,
        "application/json",
        (
            FIXTURES_DIR
            / ("azure_prices_page2.json" if "skip=100" in seen.query else "azure_prices_page1.json")
        ).read_text(),
    )
    [outcome] = refresh(cat_settings, ["azure"], env={}, base_urls={"azure": price_server.url}, now=NOW)
    assert outcome.status == "live", outcome
    assert len(price_server.seen) == 2  # followed NextPageLink once
    first = httpx.QueryParams(price_server.seen[0].query)["$filter"]
    assert "serviceName eq 'Virtual Machines'" in first and "Standard_NC24ads_A100_v4" in first
    live = {(o.instance_type, o.region, o.kind): o for o in _live(cat_settings, "azure")}
    a100 = live[("Standard_NC24ads_A100_v4", "eastus", "vm")]
    assert (a100.gpu, a100.price_per_hour) == ("A100-80GB", 3.673)  # Linux price, not the Windows meter
    assert live[("Standard_NC24ads_A100_v4", "eastus", "spot")].price_per_hour == 1.1019
    assert live[("Standard_NC4as_T4_v3", "westeurope", "vm")].price_per_hour == 0.526
    assert all(o.price_per_hour != 0.1052 for o in live.values())  # Low Priority meters are skipped
    # Price-only APIs merge by key: Azure snapshot rows the API did not price stay.
    keys = {offering_key(o) for o in load_offerings(cat_settings) if o.provider == "azure"}
    assert "azure/eastus/Standard_ND96isr_H100_v5/vm" in keys


def test_aws_signed_price_list_and_spot(cat_settings, price_server):  # type: ignore[no-untyped-def]
    price_server.route("POST", "/", fixture="aws_get_products.json", ctype="application/x-amz-json-1.1")
    for region in ("us-east-1", "us-west-2", "eu-west-1", "eu-central-1"):
        price_server.route("GET", f"/ec2/{region}/", fixture="aws_spot_price_history.xml", ctype="text/xml")
    env = {
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        "ARGOSY_AWS_EC2_URL": price_server.url + "/ec2/{region}",
    }
    [outcome] = _run(cat_settings, price_server, "aws", env)
    assert outcome.status == "live", outcome
    post = [s for s in price_server.seen if s.method == "POST"]
    assert post[0].headers["x-amz-target"] == "AWSPriceListService.GetProducts"
    assert (
        post[0]
        .headers["authorization"]
        .startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/pricing/")
    )
    filters = json.loads(post[0].body)["Filters"]
    assert {"Type": "TERM_MATCH", "Field": "operatingSystem", "Value": "Linux"} in filters
    spot_get = [s for s in price_server.seen if s.method == "GET"][0]
    assert "Action=DescribeSpotPriceHistory" in spot_get.query and "InstanceType.1=" in spot_get.query
    assert "/ec2/aws4_request" in spot_get.headers["authorization"]
    live = {(o.instance_type, o.region, o.kind): o for o in _live(cat_settings, "aws")}
    assert live[("g5.xlarge", "us-west-2", "vm")].price_per_hour == 1.006
    spot = live[("g5.xlarge", "us-east-1", "spot")]
    assert (spot.price_per_hour, spot.extra["zone"], spot.gpu) == (
        0.3987,
        "us-east-1c",
        "A10G",
    )  # cheapest zone


def test_sigv4_matches_the_documented_example() -> None:
    # AWS's own worked example (GET https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08), from
    # https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html (legacy
    # example set: no x-amz-content-sha256 header). Our signer adds that header, so compare the structure
    # and check determinism rather than the literal signature.
    when = datetime(2015, 8, 30, 12, 36, tzinfo=UTC)
    args = dict(
        service="iam",
        region="us-east-1",
        access_key="AKIDEXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        now=when,
    )
    a = sign("GET", "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08", {}, b"", **args)  # type: ignore[arg-type]
    b = sign("GET", "https://iam.amazonaws.com/?Version=2010-05-08&Action=ListUsers", {}, b"", **args)  # type: ignore[arg-type]
    assert a["Authorization"] == b["Authorization"]  # query order does not matter: it is canonicalised
    assert a["x-amz-date"] == "20150830T123600Z"
    assert "Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request" in a["Authorization"]
    assert "SignedHeaders=host;x-amz-content-sha256;x-amz-date" in a["Authorization"]


def test_gcp_billing_catalog_sums_gpu_core_and_ram(cat_settings, price_server):  # type: ignore[no-untyped-def]
    price_server.route("GET", "/v1/services/6F81-5844-456A/skus", fixture="gcp_skus.json")
    [outcome] = _run(cat_settings, price_server, "gcp", {"GCP_API_KEY": "gk"})
    assert outcome.status == "live", outcome
    assert httpx.QueryParams(price_server.seen[0].query)["key"] == "gk"
    live = {(o.instance_type, o.region, o.kind): o for o in _live(cat_settings, "gcp")}
    g2 = live[("g2-standard-4", "us-central1", "vm")]
    # 1 x 0.56004 (L4) + 4 x 0.024988 (core) + 16 x 0.002928 (GiB) = 0.70684
    assert g2.price_per_hour == pytest.approx(0.7068, abs=1e-4)
    assert live[("g2-standard-4", "us-east4", "vm")].price_per_hour == g2.price_per_hour
    spot = live[("g2-standard-4", "us-central1", "spot")]
    assert spot.price_per_hour == pytest.approx(0.224 + 4 * 0.009995 + 16 * 0.001171, abs=1e-4)
    assert ("g2-standard-4", "us-east4", "spot") not in live  # no spot SKUs for that region in the answer
    assert ("a2-highgpu-1g", "us-central1", "vm") not in live  # no A100 SKU in the answer: snapshot stays
    assert [o for o in load_offerings(cat_settings) if o.instance_type == "a2-highgpu-1g"]


def test_no_credentials_keeps_snapshot(cat_settings) -> None:  # type: ignore[no-untyped-def]
    sources = price_sources(cat_settings, FakeClock(), env={})
    outcomes = {
        o.provider: o
        for o in refresh(cat_settings, ["lambda", "runpod", "linode"], sources=sources, env={}, now=NOW)
    }
    assert outcomes["lambda"].status == "snapshot" and "LAMBDA_API_KEY" in outcomes["lambda"].detail
    assert "export LAMBDA_API_KEY" in (outcomes["lambda"].fix or "")
    assert outcomes["linode"].status == "snapshot" and "no public price API" in outcomes["linode"].detail
    assert not (cat_settings.cache_dir / "catalog").exists()
    assert load_offerings(cat_settings) == snapshot_offerings()


def test_auth_failure_and_garbage_keep_previous_prices(cat_settings, price_server):  # type: ignore[no-untyped-def]
    price_server.route("GET", "/api/v1/instance-types", fixture="lambda_instance_types.json")
    assert _run(cat_settings, price_server, "lambda", {"LAMBDA_API_KEY": "k"})[0].status == "live"
    before = cache_path(cat_settings, "lambda").read_text()
    price_server.route(
        "GET",
        "/api/v1/instance-types",
        status=401,
        body='{"error": {"code": "global/invalid-api-key", "message": "bad key"}}',
    )
    [bad] = _run(cat_settings, price_server, "lambda", {"LAMBDA_API_KEY": "wrong"})
    # The provider client's typed error: Lambda's own message and code, and where to make a new key.
    assert bad.status == "failed" and "bad key (global/invalid-api-key)" in bad.detail
    assert "api-keys" in (bad.fix or "")
    price_server.route("GET", "/api/v1/instance-types", body='{"data": {"x": {"nope": 1}}}')
    [garbage] = _run(cat_settings, price_server, "lambda", {"LAMBDA_API_KEY": "k"})
    assert garbage.status == "failed"
    assert cache_path(cat_settings, "lambda").read_text() == before  # the last good prices are kept


def test_unreachable_api_fails_cleanly(cat_settings) -> None:  # type: ignore[no-untyped-def]
    [out] = refresh(cat_settings, ["azure"], env={}, base_urls={"azure": "http://127.0.0.1:9"}, now=NOW)
    assert out.status == "failed" and "ConnectError" in out.detail and out.fix


def test_unknown_provider_suggests(cat_settings) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFoundError, match="Did you mean 'lambda'"):
        refresh(cat_settings, ["lamda"], env={})


def test_staleness_follows_ttl(cat_settings, price_server):  # type: ignore[no-untyped-def]
    price_server.route("GET", "/api/v1/instance-types", fixture="lambda_instance_types.json")
    _run(cat_settings, price_server, "lambda", {"LAMBDA_API_KEY": "k"})
    o = _live(cat_settings, "lambda")[0]
    assert not is_stale(o, NOW + timedelta(hours=23))
    assert is_stale(o, NOW + timedelta(hours=25))
    assert all(is_stale(s, NOW) for s in snapshot_offerings())  # transcribed months ago: shown as stale


def test_every_source_documents_its_api(cat_settings) -> None:  # type: ignore[no-untyped-def]
    # Price-only APIs are the catalog's own fetchers; the providers' clients price the rest (one client each).
    assert set(FETCHERS) == {"azure", "aws", "gcp"}
    assert FETCHERS["azure"].credentials == ()  # Azure's retail prices need no account
    sources = price_sources(cat_settings, FakeClock(), env={})
    assert set(sources) == {"lambda", "runpod", "vast"}
    assert not set(FETCHERS) & set(sources)
    for spec in [*FETCHERS.values(), *sources.values()]:
        assert spec.doc_url.startswith("https://")


def test_without_injected_sources_provider_apis_are_not_called(cat_settings, price_server):  # type: ignore[no-untyped-def]
    # The catalog alone has no Lambda client: without a source it keeps the snapshot and says so.
    [outcome] = refresh(cat_settings, ["lambda"], env={"LAMBDA_API_KEY": "k"}, now=NOW)
    assert outcome.status == "snapshot" and "no public price API" in outcome.detail
    assert price_server.seen == []


def test_parse_spot_history_reads_next_token() -> None:
    xml = (FIXTURES_DIR / "aws_spot_price_history.xml").read_text()
    items, token = parse_spot_history(xml)
    assert len(items) == 3 and token is None
    with_token = xml.replace("<nextToken/>", "<nextToken>abc</nextToken>")
    assert parse_spot_history(with_token)[1] == "abc"
