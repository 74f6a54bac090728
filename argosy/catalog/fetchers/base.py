"""What every live-price fetcher shares: its spec, its result, and helpers for building offerings."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
