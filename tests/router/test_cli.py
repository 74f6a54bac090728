"""`argosy router` as a real process: serves, takes the admin token from the environment, exits on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_health(url: str, proc: subprocess.Popen[bytes], deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"router exited early: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("router did not become healthy")


def test_cli_router_process(backends) -> None:
    a = backends("a", chunks=3)
    port = _free_port()
    env = {**os.environ, "ARGOSY_ROUTER_ADMIN_TOKEN": "tok"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "argosy",
            "router",
            "--listen",
            f"127.0.0.1:{port}",
            "--backend",
            a.url,
            "--policy",
            "round-robin",
            "--api-key",
            "k1",
            "--metrics-auth",
            "on",
            "--metrics-token",
            "mt",
        ],  # fmt: skip
        env=env,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_health(url, proc)
        r = httpx.post(
            f"{url}/v1/completions",
            json={"model": "tiny", "prompt": "x"},
            headers={"authorization": "Bearer k1"},
        )
        assert r.status_code == 200
        st = httpx.get(f"{url}/router/status", headers={"authorization": "Bearer tok"})
        assert st.status_code == 200 and st.json()["policy"] == "round-robin"
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/metrics", headers={"authorization": "Bearer mt"}).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(20)
    assert rc == 0


def test_cli_unknown_config_key(tmp_path) -> None:
    cfg = tmp_path / "router.yaml"
    cfg.write_text("listen: 127.0.0.1:0\nbackends:\n  - url: http://127.0.0.1:9\n    wieght: 2\n")
    out = subprocess.run(
        [sys.executable, "-m", "argosy", "router", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert (
        "wieght" in out.stderr and "line 4" in out.stderr and "weight" in out.stderr and "fix:" in out.stderr
    )
