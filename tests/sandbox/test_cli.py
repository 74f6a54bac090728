"""`argosy run` and `argosy sandbox ...` as a user types them (local execution, no server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import BWRAP, fresh_config

pytestmark = pytest.mark.skipif(BWRAP is None, reason="bubblewrap not installed")


def argosy(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "argosy", *args],
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=120,
    )


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("ARGOSY_SANDBOX")}
    e["ARGOSY_HOME"] = str(home)
    e["ARGOSY_SANDBOX_DIR"] = str(fresh_config().base_dir)
    return e


def test_run_code_and_exit_codes(env: dict[str, str], tmp_path: Path) -> None:
    r = argosy("run", "-c", "print('hi')", env=env)
    assert r.returncode == 0 and r.stdout == "hi\n", r.stderr
    script = tmp_path / "x.rb"
    script.write_text("puts ARGV[0]; exit 3")
    r = argosy("run", str(script), "--", "arg1", env=env)
    assert r.returncode == 3 and r.stdout == "arg1\n", r.stderr
    r = argosy("run", "-c", "while True: pass", "--timeout", "0.5", env=env)
    assert r.returncode == 137 and "time limit" in r.stderr


def test_run_json_is_the_execute_response(env: dict[str, str]) -> None:
    r = argosy("run", "-l", "c", "-c", "int main() { return nope; }", "-o", "json", env=env)
    body = json.loads(r.stdout)
    assert body["status"] == "compile_error" and body["compile"]["exit_code"] != 0
    assert {
        "stdout",
        "stderr",
        "exit_code",
        "signal",
        "timed_out",
        "oom_killed",
        "truncated",
        "duration_ms",
        "run_id",
    } <= set(body)


def test_run_errors_say_what_to_do(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "x.unknown").write_text("1")
    r = argosy("run", str(tmp_path / "x.unknown"), env=env)
    assert r.returncode == 1 and "fix:" in r.stderr


def test_session_commands(env: dict[str, str], tmp_path: Path) -> None:
    sid = argosy("sandbox", "create", "--ttl", "120", env=env).stdout.strip()
    assert sid.startswith("sbs_")
    (tmp_path / "in.txt").write_text("hello")
    assert argosy("sandbox", "cp", str(tmp_path / "in.txt"), f"{sid}:in.txt", env=env).returncode == 0
    r = argosy(
        "sandbox", "exec", sid, "-c", "open('out.txt','w').write(open('in.txt').read().upper())", env=env
    )
    assert r.returncode == 0, r.stderr
    r = argosy("sandbox", "exec", sid, "--", "cat", "out.txt", env=env)
    assert r.stdout == "HELLO"
    assert argosy("sandbox", "cp", f"{sid}:out.txt", str(tmp_path), env=env).returncode == 0
    assert (tmp_path / "out.txt").read_text() == "HELLO"
    assert sid in argosy("sandbox", "ls", "-o", "json", env=env).stdout
    assert argosy("sandbox", "rm", sid, env=env).returncode == 0
    r = argosy("sandbox", "exec", sid, "--", "true", env=env)
    assert r.returncode != 0 and "fix:" in r.stderr


def test_doctor(env: dict[str, str], tmp_path: Path) -> None:
    env = {**env, "ARGOSY_CACHE_DIR": str(tmp_path / "empty-cache")}  # no microVM image built there
    r = argosy("sandbox", "doctor", "-o", "json", env=env)
    report = json.loads(r.stdout)
    assert report["backends"]["namespaces"]["available"]
    vm = report["backends"]["microvm"]
    assert vm["available"] is False and vm["reason"]
    r = argosy("sandbox", "doctor", env=env)
    assert r.returncode == 0 and "backend namespaces" in r.stdout and "unavailable" in r.stdout
