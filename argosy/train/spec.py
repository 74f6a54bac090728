"""The training spec: what one fine-tuning run does, as a frozen, strict, JSON-round-trippable record.

The job machinery writes it to `spec.json` in the job's work dir and starts
`python -m argosy.train.runner spec.json`; the runner re-reads it on every (re)start, so a spec is
the whole contract between the two. Unknown keys are errors naming the nearest valid key, because a
typo (`lora_rank`) silently ignored would train the wrong thing for hours.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from argosy.core.errors import ArgosyError, ConfigError, did_you_mean

METHODS = ("lora", "qlora", "full")


class SpecError(ConfigError):
    """A training spec is malformed or cannot run here."""


@dataclass(frozen=True)
class TrainSpec:
    job_id: str
    base_model: str  # a local Hugging Face model dir (config.json + weights + tokenizer)
    dataset: str  # a stored dataset file (.jsonl, or plain text: one example per line)
    output_dir: str  # the job's work dir: progress, checkpoints, output, emissions all live here
    method: str = "lora"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] | None = None  # None: the backend's default for the architecture
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    lr: float = 2e-4
    batch_size: int = 4
    grad_accum: int = 1
    max_seq_len: int = 512
    eval_every: int | None = None  # steps; None: evaluate once at the end (if there is a validation split)
    save_every: int = 50
    seed: int = 0
    val_fraction: float = 0.1
    backend: str = "hf"
    carbon_intensity_g_per_kwh: float | None = (
        None  # the node's grid intensity (catalog); overrides CodeCarbon's
    )
    carbon_source: str = ""
    country_iso: str | None = None  # ISO 3166-1 alpha-3, for CodeCarbon's country average when no intensity
    region: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific options, passed through

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSpec:
        if not isinstance(data, dict):
            raise SpecError(
                f"a training spec must be a JSON object, got {type(data).__name__}", fix="write {...}"
            )
        known = [f.name for f in fields(cls)]
        for key in data:
            if key not in known:
                near = did_you_mean(key, known)
                hint = f"; did you mean '{near}'?" if near else ""
                raise SpecError(
                    f"unknown training spec key '{key}'{hint}",
                    fix=f"use one of: {', '.join(known)}",
                )
        missing = [k for k in ("job_id", "base_model", "dataset", "output_dir") if k not in data]
        if missing:
            raise SpecError(
                f"training spec is missing {', '.join(missing)}",
                fix="give job_id, base_model, dataset, output_dir",
            )
        spec = cls(**data)
        _check_types(spec)
        return spec

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


def read_spec(path: Path) -> TrainSpec:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise SpecError(
            f"cannot read training spec {path}: {exc.strerror}", fix="pass the spec.json path"
        ) from exc
    except ValueError as exc:
        raise SpecError(f"training spec {path} is not valid JSON: {exc}", fix="fix the JSON") from exc
    return TrainSpec.from_dict(data)


_INTS = ("lora_r", "lora_alpha", "batch_size", "grad_accum", "max_seq_len", "save_every", "seed")
_FLOATS = ("lora_dropout", "epochs", "lr", "val_fraction")
_STRS = ("job_id", "base_model", "dataset", "output_dir", "method", "backend", "carbon_source", "region")


def _check_types(spec: TrainSpec) -> None:
    def bad(key: str, want: str) -> SpecError:
        got = getattr(spec, key)
        return SpecError(f"training spec '{key}' must be {want}, got {got!r}", fix=f"set '{key}' to {want}")

    for k in _INTS:
        if not isinstance(getattr(spec, k), int) or isinstance(getattr(spec, k), bool):
            raise bad(k, "an integer")
    for k in _FLOATS:
        v = getattr(spec, k)
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            raise bad(k, "a number")
    for k in _STRS:
        if not isinstance(getattr(spec, k), str):
            raise bad(k, "a string")
    for k in ("max_steps", "eval_every"):
        v = getattr(spec, k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise bad(k, "an integer or null")
    ci = spec.carbon_intensity_g_per_kwh
    if ci is not None and (not isinstance(ci, int | float) or isinstance(ci, bool)):
        raise bad("carbon_intensity_g_per_kwh", "a number or null")
    if spec.country_iso is not None and not isinstance(spec.country_iso, str):
        raise bad("country_iso", "a string or null")
    tm = spec.target_modules
    if tm is not None and (not isinstance(tm, list) or not all(isinstance(m, str) and m for m in tm)):
        raise bad("target_modules", "a list of module names or null")
    if not isinstance(spec.extra, dict):
        raise bad("extra", "an object")


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch  # only when asked about a GPU method; the core never imports torch

    return bool(torch.cuda.is_available())


def validate_spec(spec: TrainSpec) -> TrainSpec:
    """Check values and whether this machine can run the method; raise SpecError with a fix line."""
    _check_types(spec)
    if spec.method not in METHODS:
        near = did_you_mean(spec.method, METHODS)
        hint = f"; did you mean '{near}'?" if near else ""
        raise SpecError(
            f"unknown training method '{spec.method}'{hint}", fix=f"use one of {', '.join(METHODS)}"
        )
    if not spec.job_id.strip():
        raise SpecError("training spec has an empty job_id", fix="give the job an id")
    checks: list[tuple[bool, str, str]] = [
        (spec.lr > 0, f"lr must be positive, got {spec.lr}", "use e.g. --lr 2e-4 (LoRA) or 2e-5 (full)"),
        (spec.lr < 1, f"lr {spec.lr} is far too large to train", "use e.g. --lr 2e-4 (LoRA) or 2e-5 (full)"),
        (
            spec.batch_size >= 1,
            f"batch_size must be at least 1, got {spec.batch_size}",
            "use --batch-size 1 or more",
        ),
        (
            spec.grad_accum >= 1,
            f"grad_accum must be at least 1, got {spec.grad_accum}",
            "use --grad-accum 1 or more",
        ),
        (
            spec.max_seq_len >= 8,
            f"max_seq_len must be at least 8, got {spec.max_seq_len}",
            "use --max-seq-len 512",
        ),
        (
            spec.save_every >= 1,
            f"save_every must be at least 1, got {spec.save_every}",
            "use --save-every 50",
        ),
        (spec.epochs > 0, f"epochs must be positive, got {spec.epochs}", "use --epochs 1"),
        (
            spec.max_steps is None or spec.max_steps >= 1,
            f"max_steps must be at least 1, got {spec.max_steps}",
            "drop --max-steps to train for --epochs",
        ),
        (
            spec.eval_every is None or spec.eval_every >= 1,
            f"eval_every must be at least 1, got {spec.eval_every}",
            "drop --eval-every to evaluate once at the end",
        ),
        (
            0 <= spec.val_fraction < 1,
            f"val_fraction must be in [0, 1), got {spec.val_fraction}",
            "use 0.1, or 0 for no validation",
        ),
        (
            spec.country_iso is None or (len(spec.country_iso) == 3 and spec.country_iso.isalpha()),
            f"country_iso must be an ISO 3166-1 alpha-3 code (CodeCarbon's), got {spec.country_iso!r}",
            "use e.g. FRA, DEU, USA; or pass carbon_intensity_g_per_kwh instead",
        ),
        (
            spec.carbon_intensity_g_per_kwh is None or spec.carbon_intensity_g_per_kwh >= 0,
            f"carbon intensity cannot be negative ({spec.carbon_intensity_g_per_kwh})",
            "pass the grid's gCO2e/kWh from the catalog",
        ),
    ]
    if spec.method != "full":
        checks += [
            (spec.lora_r >= 1, f"lora_r must be at least 1, got {spec.lora_r}", "use --lora-r 8"),
            (
                spec.lora_alpha >= 1,
                f"lora_alpha must be at least 1, got {spec.lora_alpha}",
                "use --lora-alpha 16",
            ),
            (
                0 <= spec.lora_dropout < 1,
                f"lora_dropout must be in [0, 1), got {spec.lora_dropout}",
                "use --lora-dropout 0.05",
            ),
        ]
    for ok, what, fix in checks:
        if not ok:
            raise SpecError(what, fix=fix)
    if spec.method == "qlora":
        missing = [p for p in ("bitsandbytes",) if importlib.util.find_spec(p) is None]
        if missing or not _cuda_available():
            why = "bitsandbytes is not installed" if missing else "no CUDA GPU is visible"
            raise SpecError(
                f"method qlora needs 4-bit kernels on an NVIDIA GPU, and {why} here",
                fix="use --method lora here, or place the job on a GPU node with `pip install bitsandbytes`",
            )
    return spec


def check_backend(spec: TrainSpec) -> None:
    """The backend exists and can run here (raises ArgosyError saying what is missing)."""
    from argosy.train.backends import get_backend

    backend = get_backend(spec.backend)
    problem = backend.unavailable_reason(spec)
    if problem:
        raise ArgosyError(problem[0], fix=problem[1])
