"""End to end: a real server and a real agent with the sandbox role, as separate processes.

The server has no agent at first and runs sandboxes itself; once the agent heartbeats, execute
(plain and SSE), sessions and files go through the agent, and the run says which node ran it; the
runs are in the server's store. Killing the agent mid-run ends the request with a clear error, and
the next request gets a clear 503, never a hang (every HTTP call here has a timeout).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from argosy.core.host import free_port

from .conftest import BWRAP, fresh_config

pytestmark = pytest.mark.skipif(BWRAP is None, reason="bubblewrap not installed")


def _wait(pred: Any, timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            out = pred()
        except httpx.HTTPError:
            out = None
        if out:
            return out
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def run_cli(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "argosy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    f = log.open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "argosy", *args],
        env={**os.environ, **env},
        stdout=f,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, Any]]:
    server_dir = fresh_config().base_dir
    agent_dir = fresh_config().base_dir
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    base_env = {"ARGOSY_CACHE_DIR": str(tmp_path / "cache"), "ARGOSY_LOG_LEVEL": "INFO"}
    for var in ("ARGOSY_SERVER_URL", "ARGOSY_DATABASE_URL", "ARGOSY_CONFIG", "ARGOSY_API_KEY"):
        os.environ.pop(var, None)
    server = _spawn(
        ["server", "--host", "127.0.0.1", "--port", str(port)],
        base_env | {"ARGOSY_HOME": str(tmp_path / "server"), "ARGOSY_SANDBOX_DIR": str(server_dir)},
        tmp_path / "server.log",
    )
    procs = [server]
    try:
        _wait(lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 200, 60, "the server")
        creds = tmp_path / "server" / "credentials"
        key = _wait(lambda: creds.exists() and json.loads(creds.read_text()).get("api_key"), 30, "a key")
        client = httpx.Client(
            base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {key}"}, timeout=60
        )

        def start_agent() -> subprocess.Popen[bytes]:
            agent = _spawn(
                ["agent", "--server", url, "--token", key, "--name", "sandbox-1", "--role", "sandbox"],
                base_env | {"ARGOSY_HOME": str(tmp_path / "agent"), "ARGOSY_SANDBOX_DIR": str(agent_dir)},
                tmp_path / "agent.log",
            )
            procs.append(agent)
            return agent

        yield {"client": client, "start_agent": start_agent, "tmp": tmp_path, "url": url}
        client.close()
    finally:
        for p in reversed(procs):
            _stop(p)
        shutil.rmtree(server_dir, ignore_errors=True)
        shutil.rmtree(agent_dir, ignore_errors=True)


def _sse(client: httpx.Client, body: dict[str, Any], on_event: Any = None) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    name = ""
    with client.stream("POST", "/sandbox/execute", params={"stream": "true"}, json=body, timeout=60) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
                if on_event is not None:
                    on_event(name)
    return events


def test_runs_go_through_the_sandbox_agent(cluster: dict[str, Any]) -> None:
    client: httpx.Client = cluster["client"]
    body = {"code": "print(6*7)", "language": "python"}

    # No agent yet: the server runs it on its own machine, and says so.
    r = client.post("/sandbox/execute", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["stdout"] == "42\n" and r.json()["node"] is None
    assert "server's own machine" in client.get("/sandbox/doctor").json()["runs_on"]

    agent = cluster["start_agent"]()
    node = _wait(
        lambda: next((n for n in client.get("/nodes").json() if n["name"] == "sandbox-1"), None),
        60,
        "the node",
    )
    assert node["resources"]["roles"] == ["sandbox"]
    doc = _wait(
        lambda: (d := client.get("/sandbox/doctor").json()) and node["id"] in d["nodes"] and d,
        30,
        "the service",
    )
    assert node["id"] in doc["runs_on"] and doc["nodes"][node["id"]]["agent"]["max_concurrent"] >= 1

    # One-shot, plain and streamed: run by the agent, which stamps its node id.
    r = client.post("/sandbox/execute", json=body)
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["stdout"] == "42\n" and res["node"] == node["id"]
    events = _sse(client, {"code": "print('a', flush=True)\nprint('b')", "language": "python"})
    assert [n for n, _ in events][-1] == "result"
    assert "".join(d["text"] for n, d in events if n == "stdout") == "a\nb\n"
    assert events[-1][1]["node"] == node["id"]

    # A session sticks to the agent's node: state and files persist between calls.
    sid = client.post("/sandboxes", json={"ttl_s": 120}).json()["id"]
    assert client.put(f"/sandboxes/{sid}/files/in.txt", content=b"hello").status_code == 200
    r = client.post(
        f"/sandboxes/{sid}/exec",
        json={"code": "open('out.txt','w').write(open('in.txt').read().upper())"},
    )
    assert r.status_code == 200 and r.json()["node"] == node["id"], r.text
    assert client.get(f"/sandboxes/{sid}/files/out.txt").content == b"HELLO"
    assert sid in [s["id"] for s in client.get("/sandboxes").json()]
    assert client.delete(f"/sandboxes/{sid}").status_code == 200
    assert client.get(f"/sandboxes/{sid}").status_code == 404

    # The runs are in the server's store, with the node that ran them.
    runs = client.get("/sandbox/runs").json()
    by_id = {x["id"]: x for x in runs}
    assert by_id[res["run_id"]]["node"] == node["id"]
    assert by_id[res["run_id"]]["limits"]["cpu_count"] > 0
    assert sum(1 for x in runs if x["node"] is None) == 1  # the one before the agent came

    # The CLI, as a user runs it against this server.
    env = {"ARGOSY_HOME": str(cluster["tmp"] / "server")}
    out = run_cli("sandbox", "ls", "--runs", "-o", "json", env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert res["run_id"] in [x["id"] for x in json.loads(out.stdout)]
    out = run_cli("sandbox", "doctor", "--server", env=env, timeout=120)
    assert out.returncode == 0 and node["id"] in out.stdout, out.stdout + out.stderr
    out = run_cli("run", "-c", "print('via cli')", "-o", "json", env=env, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout)["node"] == node["id"], out.stderr

    # Kill the agent in the middle of a run: the request ends with a clear error, no hang.
    started = threading.Event()

    def kill_when_started(name: str) -> None:
        if name == "stdout" and not started.is_set():
            started.set()
            agent.send_signal(signal.SIGKILL)

    events = _sse(
        client,
        {
            "code": "import time\nprint('x', flush=True)\ntime.sleep(30)",
            "language": "python",
            "timeout_ms": 40000,
        },
        kill_when_started,
    )
    assert started.is_set()
    name, err = events[-1]
    assert name == "error" and err["status"] == 502 and node["id"] in err["message"], events
    agent.wait(10)

    # Next request: the dead node is named, with what to do; still no hang.
    r = client.post("/sandbox/execute", json=body, timeout=30)
    assert r.status_code == 503, r.text
    assert node["id"] in r.json()["message"] and r.json()["fix"]
