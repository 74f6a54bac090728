"""Running the real `argosy` CLI in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 900, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "argosy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def cli_json(*args: str, env: dict[str, str] | None = None) -> Any:
    res = run_cli(*args, "-o", "json", env=env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)
