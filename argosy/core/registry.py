"""Registries by name with lazy imports, install hints and entry-point plugins.

Each registry maps a name to "module:attribute". Nothing is imported until a name is asked for, so
an optional dependency that is missing only fails for the user who asked for that provider,
with the extra that installs it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from argosy.core.errors import ArgosyError, unknown_name


@dataclass(frozen=True)
class Entry:
    target: str  # "package.module:attr"
    extra: str | None = None  # the pip extra that brings its dependencies
    summary: str = ""


@dataclass
class Registry:
    kind: str  # e.g. "provider"
    entry_point_group: str
    entries: dict[str, Entry] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted({*self.entries, *self._plugins()})

    def _plugins(self) -> dict[str, metadata.EntryPoint]:
        try:
            return {ep.name: ep for ep in metadata.entry_points(group=self.entry_point_group)}
        except Exception:  # a broken plugin's metadata must not take the built-ins down
            return {}

    def load(self, name: str) -> Any:
        entry = self.entries.get(name)
        if entry is None:
            plugin = self._plugins().get(name)
            if plugin is None:
                raise unknown_name(self.kind, name, self.names())
            return plugin.load()
        module_name, _, attr = entry.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            fix = f"pip install 'argosy[{entry.extra}]'" if entry.extra else "reinstall argosy"
            raise ArgosyError(
                f"{self.kind} '{name}' needs a package that is not installed ({exc.name})", fix=fix
            ) from exc
        return getattr(module, attr)
