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

Reports medians of tokens/s (input tokens, padding excluded) over the training loop and end to end
(process start to exit), and argosy / reference ratios. More variants (e.g. the job machinery:
server + agent spawning the runner) plug in through `VARIANTS`: a function from a `Setup` to a `Sample`.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
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
    args = json.dumps({**asdict(setup), "out": str(out)}, default=str)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--reference-worker", args], check=True, cwd=ROOT)
    total = time.perf_counter() - t0
    r = json.loads(result.read_text())
    return Sample(tokens=int(r["tokens"]), loop_s=float(r["loop_s"]), total_s=total)


# name -> function; J's job-machinery variant (server + agent + runner) adds itself here.
VARIANTS: dict[str, Callable[[Setup, int], Sample]] = {
    "argosy runner": run_argosy_runner,
    "transformers Trainer + PEFT": run_reference,
}
REFERENCE = "transformers Trainer + PEFT"


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
    try:
        setup = make_setup(work, steps, threads)
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
        return {
            "rounds": rounds,
            "steps": steps,
            "batch_size": setup.batch_size,
            "threads": threads,
            "results": table,
        }
    finally:
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
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
