"""The runner's parts without a training run: spec strictness, backends, memory estimate, carbon
record and equivalents, loss masking, progress tailing, checkpoint discovery."""

from __future__ import annotations

import errno
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from argosy.core.errors import ArgosyError, NotFoundError
from argosy.train.backends import backend_names, get_backend
from argosy.train.carbon import EMISSION_FIELDS, CarbonMeter, report, resolve_intensity
from argosy.train.examples import Example, read_examples, split_examples
from argosy.train.memory import train_memory_gb
from argosy.train.progress import ProgressLog, read_events
from argosy.train.runner import is_disk_full, list_checkpoints
from argosy.train.spec import SpecError, TrainSpec, validate_spec

BASE = {"job_id": "j", "base_model": "/m", "dataset": "/d.jsonl", "output_dir": "/o"}


def test_spec_round_trips_and_is_strict() -> None:
    spec = TrainSpec.from_dict({**BASE, "lora_r": 16, "target_modules": ["q_proj"]})
    assert TrainSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(SpecError, match=r"unknown training spec key 'lora_rank'; did you mean 'lora_r'"):
        TrainSpec.from_dict({**BASE, "lora_rank": 16})
    with pytest.raises(SpecError, match="missing output_dir"):
        TrainSpec.from_dict({k: v for k, v in BASE.items() if k != "output_dir"})
    with pytest.raises(SpecError, match="'batch_size' must be an integer"):
        TrainSpec.from_dict({**BASE, "batch_size": "4"})


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"method": "lorra"}, "did you mean 'lora'"),
        ({"lr": 0}, "lr must be positive"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"lora_dropout": 1.5}, "lora_dropout"),
        ({"max_steps": 0}, "max_steps"),
        ({"country_iso": "FR"}, "alpha-3"),
    ],
)
def test_validate_spec_says_what_is_wrong(over: dict[str, object], match: str) -> None:
    with pytest.raises(SpecError, match=match) as err:
        validate_spec(TrainSpec.from_dict({**BASE, **over}))
    assert err.value.fix


def test_qlora_needs_bitsandbytes_and_a_gpu() -> None:
    spec = TrainSpec.from_dict({**BASE, "method": "qlora"})
    has_gpu_stack = importlib.util.find_spec("bitsandbytes") is not None
    if has_gpu_stack:
        pytest.skip("bitsandbytes is installed: qlora may be possible here")
    with pytest.raises(SpecError, match="qlora needs 4-bit kernels on an NVIDIA GPU") as err:
        validate_spec(spec)
    assert "--method lora" in (err.value.fix or "")


def test_backends_by_name() -> None:
    assert {"hf", "unsloth"} <= set(backend_names())
    with pytest.raises(NotFoundError, match="Did you mean 'hf'"):
        get_backend("hff")


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
def test_unsloth_reports_what_this_machine_lacks() -> None:
    import torch

    spec = TrainSpec.from_dict({**BASE, "backend": "unsloth"})
    reason = get_backend("unsloth").unavailable_reason(spec)
    if torch.cuda.is_available() and importlib.util.find_spec("unsloth"):
        assert reason is None
        return
    assert reason is not None
    what, fix = reason
    if not torch.cuda.is_available():
        assert "NVIDIA GPU" in what
    if importlib.util.find_spec("unsloth") is None:
        assert "unsloth package" in what
    assert "backend 'hf'" in fix


def test_training_memory_orders_methods_and_scales() -> None:
    full = train_memory_gb("llama-3.1-8b", "full", 1, 2048)
    lora = train_memory_gb("llama-3.1-8b", "lora", 1, 2048)
    qlora = train_memory_gb("llama-3.1-8b", "qlora", 1, 2048)
    assert full > lora > qlora
    assert 120 < full < 200  # 16 bytes x 8B parameters = 128 GB, plus activations
    assert 16 < lora < 40 and 5 < qlora < 20  # bf16 weights 16 GB / 4-bit ~4.3 GB, plus activations
    assert train_memory_gb("llama-3.1-8b", "lora", 4, 2048) > lora
    cfg = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "vocab_size": 4096}
    cfg |= {"intermediate_size": 704, "num_key_value_heads": 2, "tie_word_embeddings": True}
    assert 1.0 < train_memory_gb(cfg, "full", 8, 64) < 1.5
    with pytest.raises(ArgosyError, match="unknown training method"):
        train_memory_gb(cfg, "dpo", 1, 1)


def test_intensity_prefers_the_spec_then_country_then_world() -> None:
    assert resolve_intensity(
        TrainSpec.from_dict({**BASE, "carbon_intensity_g_per_kwh": 55.0, "region": "eu-north-1"})
    ) == (
        55.0,
        "the node's region eu-north-1",
    )
    assert resolve_intensity(TrainSpec.from_dict({**BASE, "country_iso": "FRA"}))[0] is None
    world, source = resolve_intensity(TrainSpec.from_dict(BASE))
    assert world and world > 0 and "world average" in source


def test_estimate_record_says_it_is_an_estimate(tmp_path: Path) -> None:
    # A meter that was never started (what happens when CodeCarbon cannot run) estimates.
    spec = TrainSpec.from_dict({**BASE, "output_dir": str(tmp_path), "carbon_intensity_g_per_kwh": 100.0})
    meter = CarbonMeter(spec, tmp_path)
    sum(i * i for i in range(300_000))  # some CPU time to account for
    rec = meter.stop()
    assert set(EMISSION_FIELDS) <= set(rec)
    assert rec["method"] == "estimate" and rec["measured"] is False
    assert any("estimate" in n for n in rec["notes"])
    assert rec["co2_kg"] == pytest.approx(rec["energy_kwh"] * 0.1)
    assert meter.stop() is rec  # idempotent


def test_report_adds_equivalents_with_sources() -> None:
    out = report({"co2_kg": 2.44, "energy_kwh": 5.0})
    car = next(e for e in out["equivalents"] if e["unit"] == "km")
    assert car["value"] == pytest.approx(10.0)
    assert all(e["source"].startswith("https://") and e["as_of"] for e in out["equivalents"])
    assert out["energy_kwh"] == 5.0


def test_examples_and_split(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    rows = [{"instruction": "add", "input": f"{i} 1", "output": str(i + 1)} for i in range(50)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ex = read_examples(p)
    assert ex[0].segments == (("add\n0 1\n", False), ("1", True))
    train, val = split_examples(ex, 0.2, 0)
    assert len(train) + len(val) == 50 and val and train
    assert split_examples(ex, 0.2, 0) == (train, val)
    (tmp_path / "plain.txt").write_text("one line\nanother line\n")
    assert [e.segments for e in read_examples(tmp_path / "plain.txt")] == [
        (("one line", True),),
        (("another line", True),),
    ]


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")
def test_chat_loss_only_on_assistant_turns(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from argosy.serve.tinymodel import make_tiny_model
    from argosy.train.backends.hf import IGNORE, encode
    from tests.conftest import TEST_CACHE

    tiny = make_tiny_model(TEST_CACHE / "models" / "tiny-train-llama-s0", seed=0, exist_ok=True).path
    tok = AutoTokenizer.from_pretrained(tiny)
    msgs = ({"role": "user", "content": "hello there"}, {"role": "assistant", "content": "general kenobi"})
    ids, labels = encode(Example(1, "chat", messages=msgs), tok, 512)
    learnt = tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE])
    assert learnt == "general kenobi<|im_end|>\n"
    assert tok.decode(ids) == tok.apply_chat_template(list(msgs), tokenize=False)


def test_progress_reader_returns_only_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    log = ProgressLog(path)
    log.emit("start", total_steps=3)
    log.emit("step", step=1, loss=float("nan"))
    with path.open("a") as fh:
        fh.write('{"type": "step", "st')  # a writer mid-line
    evs, off = read_events(path)
    assert [e["type"] for e in evs] == ["start", "step"] and evs[1]["loss"] is None
    assert read_events(path, off) == ([], off)


def test_checkpoint_discovery_ignores_partial_ones(tmp_path: Path) -> None:
    for name, state in [("checkpoint-3", {"step": 3}), ("checkpoint-6", {"step": 6}), ("checkpoint-9", None)]:
        (tmp_path / name).mkdir()
        if state:
            (tmp_path / name / "state.json").write_text(json.dumps(state))
    (tmp_path / ".tmp-checkpoint-12-1").mkdir()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 6]


def test_disk_full_is_recognised_through_wrappers(tmp_path: Path) -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    try:
        try:
            raise OSError(errno.ENOSPC, "nope")
        except OSError as inner:
            raise RuntimeError("file write failed") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer, tmp_path)
    assert not is_disk_full(ValueError("bad"), tmp_path)


def test_importing_the_runner_does_not_import_torch() -> None:
    code = "import sys, argosy.train.runner, argosy.train.spec, argosy.train.memory; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
