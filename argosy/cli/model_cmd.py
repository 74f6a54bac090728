"""`argosy model ...`: make a tiny test model, convert a model to GGUF, get the llama-server binary."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console

from argosy.core.config import load_settings
from argosy.serve.engines.base import Progress

model_app = typer.Typer(help="Models and engines on this machine: tiny test models, GGUF, llama-server.")


def _progress(console: Console, status: object) -> Progress:
    """A Progress that updates a Rich spinner line and prints milestones (fraction 1.0)."""

    def report(message: str, fraction: float | None = None) -> None:
        status.update(f"[bold]{message}")  # type: ignore[attr-defined]
        if fraction is not None and fraction >= 1.0:
            console.print(f"  {message}", highlight=False, soft_wrap=True)

    return report


@model_app.command("make-tiny")
def make_tiny(
    path: Path = typer.Argument(..., help="New directory to write the model to."),
    seed: int = typer.Option(0, help="Random seed for the weights (same seed, same bytes)."),
    arch: str = typer.Option("llama", help="Architecture: llama or qwen2."),
    exist_ok: bool = typer.Option(
        False, "--exist-ok", help="Reuse PATH if make-tiny already made it (same seed/arch)."
    ),
    output: str = typer.Option("text", "-o", "--output", help="text or json"),
) -> None:
    """Make a tiny random-initialised model (HF format, ~4M params) with a trained tokenizer, in seconds."""
    from argosy.serve.tinymodel import make_tiny_model

    console = Console(stderr=output == "json")
    with console.status(f"making a tiny {arch} model (seed {seed})"):
        info = make_tiny_model(path, seed=seed, arch=arch, exist_ok=exist_ok)
    if output == "json":
        data = {
            "path": str(info.path),
            "arch": info.arch,
            "seed": info.seed,
            "parameters": info.parameters,
            "vocab_size": info.vocab_size,
            "seconds": round(info.seconds, 2),
        }
        print(json.dumps(data))
        return
    if info.seconds == 0.0:
        console.print(
            f"[green]reused[/] {info.path} (made earlier with seed {info.seed})",
            highlight=False,
            soft_wrap=True,
        )
        return
    console.print(
        f"[green]made[/] {info.path}: {info.arch}, {info.parameters / 1e6:.1f}M parameters, "
        f"vocab {info.vocab_size}, seed {info.seed}, in {info.seconds:.1f} s",
        highlight=False,
    )


@model_app.command("to-gguf")
def to_gguf(
    path: Path = typer.Argument(..., help="HF-format model directory."),
    outtype: str = typer.Option("f16", help="f16, f32, bf16 or q8_0"),
) -> None:
    """Convert an HF model dir to GGUF for llama.cpp (cached: a second run converts nothing)."""
    from argosy.serve.gguf import ensure_gguf

    console = Console()
    settings = load_settings()
    started = time.monotonic()
    with console.status("converting") as status:
        out = ensure_gguf(path, settings, outtype=outtype, progress=_progress(console, status))
    console.print(
        f"[green]gguf[/] {out} ({time.monotonic() - started:.1f} s)", highlight=False, soft_wrap=True
    )


@model_app.command("build-engine")
def build_engine() -> None:
    """Get llama-server: the configured binary, the cached build, or build it now (a few minutes, once)."""
    from argosy.serve.llamacpp_build import ensure_llama_server

    console = Console()
    settings = load_settings()
    started = time.monotonic()
    with console.status("looking for llama-server") as status:
        binary = ensure_llama_server(settings, progress=_progress(console, status))
    console.print(
        f"[green]llama-server[/] {binary} ({time.monotonic() - started:.1f} s)",
        highlight=False,
        soft_wrap=True,
    )


@model_app.command("engines")
def engines(output: str = typer.Option("text", "-o", "--output", help="text or json")) -> None:
    """List the inference engines Argosy can run."""
    from argosy.serve.engines.registry import ENGINES

    rows = [
        {"name": n, "summary": ENGINES.entries[n].summary if n in ENGINES.entries else "plugin"}
        for n in ENGINES.names()
    ]
    if output == "json":
        print(json.dumps(rows))
        return
    console = Console()
    for r in rows:
        console.print(f"[bold]{r['name']:10}[/] {r['summary']}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the `model` command group to `app`."""
    app.add_typer(model_app, name="model")
