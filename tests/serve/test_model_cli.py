"""`argosy model ...` commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from argosy.cli.model_cmd import register
from tests.serve.conftest import needs_engine_extra


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_engines_lists_both() -> None:
    r = CliRunner().invoke(_app(), ["model", "engines", "-o", "json"])
    assert r.exit_code == 0, r.output
    assert [e["name"] for e in json.loads(r.stdout)] == ["llamacpp", "vllm"]


@needs_engine_extra
def test_make_tiny_json_then_reuse(tmp_path: Path) -> None:
    target = tmp_path / "m"
    r = CliRunner().invoke(_app(), ["model", "make-tiny", str(target), "--seed", "7", "-o", "json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["seed"] == 7 and info["vocab_size"] == 4096 and Path(info["path"]) == target
    again = CliRunner().invoke(_app(), ["model", "make-tiny", str(target), "--seed", "7", "--exist-ok"])
    assert again.exit_code == 0 and "reused" in again.stdout


def test_errors_are_for_people(tmp_path: Path) -> None:
    # Through the real entry point: an error and its fix, exit 1, no traceback.
    r = subprocess.run(
        [sys.executable, "-m", "argosy", "model", "to-gguf", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        env={"ARGOSY_HOME": str(tmp_path / "h"), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 1
    assert "does not exist" in r.stderr and "fix:" in r.stderr and "Traceback" not in r.stderr
