"""The catalog: GPU specs, provider offerings and prices (with source and fetched-at), region carbon
intensity and model sizing. Data lives in argosy/catalog/data (one file per table); live prices come
from the fetchers in argosy/catalog/fetchers and are cached under the settings cache dir.

This package imports nothing from providers, store or server: callers pass in any live offerings.
"""

from __future__ import annotations

from argosy.catalog.cpu import CpuDefaults, load_cpu_defaults
from argosy.catalog.gpus import GpuSpec, GpuTable, load_gpus, normalize_gpu_name
from argosy.catalog.offerings import (
    DEFAULT_TTL_S,
    KINDS,
    human_age,
    is_stale,
    load_offerings,
    merge_offerings,
    offering_key,
    parse_when,
    price_age_s,
    select_offerings,
    snapshot_offerings,
)
from argosy.catalog.regions import Region, RegionTable, load_regions
from argosy.catalog.sizing import ModelSpec, Requirement, builtin_models, load_model, size_model
from argosy.catalog.types import Offering, OfferingKind


def parse_when_ok(text: str) -> bool:
    """Whether a fetched_at value is a date we can compute an age from."""
    return parse_when(text) is not None


__all__ = [
    "DEFAULT_TTL_S",
    "KINDS",
    "CpuDefaults",
    "GpuSpec",
    "GpuTable",
    "ModelSpec",
    "Offering",
    "OfferingKind",
    "Region",
    "RegionTable",
    "Requirement",
    "builtin_models",
    "human_age",
    "is_stale",
    "load_cpu_defaults",
    "load_gpus",
    "load_model",
    "load_offerings",
    "load_regions",
    "merge_offerings",
    "normalize_gpu_name",
    "offering_key",
    "parse_when",
    "parse_when_ok",
    "price_age_s",
    "select_offerings",
    "size_model",
    "snapshot_offerings",
]
