"""Assumptions for CPU-only offerings (data/cpu.yaml): bandwidth, power, usable RAM, auto-placement cap."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml


@dataclass(frozen=True)
class CpuDefaults:
    memory_bandwidth_gbps: float
    package_power_w: float
    usable_ram_fraction: float
    max_auto_weights_gb: float
    source: str


@cache
def load_cpu_defaults() -> CpuDefaults:
    d = yaml.safe_load(resources.files("argosy.catalog").joinpath("data/cpu.yaml").read_text())
    return CpuDefaults(
        memory_bandwidth_gbps=float(d["memory_bandwidth_gbps"]),
        package_power_w=float(d["package_power_w"]),
        usable_ram_fraction=float(d["usable_ram_fraction"]),
        max_auto_weights_gb=float(d["max_auto_weights_gb"]),
        source=f"{d['memory_bandwidth_source']}; {d['package_power_source']}",
    )
