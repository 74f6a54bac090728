"""The CLI's credentials file: the server URL and API key, readable only by the user."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_credentials(path: Path, server_url: str, api_key: str) -> None:
    """Write the CLI's credentials with mode 0600 from the first byte (no window where others can read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"server_url": server_url, "api_key": api_key}, f)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def read_credentials(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
