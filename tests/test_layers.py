"""The layer map is enforced: each package imports only from layers above it (ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "argosy"

# Top to bottom; a package may import its own layer and the ones before it.
LAYERS: list[set[str]] = [
    {"core"},
    {"catalog"},
    {"placement"},
    {"providers"},
    {"store"},
    {"fleet"},
    {"serve", "train", "sandbox"},
    {"router"},
    {"server"},
    {"cli", "client", "__main__", "__init__"},
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "argosy" else None


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def test_no_module_imports_a_lower_layer() -> None:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        own = rel.parts[0].removesuffix(".py")
        mine = RANK[own]
        for line, module in _imports(path):
            pkg = _package(module)
            if pkg is None or pkg == own:
                continue
            if RANK.get(pkg, 99) > mine:
                bad.append(f"argosy/{rel}:{line} ({own}) imports {module}")
    assert not bad, "imports against the layer map:\n" + "\n".join(bad)


def test_router_never_imports_the_server() -> None:
    for path in (ROOT / "router").rglob("*.py"):
        assert not any((_package(m) == "server") for _, m in _imports(path)), path
