"""Shared output helpers: `-o json` on every listing, Rich tables otherwise."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

OUTPUT_OPTION = typer.Option("table", "--output", "-o", help="table or json")


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def check_format(fmt: str, allowed: tuple[str, ...] = ("table", "json")) -> None:
    if fmt not in allowed:
        raise typer.BadParameter(f"unknown output format '{fmt}'; use one of: {', '.join(allowed)}")


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=title, header_style="bold")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*["" if v is None else escape(str(v)) for v in r])  # "argosy[aws]" is not markup
    # Piped output keeps whole rows (a fix line cut at 80 columns helps nobody).
    Console(width=None if sys.stdout.isatty() else 220).print(t)


def ago(ts: float | None) -> str:
    if not ts:
        return "-"
    s = max(0, time.time() - ts)
    if s < 90:
        return f"{s:.0f}s ago"
    if s < 5400:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.1f}h ago"


def money(x: float | None) -> str:
    return "unknown" if x is None else f"${x:,.4f}"
