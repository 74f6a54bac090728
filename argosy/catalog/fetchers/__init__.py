"""Live-price fetchers, one module per provider API, registered by provider name.

A fetcher turns one provider's documented price API into Offerings. Providers without a public price
API (Linode's is per-account, Modal, Baseten, Cloud Run) are served from the snapshot only.
"""

from __future__ import annotations

from types import MappingProxyType

from argosy.catalog.fetchers import aws, azure, gcp, lambda_, runpod, vastai
from argosy.catalog.fetchers.base import FetchContext, FetcherSpec, FetchResult

FETCHERS: MappingProxyType[str, FetcherSpec] = MappingProxyType(
    {
        "lambda": FetcherSpec(
            "lambda",
            "GET /api/v1/instance-types",
            lambda_.DOC_URL,
            ("LAMBDA_API_KEY",),
            "https://cloud.lambda.ai",
            lambda_.fetch,
        ),
        "runpod": FetcherSpec(
            "runpod",
            "GraphQL gpuTypes",
            runpod.DOC_URL,
            ("RUNPOD_API_KEY",),
            "https://api.runpod.io",
            runpod.fetch,
        ),
        "vast": FetcherSpec(
            "vast",
            "GET /api/v0/bundles/",
            vastai.DOC_URL,
            ("VAST_API_KEY",),
            "https://console.vast.ai",
            vastai.fetch,
        ),
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

__all__ = ["FETCHERS", "FetchContext", "FetchResult", "FetcherSpec"]
