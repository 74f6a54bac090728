"""Short, sortable, prefixed ids (e.g. `dep_01h...`)."""

from __future__ import annotations

import os
import re
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _b32(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        out.append(_ALPHABET[n & 31])
        n >>= 5
    return "".join(reversed(out))


def new_id(prefix: str) -> str:
    """A prefixed id whose first part is the time in ms, so ids sort by creation."""
    ms = int(time.time() * 1000)
    rand = int.from_bytes(os.urandom(8), "big")
    return f"{prefix}_{_b32(ms, 9)}{_b32(rand, 8)}"


def valid_name(name: str) -> bool:
    """DNS-label-like names: what clouds accept for resource names."""
    return bool(NAME_RE.match(name))
