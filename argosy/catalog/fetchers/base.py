"""What every live-price source shares: its spec, its result, and helpers for building offerings.

Two kinds of source feed `argosy catalog refresh`:
- `FetcherSpec`: a price-only API the catalog calls itself (AWS Price List, Azure Retail, GCP Billing
  Catalog): no provider client lists those prices.
- `LiveSource`: a provider's own API client (Lambda, RunPod, Vast.ai), injected by the caller, since the
  catalog may not import providers. One client per provider: the one that launches also prices.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

import httpx

from argosy.catalog.types import Offering
from argosy.core.errors import ProviderAuthError, ProviderError, RateLimitError


@dataclass(frozen=True)
class FetchContext:
    client: httpx.Client
    env: Mapping[str, str]  # where credentials come from (os.environ in real use)
    now: datetime
    base_url: str  # the provider's API root; tests point it at a local server
    snapshot: tuple[Offering, ...]  # this provider's snapshot rows: shapes for APIs that only give prices


@dataclass(frozen=True)
class FetchResult:
    offerings: list[Offering]
    # Kinds this fetch lists completely: snapshot rows of these kinds are replaced, not merged.
    replaces_kinds: tuple[str, ...] = ()
    skipped: list[str] = field(default_factory=list)  # what the API returned that we could not use, and why


@dataclass(frozen=True)
class FetcherSpec:
    provider: str
    api: str  # what is called, for people
    doc_url: str
    credentials: tuple[str, ...]  # environment variables that must all be set; () = no credentials needed
    base_url: str
    fetch: Callable[[FetchContext], FetchResult]

    def missing_credentials(self, env: Mapping[str, str]) -> list[str]:
        return [v for v in self.credentials if not env.get(v)]


@dataclass(frozen=True)
class LiveSource:
    """Offerings listed by a client outside the catalog, adopted into the catalog's terms by `adopt`."""

    provider: str
    api: str  # what is called, for people
    doc_url: str
    credentials: tuple[str, ...]  # environment variables of which any one is enough
    list_offerings: Callable[[], Sequence[Offering]]
    # A listing from an account's API says what exists now: it replaces the snapshot's rows of these kinds.
    replaces_kinds: tuple[str, ...] = ("vm", "spot")

    def missing_credentials(self, env: Mapping[str, str]) -> list[str]:
        return [] if any(env.get(v) for v in self.credentials) else list(self.credentials[:1])

    def fetch(self, ctx: FetchContext) -> FetchResult:
        return adopt(self.list_offerings(), ctx, self.replaces_kinds)


def adopt(offerings: Sequence[Offering], ctx: FetchContext, replaces_kinds: tuple[str, ...]) -> FetchResult:
    """A provider's listing in the catalog's terms: known GPUs only, stamped live at `ctx.now`.

    - A GPU the catalog's table does not know is skipped (placement cannot size a model for it) and
      named in `skipped`, so the table can learn its alias.
    - A row without a region (listed, but with capacity nowhere) is kept at the regions the snapshot
      knows for that instance type, unavailable: its price stays visible, placement will not pick it.
    """
    from argosy.catalog.gpus import load_gpus

    gpus = load_gpus()
    known_regions: dict[str, list[str]] = {}
    for o in ctx.snapshot:
        known_regions.setdefault(o.instance_type, []).append(o.region)
    when = iso_now(ctx.now)
    out: list[Offering] = []
    skipped: list[str] = []
    for o in offerings:
        if o.gpu is not None and o.gpu not in gpus.specs:
            skipped.append(f"{o.instance_type}: unknown GPU '{o.gpu}'")
            continue
        o = replace(o, fetched_at=when, extra={**o.extra, "origin": "live"})
        if o.region:
            out.append(o)
        else:
            for region in known_regions.get(o.instance_type) or ["unknown"]:
                out.append(replace(o, region=region, available=False))
    return FetchResult(out, replaces_kinds=replaces_kinds, skipped=skipped)


def check_response(resp: httpx.Response, provider: str) -> None:
    """Turn an HTTP error into a typed provider error that says what to do."""
    if resp.status_code < 400:
        return
    body = resp.text[:300]
    if resp.status_code in (401, 403):
        raise ProviderAuthError(
            f"{provider} refused the API key (HTTP {resp.status_code}): {body}",
            fix=f"check the {provider} API key in your environment",
            provider=provider,
        )
    if resp.status_code == 429:
        retry = resp.headers.get("retry-after")
        raise RateLimitError(
            f"{provider} rate-limited the price fetch: {body}",
            fix="wait a minute and run `argosy catalog refresh` again",
            provider=provider,
            retry_after=float(retry) if retry and retry.isdigit() else None,
        )
    raise ProviderError(f"{provider} price API answered HTTP {resp.status_code}: {body}", provider=provider)


def iso_now(now: datetime) -> str:
    return now.isoformat(timespec="seconds")
