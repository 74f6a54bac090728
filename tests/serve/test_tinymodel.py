"""The tiny model: deterministic, real (transformers loads it and its chat template works)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from argosy.core.errors import ArgosyError
from argosy.serve.tinymodel import CHAT_TEMPLATE, _Lcg, corpus, make_tiny_model
from tests.serve.conftest import needs_engine_extra


def test_lcg_is_fixed_arithmetic() -> None:
    # These numbers must never change: the tokenizer's training text depends on them.
    rng = _Lcg(1)
    assert [rng.below(1000) for _ in range(5)] == [774, 153, 196, 870, 34]


def test_corpus_is_stable() -> None:
    text = "\n".join(corpus())
    assert text == "\n".join(corpus())
    assert len(text) > 300_000
    assert "<|im_start|>user\n" in text
    # A change here changes every tiny model's tokenizer: do it on purpose or not at all.
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == _CORPUS_SHA


_CORPUS_SHA = "7fe584e508b2da12"


@needs_engine_extra
def test_make_tiny_is_deterministic_and_loadable(tmp_path: Path, tiny_model: Path) -> None:
    again = make_tiny_model(tmp_path / "again", seed=0)
    other = make_tiny_model(tmp_path / "other", seed=1)
    names = sorted(p.name for p in tiny_model.iterdir())
    assert names == sorted(p.name for p in again.path.iterdir())
    assert "model.safetensors" in names and "tokenizer.json" in names
    for name in names:
        assert (tiny_model / name).read_bytes() == (again.path / name).read_bytes(), name
    assert (tiny_model / "model.safetensors").read_bytes() != (other.path / "model.safetensors").read_bytes()
    assert (tiny_model / "tokenizer.json").read_bytes() == (other.path / "tokenizer.json").read_bytes()
    assert again.vocab_size == 4096 and 3_000_000 < again.parameters < 6_000_000

    cfg = json.loads((tiny_model / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == CHAT_TEMPLATE

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = tok("hello world")["input_ids"]
    assert tok.decode(ids) == "hello world"
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    out = model.generate(**tok("hello", return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > 1


@needs_engine_extra
def test_make_tiny_qwen2(tmp_path: Path) -> None:
    info = make_tiny_model(tmp_path / "q", seed=0, arch="qwen2")
    assert json.loads((info.path / "config.json").read_text())["model_type"] == "qwen2"


def test_make_tiny_refuses_a_non_empty_dir_and_unknown_arch(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep me")
    with pytest.raises(ArgosyError) as err:
        make_tiny_model(tmp_path / "x")
    assert err.value.fix
    assert (tmp_path / "x" / "f").read_text() == "keep me"
    with pytest.raises(ArgosyError) as err2:
        make_tiny_model(tmp_path / "y", arch="lama")
    assert "Did you mean 'llama'" in err2.value.message


@needs_engine_extra
def test_exist_ok_reuses_only_what_make_tiny_made(tiny_model: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in tiny_model.iterdir()}
    info = make_tiny_model(tiny_model, seed=0, exist_ok=True)
    assert info.seconds == 0.0 and info.vocab_size == 4096
    assert {p.name: p.stat().st_mtime_ns for p in tiny_model.iterdir()} == before
    with pytest.raises(ArgosyError) as err:
        make_tiny_model(tiny_model, seed=1, exist_ok=True)
    assert "another seed" in err.value.message
