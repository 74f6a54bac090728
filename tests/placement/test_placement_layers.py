"""Catalog and placement sit above providers, store and server: they must not import them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "argosy"
FORBIDDEN = ("argosy.providers", "argosy.store", "argosy.server", "argosy.cli")


@pytest.mark.parametrize("package", ["catalog", "placement"])
def test_no_imports_from_lower_layers(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(FORBIDDEN), f"{path.relative_to(ROOT)} imports {name}"
