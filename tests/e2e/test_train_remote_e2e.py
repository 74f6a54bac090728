"""End to end on a node apart from the server: a real server, a second real agent process with its
OWN ARGOSY_HOME (a directory the server never reads) enrolled by hand as node `remote1`, and
`argosy train ./tiny --dataset D --node remote1 --wait`. The node fetches the dataset and the base
model over its agent API, trains with the real runner, uploads the output; the server registers it
under its own ARGOSY_HOME, and `argosy deploy <job>` serves it and answers a chat completion.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from argosy.core import proc
from argosy.core.host import free_port
from tests.e2e.helpers import cli_json, run_cli, wait_for
from tests.e2e.test_train_e2e import _dataset

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


@pytest.fixture
def env(home: Path) -> Iterator[dict[str, str]]:
    e = {"ARGOSY_SERVER_PORT": str(free_port())}
    yield e
    run_cli("destroy", "--all", env=e, timeout=120)
    run_cli("server", "stop", env=e, timeout=60)


def test_train_on_a_separate_node_ships_inputs_and_output(
    env: dict[str, str], home: Path, tmp_path: Path
) -> None:
    tiny = tmp_path / "tiny"
    assert run_cli("model", "make-tiny", str(tiny), timeout=300).returncode == 0
    up = cli_json(
        "dataset", "upload", str(_dataset(tmp_path / "colours.jsonl")), "--name", "colours", env=env
    )
    creds = json.loads((home / "credentials").read_text())

    node_home = tmp_path / "node-home"  # the node's own state; the server never looks here
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(
        [sys.executable, "-m", "argosy", "agent", "--server", creds["server_url"], "--name", "remote1"],
        env={**os.environ, "ARGOSY_HOME": str(node_home), "ARGOSY_AGENT_TOKEN": creds["api_key"]},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: any(
                n["name"] == "remote1" and n["status"] == "ready"
                for n in cli_json("status", env=env)["nodes"]
            ),
            60,
            "the second agent to register",
        )
        res = run_cli(
            "train", str(tiny), "--dataset", "colours", "--node", "remote1", "--max-steps", "6",
            "--save-every", "3", "--batch-size", "8", "--name", "remote-tune", "--wait", env=env, timeout=1200,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr + (tmp_path / "agent.log").read_text()[-3000:]
        [job] = cli_json("train", "ls", env=env)
        assert job["state"] == "succeeded" and job["remote"] and job["model"]["kind"] == "adapter"
        assert job["progress"]["step"] == 6

        # It ran on the node: inputs cached there by digest, checkpoints and spec there, not here.
        node_job = node_home / "train" / "jobs" / job["id"]
        assert (node_home / "train" / "inputs" / "datasets" / f"{up['digest']}.jsonl").is_file()
        assert len(list((node_home / "train" / "inputs" / "models").iterdir())) == 1
        spec = json.loads((node_job / "spec.json").read_text())
        assert spec["base_model"].startswith(str(node_home)) and spec["dataset"].startswith(str(node_home))
        assert list((node_job / "checkpoints").iterdir())
        server_job = home / "train" / "jobs" / job["id"]
        assert not (server_job / "checkpoints").exists()
        # The output came back and is what the server registered.
        assert Path(job["model"]["path"]) == server_job / "output"
        assert (server_job / "output" / "adapter_model.safetensors").stat().st_size > 0
        receipt = json.loads((server_job / "upload.json").read_text())
        assert receipt["kind"] == "adapter" and receipt["bytes"] > 0
        report = cli_json("train", "report", job["id"], env=env)
        assert report["emissions_source"] == "emissions.json" and report["emissions"]["co2_kg"] > 0

        res = run_cli("deploy", job["id"], env=env, timeout=2000)
        assert res.returncode == 0, res.stderr
        dep = cli_json("status", "remote-tune", env=env)
        from openai import OpenAI

        reply = OpenAI(base_url=dep["endpoint"], api_key="unused").chat.completions.create(
            model="remote-tune", messages=[{"role": "user", "content": "Colour 1:"}], max_tokens=8
        )
        assert reply.choices[0].message.content is not None
        assert run_cli("destroy", "remote-tune", env=env, timeout=180).returncode == 0
    finally:
        proc.stop(agent.pid, timeout=20)
        agent.wait(timeout=10)
        log.close()
    wait_for(lambda: not proc.alive(agent.pid), 30, "the second agent to exit")
