"""Tokens/s of the tiny LoRA fine-tune through Argosy's runner versus transformers + PEFT called directly.

    python bench/train.py [--rounds 3] [--steps 40] [--json out.json]

Same settings on both sides (LoRA r=8/alpha=16/dropout 0.05 on q/k/v/o, batch 8, AdamW lr 5e-3 with
linear warmup/decay, grad clipping 1.0, the same token ids and answer-only labels), each side in a
fresh process (so both pay Python, torch and model loading), rounds alternating so drift on a noisy
machine hits both alike:

- argosy: `python -m argosy.train.runner spec.json` — progress.jsonl per step, an atomic checkpoint
  every 10 steps, CodeCarbon tracking, atomic output. Loop time: the start event to the last step.
- reference: transformers' Trainer on a PEFT model (no checkpoints, no tracking, `report_to=[]`),
  run by this file with `--reference-worker`. Loop time: the `trainer.train()` call.

- argosy job: the same fine-tune as a real job — a real `argosy server` process on a free port with
  its own temporary ARGOSY_HOME (ARGOSY_CACHE_DIR shared, so nothing is rebuilt), the dataset
  uploaded over the API, the job submitted (the same hyper-parameters), placed on the local node
  (whose agent the server starts) and followed until `succeeded`. Loop time: the runner's start
  event to its last step; end to end: submit to succeeded (upload timed apart). Its phases (queue
  and placement, agent and runner start, the loop, save and register) come from the job's own
  events, and `overhead_s` is its end to end minus the direct runner's process time in the same run.

Reports medians of tokens/s (input tokens, padding excluded) over the training loop and end to end
(process start to exit), and argosy / reference ratios. Variants plug in through `VARIANTS`: a
function from a `Setup` and the round number to a `Sample`. Every process a variant starts is
stopped before the run ends (the server by `argosy server stop`, which stops its agent and runners).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from argosy.core.config import load_settings  # noqa: E402
from argosy.train.progress import read_events  # noqa: E402

COLOURS = ["red", "green", "blue", "gold"]


@dataclass(frozen=True)
class Setup:
    """What every variant trains: the same model, data and hyper-parameters."""

    base_model: Path
    dataset: Path
    work: Path  # a scratch dir; each sample uses its own subdir
    steps: int
    batch_size: int = 8
    lr: float = 5e-3
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    max_seq_len: int = 64
    save_every: int = 10
    seed: int = 0
    threads: int = (
        1  # torch intra-op threads, both sides (see docs/performance.md: 2 spin on a busy 2-core box)
    )
    # The job variant's server (one for all rounds, started on first use); bench() sets it.
    job_server: Any = field(default=None, compare=False, repr=False)

    def spec(self, job_id: str, output_dir: Path) -> dict[str, Any]:
        """The TrainSpec (as JSON) the runner is given; a job-machinery variant submits the same."""
        return {
            "job_id": job_id,
            "base_model": str(self.base_model),
            "dataset": str(self.dataset),
            "output_dir": str(output_dir),
            "method": "lora",
            "lora_r": self.lora_r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
            "max_steps": self.steps,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "max_seq_len": self.max_seq_len,
            "save_every": self.save_every,
            "val_fraction": 0.0,
            "seed": self.seed,
            "extra": {"threads": self.threads},
        }


@dataclass(frozen=True)
class Sample:
    tokens: int
    loop_s: float
    total_s: float
    phases: dict[str, float] = field(default_factory=dict)  # seconds, for variants that have them

    @property
    def loop_tps(self) -> float:
        return self.tokens / self.loop_s

    @property
    def total_tps(self) -> float:
        return self.tokens / self.total_s


def make_setup(work: Path, steps: int, threads: int = 1) -> Setup:
    from argosy.serve.tinymodel import make_tiny_model

    cache = load_settings().cache_dir
    tiny = make_tiny_model(cache / "models" / "tiny-train-llama-s0", seed=0, exist_ok=True).path
    data = work / "data.jsonl"
    rows = [
        {"prompt": f"Colour {i % 4}:", "completion": f" {COLOURS[i % 4]} {COLOURS[i % 4]} and done"}
        for i in range(64)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Setup(base_model=tiny, dataset=data, work=work, steps=steps, threads=threads)


# -- variants ---------------------------------------------------------------------------------------


def run_argosy_runner(setup: Setup, n: int) -> Sample:
    out = setup.work / f"argosy-{n}"
    spec_path = setup.work / f"spec-{n}.json"
    spec_path.write_text(json.dumps(setup.spec(f"bench-{n}", out)))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "argosy.train.runner", str(spec_path)], check=True, cwd=ROOT)
    total = time.perf_counter() - t0
    evs = read_events(out / "progress.jsonl")[0]
    start = next(e for e in evs if e["type"] == "start")
    steps = [e for e in evs if e["type"] == "step"]
    done = evs[-1]
    assert done["type"] == "done", done
    return Sample(tokens=int(done["tokens"]), loop_s=steps[-1]["ts"] - start["ts"], total_s=total)


def run_reference(setup: Setup, n: int) -> Sample:
    out = setup.work / f"reference-{n}"
    result = out / "result.json"
    out.mkdir(parents=True)
    plain = {f.name: getattr(setup, f.name) for f in fields(setup) if f.name != "job_server"}
    args = json.dumps({**plain, "out": str(out)}, default=str)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--reference-worker", args], check=True, cwd=ROOT)
    total = time.perf_counter() - t0
    r = json.loads(result.read_text())
    return Sample(tokens=int(r["tokens"]), loop_s=float(r["loop_s"]), total_s=total)


class JobServer:
    """A real `argosy server` on a free port with its own ARGOSY_HOME, started on first use."""

    def __init__(self, work: Path) -> None:
        from argosy.core.host import free_port

        self.home = work / "server-home"
        self.env = {
            **os.environ,
            "ARGOSY_HOME": str(self.home),
            "ARGOSY_CACHE_DIR": str(load_settings().cache_dir),  # llama-server and models shared
            "ARGOSY_SERVER_PORT": str(free_port()),
        }
        for k in ("ARGOSY_SERVER_URL", "ARGOSY_DATABASE_URL", "ARGOSY_CONFIG", "ARGOSY_API_KEY"):
            self.env.pop(k, None)
        self.started = False
        self.client: Any = None

    def _cli(self, *args: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "argosy", *args], check=True, cwd=ROOT, env=self.env, timeout=180
        )

    def ensure(self) -> Any:
        if self.client is None:
            from argosy.client import ArgosyClient
            from argosy.core.credentials import read_credentials

            self.started = True
            self._cli("server", "start")
            creds = read_credentials(self.home / "credentials")
            self.client = ArgosyClient(str(creds["server_url"]), str(creds["api_key"]), timeout=120)
        return self.client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.started:  # stops its routers and the local agent, which stops its runners
            self._cli("server", "stop")


def run_argosy_job(setup: Setup, n: int) -> Sample:
    assert setup.job_server is not None, "the job variant needs Setup.job_server (bench() sets it)"
    client = setup.job_server.ensure()
    t0 = time.time()
    with setup.dataset.open("rb") as f:
        ds = client.request(
            "POST",
            "/train/datasets",
            params={"name": f"bench-{n}"},
            content=f.read(),
            headers={"Content-Type": "application/octet-stream"},
        )
    t_submit = time.time()
    spec = setup.spec("unused", setup.work)
    machine = ("job_id", "base_model", "dataset", "output_dir")
    body = {
        "base_model": str(setup.base_model),
        "dataset": ds["digest"],
        "params": {k: v for k, v in spec.items() if k not in machine},
        "name": f"bench-job-{n}",
        "provider": "local",
    }
    job = client.request("POST", "/train/jobs", json=body)
    t_queued = time.time()
    while job["state"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.1)
        job = client.request("GET", f"/train/jobs/{job['id']}")
    t_end = time.time()
    assert job["state"] == "succeeded", job["reason"]
    evs = read_events(Path(job["output_dir"]) / "progress.jsonl")[0]
    start = next(e for e in evs if e["type"] == "start")
    steps = [e for e in evs if e["type"] == "step"]
    done = evs[-1]
    assert done["type"] == "done", done
    # The job's transitions, by the server's clock (the same machine's clock as the runner's ts).
    at = {e["to"]: e["ts"] for e in job["events"] if e["from"] != e["to"]}
    phases = {
        "upload_s": t_submit - t0,
        "submit_s": t_queued - t_submit,  # the POST: validation, fit check, placement plan, the row
        "queue_and_place_s": at["placing"] - t_queued,  # the reconciler takes it, starts the agent
        "agent_and_runner_start_s": start["ts"] - at["placing"],  # agent up, runner imports and loads
        "loop_s": steps[-1]["ts"] - start["ts"],
        "save_and_register_s": t_end - steps[-1]["ts"],  # output, heartbeat, check, register, poll
    }
    return Sample(
        tokens=int(done["tokens"]), loop_s=phases["loop_s"], total_s=t_end - t_submit, phases=phases
    )


VARIANTS: dict[str, Callable[[Setup, int], Sample]] = {
    "argosy runner": run_argosy_runner,
    "argosy job (server + agent + runner)": run_argosy_job,
    "transformers Trainer + PEFT": run_reference,
}
REFERENCE = "transformers Trainer + PEFT"
DIRECT, JOB = "argosy runner", "argosy job (server + agent + runner)"


def reference_worker(args: dict[str, Any]) -> None:
    """transformers + PEFT as a user would call them, with the runner's settings."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    out = Path(args["out"])
    torch.set_num_threads(int(args["threads"]))
    tok = AutoTokenizer.from_pretrained(args["base_model"])
    torch.manual_seed(args["seed"])
    model = AutoModelForCausalLM.from_pretrained(args["base_model"], dtype=torch.float32)
    model.config.use_cache = False
    model = get_peft_model(
        model,
        LoraConfig(
            r=args["lora_r"],
            lora_alpha=args["lora_alpha"],
            lora_dropout=args["lora_dropout"],
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            task_type="CAUSAL_LM",
        ),
    )
    rows = []
    for line in Path(args["dataset"]).read_text().splitlines():
        row = json.loads(line)
        p = tok(row["prompt"], add_special_tokens=False)["input_ids"]
        c = tok(row["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = (p + c)[: args["max_seq_len"]]
        labels = ([-100] * len(p) + c)[: args["max_seq_len"]]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    steps = int(args["steps"])
    bs = int(args["batch_size"])
    pad = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    seen = [0]

    def collate(features: list[dict[str, Any]]) -> Any:
        batch = pad(features)
        seen[0] += int(batch["attention_mask"].sum())  # input tokens, padding excluded (as the runner counts)
        return batch

    targs = TrainingArguments(
        output_dir=str(out / "trainer"),
        max_steps=steps,
        per_device_train_batch_size=bs,
        learning_rate=args["lr"],
        lr_scheduler_type="linear",
        warmup_steps=math.ceil(steps * 0.03),
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=args["seed"],
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=rows,
        data_collator=collate,
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log line to stdout
    t0 = time.perf_counter()
    trainer.train()
    loop = time.perf_counter() - t0
    model.save_pretrained(out / "adapter")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    (out / "result.json").write_text(json.dumps({"tokens": seen[0], "loop_s": loop, "losses": losses}))


def bench(rounds: int, steps: int, threads: int = 1) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="argosy-bench-train-"))
    server = JobServer(work)
    try:
        setup = replace(make_setup(work, steps, threads), job_server=server)
        samples: dict[str, list[Sample]] = {name: [] for name in VARIANTS}
        for r in range(rounds):
            for name, fn in VARIANTS.items():
                s = fn(setup, r)
                samples[name].append(s)
                print(
                    f"round {r + 1}/{rounds} {name}: {s.tokens} tokens, loop {s.loop_s:.2f} s "
                    f"({s.loop_tps:.0f} tok/s), process {s.total_s:.2f} s ({s.total_tps:.0f} tok/s)",
                    flush=True,
                )
        ref = samples[REFERENCE]
        ref_loop = statistics.median(s.loop_tps for s in ref)
        ref_total = statistics.median(s.total_tps for s in ref)
        table = {}
        for name, ss in samples.items():
            loop = statistics.median(s.loop_tps for s in ss)
            total = statistics.median(s.total_tps for s in ss)
            table[name] = {
                "tokens": ss[0].tokens,
                "loop_tok_s": loop,
                "total_tok_s": total,
                "loop_ratio": loop / ref_loop,
                "total_ratio": total / ref_total,
                "loop_s_median": statistics.median(s.loop_s for s in ss),
                "total_s_median": statistics.median(s.total_s for s in ss),
            }
            if ss[0].phases:
                table[name]["phases_median_s"] = {
                    k: statistics.median(s.phases[k] for s in ss) for k in ss[0].phases
                }
        machinery = None
        if JOB in samples and DIRECT in samples:
            # Per round (same load for both), then the median: what the job machinery adds.
            diffs = [j.total_s - d.total_s for j, d in zip(samples[JOB], samples[DIRECT], strict=True)]
            machinery = {
                "overhead_s_median": statistics.median(diffs),
                "overhead_s_rounds": diffs,
                "job_over_direct_total": table[JOB]["total_s_median"] / table[DIRECT]["total_s_median"],
            }
        return {
            "rounds": rounds,
            "steps": steps,
            "batch_size": setup.batch_size,
            "threads": threads,
            "results": table,
            "job_machinery": machinery,
            "load_average": os.getloadavg(),
        }
    finally:
        with contextlib.suppress(Exception):
            server.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads on both sides")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--reference-worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.reference_worker:
        reference_worker(json.loads(a.reference_worker))
        return
    res = bench(a.rounds, a.steps, a.threads)
    print(
        f"\n{res['steps']} steps at batch {res['batch_size']}, {res['threads']} torch thread(s), "
        f"medians of {res['rounds']} rounds:\n"
    )
    print("| variant | loop tok/s | end-to-end tok/s | loop / reference | end-to-end / reference |")
    print("|---|---|---|---|---|")
    for name, r in res["results"].items():
        print(
            f"| {name} | {r['loop_tok_s']:.0f} | {r['total_tok_s']:.0f} | {r['loop_ratio']:.3f} | {r['total_ratio']:.3f} |"
        )
    m = res["job_machinery"]
    if m:
        ph = res["results"][JOB]["phases_median_s"]
        print(
            f"\njob machinery overhead (job submit->succeeded minus the direct runner process, per round): "
            f"median {m['overhead_s_median']:.1f} s (rounds: {', '.join(f'{d:.1f}' for d in m['overhead_s_rounds'])}); "
            f"job / direct wall time {m['job_over_direct_total']:.2f}"
        )
        print("job phases (medians, s): " + ", ".join(f"{k} {v:.2f}" for k, v in ph.items()))
    la = res["load_average"]
    print(f"load average at the end: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
