"""Commands for this area are added by `register`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to `app` (none yet)."""
