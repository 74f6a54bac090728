"""Node side of a training job: what the agent starts for a workload of kind "train".

The server sends the job's TrainSpec; the agent writes it into the job's work dir and runs the
trainer (`python -m argosy.train.runner spec.json`) to completion. The runner's progress.jsonl in
the same dir is what the agent tails into heartbeats.

A workload marked `remote` (its node does not share the server's filesystem) runs in this node's
own ARGOSY_HOME instead, under `argosy.train.remote`, which fetches the inputs, runs the runner and
uploads the output; the local path is untouched by it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from argosy.core.errors import ArgosyError
from argosy.fleet.agent import Launch


def prepare_train(
    workload: dict[str, Any],
    progress: Callable[[str], None],
    home: Path | None = None,
    server_url: str | None = None,
    token: str | None = None,
) -> Launch:
    if workload.get("remote"):
        return _prepare_remote(workload, progress, home, server_url, token)
    spec = workload.get("spec") or {}
    out = spec.get("output_dir")
    if not out:
        raise ArgosyError("the training workload has no output_dir", fix="resubmit the job")
    work = Path(out)
    work.mkdir(parents=True, exist_ok=True)
    path = work / "spec.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)  # the runner re-reads it on every restart: never half-written
    progress(f"starting the trainer for {workload.get('job_id', workload['id'])}")
    return Launch(
        argv=[sys.executable, "-m", "argosy.train.runner", str(path)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        health_url=None,
        progress_path=str(work / "progress.jsonl"),
        cwd=str(work),
    )


def _prepare_remote(
    workload: dict[str, Any],
    progress: Callable[[str], None],
    home: Path | None,
    server_url: str | None,
    token: str | None,
) -> Launch:
    if home is None or not server_url or not token:
        raise ArgosyError(
            "this training job must fetch its inputs from the server, and the agent has no server "
            "URL or token to do it with",
            fix="run the agent as `argosy agent --server URL --token TOKEN`",
        )
    job_id = str(workload.get("job_id") or workload["id"].rsplit(".", 1)[0])
    work = home / "train" / "jobs" / job_id  # this node's own dir; the server's path means nothing here
    work.mkdir(parents=True, exist_ok=True)
    cfg = {
        "server_url": server_url,
        "node_id": workload["node_id"],
        "job_id": job_id,
        "wid": workload["id"],
        "home": str(home),
        "spec": {**(workload.get("spec") or {}), "output_dir": str(work)},
    }
    path = work / "remote.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    progress(f"starting the trainer for {job_id} (inputs fetched from the server, output sent back)")
    return Launch(
        argv=[sys.executable, "-m", "argosy.train.remote", str(path)],
        env={**os.environ, "PYTHONUNBUFFERED": "1", "ARGOSY_AGENT_TOKEN": token},
        health_url=None,
        progress_path=str(work / "progress.jsonl"),
        cwd=str(work),
    )
