"""The real thing: tiny model -> GGUF -> llama-server on a free loopback port -> chat, stream, stop.

Needs the llama-server binary, which the `llama_server` fixture builds once into the shared test
cache if it is missing (minutes on 2 cores the first time; hence the long timeouts).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import psutil
import pytest

from argosy.core import proc
from argosy.core.config import Settings
from argosy.core.errors import EngineError
from argosy.core.host import free_port
from argosy.serve.engines import ServingSpec, get_engine, wait_ready
from tests.serve.conftest import needs_engine_extra

pytestmark = [pytest.mark.slow, needs_engine_extra, pytest.mark.timeout(1800)]


def test_llama_server_serves_chat_and_stream_then_stops_clean(
    tiny_model: Path, llama_server: Path, engine_settings: Settings, log_dir: Path
) -> None:
    spec = ServingSpec(model=str(tiny_model), served_name="tiny", port=free_port(), parallel=2, context=2048)
    log = log_dir / "llama.log"
    engine = get_engine("llamacpp")
    prepared = engine.prepare(spec, engine_settings)
    assert prepared.executable == str(llama_server)
    assert prepared.model.endswith(".gguf")
    cmd = engine.command(spec, prepared)
    p = proc.spawn(list(cmd.argv), log, env={**os.environ, **cmd.env})
    pids = {p.pid}
    try:
        waited = wait_ready(cmd, pid=p.pid, timeout=60, log_path=log)
        assert waited < 60
        pids |= {c.pid for c in psutil.Process(p.pid).children(recursive=True)}
        with httpx.Client(base_url=cmd.base_url, timeout=30) as client:
            models = client.get("/v1/models").json()
            assert [m["id"] for m in models["data"]] == ["tiny"]

            body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}
            r = client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            reply = r.json()
            assert reply["object"] == "chat.completion"
            assert reply["choices"][0]["message"]["role"] == "assistant"
            assert reply["usage"]["completion_tokens"] >= 1
            # The chat template was applied: the prompt is longer than the bare word.
            assert reply["usage"]["prompt_tokens"] > 3

            chunks: list[dict[str, object]] = []
            with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
                assert s.status_code == 200
                assert s.headers["content-type"].startswith("text/event-stream")
                done = False
                for line in s.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        break
                    chunks.append(json.loads(line[len("data: ") :]))
            assert done and len(chunks) >= 2
            text = "".join(
                str(c["choices"][0]["delta"].get("content") or "")  # type: ignore[index]
                for c in chunks
                if c.get("choices")
            )
            assert text

            metrics = client.get("/metrics")
            assert metrics.status_code == 200 and "llamacpp:" in metrics.text
    finally:
        assert proc.stop(p.pid, timeout=10)
    p.wait(timeout=10)
    assert not any(proc.alive(pid) for pid in pids)


def test_engine_that_fails_to_start_shows_its_last_log_lines(
    tiny_model: Path, llama_server: Path, engine_settings: Settings, log_dir: Path
) -> None:
    spec = ServingSpec(
        model=str(tiny_model), served_name="tiny", port=free_port(), extra_args=("--no-such-flag-argosy",)
    )
    engine = get_engine("llamacpp")
    cmd = engine.command(spec, engine.prepare(spec, engine_settings))
    log = log_dir / "bad.log"
    p = proc.spawn(list(cmd.argv), log, env={**os.environ, **cmd.env})
    try:
        with pytest.raises(EngineError) as err:
            wait_ready(cmd, pid=p.pid, timeout=30, log_path=log)
        assert "exited before it was ready" in err.value.message
        assert "no-such-flag-argosy" in err.value.message  # llama-server's own complaint, from its log
        assert str(log) in (err.value.fix or "")
    finally:
        proc.stop(p.pid)
        p.wait(timeout=10)


def test_occupied_port_is_reported(
    tiny_model: Path, llama_server: Path, engine_settings: Settings, log_dir: Path
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        spec = ServingSpec(model=str(tiny_model), served_name="tiny", port=port)
        engine = get_engine("llamacpp")
        cmd = engine.command(spec, engine.prepare(spec, engine_settings))
        log = log_dir / "port.log"
        p = proc.spawn(list(cmd.argv), log, env={**os.environ, **cmd.env})
        try:
            with pytest.raises(EngineError) as err:
                wait_ready(cmd, pid=p.pid, timeout=30, log_path=log)
            assert "last log lines" in err.value.message
        finally:
            proc.stop(p.pid)
            p.wait(timeout=10)


def test_lora_adapter_is_converted_and_served(
    tiny_model: Path, llama_server: Path, engine_settings: Settings, log_dir: Path, tmp_path: Path
) -> None:
    from argosy.serve.engines import LoraSpec
    from argosy.serve.tinymodel import make_tiny_lora

    adapter = make_tiny_lora(tiny_model, tmp_path / "adapter", seed=0)
    engine = get_engine("llamacpp")
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 12,
        "temperature": 0,
    }
    replies = []
    for lora in (None, LoraSpec(str(adapter))):
        spec = ServingSpec(model=str(tiny_model), served_name="tiny", port=free_port(), parallel=1, lora=lora)
        prepared = engine.prepare(spec, engine_settings)
        if lora:
            assert prepared.lora and prepared.lora.endswith(".gguf")
        cmd = engine.command(spec, prepared)
        log = log_dir / f"lora-{bool(lora)}.log"
        p = proc.spawn(list(cmd.argv), log, env={**os.environ, **cmd.env})
        try:
            wait_ready(cmd, pid=p.pid, timeout=60, log_path=log)
            r = httpx.post(cmd.base_url + "/v1/chat/completions", json=body, timeout=30)
            assert r.status_code == 200, r.text
            replies.append(r.json()["choices"][0]["message"]["content"])
        finally:
            proc.stop(p.pid)
            p.wait(timeout=10)
    assert replies[0] != replies[1]  # the adapter changes greedy output
