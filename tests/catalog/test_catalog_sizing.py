"""Model sizing against published figures and real config.json files."""

from __future__ import annotations

from pathlib import Path

import pytest

from argosy.catalog import builtin_models, load_model, size_model
from argosy.catalog.sizing import model_from_config, usable_vram_gb
from argosy.core.errors import ConfigError, NotFoundError

FIXTURES = Path(__file__).parent / "fixtures"


def test_llama_8b_bf16_weights_are_16_gb() -> None:
    r = size_model("llama-3.1-8b", "bf16")
    assert r.weights_gb == pytest.approx(16.06, abs=0.05)  # Meta: 8.03B params x 2 bytes


def test_llama_70b_kv_per_token_is_320_kib() -> None:
    r = size_model("llama-3.1-70b", "bf16")
    assert r.kv_bytes_per_token == 80 * 8 * 128 * 2 * 2 == 320 * 1024


def test_quantization_shrinks_weights() -> None:
    bf16 = size_model("llama-3.1-70b", "bf16").weights_gb
    assert size_model("llama-3.1-70b", "fp8").weights_gb == pytest.approx(bf16 / 2)
    assert size_model("llama-3.1-70b", "awq").weights_gb == pytest.approx(bf16 * 4.25 / 16)
    assert size_model("llama-3.1-70b", "int8").weights_gb == pytest.approx(bf16 / 2)


def test_kv_scales_with_context_and_concurrency() -> None:
    a = size_model("qwen2.5-7b", max_model_len=4096, concurrency=1)
    b = size_model("qwen2.5-7b", max_model_len=8192, concurrency=4)
    assert b.kv_gb == pytest.approx(a.kv_gb * 8)


def test_tensor_parallel_size_for_70b() -> None:
    r = size_model("llama-3.1-70b", "bf16", max_model_len=8192)
    assert r.tp_for(80, 1) is None  # 141 GB of weights on one 80 GB GPU: no
    assert r.tp_for(80, 8) == 2
    assert r.tp_for(24, 8) == 8
    assert r.min_gpus(16) is None  # even 8 x 16 GB is too small
    assert r.per_gpu_gb(2) <= usable_vram_gb(80) < r.per_gpu_gb(1)


def test_kv_heads_do_not_shard_past_their_count() -> None:
    r = size_model("qwen2.5-7b")  # 4 KV heads
    assert r.per_gpu_gb(8) - r.weights_gb / 8 * 1.02 == pytest.approx(r.kv_gb / 4 + 1.0)


def test_moe_active_params_and_mla_cache() -> None:
    mix = size_model("mixtral-8x7b")
    assert mix.model.is_moe and mix.model.active_params < mix.model.params
    ds = size_model("deepseek-v3")
    assert ds.quantization == "fp8"  # the checkpoint's own dtype by default
    assert ds.kv_bytes_per_token == 61 * (512 + 64) * 2  # MLA latent cache, not heads x dim
    gpt = size_model("gpt-oss-120b")
    assert gpt.quantization == "mxfp4" and gpt.weights_gb == pytest.approx(62.0, abs=1.0)


def test_builtin_table_is_big_and_complete() -> None:
    models = builtin_models()
    assert len(models) >= 30
    names = set(models)
    for needed in (
        "llama-3.2-1b",
        "llama-3.1-405b",
        "qwen2.5-0.5b",
        "qwen3-235b-a22b",
        "mixtral-8x22b",
        "gemma-3-27b",
        "phi-4",
        "deepseek-r1",
        "gpt-oss-20b",
    ):
        assert needed in names
    for m in models.values():
        assert m.source.startswith("https://huggingface.co/")


def test_names_and_hf_ids_resolve() -> None:
    assert load_model("meta-llama/Llama-3.1-8B-Instruct").name == "llama-3.1-8b"
    assert load_model("Llama-3.1-8B-Instruct").name == "llama-3.1-8b"
    with pytest.raises(NotFoundError, match="Did you mean 'llama-3.1-8b'"):
        load_model("lama-3.1-8b")


def test_config_json_llama_matches_published_count() -> None:
    spec = load_model(str(FIXTURES / "llama-3.1-8b"))
    assert spec.params == pytest.approx(8.03e9, rel=0.01)
    assert spec.kv_elements_per_token() == 32 * 8 * 128 * 2
    assert spec.max_position == 131072 and spec.native_dtype == "bf16"


def test_config_json_mixtral_matches_published_counts() -> None:
    spec = load_model(str(FIXTURES / "mixtral-8x7b" / "config.json"))
    assert spec.params == pytest.approx(46.7e9, rel=0.01)
    assert spec.active_params == pytest.approx(12.9e9, rel=0.02)


def test_malformed_config_names_the_missing_field() -> None:
    with pytest.raises(ConfigError) as exc:
        load_model(str(FIXTURES / "broken"))
    assert "'num_hidden_layers'" in exc.value.message and "config.json" in exc.value.message
    assert exc.value.fix


def test_invalid_json_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_model(str(bad))
    with pytest.raises(NotFoundError):
        load_model(str(tmp_path / "nothing" / "config.json"))


def test_quantization_config_sets_native_dtype() -> None:
    cfg = {
        "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "vocab_size": 128256, "intermediate_size": 14336, "quantization_config": {"quant_method": "awq", "bits": 4},
    }  # fmt: skip
    assert model_from_config(cfg, "x").native_dtype == "awq"


def test_bad_inputs_are_explained() -> None:
    with pytest.raises(ConfigError, match="did you mean 'awq'"):
        size_model("llama-3.1-8b", "awk")
    with pytest.raises(ConfigError, match="at most 32768"):
        size_model("qwen2.5-7b", max_model_len=100_000)


def test_throughput_estimate_is_bandwidth_bound_for_single_stream() -> None:
    r = size_model("llama-3.1-8b", "bf16", max_model_len=2048)
    tps = r.decode_tokens_per_s(3350, 989)  # H100 SXM
    assert 100 < tps < 130  # 3350 GB/s x 0.6 / ~16.3 GB per step
    more = size_model("llama-3.1-8b", "bf16", max_model_len=2048, concurrency=16).decode_tokens_per_s(
        3350, 989
    )
    assert more > 10 * tps  # batching amortises the weight reads
