"""Live-price fetchers for price-only APIs, one module per API, registered by provider name.

A fetcher turns one provider's documented price API into Offerings. Providers whose own API client
lists prices (Lambda, RunPod, Vast.ai) are not here: their clients come in as `LiveSource`s, injected
by the caller (`argosy.providers.price_sources`), so each provider has one client, not two. Providers
without a public price API (Linode's is per-account, Modal, Baseten, Cloud Run) are served from the
snapshot only.
"""

from __future__ import annotations

from types import MappingProxyType

from argosy.catalog.fetchers import aws, azure, gcp
from argosy.catalog.fetchers.base import FetchContext, FetcherSpec, FetchResult, LiveSource

FETCHERS: MappingProxyType[str, FetcherSpec] = MappingProxyType(
    {
        "azure": FetcherSpec(
            "azure", "Retail Prices API", azure.DOC_URL, (), "https://prices.azure.com", azure.fetch
        ),
        "aws": FetcherSpec(
            "aws",
            "Price List GetProducts + EC2 DescribeSpotPriceHistory",
            aws.DOC_URL,
            ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
            "https://api.pricing.us-east-1.amazonaws.com",
            aws.fetch,
        ),
        "gcp": FetcherSpec(
            "gcp",
            "Cloud Billing Catalog services.skus.list",
            gcp.DOC_URL,
            ("GCP_API_KEY",),
            "https://cloudbilling.googleapis.com",
            gcp.fetch,
        ),
    }
)

__all__ = ["FETCHERS", "FetchContext", "FetchResult", "FetcherSpec", "LiveSource"]
