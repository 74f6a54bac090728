"""GPU specifications and name resolution (aliases, provider spellings, "did you mean")."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any

import yaml

from argosy.core.errors import ConfigError, NotFoundError

# Words that carry no identity in a GPU name: "NVIDIA GeForce RTX 4090" is "RTX 4090".
_NOISE = re.compile(r"\b(nvidia|geforce|tesla|amd|instinct|radeon)\b", re.IGNORECASE)
_SEPARATORS = re.compile(r"[\s\-_/().]+")


def normalize_gpu_name(name: str) -> str:
    """The lookup key for a GPU spelling: noise words, case and separators removed."""
    return _SEPARATORS.sub("", _NOISE.sub("", name)).upper()


@dataclass(frozen=True)
class GpuSpec:
    name: str
    vendor: str
    architecture: str
    vram_gb: float
    bf16: bool
    fp8: bool
    dense_bf16_tflops: float | None
    dense_fp16_tflops: float | None
    bandwidth_gbps: float
    tdp_w: float
    aliases: tuple[str, ...]
    source: str
    as_of: str

    @property
    def tflops(self) -> float:
        """Half-precision tensor throughput: BF16 where the GPU has it, else FP16."""
        return float(self.dense_bf16_tflops or self.dense_fp16_tflops or 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "vendor": self.vendor,
            "architecture": self.architecture,
            "vram_gb": self.vram_gb,
            "bf16": self.bf16,
            "fp8": self.fp8,
            "dense_bf16_tflops": self.dense_bf16_tflops,
            "dense_fp16_tflops": self.dense_fp16_tflops,
            "bandwidth_gbps": self.bandwidth_gbps,
            "tdp_w": self.tdp_w,
            "aliases": list(self.aliases),
            "source": self.source,
            "as_of": self.as_of,
        }


@dataclass(frozen=True)
class GpuTable:
    specs: MappingProxyType[str, GpuSpec]
    keys: MappingProxyType[str, str]  # normalized spelling -> canonical name

    def names(self) -> list[str]:
        return list(self.specs)

    def get(self, name: str) -> GpuSpec:
        return self.specs[self.resolve(name)]

    def find(self, name: str, vram_gb: float | None = None) -> str | None:
        """The canonical name for a spelling, or None. `vram_gb` separates same-named parts (A100 40/80)."""
        if name in self.specs:
            return name
        key = normalize_gpu_name(name)
        if vram_gb is not None:
            # "A100 PCIe" with 40 GB is the 40 GB part: try the spelling with the size appended first.
            sized = self.keys.get(f"{key}{round(vram_gb)}GB")
            if sized:
                return sized
        found = self.keys.get(key)
        if found and vram_gb is not None and abs(self.specs[found].vram_gb - vram_gb) > 0.15 * vram_gb:
            # Same family, different memory size (A100 40 vs 80): pick the sibling whose VRAM matches.
            family = [s for s in self.specs.values() if s.name.split("-")[0] == found.split("-")[0]]
            near = min(family, key=lambda s: abs(s.vram_gb - vram_gb))
            return near.name
        return found

    def resolve(self, name: str, vram_gb: float | None = None) -> str:
        """The canonical name, or a NotFoundError that suggests the nearest one."""
        found = self.find(name, vram_gb)
        if found is None:
            # Suggest through the alias keys too, so "H10" finds H100 and "rtx409" finds RTX4090.
            near_key = _nearest(normalize_gpu_name(name), list(self.keys))
            hint = f" Did you mean '{self.keys[near_key]}'?" if near_key else ""
            raise NotFoundError(
                f"unknown GPU '{name}'.{hint} Known: {', '.join(sorted(self.specs))}.",
                fix="use a name above (aliases like A100, 4090, 'H100 SXM' work too); `argosy gpus` lists offerings",
            )
        return found


def _nearest(key: str, keys: list[str]) -> str | None:
    import difflib

    got = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    return got[0] if got else None


def _parse(data: dict[str, Any], source: str) -> GpuTable:
    specs: dict[str, GpuSpec] = {}
    keys: dict[str, str] = {}
    required = (
        "vendor",
        "architecture",
        "vram_gb",
        "bf16",
        "fp8",
        "bandwidth_gbps",
        "tdp_w",
        "source",
        "as_of",
    )
    for name, row in (data.get("gpus") or {}).items():
        missing = [f for f in required if f not in row]
        if missing:
            raise ConfigError(
                f"{source}: GPU '{name}' lacks {', '.join(missing)}", fix=f"add them to {source}"
            )
        spec = GpuSpec(
            name=name,
            vendor=row["vendor"],
            architecture=row["architecture"],
            vram_gb=float(row["vram_gb"]),
            bf16=bool(row["bf16"]),
            fp8=bool(row["fp8"]),
            dense_bf16_tflops=row.get("dense_bf16_tflops"),
            dense_fp16_tflops=row.get("dense_fp16_tflops"),
            bandwidth_gbps=float(row["bandwidth_gbps"]),
            tdp_w=float(row["tdp_w"]),
            aliases=tuple(str(a) for a in row.get("aliases") or ()),
            source=str(row["source"]),
            as_of=str(row["as_of"]),
        )
        specs[name] = spec
        for spelling in (name, *spec.aliases):
            key = normalize_gpu_name(spelling)
            if keys.get(key, name) != name:
                raise ConfigError(
                    f"{source}: '{spelling}' names both {keys[key]} and {name}", fix="make aliases unique"
                )
            keys[key] = name
    return GpuTable(MappingProxyType(specs), MappingProxyType(keys))


@cache
def load_gpus() -> GpuTable:
    """The built-in GPU table (read once; the table is immutable)."""
    text = resources.files("argosy.catalog").joinpath("data/gpus.yaml").read_text()
    return _parse(yaml.safe_load(text), "argosy/catalog/data/gpus.yaml")
