"""The HTTP API over a real LocalRunner: execute, sessions, files, 429 and queueing, the reaper."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from argosy.core.clock import FakeClock
from argosy.sandbox.service import LocalRunner, wait_for
from argosy.server.routes_sandbox import install, router

from .conftest import BWRAP, fresh_config

pytestmark = pytest.mark.skipif(BWRAP is None, reason="bubblewrap not installed")


def make(**cfg: Any) -> tuple[TestClient, LocalRunner, FakeClock]:
    clock = FakeClock()
    runner = LocalRunner(fresh_config(**cfg), clock=clock)
    app = FastAPI()
    app.include_router(router)
    install(app, runner)
    return TestClient(app), runner, clock


@pytest.fixture
def api() -> Iterator[tuple[TestClient, LocalRunner, FakeClock]]:
    client, runner, clock = make(max_concurrent=1, max_queue=0)
    yield client, runner, clock
    runner.close()
    shutil.rmtree(runner.config.base_dir, ignore_errors=True)


def test_execute(api: tuple[TestClient, LocalRunner, FakeClock]) -> None:
    client, _, _ = api
    r = client.post("/api/v1/sandbox/execute", json={"code": "print(6*7)", "language": "python"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stdout"] == "42\n" and body["exit_code"] == 0
    assert set(body) >= {
        "stdout",
        "stderr",
        "exit_code",
        "signal",
        "timed_out",
        "oom_killed",
        "truncated",
        "duration_ms",
        "run_id",
    }


def test_errors_are_for_people(api: tuple[TestClient, LocalRunner, FakeClock]) -> None:
    client, _, _ = api
    r = client.post("/api/v1/sandbox/execute", json={"code": "1", "language": "pyton"})
    assert r.status_code == 404 and "python" in r.json()["message"] and r.json()["fix"]
    r = client.post("/api/v1/sandbox/execute", json={"code": "1", "timeout_ms": 10**9})
    assert r.status_code == 400 and "cap" in r.json()["message"]
    r = client.post("/api/v1/sandbox/execute", json={"code": "1", "colour": "red"})
    assert r.status_code == 422


def test_429_when_the_queue_is_full(api: tuple[TestClient, LocalRunner, FakeClock]) -> None:
    client, runner, _ = api
    first: dict[str, Any] = {}
    t = threading.Thread(
        target=lambda: first.update(
            client.post("/api/v1/sandbox/execute", json={"code": "import time; time.sleep(3)"}).json()
        )
    )
    t.start()
    assert wait_for(lambda: runner.admission.active == 1, 10)
    r = client.post("/api/v1/sandbox/execute", json={"code": "print(1)"})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert "busy" in r.json()["message"]
    t.join()
    assert first["exit_code"] == 0


def test_requests_queue_below_the_cap() -> None:
    client, runner, _ = make(max_concurrent=1, max_queue=4)
    try:
        results: list[int] = []
        threads = [
            threading.Thread(
                target=lambda: results.append(
                    client.post("/api/v1/sandbox/execute", json={"code": "print(1)"}).status_code
                )
            )
            for _ in range(3)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert results == [200, 200, 200]
    finally:
        runner.close()
        shutil.rmtree(runner.config.base_dir, ignore_errors=True)


def test_sessions_keep_state_and_files(api: tuple[TestClient, LocalRunner, FakeClock]) -> None:
    client, _, _ = api
    r = client.post("/api/v1/sandboxes", json={"ttl_s": 120})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert client.put(f"/api/v1/sandboxes/{sid}/files/data/in.txt", content=b"21").status_code == 200
    r = client.post(
        f"/api/v1/sandboxes/{sid}/exec",
        json={"code": "open('out.txt','w').write(str(int(open('data/in.txt').read())*2))"},
    )
    assert r.json()["exit_code"] == 0, r.json()
    r = client.post(f"/api/v1/sandboxes/{sid}/exec", json={"command": ["cat", "out.txt"]})
    assert r.json()["stdout"] == "42"
    assert client.get(f"/api/v1/sandboxes/{sid}/files/out.txt").content == b"42"
    assert [s["id"] for s in client.get("/api/v1/sandboxes").json()] == [sid]
    assert client.get(f"/api/v1/sandboxes/{sid}").json()["files"] == 3  # with main.py, the code cell
    assert client.delete(f"/api/v1/sandboxes/{sid}").status_code == 200
    r = client.post(f"/api/v1/sandboxes/{sid}/exec", json={"command": ["true"]})
    assert r.status_code == 404 and r.json()["fix"]


def test_reaper_removes_expired_sessions(api: tuple[TestClient, LocalRunner, FakeClock]) -> None:
    client, runner, clock = api
    keep = client.post("/api/v1/sandboxes", json={"ttl_s": 600}).json()["id"]
    gone = client.post("/api/v1/sandboxes", json={"ttl_s": 60}).json()["id"]
    clock.advance(61)
    reaped = runner.reap()
    assert reaped["sessions"] == [gone]
    assert client.get(f"/api/v1/sandboxes/{gone}").status_code == 404
    assert client.get(f"/api/v1/sandboxes/{keep}").status_code == 200
    clock.advance(600)
    assert runner.reap()["sessions"] == [keep]


def test_reaper_kills_runs_past_their_lifetime(api: tuple[TestClient, LocalRunner, FakeClock]) -> None:
    client, runner, clock = api
    out: dict[str, Any] = {}
    t = threading.Thread(
        target=lambda: out.update(
            client.post(
                "/api/v1/sandbox/execute",
                json={"code": "import time; print('up', flush=True); time.sleep(50)", "timeout_ms": 60000},
            ).json()
        )
    )
    t.start()
    assert wait_for(lambda: bool(runner._active), 10)
    assert runner.reap()["runs"] == []  # not yet past its lifetime
    clock.advance(63)
    assert len(runner.reap()["runs"]) == 1
    t.join()
    assert out["timed_out"] and out["signal"] == 9


def test_session_ttl_cap(api: tuple[TestClient, LocalRunner, FakeClock]) -> None:
    client, _, _ = api
    r = client.post("/api/v1/sandboxes", json={"ttl_s": 10**9})
    assert r.status_code == 400 and "ttl_s" in r.json()["message"]


def test_doctor(api: tuple[TestClient, LocalRunner, FakeClock]) -> None:
    client, _, _ = api
    body = client.get("/api/v1/sandbox/doctor").json()
    assert body["backends"]["namespaces"]["available"]
    microvm = body["backends"]["microvm"]
    # Available only after `argosy sandbox build-image` recorded a boot on this machine; either way it says why.
    assert microvm["available"] or microvm["reason"]
    assert body["languages"]["python"]["available"]


def test_execute_streams_server_sent_events(api: tuple[TestClient, LocalRunner, FakeClock]) -> None:
    client, _, _ = api
    code = "import sys, time\nprint('one', flush=True)\nprint('oops', file=sys.stderr, flush=True)\ntime.sleep(0.2)\nprint('two')"
    with client.stream("POST", "/api/v1/sandbox/execute?stream=true", json={"code": code}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    events = [(lines[i][7:], json.loads(lines[i + 1][6:])) for i in range(0, len(lines), 2)]
    names = [e for e, _ in events]
    assert names[-1] == "result" and events[-1][1]["stdout"] == "one\ntwo\n"
    assert "".join(d["text"] for e, d in events if e == "stdout") == "one\ntwo\n"
    assert "".join(d["text"] for e, d in events if e == "stderr") == "oops\n"
    assert names.index("stdout") < names.index("result")


def test_streamed_errors_end_the_stream(api: tuple[TestClient, LocalRunner, FakeClock]) -> None:
    client, _, _ = api
    with client.stream(
        "POST", "/api/v1/sandbox/execute?stream=true", json={"code": "1", "language": "cobol"}
    ) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[0] == "event: error"
    body = json.loads(lines[1][6:])
    assert body["status"] == 404 and body["fix"]


def test_remote_runner_speaks_the_api(api: tuple[TestClient, LocalRunner, FakeClock]) -> None:
    from argosy.cli.sandbox_remote import RemoteRunner
    from argosy.client import ArgosyClient
    from argosy.sandbox.models import ExecRequest, SessionCreate, SessionExec

    client, _, _ = api
    sdk = ArgosyClient("http://testserver", None)
    sdk._http = client  # the TestClient is an httpx.Client bound to the app
    remote = RemoteRunner(sdk)
    assert remote.execute(ExecRequest(code="print(2)")).stdout == "2\n"
    chunks: list[tuple[str, bytes]] = []
    res = remote.execute(ExecRequest(code="print(3)"), on_output=lambda s, c: chunks.append((s, c)))
    # Chunks arrive as the program writes them (python -u may write "3" and "\n" apart).
    assert (
        res.stdout == "3\n"
        and b"".join(c for _, c in chunks) == b"3\n"
        and {s for s, _ in chunks} == {"stdout"}
    )
    info = remote.create_session(SessionCreate(ttl_s=60))
    remote.put_file(info.id, "a b.txt", b"x")
    assert remote.exec_session(info.id, SessionExec(command=["cat", "a b.txt"])).stdout == "x"
    assert remote.get_file(info.id, "a b.txt") == b"x"
    assert remote.get_session(info.id).files == 1
    remote.delete_session(info.id)
    assert remote.list_sessions() == []
    assert remote.doctor()["backends"]["namespaces"]["available"]


def test_reaper_removes_a_crashed_agents_leftovers(api: tuple[TestClient, LocalRunner, FakeClock]) -> None:
    import subprocess

    from argosy.sandbox import cgroups

    _, runner, _ = api
    backend = runner.backend
    backend.ensure_base()
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = backend.runs_dir / "sbx_left0ver"
    left.mkdir()
    (left / "owner").write_text(str(dead.pid))
    (left / "work").mkdir()
    mine = backend.runs_dir / "sbx_stillmine"
    mine.mkdir()
    backend.claim(mine)
    group = None
    if backend.cgroups.version != "none":
        group = cgroups.RunCgroup(backend.cgroups, f"{backend.tag}-sbx_gone0run")
        group.create(runner.table.limits(runner.table.get("python"), {}))
    stale = runner.reap()["stale"]
    assert "sbx_left0ver" in stale and not left.exists()
    assert mine.exists()
    if group is not None:
        assert not any(d.exists() for d in group.dirs.values())
