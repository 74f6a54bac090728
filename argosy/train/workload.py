"""Node side of a training job: what the agent starts for a workload of kind "train".

The server sends the job's TrainSpec; the agent writes it into the job's work dir and runs the
trainer (`python -m argosy.train.runner spec.json`) to completion. The runner's progress.jsonl in
the same dir is what the agent tails into heartbeats.
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


def prepare_train(workload: dict[str, Any], progress: Callable[[str], None]) -> Launch:
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
