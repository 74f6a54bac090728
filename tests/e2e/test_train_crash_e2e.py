"""A crash mid-job loses at most the steps since the last checkpoint: real server, agent and runner.

Each test submits `argosy train ./tiny --dataset D --max-steps N --save-every K`, waits until the
server has recorded a checkpoint, SIGKILLs part of the system, and checks that the job still
succeeds, that no step before the last checkpoint is trained again, that the model is registered
once, and that every process it saw is gone afterwards:

- the server alone: the local agent runs in its own session, so it and its runner keep going and
  reconnect when the server is back (nothing is lost, the runner never restarts);
- the agent alone: its runner gets SIGTERM (PDEATHSIG), checkpoints and exits; the server sees the
  agent is gone, starts a new one, and the job resumes from that checkpoint;
- server, agent and runner together (a machine losing power, the disk kept): the restarted server
  finds the agent gone, starts a new one, and the runner resumes from its newest checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from argosy.core import proc
from argosy.core.host import free_port
from argosy.train.progress import read_events
from tests.e2e.helpers import cli_json, run_cli, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

STEPS, SAVE_EVERY = 150, 10


@pytest.fixture
def env(home: Path) -> Iterator[dict[str, str]]:
    e = {"ARGOSY_SERVER_PORT": str(free_port())}
    yield e
    run_cli("server", "stop", env=e, timeout=60)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny"
    res = run_cli("model", "make-tiny", str(path), timeout=300)
    assert res.returncode == 0, res.stderr
    return path


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    return wait_for(predicate, timeout, what, interval=0.3)


class Run:
    """One job on a real local server, and every process seen working for it."""

    def __init__(self, env: dict[str, str], home: Path, tiny: Path, tmp: Path) -> None:
        self.env, self.home = env, home
        self.seen: set[int] = set()
        self.agents: set[int] = set()  # every local agent seen (the server starts a new one)
        data = tmp / "colours.jsonl"
        colours = ["red", "green", "blue", "gold"]
        data.write_text(
            "".join(
                json.dumps({"prompt": f"Colour {i % 4}:", "completion": f" {colours[i % 4]} and done"}) + "\n"
                for i in range(64)
            )
        )
        assert run_cli("server", "start", env=env, timeout=120).returncode == 0
        job = cli_json(
            "train", str(tiny), "--dataset", str(data), "--max-steps", str(STEPS),
            "--save-every", str(SAVE_EVERY), "--batch-size", "8", "--name", "crash-tune", env=env,
        )  # fmt: skip
        self.id = str(job["id"])
        self.progress_path = Path(str(job["output_dir"])) / "progress.jsonl"

    def show(self) -> dict[str, Any]:
        return dict(cli_json("train", "show", self.id, env=self.env))

    def server_pid(self) -> int | None:
        try:
            return int(json.loads((self.home / "run" / "server.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def agent_pid(self) -> int | None:
        pid = proc.read_pidfile(self.home / "run" / "agent-local.pid")
        return pid if proc.alive(pid) else None

    def runner_pids(self) -> list[int]:
        spec = str(self.progress_path.parent / "spec.json")
        out = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = p.info["cmdline"] or []
            if "argosy.train.runner" in cmd and spec in cmd:
                out.append(int(p.info["pid"]))
        return out

    def note_pids(self) -> None:
        agent = self.agent_pid()
        self.agents.update([agent] if agent else [])
        self.seen.update(p for p in (self.server_pid(), agent, *self.runner_pids()) if p)

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in read_events(self.progress_path)[0] if e["type"] == kind]

    def wait_checkpoint(self) -> int:
        """Until the server has recorded a checkpoint (and the run is still far from its end)."""

        def recorded() -> int | None:
            self.note_pids()
            return self.show()["progress"]["checkpoint"]

        step = int(_wait(recorded, 240, "a checkpoint event on the server"))
        last = self.events("step")[-1]["step"]
        assert last < STEPS, f"the run finished ({last} steps) before the crash; raise STEPS"
        return step

    def restart_server(self) -> None:
        res = run_cli("server", "start", env=self.env, timeout=120)
        assert res.returncode == 0, res.stderr
        self.note_pids()

    def finish(self) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            self.note_pids()
            job = self.show()
            return job if job["state"] in ("succeeded", "failed", "cancelled") else None

        job = _wait(ended, 300, "the job to end")
        assert job["state"] == "succeeded", job["reason"]
        assert job["model"] is not None and job["model"]["kind"] == "adapter"
        [done] = self.events("done")  # one run reached the end, once
        assert done["steps"] == STEPS
        return job

    def stop_and_check_gone(self) -> None:
        assert run_cli("server", "stop", env=self.env, timeout=60).returncode == 0
        _wait(lambda: not any(proc.alive(p) for p in self.seen), 30, f"processes {sorted(self.seen)} to exit")
        assert not self.runner_pids()


def _kill(pid: int | None, what: str) -> None:
    assert pid is not None and proc.alive(pid), f"no live {what} to kill"
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: not proc.alive(pid), 10, f"the {what} (pid {pid}) to die")


def _registered_once(run: Run) -> None:
    shown = run.show()
    succeeded = [e for e in shown["events"] if e["to"] == "succeeded" and e["from"] != e["to"]]
    assert len(succeeded) == 1, shown["events"]
    with sqlite3.connect(run.home / "argosy.db") as db:  # the store's own rows, read-only here
        rows = db.execute("SELECT name FROM registered_models WHERE job_id = ?", (run.id,)).fetchall()
    assert rows == [("crash-tune",)]


def test_server_sigkill_mid_job(env: dict[str, str], home: Path, tiny: Path, tmp_path: Path) -> None:
    run = Run(env, home, tiny, tmp_path)
    run.wait_checkpoint()
    agent, runners = run.agent_pid(), run.runner_pids()
    assert agent and len(runners) == 1
    _kill(run.server_pid(), "server")
    time.sleep(2)
    # The agent runs in its own session, not tied to the server: it and its runner carry on.
    assert proc.alive(agent) and proc.alive(runners[0])
    run.restart_server()
    run.finish()
    [start] = run.events("start")  # never restarted, so nothing was trained twice
    assert start["resumed_from_step"] is None
    assert [e["step"] for e in run.events("step")] == list(range(1, STEPS + 1))
    assert run.show()["crashes"] == 0
    _registered_once(run)
    run.stop_and_check_gone()


def test_agent_sigkill_mid_job(env: dict[str, str], home: Path, tiny: Path, tmp_path: Path) -> None:
    run = Run(env, home, tiny, tmp_path)
    run.wait_checkpoint()
    agent = run.agent_pid()
    [runner] = run.runner_pids()
    _kill(agent, "agent")
    # PDEATHSIG: the runner is told to stop, checkpoints at its next step boundary and exits.
    _wait(lambda: not proc.alive(runner), 30, "the runner to stop with its agent")
    stopped = run.events("stopped")[-1]["step"]
    assert run.events("checkpoint")[-1]["step"] == stopped
    _wait(lambda: run.agent_pid() not in (None, agent), 60, "the server to start a new agent")
    run.finish()
    starts = run.events("start")
    assert len(starts) == 2 and starts[1]["resumed_from_step"] == stopped
    assert min(e["step"] for e in run.events("step")[stopped:]) == stopped + 1  # nothing redone
    _registered_once(run)
    run.stop_and_check_gone()


def test_server_agent_and_runner_sigkill_mid_job(
    env: dict[str, str], home: Path, tiny: Path, tmp_path: Path
) -> None:
    run = Run(env, home, tiny, tmp_path)
    run.wait_checkpoint()
    agent = run.agent_pid()
    [runner] = run.runner_pids()
    # Server first (so no one hears of the runner's end), then the runner before its agent (whose
    # death would SIGTERM it into a tidy checkpoint): nothing gets to save anything.
    for pid, what in ((run.server_pid(), "server"), (runner, "runner"), (agent, "agent")):
        _kill(pid, what)
    last_ck = run.events("checkpoint")[-1]["step"]  # what is on disk
    last_step = run.events("step")[-1]["step"]
    run.restart_server()
    run.finish()
    starts = run.events("start")
    assert len(starts) == 2 and starts[1]["resumed_from_step"] == last_ck
    assert last_step - last_ck < SAVE_EVERY  # lost: at most the steps since the last checkpoint
    assert run.agents - {agent}, "the restarted server never started a new agent"
    _registered_once(run)
    run.stop_and_check_gone()
