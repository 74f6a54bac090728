"""The providers' own API clients as the catalog's live price sources (one client per provider).

The catalog may not import providers (the layer map), so `argosy catalog refresh` is handed these
by its caller: every registered provider with the `PriceListing` capability becomes a `LiveSource`
whose listing is that provider's `offerings()`, through the same client that launches its nodes.
"""

from __future__ import annotations

from collections.abc import Mapping

from argosy.catalog.fetchers.base import LiveSource
from argosy.core.clock import Clock, SystemClock
from argosy.core.config import Settings
from argosy.core.errors import ArgosyError
from argosy.providers.base import PriceListing
from argosy.providers.common import environ
from argosy.providers.registry import PROVIDERS


def price_sources(
    settings: Settings, clock: Clock | None = None, *, env: Mapping[str, str] | None = None
) -> dict[str, LiveSource]:
    """A LiveSource per provider whose class declares a price API; `env` holds credentials and URLs."""
    env = environ(env)
    out: dict[str, LiveSource] = {}
    for name in PROVIDERS.names():
        try:
            cls = PROVIDERS.load(name)
        except ArgosyError:
            continue  # its extra is not installed: it has no client to list prices with
        if not getattr(cls, "price_api", None):
            continue
        provider = cls(settings=settings, clock=clock or SystemClock(), env=env)
        if not isinstance(provider, PriceListing):
            continue
        out[name] = LiveSource(
            provider=name,
            api=provider.price_api,
            doc_url=provider.price_doc_url,
            credentials=provider.credential_vars,
            list_offerings=provider.offerings,
        )
    return out
