"""Resolved per-run limits: a plain dataclass with no imports beyond the stdlib.

Kept apart from the language table (which needs yaml and pydantic) so that code which only
enforces limits, like cgroups.py, can run where those are absent: the cgroup v2 test runs it
inside a microVM whose Python has only its stdlib.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Limits:
    """Resolved limits for one sandboxed process."""

    timeout_ms: int
    memory_mb: int
    cpu_count: float
    max_output_bytes: int
    pids: int
    file_size_mb: int
    tmpfs_mb: int = 64
    address_space_extra_mb: int = 256

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
