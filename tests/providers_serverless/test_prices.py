"""The serverless price table: canonical GPU names, a source and date on every figure."""

from __future__ import annotations

import pytest

from argosy.catalog.gpus import load_gpus
from argosy.core.errors import ConfigError
from argosy.providers.templates.serverless import fill_secrets, price_for, price_offerings, prices

PROVIDERS = ["modal", "runpod-serverless", "baseten", "cloudrun"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_rows_are_canonical_and_sourced(provider):
    gpus = set(load_gpus().names())
    rows = prices(provider)
    assert rows
    for p in rows:
        assert p.gpu in gpus, f"{provider}: '{p.gpu}' is not a catalog GPU name"
        assert p.gpu_per_second > 0 and p.source.startswith("https://") and p.read_at
    offs = price_offerings(provider)
    assert all(o.kind == "serverless" and o.fetched_at and "list price" in o.source for o in offs)


def test_aliases_resolve_through_the_catalog():
    assert price_for("modal", "H100").gpu == "H100-SXM"
    assert price_for("runpod-serverless", "NVIDIA L4").gpu == "L4"  # the provider's own id works too
    with pytest.raises(ConfigError, match="pick one of"):
        price_for("cloudrun", "H100")


def test_fill_secrets_never_leaves_placeholders():
    assert fill_secrets({"a": ["x <secret:K> y"]}, {"K": "v"}) == {"a": ["x v y"]}
    with pytest.raises(ConfigError, match="export K="):
        fill_secrets("<secret:K>", {})
