"""End to end as a new user: a real server, the local agent, the real trainer and llama-server.

make a tiny model -> `argosy dataset upload` -> `argosy train ./tiny --dataset D --max-steps N --wait`
-> `argosy train report` -> `argosy deploy <job>` (base GGUF + LoRA adapter GGUF) -> one chat
completion through the router -> destroy; every process it started is gone afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from argosy.core import proc
from argosy.core.host import free_port
from tests.e2e.helpers import cli_json, run_cli, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


@pytest.fixture
def env(home: Path) -> Iterator[dict[str, str]]:
    e = {"ARGOSY_SERVER_PORT": str(free_port())}
    yield e
    run_cli("destroy", "--all", env=e, timeout=120)
    run_cli("server", "stop", env=e, timeout=60)


def _dataset(path: Path, rows: int = 64) -> Path:
    colours = ["red", "green", "blue", "gold"]
    path.write_text(
        "".join(
            json.dumps(
                {"prompt": f"Colour {i % 4}:", "completion": f" {colours[i % 4]} {colours[i % 4]} and done"}
            )
            + "\n"
            for i in range(rows)
        )
    )
    return path


def test_upload_train_report_deploy_chat_destroy(env: dict[str, str], home: Path, tmp_path: Path) -> None:
    tiny = tmp_path / "tiny"
    res = run_cli("model", "make-tiny", str(tiny), timeout=300)
    assert res.returncode == 0, res.stderr

    up = cli_json(
        "dataset", "upload", str(_dataset(tmp_path / "colours.jsonl")), "--name", "colours", env=env
    )
    assert up["rows"] == 64 and up["format"] == "completion"
    assert [d["name"] for d in cli_json("dataset", "ls", env=env)] == ["colours"]
    assert len(cli_json("dataset", "preview", "colours", env=env)["rows"]) == 5

    # Bad input is refused with a fix, and nothing is queued.
    bad = run_cli("train", str(tmp_path / "nope"), "--dataset", "colours", env=env, timeout=120)
    assert bad.returncode == 1 and "unknown base model" in bad.stderr and "fix:" in bad.stderr
    bad = run_cli("train", str(tiny), "--dataset", "nosuchdata", env=env, timeout=120)
    assert bad.returncode == 1 and "not found" in bad.stderr and "argosy dataset upload" in bad.stderr

    res = run_cli(
        "train", str(tiny), "--dataset", "colours", "--max-steps", "16", "--save-every", "5",
        "--batch-size", "8", "--name", "colours-tune", "--wait", env=env, timeout=1200,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "succeeded" in res.stderr and "argosy deploy colours-tune" in res.stderr
    [job] = cli_json("train", "ls", env=env)
    assert job["state"] == "succeeded" and job["model"]["kind"] == "adapter"
    assert job["progress"]["step"] == 16
    shown = cli_json("train", "show", job["id"], env=env)
    losses = [m["loss"] for m in shown["metrics"] if m["loss"] is not None]
    assert len(losses) >= 8 and losses[-1] < losses[0]  # it learned
    moves = [e for e in shown["events"] if e["from"] != e["to"]]
    states = [e["to"] for e in moves]
    # A placement on the local node may be undone ("node local is terminated; queued again": the
    # known bug in docs/train.md, seen one to two times per run in loaded CI); the job says why and is
    # placed again. Any other way back to the queue is a failure.
    requeues = [e for e in moves if e["from"] == "placing" and e["to"] == "queued"]
    assert all("is terminated; queued again" in e["reason"] for e in requeues), moves
    assert states[:2] == ["queued", "placing"] and "running" in states and states[-1] == "succeeded"

    report = cli_json("train", "report", job["id"], env=env)
    em = report["emissions"]
    assert em["energy_kwh"] > 0 and em["co2_kg"] > 0 and em["equivalents"]
    assert all(q["source"] for q in em["equivalents"])
    assert report["cost"]["seconds"] > 0  # node time in the ledger (at the local price, $0 by default)
    human = run_cli("train", "report", job["id"], env=env, timeout=60)
    assert human.returncode == 0 and "gCO2e" in human.stderr

    res = run_cli("deploy", job["id"], env=env, timeout=2000)
    assert res.returncode == 0, res.stderr
    dep = cli_json("status", "colours-tune", env=env)
    assert dep["ready_replicas"] == 1 and dep["endpoint"]
    from openai import OpenAI

    reply = OpenAI(base_url=dep["endpoint"], api_key="unused").chat.completions.create(
        model="colours-tune", messages=[{"role": "user", "content": "Colour 1:"}], max_tokens=8
    )
    assert reply.choices[0].message.content is not None
    logs = run_cli("logs", "colours-tune", "--tail", "5000", env=env, timeout=60)
    assert "converting adapter output to GGUF: done" in logs.stdout  # served with --lora on the base

    pids = {
        dep["router"]["pid"],
        dep["replicas"][0]["workload"]["pid"],
        proc.read_pidfile(home / "run" / "agent-local.pid"),
    }
    assert run_cli("destroy", "colours-tune", env=env, timeout=180).returncode == 0
    assert run_cli("server", "stop", env=env, timeout=60).returncode == 0
    wait_for(lambda: not any(proc.alive(p) for p in pids if p), 30, "every process to exit")
