"""Bad input through the real CLI: a clear message, a `fix:` line, a non-zero exit, nothing half-done."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from argosy.core.host import free_port
from tests.conftest import write_model_config
from tests.e2e.helpers import run_cli


@pytest.fixture
def env(home: Path) -> Iterator[dict[str, str]]:
    e = {"ARGOSY_SERVER_PORT": str(free_port())}
    yield e
    run_cli("server", "stop", env=e, timeout=60)


def test_unknown_config_key_names_file_line_and_suggestion(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "argosy.yaml").write_text("server:\n  hots: 0.0.0.0\n")
    res = run_cli("list", env=env, cwd=tmp_path)
    assert res.returncode == 1
    assert "argosy.yaml, line 2: unknown key 'server.hots'; did you mean 'server.host'" in res.stderr
    assert "fix:" in res.stderr


def test_unknown_provider_and_missing_model_and_unknown_name(env: dict[str, str], tmp_path: Path) -> None:
    model = write_model_config(tmp_path / "m")
    res = run_cli("deploy", str(model), "--provider", "lokal", env=env)
    assert res.returncode == 1 and "unknown provider 'lokal'. Did you mean 'local'?" in res.stderr
    assert "started a local Argosy server" in res.stderr  # the embedded default, announced
    res = run_cli("deploy", str(tmp_path / "nope"), env=env)
    assert res.returncode == 1 and "does not exist" in res.stderr and "argosy model make-tiny" in res.stderr
    res = run_cli("destroy", "ghost", env=env)
    assert res.returncode == 1 and "no deployment named 'ghost'" in res.stderr and "argosy list" in res.stderr
    listing = run_cli("list", "-o", "json", env=env)
    assert listing.returncode == 0 and listing.stdout.strip() == "[]"  # nothing was half-created


def test_occupied_port_is_reported_with_a_fix(home: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = run_cli("server", "start", env={"ARGOSY_SERVER_PORT": str(port)})
    assert res.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in res.stderr and "fix:" in res.stderr


def test_unreachable_server_says_how_to_start_one(home: Path) -> None:
    res = run_cli("list", env={"ARGOSY_SERVER_URL": f"http://127.0.0.1:{free_port()}"})
    assert res.returncode == 3
    assert "cannot reach the Argosy server" in res.stderr and "argosy server start" in res.stderr
