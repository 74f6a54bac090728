"""`argosy catalog refresh`: run the live-price sources and cache what they return.

Sources are the catalog's own fetchers for price-only APIs (`FETCHERS`) plus whatever the caller
injects (`sources`): the providers' own API clients, which the catalog may not import itself.

A provider whose API cannot be used (no credentials, no public price API, an error) keeps whatever it
had: its last cached live prices if any, else the snapshot. Nothing is half-written: the cache file
for a provider is replaced only after its fetch succeeded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx

from argosy.catalog.fetchers import FETCHERS, FetchContext, FetcherSpec, LiveSource
from argosy.catalog.offerings import CachedPrices, known_providers, snapshot_offerings, write_cache
from argosy.core.config import Settings
from argosy.core.errors import ArgosyError, unknown_name

TIMEOUT_S = 30.0


@dataclass
class RefreshOutcome:
    provider: str
    status: str  # "live" | "snapshot" | "failed"
    detail: str
    count: int = 0
    fix: str | None = None
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "provider": self.provider,
            "status": self.status,
            "detail": self.detail,
            "count": self.count,
            "fix": self.fix,
            "skipped": self.skipped,
        }


Source = FetcherSpec | LiveSource


def refreshable_providers(sources: Mapping[str, Source] | None = None) -> list[str]:
    return sorted({*FETCHERS, *(sources or {}), *known_providers(snapshot_offerings())})


def refresh(
    settings: Settings,
    providers: Sequence[str] | None = None,
    *,
    sources: Mapping[str, Source] | None = None,
    client: httpx.Client | None = None,
    env: Mapping[str, str] | None = None,
    base_urls: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> list[RefreshOutcome]:
    """Fetch live prices for `providers` (default: all) and cache them under settings.cache_dir.

    `sources` adds (or overrides) sources by provider name; `base_urls` points FETCHERS elsewhere.
    """
    env = dict(os.environ) if env is None else env
    every = {**FETCHERS, **(sources or {})}
    valid = refreshable_providers(sources)
    names = list(providers) if providers else valid
    for name in names:
        if name not in valid:
            raise unknown_name(
                "provider", name, valid, fix="`argosy catalog refresh` with no --provider refreshes all"
            )
    now = now or datetime.now(tz=UTC)
    snapshot = snapshot_offerings()
    own_client = client is None
    client = client or httpx.Client(timeout=TIMEOUT_S, follow_redirects=True)
    outcomes = []
    try:
        for name in names:
            spec = every.get(name)
            if spec is None:
                outcomes.append(
                    RefreshOutcome(name, "snapshot", "no public price API; using the snapshot data file")
                )
                continue
            missing = spec.missing_credentials(env)
            if missing:
                outcomes.append(
                    RefreshOutcome(
                        name,
                        "snapshot",
                        f"no credentials ({', '.join(missing)} not set); using cached or snapshot prices",
                        fix=f"export {' '.join(f'{m}=...' for m in missing)} and run `argosy catalog refresh --provider {name}`",
                    )
                )
                continue
            ctx = FetchContext(
                client=client,
                env=env,
                now=now,
                base_url=(
                    (base_urls or {}).get(name) or (spec.base_url if isinstance(spec, FetcherSpec) else "")
                ).rstrip("/"),
                snapshot=tuple(o for o in snapshot if o.provider == name),
            )
            try:
                result = spec.fetch(ctx)
            except ArgosyError as exc:
                outcomes.append(RefreshOutcome(name, "failed", exc.message, fix=exc.fix))
                continue
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                # ValueError/KeyError/TypeError: the answer was not shaped like the documented API.
                outcomes.append(
                    RefreshOutcome(
                        name,
                        "failed",
                        f"{spec.api} failed: {type(exc).__name__}: {exc}",
                        fix="check network access to the provider; prices stay as they were",
                    )
                )
                continue
            if not result.offerings:
                outcomes.append(
                    RefreshOutcome(
                        name, "failed", f"{spec.api} returned no usable offerings", skipped=result.skipped
                    )
                )
                continue
            write_cache(
                settings,
                CachedPrices(
                    provider=name,
                    fetched_at=now.isoformat(timespec="seconds"),
                    source=f"{spec.api} ({spec.doc_url})",
                    offerings=result.offerings,
                    replaces_kinds=result.replaces_kinds,
                ),
            )
            outcomes.append(
                RefreshOutcome(
                    name,
                    "live",
                    f"{len(result.offerings)} offerings from {spec.api}",
                    len(result.offerings),
                    skipped=result.skipped,
                )
            )
    finally:
        if own_client:
            client.close()
    return outcomes
