"""End to end on this machine: deploy the tiny model locally, stream through the router, survive an
engine crash, destroy, and leave no process or port behind (checked by PID)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from argosy.core import proc
from argosy.core.host import free_port, port_in_use
from tests.e2e.helpers import cli_json, run_cli, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


@pytest.fixture
def env(home: Path) -> Iterator[dict[str, str]]:
    e = {"ARGOSY_SERVER_PORT": str(free_port())}
    yield e
    run_cli("destroy", "--all", env=e, timeout=120)
    run_cli("server", "stop", env=e, timeout=60)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny-llama"
    res = run_cli("model", "make-tiny", str(path), timeout=300)
    assert res.returncode == 0, res.stderr
    assert (path / "config.json").exists()
    return path


def test_deploy_stream_crash_replace_destroy(env: dict[str, str], tiny: Path, home: Path) -> None:
    # The first deploy may build llama-server (cached across runs): hence the long timeout.
    res = run_cli("deploy", str(tiny), "--name", "tiny", env=env, timeout=2000)
    assert res.returncode == 0, res.stderr
    dep = cli_json("status", "tiny", env=env)
    assert dep["ready_replicas"] == 1 and dep["endpoint"]

    from openai import OpenAI

    client = OpenAI(base_url=dep["endpoint"], api_key="unused")
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=16, stream=True
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2  # really streamed, chunk by chunk

    logs = run_cli("logs", "tiny", env=env, timeout=60)
    assert logs.returncode == 0 and "listening on" in logs.stdout  # llama-server's own log, via the agent

    first = dep["replicas"][0]
    engine_pid = first["workload"]["pid"]
    agent_pid = proc.read_pidfile(home / "run" / "agent-local.pid")
    router_pid = dep["router"]["pid"]
    assert proc.alive(engine_pid) and proc.alive(agent_pid) and proc.alive(router_pid)
    seen_pids = {engine_pid, agent_pid, router_pid}
    ports = {dep["router"]["port"], first["workload"]["port"]}

    os.kill(engine_pid, signal.SIGKILL)

    def replaced():  # type: ignore[no-untyped-def]
        d = cli_json("status", "tiny", env=env)
        states = {r["id"]: r for r in d["replicas"]}
        if states[first["id"]]["state"] == "failed" and d["ready_replicas"] == 1 and d["endpoint"]:
            return d
        return None

    after = wait_for(replaced, 120, "the crashed replica to be marked failed and replaced")
    failed = next(r for r in after["replicas"] if r["id"] == first["id"])
    assert "exited" in failed["reason"] and "signal 9" in failed["reason"]
    new = next(r for r in after["replicas"] if r["state"] == "ready")
    seen_pids.add(new["workload"]["pid"])
    ports.add(new["workload"]["port"])
    # The same endpoint keeps answering: the router was given the new replica.
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "again"}], max_tokens=8
    )
    assert reply.choices[0].message.content is not None

    events = cli_json("status", "tiny", env=env)["events"]
    assert any(e["to"] == "failed" for e in events) and any(
        e["reason"] == "replacing a failed replica" for e in events
    )

    res = run_cli("destroy", "tiny", env=env, timeout=180)
    assert res.returncode == 0, res.stderr
    assert cli_json("list", env=env) == []
    wait_for(lambda: not any(proc.alive(p) for p in seen_pids), 30, "every process to exit")
    assert not any(port_in_use("127.0.0.1", p) for p in ports)

    cost = cli_json("cost", env=env)
    assert (
        cost["deployments"][0]["seconds"] > 0
    )  # replica time was recorded (at the local price, $0 by default)


def test_engine_that_fails_to_start_shows_its_last_log_lines(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 16)  # a GGUF header and then garbage
    res = run_cli("deploy", str(bad), "--name", "broken", env=env, timeout=2000)
    assert res.returncode == 1
    assert "failed to start 2 times" in res.stderr
    assert "engine exited with code" in res.stderr
    assert "failed to load model" in res.stderr  # llama-server's own words, from its log
    assert "argosy logs broken" in res.stderr  # the fix line
    res = run_cli("destroy", "broken", env=env, timeout=180)
    assert res.returncode == 0, res.stderr


def test_server_restart_resumes_the_deployment(env: dict[str, str], tiny: Path) -> None:
    assert run_cli("deploy", str(tiny), "--name", "tiny", env=env, timeout=2000).returncode == 0
    before = cli_json("status", "tiny", env=env)
    assert run_cli("server", "stop", env=env, timeout=120).returncode == 0
    assert not proc.alive(before["router"]["pid"])  # the server stopped what it ran on this machine

    # Any command starts the server again; the reconciler brings the deployment back from the store.
    def ready():  # type: ignore[no-untyped-def]
        d = cli_json("status", "tiny", env=env)
        return d if d["ready_replicas"] == 1 and d["endpoint"] else None

    after = wait_for(ready, 180, "the deployment to come back after a server restart")
    assert after["router"]["port"] == before["router"]["port"]  # same endpoint for clients
    from openai import OpenAI

    reply = OpenAI(base_url=after["endpoint"], api_key="x").chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "back?"}], max_tokens=4
    )
    assert reply.choices[0].message.content is not None
    reasons = [e["reason"] for e in after["events"]]
    assert "server shut down; recreated at next start" in reasons


@pytest.fixture
def fallback_engine(tiny: Path, tmp_path: Path) -> Iterator[str]:
    """A second, independent llama-server standing in for a serverless endpoint (the fake provider's URL)."""
    from argosy.core.config import load_settings
    from argosy.serve.engines.base import ServingSpec
    from argosy.serve.engines.registry import get_engine
    from argosy.serve.engines.runtime import wait_ready

    engine = get_engine("llamacpp")
    spec = ServingSpec(model=str(tiny), served_name="tiny", port=free_port())
    cmd = engine.command(spec, engine.prepare(spec, load_settings()))
    p = proc.spawn(list(cmd.argv), tmp_path / "fallback.log", env={**os.environ, **cmd.env})
    try:
        wait_ready(cmd, pid=p.pid, timeout=120, log_path=tmp_path / "fallback.log")
        yield cmd.base_url
    finally:
        proc.stop(p.pid)


def test_fallback_serves_while_the_primary_is_down(
    env: dict[str, str], tiny: Path, tmp_path: Path, fallback_engine: str
) -> None:
    config = tmp_path / "argosy.yaml"
    config.write_text(f"providers:\n  fake:\n    endpoint_url: {fallback_engine}\n")
    env = {**env, "ARGOSY_CONFIG": str(config)}
    res = run_cli(
        "deploy", str(tiny), "--name", "tiny", "--provider", "local", "--fallback", "fake",
        "--fallback-model", "tiny", env=env, timeout=2000,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    dep = cli_json("status", "tiny", env=env)
    assert any("fallback endpoint" in e["reason"] for e in dep["events"])

    from openai import OpenAI

    client = OpenAI(base_url=dep["endpoint"], api_key="unused", max_retries=0)
    # The primary engine dies; the router spills to the fallback tier and the client does not notice.
    os.kill(dep["replicas"][0]["workload"]["pid"], signal.SIGKILL)
    for i in range(5):
        reply = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"still there? {i}"}], max_tokens=4
        )
        assert reply.choices[0].message.content is not None
    served = (tmp_path / "fallback.log").read_text().count("print_timing")
    assert served >= 5  # the fallback engine itself answered them
    assert run_cli("destroy", "tiny", env=env, timeout=180).returncode == 0
    assert cli_json("list", env=env) == []
