"""Logging set-up shared by the three processes."""

from __future__ import annotations

import logging


def setup_logging(level: str = "INFO", process: str = "argosy") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s",
    )
