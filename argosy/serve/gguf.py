"""HF-format model dir -> GGUF file for llama.cpp, cached by the content of the model dir.

The converter is llama.cpp's own `convert_hf_to_gguf.py` (with its `conversion/` package and
`gguf-py`) from the same vendored source tree the llama-server binary is built from, so the file
format always matches the binary. It runs in a child process with the engine extra's torch.

A tokenizer trained locally (like the tiny model's) is unknown to the converter's table of
pre-tokenizer hashes and fails with "BPE pre-tokenizer was not recognized". When the tokenizer's
pre-tokenizer *is* GPT-2's byte-level one, we tell the converter so ("gpt-2"), which is exactly
what llama.cpp then implements; any other unknown tokenizer still fails loudly.

Cache: `settings.cache_dir / "gguf" / <sha256 of the model files, outtype, converter version>.gguf`.
A second conversion of the same bytes converts nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from argosy.core.config import Settings
from argosy.core.errors import ArgosyError, EngineError
from argosy.serve.engines.base import Progress, no_progress

OUTTYPES = ("f16", "f32", "bf16", "q8_0")

# Runs in the child: argv = [tree, script, *converter args]. Imports the vendored converter,
# patches the pre-tokenizer fallback for GPT-2-style byte-level tokenizers, then runs the script.
_RUNNER = r"""
import json, logging, os, runpy, sys
tree, script, args = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path[:0] = [tree, os.path.join(tree, "gguf-py")]
import conversion.base as base

def _byte_level(model_dir):
    try:
        with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
            pre = json.load(f).get("pre_tokenizer") or {}
    except (OSError, ValueError):
        return False
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return any(s.get("type") == "ByteLevel" and s.get("use_regex", True) for s in steps)

_orig = base.TextModel.get_vocab_base_pre

def get_vocab_base_pre(self, tokenizer):
    logger = base.logger
    was = logger.disabled
    logger.disabled = True  # its multi-line warning is noise when we know the answer
    try:
        return _orig(self, tokenizer)
    except NotImplementedError:
        if _byte_level(str(self.dir_model)):
            print("argosy: unknown BPE pre-tokenizer is GPT-2 byte-level: using 'gpt-2'", flush=True)
            return "gpt-2"
        raise
    finally:
        logger.disabled = was

base.TextModel.get_vocab_base_pre = get_vocab_base_pre
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
"""


def model_digest(model_dir: Path) -> str:
    """sha256 over the relative names and bytes of every file in `model_dir` (sorted, hidden skipped)."""
    h = hashlib.sha256()
    files = sorted(
        p
        for p in model_dir.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.parts[-1:])
    )
    for p in files:
        rel = p.relative_to(model_dir).as_posix()
        h.update(rel.encode() + b"\0")
        with p.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def _check_model_dir(model_dir: Path) -> Path:
    path = model_dir.expanduser()
    if not path.exists():
        raise ArgosyError(
            f"model path {path} does not exist",
            fix=f"check the path, or make one: argosy model make-tiny {path}",
        )
    if not path.is_dir() or not (path / "config.json").exists():
        raise ArgosyError(
            f"{path} is not an HF-format model directory (no config.json)",
            fix="pass the directory that holds config.json and the *.safetensors weights, or a .gguf file",
        )
    return path.resolve()


@contextlib.contextmanager
def _locked(path: Path, progress: Progress) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("waiting for another process converting the same model", None)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def gguf_cache_path(model_dir: Path, settings: Settings, outtype: str = "f16") -> Path:
    """Where the GGUF of `model_dir` goes (reads the model files to hash them)."""
    version = settings.engine.llamacpp.source_version
    key = hashlib.sha256(f"{model_digest(model_dir)}:{outtype}:{version}".encode()).hexdigest()[:24]
    return settings.cache_dir / "gguf" / f"{model_dir.name}-{key}-{outtype}.gguf"


def ensure_gguf(
    model_dir: Path | str, settings: Settings, outtype: str = "f16", progress: Progress = no_progress
) -> Path:
    """The GGUF conversion of an HF model dir: from the cache, or converted now (locked, atomic)."""
    if outtype not in OUTTYPES:
        raise ArgosyError(f"unknown GGUF type '{outtype}'", fix=f"use one of: {', '.join(OUTTYPES)}")
    src = _check_model_dir(Path(model_dir))
    out = gguf_cache_path(src, settings, outtype)
    if out.exists():
        return out
    with _locked(out.with_suffix(".lock"), progress):
        if out.exists():
            return out
        args = [str(src), "--outfile", str(out.with_suffix(".partial")), "--outtype", outtype]
        _convert(
            settings, "convert_hf_to_gguf.py", args, f"converting {src.name} to GGUF ({outtype})", progress
        )
        out.with_suffix(".partial").replace(out)
    return out


def ensure_lora_gguf(
    adapter_dir: Path | str,
    base_model_dir: Path | str,
    settings: Settings,
    outtype: str = "f16",
    progress: Progress = no_progress,
) -> Path:
    """The GGUF conversion of a PEFT LoRA adapter (llama-server's --lora), cached like models."""
    adapter = Path(adapter_dir).expanduser().resolve()
    if not (adapter / "adapter_config.json").exists():
        raise ArgosyError(
            f"{adapter} is not a PEFT LoRA adapter directory (no adapter_config.json)",
            fix="pass the directory a fine-tune wrote (adapter_config.json + adapter_model.safetensors)",
        )
    base = _check_model_dir(Path(base_model_dir))
    version = settings.engine.llamacpp.source_version
    key = hashlib.sha256(
        f"{model_digest(adapter)}:{model_digest(base)}:{outtype}:{version}".encode()
    ).hexdigest()
    out = settings.cache_dir / "gguf" / f"lora-{adapter.name}-{key[:24]}-{outtype}.gguf"
    if out.exists():
        return out
    with _locked(out.with_suffix(".lock"), progress):
        if out.exists():
            return out
        partial = out.with_suffix(".partial")
        args = ["--base", str(base), "--outfile", str(partial), "--outtype", outtype, str(adapter)]
        _convert(
            settings, "convert_lora_to_gguf.py", args, f"converting adapter {adapter.name} to GGUF", progress
        )
        partial.replace(out)
    return out


def _convert(settings: Settings, script: str, args: list[str], what: str, progress: Progress) -> None:
    try:
        import torch  # noqa: F401  (the converter imports it; fail here with the right fix)
    except ImportError as exc:
        raise ArgosyError(
            "converting a model to GGUF needs the engine extra (torch is not installed)",
            fix="pip install torch==2.13.0 && pip install -e '.[engine]'",
        ) from exc
    from argosy.serve.llamacpp_build import ensure_source

    tree = ensure_source(settings, progress=progress)
    progress(what, None)
    started = time.monotonic()
    # NO_LOCAL_GGUF unset: the converter must use its own gguf-py, which matches the binary.
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    r = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(tree), str(tree / script), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tree,
    )
    if r.returncode != 0:
        lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()][-15:]
        raise EngineError(
            f"{what} failed (exit {r.returncode}):\n  " + "\n  ".join(lines),
            fix="check that the model dir is a complete HF model that llama.cpp supports "
            "(config.json, tokenizer.json, *.safetensors)",
        )
    progress(f"{what}: done in {time.monotonic() - started:.1f} s", 1.0)
