"""Energy and CO2 of a training run: CodeCarbon's offline tracker when it works, an estimate when not.

- Energy: CodeCarbon's OfflineEmissionsTracker (project name = the job id, so its emissions.csv
  rows are keyed by job). It *measures* only where the hardware has counters (Intel RAPL for CPU,
  NVML for NVIDIA GPUs); otherwise it models CPU power from load x TDP and RAM from its size. We
  report `measured: true` only when every component that drew power was read from a counter.
- Intensity: the spec's (the node region's, from the catalog) overrides CodeCarbon's country
  average; with neither, the catalog's world average. CO2 = energy x that intensity.
- When CodeCarbon is missing or fails, an estimate from process CPU time x package power, RAM size
  and GPU board power (method "estimate"), with the reason in `notes`. Tracking never fails a job.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import psutil
import yaml

from argosy.catalog.cpu import load_cpu_defaults
from argosy.catalog.regions import load_regions
from argosy.train.spec import TrainSpec

MEASURE_POWER_SECS = 5  # CodeCarbon's sampling period: short jobs still get a final sample at stop
# CPU modes where CodeCarbon reads an energy counter rather than modelling power.
MEASURED_CPU_MODES = ("intel_rapl", "intel_power_gadget", "windows_emi", "apple_powermetrics")
EMISSION_FIELDS = (
    "energy_kwh",
    "cpu_kwh",
    "gpu_kwh",
    "ram_kwh",
    "co2_kg",
    "intensity_g_per_kwh",
    "intensity_source",
    "measured",
    "method",
    "notes",
    "duration_s",
)


def _data(name: str) -> Any:
    return yaml.safe_load(resources.files("argosy.train").joinpath(f"data/{name}").read_text())


@cache
def load_equivalents() -> tuple[dict[str, Any], ...]:
    return tuple(_data("co2_equivalents.yaml")["equivalents"])


@cache
def load_power_estimates() -> dict[str, Any]:
    return dict(_data("power_estimates.yaml"))


def report(emissions: dict[str, Any]) -> dict[str, Any]:
    """`emissions` plus everyday equivalents of its CO2, each with its factor's source and date."""
    kg = float(emissions.get("co2_kg") or 0.0)
    eq = [
        {
            "name": row["name"],
            "value": kg / float(row["kg_co2e_per_unit"]),
            "unit": row["unit"],
            "kg_co2e_per_unit": float(row["kg_co2e_per_unit"]),
            "source": row["source"],
            "as_of": str(row["as_of"]),
        }
        for row in load_equivalents()
    ]
    return {**emissions, "equivalents": eq}


def resolve_intensity(spec: TrainSpec) -> tuple[float | None, str]:
    """(gCO2e/kWh, where it came from). None means "CodeCarbon's country average" (known after start)."""
    if spec.carbon_intensity_g_per_kwh is not None:
        where = spec.carbon_source or (f"the node's region {spec.region}" if spec.region else "the job spec")
        return float(spec.carbon_intensity_g_per_kwh), where
    if spec.country_iso:
        return None, f"CodeCarbon's {spec.country_iso.upper()} country average"
    world = load_regions().fallback
    return world.gco2_per_kwh, f"world average ({world.intensity_source}, {world.intensity_year})"


def _country_intensity(iso: str) -> tuple[float, str] | None:
    try:
        from codecarbon.input import DataSource

        row = DataSource().get_global_energy_mix_data().get(iso.upper())
    except Exception:  # a broken data file degrades to the world average, never fails the job
        return None
    if not row or row.get("carbon_intensity") is None:
        return None
    return float(
        row["carbon_intensity"]
    ), f"CodeCarbon's {iso.upper()} country average ({row.get('year', '?')})"


class CarbonMeter:
    """Tracks one process's run. `carried` holds the totals of earlier attempts (from a checkpoint),
    so a resumed job reports energy for all its attempts, less the steps lost after a kill -9."""

    def __init__(self, spec: TrainSpec, out_dir: Path, carried: dict[str, float] | None = None) -> None:
        self.spec = spec
        self.out_dir = out_dir
        self.carried = {k: float(v) for k, v in (carried or {}).items()}
        self.device = "cpu"
        self.notes: list[str] = []
        self._tracker: Any = None
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()
        self._proc = psutil.Process()
        self._cpu0 = self._cpu_seconds()
        self._intensity, self._source = resolve_intensity(spec)
        if self._intensity is None:
            found = _country_intensity(spec.country_iso or "")
            if found:
                self._intensity, self._source = found
            else:
                world = load_regions().fallback
                self._intensity = world.gco2_per_kwh
                self._source = (
                    f"world average ({world.intensity_source}); no CodeCarbon figure for {spec.country_iso}"
                )
        self._final: dict[str, Any] | None = None
        self._last_kwh = 0.0

    # -- tracking ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start CodeCarbon in the background: its hardware probe takes seconds, and it runs while the
        model loads instead of before."""
        self._thread = threading.Thread(target=self._start_tracker, name="carbon", daemon=True)
        self._thread.start()

    def _start_tracker(self) -> None:
        try:
            from codecarbon import OfflineEmissionsTracker
        except ImportError:
            self.notes.append(
                "CodeCarbon is not installed (pip install 'argosy[train]'): energy is estimated"
            )
            return
        try:
            logging.getLogger("codecarbon").setLevel(logging.ERROR)
            tracker = OfflineEmissionsTracker(
                project_name=self.spec.job_id,
                country_iso_code=(self.spec.country_iso or "USA").upper(),
                measure_power_secs=MEASURE_POWER_SECS,
                tracking_mode="process",
                output_dir=str(self.out_dir),
                save_to_file=True,
                log_level="error",
                allow_multiple_runs=True,
            )
            tracker.start()
        except Exception as exc:  # CodeCarbon problems must not fail a training job
            self.notes.append(
                f"CodeCarbon failed to start ({type(exc).__name__}: {exc}): energy is estimated"
            )
            return
        if getattr(tracker, "_start_time", None) is None:  # its start() swallows its own errors
            self.notes.append("CodeCarbon did not start (it reported no start time): energy is estimated")
            return
        self._tracker = tracker

    def _wait_started(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _cpu_seconds(self) -> float:
        t = self._proc.cpu_times()
        return float(t.user + t.system + t.children_user + t.children_system)

    def _estimate(self, duration_s: float) -> dict[str, float]:
        """TDP x utilisation: CPU package power x this process's share of the CPUs, RAM by resident size,
        the GPU at its board power while training."""
        factors = load_power_estimates()
        cpu_w = load_cpu_defaults().package_power_w
        ncpu = psutil.cpu_count() or 1
        cpu_j = cpu_w * (self._cpu_seconds() - self._cpu0) / ncpu
        ram_gb = self._proc.memory_info().rss / 1e9
        ram_j = float(factors["ram_w_per_gb"]) * ram_gb * duration_s
        gpu_j = 0.0
        if self.device == "cuda":
            gpu_j = self._gpu_watts() * float(factors["gpu_utilisation"]) * duration_s
        return {"cpu_kwh": cpu_j / 3.6e6, "gpu_kwh": gpu_j / 3.6e6, "ram_kwh": ram_j / 3.6e6}

    def _gpu_watts(self) -> float:
        factors = load_power_estimates()
        with contextlib.suppress(Exception):
            import torch

            from argosy.catalog.gpus import load_gpus

            gpus = load_gpus()
            name = gpus.find(torch.cuda.get_device_name(0))
            if name:
                return float(gpus.get(name).tdp_w) * torch.cuda.device_count()
        return float(factors["unknown_gpu_w"])

    def _parts(self) -> dict[str, float]:
        t = self._tracker
        if t is not None:
            with contextlib.suppress(Exception):  # private fields: if they move, fall back to the estimate
                return {
                    "cpu_kwh": float(t._total_cpu_energy.kWh),
                    "gpu_kwh": float(t._total_gpu_energy.kWh),
                    "ram_kwh": float(t._total_ram_energy.kWh),
                }
        return self._estimate(time.monotonic() - self._started)

    def totals(self) -> dict[str, float]:
        """Energy parts and duration so far, including earlier attempts (what a checkpoint keeps)."""
        parts = self._parts()
        parts["duration_s"] = time.monotonic() - self._started
        return {k: v + self.carried.get(k, 0.0) for k, v in parts.items()}

    def so_far(self) -> tuple[float, float]:
        """(kWh, kg CO2e) so far, for progress events."""
        t = self.totals()
        # Never backwards: the estimate covers the seconds before CodeCarbon's probe finished.
        self._last_kwh = max(self._last_kwh, t["cpu_kwh"] + t["gpu_kwh"] + t["ram_kwh"])
        return self._last_kwh, self._last_kwh * float(self._intensity or 0.0) / 1000.0

    # -- the record ---------------------------------------------------------------------------------

    def _measured(self) -> tuple[bool, list[str]]:
        t = self._tracker
        notes = []
        modes = {type(h).__name__: getattr(h, "_mode", None) for h in getattr(t, "_hardware", [])}
        cpu_mode = modes.get("CPU")
        cpu_ok = cpu_mode in MEASURED_CPU_MODES
        if not cpu_ok:
            notes.append(
                f"CPU energy is CodeCarbon's model (mode {cpu_mode!r}: load x TDP), not a reading: "
                "no RAPL energy counter is readable here (/sys/class/powercap)"
            )
        gpu_ok = True
        if self.device == "cuda" and "GPU" not in modes:
            gpu_ok = False
            notes.append("GPU energy was not tracked: CodeCarbon found no NVML-readable GPU")
        notes.append("RAM energy is CodeCarbon's model (watts per GB of RAM), never a reading")
        return cpu_ok and gpu_ok, notes

    def stop(self) -> dict[str, Any]:
        """Stop tracking and return the emissions record (the emissions.json fields). Idempotent."""
        if self._final is not None:
            return self._final
        self._wait_started()
        t = self._tracker
        method = "estimate"
        measured = False
        notes = list(self.notes)
        if t is not None:
            try:
                t.stop()  # takes a last sample and appends the job's row to emissions.csv
            except Exception as exc:
                notes.append(
                    f"CodeCarbon failed to stop ({type(exc).__name__}: {exc}); its last sample is used"
                )
            method = "codecarbon"
            measured, why = self._measured()
            notes += why
        else:
            notes.append(
                f"estimate: CPU package power {load_cpu_defaults().package_power_w:g} W x this process's CPU share, "
                f"RAM {load_power_estimates()['ram_w_per_gb']} W/GB"
                + (", GPU at board power" if self.device == "cuda" else "")
            )
        totals = self.totals()
        energy = totals["cpu_kwh"] + totals["gpu_kwh"] + totals["ram_kwh"]
        if self.carried:
            notes.append("includes earlier attempts up to their last checkpoint")
        self._final = {
            "energy_kwh": energy,
            "cpu_kwh": totals["cpu_kwh"],
            "gpu_kwh": totals["gpu_kwh"],
            "ram_kwh": totals["ram_kwh"],
            "co2_kg": energy * float(self._intensity or 0.0) / 1000.0,
            "intensity_g_per_kwh": float(self._intensity or 0.0),
            "intensity_source": self._source,
            "measured": measured,
            "method": method,
            "notes": notes,
            "duration_s": totals["duration_s"],
            "job_id": self.spec.job_id,
        }
        return self._final
