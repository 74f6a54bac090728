"""The training runner as a real process on the tiny local model: LoRA and full fine-tunes, kill -9 and
resume, SIGTERM, bad input, a disk that fills while saving, and the emissions record.

Each test starts `python -m argosy.train.runner spec.json` exactly as the node agent does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from argosy.train.carbon import EMISSION_FIELDS
from argosy.train.progress import read_events
from argosy.train.runner import list_checkpoints
from tests.conftest import TEST_CACHE

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "peft")),
    reason="needs the train extra: pip install -e '.[train]'",
)

STEP_FIELDS = {
    "type",
    "ts",
    "step",
    "total_steps",
    "epoch",
    "loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "eta_s",
    "energy_kwh",
    "co2_kg",
}


@pytest.fixture(scope="module")
def tiny() -> Path:
    """The tiny model, made once and cached outside the tree (deterministic for its seed)."""
    from argosy.serve.tinymodel import make_tiny_model

    return make_tiny_model(TEST_CACHE / "models" / "tiny-train-llama-s0", seed=0, exist_ok=True).path


def pattern_dataset(path: Path, rows: int = 64) -> Path:
    """A repetitive completion dataset a 4M-parameter model learns in a few dozen steps."""
    colours = ["red", "green", "blue", "gold"]
    lines = [
        json.dumps(
            {"prompt": f"Colour {i % 4}:", "completion": f" {colours[i % 4]} {colours[i % 4]} and done"}
        )
        for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def chat_dataset(path: Path, rows: int = 32) -> Path:
    """Chat rows: rendered with the model's chat template, loss on the assistant turns only."""
    lines = []
    for i in range(rows):
        msgs = [
            {"role": "system", "content": "Answer with a colour."},
            {"role": "user", "content": f"Which colour is {i % 4}?"},
            {"role": "assistant", "content": ["red", "green", "blue", "gold"][i % 4]},
        ]
        lines.append(json.dumps({"messages": msgs}))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_spec(tmp: Path, tiny: Path, chat: bool = False, **over: Any) -> Path:
    make = chat_dataset if chat else pattern_dataset
    spec = {
        "job_id": f"job-{uuid.uuid4().hex[:8]}",
        "base_model": str(tiny),
        "dataset": str(make(tmp / "data.jsonl")),
        "output_dir": str(tmp / "job"),
        "max_steps": 6,
        "lr": 5e-3,
        "batch_size": 8,
        "save_every": 1000,
        "val_fraction": 0.0,
        "max_seq_len": 64,
        # One intra-op thread: on this shared 2-core machine two OpenMP threads spin against other
        # processes and a step takes ~8x longer (measured); the tiny model gains nothing from two.
        "extra": {"threads": 1},
        **over,
    }
    path = tmp / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def run(spec: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "argosy.train.runner", str(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start(spec: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "argosy.train.runner", str(spec)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def events(job: Path) -> list[dict[str, Any]]:
    return read_events(job / "progress.jsonl")[0]


def wait_for(proc: subprocess.Popen[str], job: Path, pred: Any, timeout: float = 180) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        evs = events(job)
        if pred(evs):
            return evs
        if proc.poll() is not None:
            raise AssertionError(
                f"runner exited {proc.returncode} early: {proc.stderr.read() if proc.stderr else ''}"
            )
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"timed out; events so far: {events(job)}")


def test_lora_fine_tune_learns_and_saves_a_loadable_adapter(tmp_path: Path, tiny: Path) -> None:
    spec = write_spec(tmp_path, tiny, max_steps=24, val_fraction=0.1, eval_every=12, save_every=10)
    res = run(spec)
    assert res.returncode == 0, res.stderr
    job = tmp_path / "job"
    evs = events(job)
    assert evs[0]["type"] == "start" and evs[0]["resumed_from_step"] is None
    assert evs[0]["total_steps"] == 24 and evs[0]["device"] == "cpu" and evs[0]["backend"] == "hf"
    steps = [e for e in evs if e["type"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 25))
    assert all(set(e) == STEP_FIELDS for e in steps)
    first = sum(e["loss"] for e in steps[:3]) / 3
    last = sum(e["loss"] for e in steps[-3:]) / 3
    assert last < first - 1.0, (first, last)
    assert [e["step"] for e in evs if e["type"] == "eval"] == [12, 24]
    assert [e["step"] for e in evs if e["type"] == "checkpoint"] == [10, 20]
    assert sorted(p.name for p in (job / "checkpoints").iterdir()) == ["checkpoint-10", "checkpoint-20"]
    assert [e["type"] for e in evs[-2:]] == ["saving", "done"]
    done = evs[-1]
    assert done["kind"] == "adapter" and done["steps"] == 24 and done["tokens"] > 0
    out = Path(done["output"])
    assert out == (job / "output").resolve()
    assert {"adapter_config.json", "adapter_model.safetensors", "argosy_train.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not list(job.glob("output.tmp-*"))

    # The adapter loads with PEFT onto the base model and changes its output.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, out)
        after = tuned(input_ids=ids).logits
    assert not torch.allclose(before, after)

    # (g) emissions: the documented fields, honest about how they were obtained.
    em = json.loads((job / "emissions.json").read_text())
    assert set(EMISSION_FIELDS) <= set(em)
    assert em["energy_kwh"] > 0 and em["co2_kg"] > 0 and em["duration_s"] > 0
    assert abs(em["energy_kwh"] - (em["cpu_kwh"] + em["gpu_kwh"] + em["ram_kwh"])) < 1e-12
    assert em["method"] in ("codecarbon", "estimate") and isinstance(em["measured"], bool)
    if not Path("/sys/class/powercap/intel-rapl").exists():
        assert em["measured"] is False and any("RAPL" in n or "estimate" in n for n in em["notes"])
    record = json.loads((out / "argosy_train.json").read_text())
    assert record["emissions"]["energy_kwh"] > 0 and record["spec"]["max_steps"] == 24
    assert record["metrics"]["eval_loss"] is not None


def test_kill_9_then_rerun_resumes_from_the_checkpoint(tmp_path: Path, tiny: Path) -> None:
    spec = write_spec(tmp_path, tiny, max_steps=10, save_every=3)
    job = tmp_path / "job"
    proc = start(spec)
    # Kill after checkpoint 3 and at least one more step, so there is work to lose.
    wait_for(proc, job, lambda evs: any(e["type"] == "step" and e["step"] >= 4 for e in evs))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = events(job)
    # The newest complete checkpoint on disk (the kill can land between a rename and its event).
    saved = list_checkpoints(job / "checkpoints")[-1][0]
    assert saved >= 3 and any(e["type"] == "checkpoint" for e in before)

    res = run(spec)
    assert res.returncode == 0, res.stderr
    after = events(job)[len(before) :]
    assert after[0]["type"] == "start" and after[0]["resumed_from_step"] == saved
    assert [e["step"] for e in after if e["type"] == "step"] == list(range(saved + 1, 11))
    assert after[-1]["type"] == "done" and after[-1]["steps"] == 10
    assert len(list((job / "checkpoints").iterdir())) <= 2

    # Running it again after success changes nothing and re-announces the result.
    again = run(spec)
    assert again.returncode == 0 and events(job)[-1]["type"] == "done"


def test_sigterm_checkpoints_and_exits_143(tmp_path: Path, tiny: Path) -> None:
    spec = write_spec(tmp_path, tiny, chat=True, max_steps=500)  # chat rows through the real runner
    job = tmp_path / "job"
    proc = start(spec)
    wait_for(proc, job, lambda evs: any(e["type"] == "step" for e in evs))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    evs = events(job)
    stopped = evs[-1]
    assert stopped["type"] == "stopped"
    ck = [e for e in evs if e["type"] == "checkpoint"]
    assert ck and ck[-1]["step"] == stopped["step"]
    assert (job / "checkpoints" / f"checkpoint-{stopped['step']}" / "state.json").is_file()
    assert not (job / "output").exists()


def test_bad_dataset_is_exit_2_naming_line_and_field(tmp_path: Path, tiny: Path) -> None:
    spec = write_spec(tmp_path, tiny)
    bad = tmp_path / "data.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": 7}\n')
    res = run(spec)
    assert res.returncode == 2
    err = events(tmp_path / "job")[-1]
    assert err["type"] == "error" and err["code"] == "bad_input"
    assert "line 2" in err["message"] and "completion" in err["message"] and err["fix"]


def test_unknown_base_model_is_exit_2_naming_it(tmp_path: Path, tiny: Path) -> None:
    spec = write_spec(tmp_path, tiny, base_model=str(tmp_path / "no-such-model"))
    res = run(spec)
    assert res.returncode == 2
    err = events(tmp_path / "job")[-1]
    assert err["code"] == "bad_input" and "no-such-model" in err["message"] and err["fix"]


def test_unknown_spec_key_is_exit_2_with_the_nearest_key(tmp_path: Path, tiny: Path) -> None:
    spec = write_spec(tmp_path, tiny, lora_rank=16)
    res = run(spec)
    assert res.returncode == 2 and "lora_rank" in res.stderr and "lora_r" in res.stderr


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A real 3 MB filesystem: the full model (~19 MB) cannot be saved on it."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_while_saving_is_exit_3_and_leaves_no_output(
    tmp_path: Path, tiny: Path, small_disk: Path
) -> None:
    spec = write_spec(tmp_path, tiny, method="full", lr=1e-4, max_steps=2, output_dir=str(small_disk / "job"))
    res = run(spec)
    assert res.returncode == 3, res.stderr
    job = small_disk / "job"
    err = events(job)[-1]
    assert err["type"] == "error" and err["code"] == "disk_full" and err["fix"]
    assert "disk filled while saving" in err["message"]
    assert not (job / "output").exists() and not list(job.glob("output.tmp-*"))


def test_full_fine_tune_writes_a_model_dir(tmp_path: Path, tiny: Path) -> None:
    spec = write_spec(tmp_path, tiny, method="full", lr=1e-4, max_steps=3)
    res = run(spec)
    assert res.returncode == 0, res.stderr
    done = events(tmp_path / "job")[-1]
    assert done["type"] == "done" and done["kind"] == "merged"
    out = Path(done["output"])
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()

    import torch
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    tuned = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not torch.equal(base.model.layers[0].mlp.up_proj.weight, tuned.model.layers[0].mlp.up_proj.weight)
