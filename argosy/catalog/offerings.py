"""Offerings: the snapshot data file, live prices cached under the settings cache dir, and queries.

Precedence: live offerings a provider reports right now (passed in by the caller) over cached live
prices from `argosy catalog refresh` over the snapshot in data/offerings.csv. Every row keeps its
`source` and `fetched_at`, so a price's age and origin can always be shown.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from argosy.catalog.gpus import load_gpus
from argosy.catalog.regions import read_csv_rows
from argosy.catalog.types import Offering
from argosy.core.config import Settings
from argosy.core.errors import ConfigError, unknown_name

SNAPSHOT_FILE = "argosy/catalog/data/offerings.csv"
KINDS = ("vm", "spot", "serverless", "local")
# Cached live prices older than this are shown as stale (and refreshed by `argosy catalog refresh`).
DEFAULT_TTL_S = 24 * 3600.0
CACHE_SUBDIR = "catalog"


def _bool(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes")


def _opt_float(text: str) -> float | None:
    return float(text) if text.strip() else None


@cache
def _snapshot() -> tuple[Offering, ...]:
    gpus = load_gpus()
    out = []
    for n, row in enumerate(read_csv_rows("offerings.csv"), start=2):
        gpu = row["gpu"].strip() or None
        if gpu is not None and gpu not in gpus.specs:
            raise ConfigError(
                f"{SNAPSHOT_FILE}: row {n} names unknown GPU '{gpu}'",
                fix="use a canonical name from gpus.yaml",
            )
        if row["kind"] not in KINDS:
            raise ConfigError(
                f"{SNAPSHOT_FILE}: row {n} has kind '{row['kind']}'", fix=f"use one of {', '.join(KINDS)}"
            )
        out.append(
            Offering(
                provider=row["provider"],
                region=row["region"],
                instance_type=row["instance_type"],
                gpu=gpu,
                gpu_count=int(row["gpu_count"] or 0),
                kind=row["kind"],  # type: ignore[arg-type]
                price_per_hour=_opt_float(row["price_per_hour"]),
                vcpus=int(row["vcpus"]) if row["vcpus"] else None,
                ram_gb=_opt_float(row["ram_gb"]),
                per_second_billing=_bool(row["per_second_billing"]),
                source=row["source"],
                fetched_at=row["fetched_at"],
                tier=row["tier"],
                extra={"origin": "snapshot"},
            )
        )
    return tuple(out)


def snapshot_offerings() -> list[Offering]:
    """The offerings in the snapshot data file (a fresh list; the rows are immutable)."""
    return list(_snapshot())


def offering_key(o: Offering) -> str:
    """Unique per offering: the dataclass `key` plus the tier (RunPod secure vs community share names)."""
    return f"{o.key}/{o.tier}" if o.tier else o.key


# -- the live-price cache ------------------------------------------------------------------------


def cache_path(settings: Settings, provider: str) -> Path:
    return settings.cache_dir / CACHE_SUBDIR / f"offerings-{provider}.json"


def offering_to_dict(o: Offering) -> dict[str, Any]:
    return asdict(o)


def offering_from_dict(d: dict[str, Any]) -> Offering:
    return Offering(**{**d, "extra": dict(d.get("extra") or {})})


@dataclass(frozen=True)
class CachedPrices:
    provider: str
    fetched_at: str  # ISO datetime of the fetch
    source: str
    offerings: list[Offering]
    replaces_kinds: tuple[str, ...]  # snapshot rows of these kinds are superseded wholesale


def write_cache(settings: Settings, entry: CachedPrices) -> Path:
    path = cache_path(settings, entry.provider)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    body = {
        "provider": entry.provider,
        "fetched_at": entry.fetched_at,
        "source": entry.source,
        "replaces_kinds": list(entry.replaces_kinds),
        "offerings": [offering_to_dict(o) for o in entry.offerings],
    }
    tmp.write_text(json.dumps(body, indent=1))
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def read_cache(settings: Settings, provider: str) -> CachedPrices | None:
    path = cache_path(settings, provider)
    if not path.exists():
        return None
    try:
        body = json.loads(path.read_text())
        return CachedPrices(
            provider=body["provider"],
            fetched_at=body["fetched_at"],
            source=body["source"],
            offerings=[offering_from_dict(d) for d in body["offerings"]],
            replaces_kinds=tuple(body.get("replaces_kinds") or ()),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"the price cache {path} is unreadable ({exc})",
            fix=f"delete it and run `argosy catalog refresh --provider {provider}`",
        ) from exc


def cached_providers(settings: Settings) -> list[str]:
    d = settings.cache_dir / CACHE_SUBDIR
    if not d.is_dir():
        return []
    return sorted(p.stem.removeprefix("offerings-") for p in d.glob("offerings-*.json"))


# -- merging and age -----------------------------------------------------------------------------


def merge_offerings(
    base: Iterable[Offering], overrides: Iterable[Offering], replaces: Iterable[tuple[str, str]] = ()
) -> list[Offering]:
    """`base` with `overrides` laid over it by offering key; (provider, kind) pairs in `replaces` are dropped
    from `base` first (a complete live listing says what exists now; a missing row has gone)."""
    gone = set(replaces)
    merged = {offering_key(o): o for o in base if (o.provider, o.kind) not in gone}
    for o in overrides:
        merged[offering_key(o)] = o
    return list(merged.values())


def parse_when(text: str) -> datetime | None:
    """A fetched_at value as an aware datetime. Month-precision snapshot dates ("2025-06") mean the 1st."""
    if not text:
        return None
    try:
        if len(text) == 7:
            return datetime.fromisoformat(text + "-01").replace(tzinfo=UTC)
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def price_age_s(o: Offering, now: datetime) -> float | None:
    when = parse_when(o.fetched_at)
    return None if when is None else max(0.0, (now - when).total_seconds())


def is_stale(o: Offering, now: datetime, ttl_s: float = DEFAULT_TTL_S) -> bool:
    """A price is stale when it is older than the TTL, or its age is unknown. Snapshot prices usually are."""
    age = price_age_s(o, now)
    return age is None or age > ttl_s


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    for unit, size in (("y", 365 * 86400), ("mo", 30 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def load_offerings(settings: Settings | None = None, live: Sequence[Offering] = ()) -> list[Offering]:
    """Snapshot + cached live refreshes (+ `live` offerings the caller gathered from providers right now).

    Without settings only the snapshot and `live` are used (no cache is read)."""
    offerings = snapshot_offerings()
    if settings is not None:
        for provider in cached_providers(settings):
            entry = read_cache(settings, provider)
            if entry is None:
                continue
            offerings = merge_offerings(
                offerings, entry.offerings, [(provider, k) for k in entry.replaces_kinds]
            )
    if live:
        offerings = merge_offerings(offerings, [canonical_gpu(o) for o in live])
    return offerings


def canonical_gpu(o: Offering) -> Offering:
    """`o` with its GPU under the canonical name when a provider used another spelling ("RTX 4090",
    "NVIDIA H100 80GB HBM3"); unknown spellings stay as they are (placement rejects them, by name)."""
    if o.gpu is None:
        return o
    gpus = load_gpus()
    if o.gpu in gpus.specs:
        return o
    found = gpus.find(o.gpu)
    return replace(o, gpu=found) if found else o


# -- queries -------------------------------------------------------------------------------------


def known_providers(offerings: Iterable[Offering]) -> list[str]:
    return sorted({o.provider for o in offerings})


def select_offerings(
    offerings: Sequence[Offering],
    *,
    gpu: str | None = None,
    provider: str | None = None,
    kind: str | None = None,
    region: str | None = None,
    max_price: float | None = None,
) -> list[Offering]:
    """Offerings matching every given filter; unknown names are errors that suggest the nearest one."""
    out = list(offerings)
    if gpu:
        canonical = load_gpus().resolve(gpu)
        out = [o for o in out if o.gpu == canonical]
    if provider:
        names = known_providers(offerings)
        if provider not in names:
            raise unknown_name(
                "provider", provider, names, fix="`argosy gpus` without --provider lists them all"
            )
        out = [o for o in out if o.provider == provider]
    if kind:
        if kind not in KINDS:
            raise unknown_name("offering kind", kind, KINDS)
        out = [o for o in out if o.kind == kind]
    if region:
        regions = sorted({o.region for o in offerings})
        if region not in regions:
            raise unknown_name(
                "region", region, regions, fix="`argosy gpus --provider P` shows a provider's regions"
            )
        out = [o for o in out if o.region == region]
    if max_price is not None:
        # Unknown prices are not free: they never pass a price cap.
        out = [o for o in out if o.price_per_hour is not None and o.price_per_hour <= max_price]
    return out


def with_fetched(o: Offering, when: str, source: str) -> Offering:
    return replace(o, fetched_at=when, source=source)
