"""Provider regions: location, country and grid carbon intensity."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources
from types import MappingProxyType

from argosy.core.errors import unknown_name

DATA_FILE = "argosy/catalog/data/regions.csv"


@dataclass(frozen=True)
class Region:
    provider: str
    region: str
    location: str
    country: str
    gco2_per_kwh: float
    intensity_source: str
    intensity_year: int


@dataclass(frozen=True)
class RegionTable:
    rows: MappingProxyType[tuple[str, str], Region]
    # Used for regions the table does not know (a live fetch can return new ones): the world average,
    # so carbon is never reported as zero for a place we know nothing about.
    fallback: Region

    def get(self, provider: str, region: str) -> Region:
        return self.rows.get((provider, region)) or self.fallback

    def intensity(self, provider: str, region: str) -> float:
        r = self.rows.get((provider, region))
        return r.gco2_per_kwh if r else self.fallback.gco2_per_kwh

    def names(self) -> list[str]:
        return sorted({r for _, r in self.rows})

    def check(self, region: str) -> str:
        """`region` if any provider has it, else a NotFoundError with a suggestion."""
        if region in self.names():
            return region
        raise unknown_name(
            "region", region, self.names(), fix="`argosy gpus` shows which regions each provider has"
        )


def read_csv_rows(name: str) -> list[dict[str, str]]:
    """Rows of a data CSV under argosy/catalog/data, skipping '#' comment lines."""
    text = resources.files("argosy.catalog").joinpath(f"data/{name}").read_text()
    return list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))


@cache
def load_regions() -> RegionTable:
    rows: dict[tuple[str, str], Region] = {}
    for row in read_csv_rows("regions.csv"):
        r = Region(
            provider=row["provider"],
            region=row["region"],
            location=row["location"],
            country=row["country"],
            gco2_per_kwh=float(row["gco2_per_kwh"]),
            intensity_source=row["intensity_source"],
            intensity_year=int(row["intensity_year"]),
        )
        rows[(r.provider, r.region)] = r
    world = next(r for r in rows.values() if r.country == "WORLD")
    fallback = Region(
        "*",
        "*",
        "unknown (world average)",
        "WORLD",
        world.gco2_per_kwh,
        world.intensity_source,
        world.intensity_year,
    )
    return RegionTable(MappingProxyType(rows), fallback)
