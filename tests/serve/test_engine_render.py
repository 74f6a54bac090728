"""Engine command rendering: pure, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from argosy.core.config import parse_config
from argosy.core.errors import ArgosyError, NotFoundError
from argosy.serve.engines import (
    Engine,
    LoraSpec,
    Prepared,
    ServingSpec,
    default_engine_name,
    engine_names,
    get_engine,
    spec_from_settings,
)
from argosy.serve.engines.base import require_model_path

SPEC = ServingSpec(model="/models/tiny", served_name="tiny", port=9001)


def test_registry_lists_and_loads_engines() -> None:
    assert engine_names() == ["llamacpp", "vllm"]
    for name in engine_names():
        engine = get_engine(name)
        assert isinstance(engine, Engine)
        assert engine.name == name


def test_unknown_engine_suggests_the_nearest() -> None:
    with pytest.raises(NotFoundError) as err:
        get_engine("llama.cpp")
    assert "Did you mean 'llamacpp'?" in str(err.value)
    assert "Known: llamacpp, vllm." in str(err.value)


def test_default_engine_by_device() -> None:
    assert default_engine_name("cpu") == "llamacpp"
    assert default_engine_name("gpu") == "vllm"
    s = parse_config("engine:\n  default: vllm\n", env={})
    assert default_engine_name("cpu", s) == "vllm"


def test_llamacpp_prepared_command_exact() -> None:
    prepared = Prepared(executable="/cache/bin/llama-server", model="/cache/gguf/tiny-abc-f16.gguf")
    cmd = get_engine("llamacpp").command(SPEC, prepared)
    assert cmd.argv == (
        "/cache/bin/llama-server",
        "--model", "/cache/gguf/tiny-abc-f16.gguf",
        "--alias", "tiny",
        "--host", "127.0.0.1",
        "--port", "9001",
        "--ctx-size", "8192",
        "--parallel", "4",
        "--metrics",
        "--jinja",
        "--no-webui",
    )  # fmt: skip
    assert dict(cmd.env) == {}
    assert cmd.base_url == "http://127.0.0.1:9001"
    assert cmd.health_url == "http://127.0.0.1:9001/health"
    assert cmd.ready.served_name == "tiny"
    assert cmd.ready.models_path == "/v1/models"
    assert cmd.notes == ()


def test_llamacpp_remote_rendering_uses_conventional_binary_and_says_it_converts() -> None:
    spec = ServingSpec(
        model="/data/m",
        served_name="m",
        host="0.0.0.0",
        port=8000,
        device="gpu",
        threads=8,
        parallel=8,
        context=16384,
        lora=LoraSpec("/data/adapter.gguf"),
        extra_args=("--seed", "1"),
        env=(("LLAMA_LOG", "x y"),),
    )
    cmd = get_engine("llamacpp").command(spec)
    assert cmd.shell() == (
        "LLAMA_LOG='x y' llama-server --model /data/m --alias m --host 0.0.0.0 --port 8000 --ctx-size 16384 "
        "--parallel 8 --metrics --jinja --no-webui --threads 8 --n-gpu-layers 999 --lora /data/adapter.gguf --seed 1"
    )
    # 0.0.0.0 is where it listens; the agent probes it on loopback.
    assert cmd.base_url == "http://127.0.0.1:8000"
    assert cmd.notes and "GGUF" in cmd.notes[0]


def test_llamacpp_rejects_a_second_name_for_the_adapter() -> None:
    spec = ServingSpec(model="/m", served_name="m", lora=LoraSpec("/a", name="other"))
    with pytest.raises(ArgosyError) as err:
        get_engine("llamacpp").command(spec)
    assert err.value.fix and "vllm" in err.value.fix


def test_vllm_gpu_command_exact() -> None:
    spec = ServingSpec(
        model="meta-llama/Llama-3.1-8B-Instruct", served_name="llama", port=8000, device="gpu", gpus=2
    )
    cmd = get_engine("vllm").command(spec)
    assert cmd.argv == (
        "vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct",
        "--served-model-name", "llama",
        "--host", "127.0.0.1",
        "--port", "8000",
        "--max-model-len", "8192",
        "--max-num-seqs", "4",
        "--dtype", "auto",
        "--tensor-parallel-size", "2",
    )  # fmt: skip
    assert dict(cmd.env) == {}
    assert cmd.ready.timeout_s == 600.0


def test_vllm_cpu_command_has_the_fixes_from_the_notes() -> None:
    prepared = Prepared(executable="/venv/bin/python", model="/models/tiny", env=(("TMPDIR", "/run/t"),))
    cmd = get_engine("vllm").command(SPEC, prepared)
    assert cmd.argv == (
        "/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/models/tiny",
        "--served-model-name", "tiny",
        "--host", "127.0.0.1",
        "--port", "9001",
        "--max-model-len", "8192",
        "--max-num-seqs", "4",
        "--dtype", "float32",  # bf16 falls back to slow kernels on AVX2
        "--enforce-eager",
    )  # fmt: skip
    assert dict(cmd.env) == {"VLLM_CPU_KVCACHE_SPACE": "1", "TMPDIR": "/run/t"}
    unprepared = get_engine("vllm").command(SPEC)
    assert unprepared.argv[:3] == ("python3", "-m", "vllm.entrypoints.openai.api_server")


def test_vllm_lora_is_served_under_the_deployment_name() -> None:
    spec = ServingSpec(model="/m", served_name="tuned", lora=LoraSpec("/adapters/a1", rank=16))
    cmd = get_engine("vllm").command(spec)
    argv = list(cmd.argv)
    assert argv[argv.index("--served-model-name") + 1] == "tuned-base"
    assert argv[-5:] == ["--enable-lora", "--max-lora-rank", "16", "--lora-modules", "tuned=/adapters/a1"]
    assert cmd.served_name == "tuned" and cmd.ready.served_name == "tuned"
    named = get_engine("vllm").command(
        ServingSpec(model="/m", served_name="base", lora=LoraSpec("/a", name="ft"))
    )
    assert "ft=/a" in named.argv and named.argv[named.argv.index("--served-model-name") + 1] == "base"


def test_rendering_is_pure_and_repeatable() -> None:
    for name in engine_names():
        a = get_engine(name).command(SPEC).to_dict()
        b = get_engine(name).command(SPEC).to_dict()
        assert a == b
        assert a["engine"] == name and a["argv"][0]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"served_name": ""}, "name is empty"),
        ({"port": 70000}, "out of range"),
        ({"parallel": 0}, "parallel"),
        ({"context": 16}, "too small"),
    ],
)
def test_bad_specs_are_explained(change: dict[str, object], needle: str) -> None:
    spec = ServingSpec(**{**SPEC.to_dict(), **change})  # type: ignore[arg-type]
    for name in engine_names():
        with pytest.raises(ArgosyError) as err:
            get_engine(name).command(spec)
        assert needle in err.value.message and err.value.fix


def test_missing_model_path_has_a_fix(tmp_path: Path) -> None:
    with pytest.raises(ArgosyError) as err:
        require_model_path(str(tmp_path / "nope"))
    assert "does not exist" in err.value.message
    assert err.value.fix and "make-tiny" in err.value.fix


def test_spec_from_settings_takes_engine_tunables() -> None:
    s = parse_config(
        "engine:\n  llamacpp:\n    parallel: 8\n    context: 4096\n    threads: 2\n"
        "  vllm:\n    dtype: bfloat16\n    extra_args: ['--seed', '0']\n",
        env={},
    )
    ll = spec_from_settings(s, engine="llamacpp", model="/m", served_name="m", port=1234)
    assert (ll.parallel, ll.context, ll.threads, ll.dtype, ll.extra_args) == (8, 4096, 2, "auto", ())
    vl = spec_from_settings(s, engine="vllm", model="/m", served_name="m", port=1234, device="gpu", gpus=4)
    assert (vl.dtype, vl.extra_args, vl.gpus) == ("bfloat16", ("--seed", "0"), 4)
