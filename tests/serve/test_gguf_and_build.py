"""GGUF conversion (cached by content) and obtaining llama-server (configured, cached, built, locked)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from argosy.core.config import Settings, parse_config
from argosy.core.errors import ArgosyError, EngineError
from argosy.serve import llamacpp_build as lb
from argosy.serve.gguf import ensure_gguf, gguf_cache_path, model_digest
from tests.serve.conftest import needs_engine_extra


def _settings(tmp_path: Path, **env: str) -> Settings:
    return parse_config(
        "", env={"ARGOSY_HOME": str(tmp_path / "home"), "ARGOSY_CACHE_DIR": str(tmp_path / "c"), **env}
    )


def test_model_digest_follows_content(tmp_path: Path) -> None:
    m = tmp_path / "m"
    m.mkdir()
    (m / "config.json").write_text("{}")
    (m / "w.bin").write_bytes(b"\x00" * 10)
    first = model_digest(m)
    assert model_digest(m) == first
    (m / "w.bin").write_bytes(b"\x00" * 9 + b"\x01")
    assert model_digest(m) != first
    (m / "w.bin").write_bytes(b"\x00" * 10)
    (m / ".partial").write_text("ignored")  # hidden files are not part of the model
    assert model_digest(m) == first


def test_conversion_errors_are_explained(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    with pytest.raises(ArgosyError) as err:
        ensure_gguf(tmp_path / "missing", s)
    assert "does not exist" in err.value.message and "make-tiny" in (err.value.fix or "")
    (tmp_path / "notamodel").mkdir()
    with pytest.raises(ArgosyError) as err:
        ensure_gguf(tmp_path / "notamodel", s)
    assert "config.json" in err.value.message
    with pytest.raises(ArgosyError) as err:
        ensure_gguf(tmp_path / "notamodel", s, outtype="q3")
    assert "f16" in (err.value.fix or "")


@pytest.mark.slow
@needs_engine_extra
def test_tiny_model_converts_once_with_gpt2_pretokenizer(tiny_model: Path, engine_settings: Settings) -> None:
    out = ensure_gguf(tiny_model, engine_settings, outtype="f32")
    assert out == gguf_cache_path(tiny_model, engine_settings, "f32")
    mtime = out.stat().st_mtime_ns
    started = time.monotonic()
    assert ensure_gguf(tiny_model, engine_settings, outtype="f32") == out
    assert time.monotonic() - started < 2 and out.stat().st_mtime_ns == mtime  # cached: nothing converted

    from gguf import GGUFReader

    reader = GGUFReader(out)

    def field(name: str) -> str:
        f = reader.fields[name]
        return bytes(f.parts[f.data[0]]).decode()

    assert field("general.architecture") == "llama"
    assert field("tokenizer.ggml.pre") == "gpt-2"
    assert "<|im_start|>" in field("tokenizer.chat_template")


def test_build_id_follows_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    first = lb.build_id("0.3.36")
    assert first.startswith("0.3.36-") and lb.build_id("0.3.36") == first
    monkeypatch.setattr(lb, "CMAKE_FLAGS", (*lb.CMAKE_FLAGS, "-DGGML_AVX512=ON"))
    assert lb.build_id("0.3.36") != first


def test_configured_binary_is_used_or_explained(tmp_path: Path) -> None:
    missing = _settings(tmp_path, ARGOSY_LLAMA_SERVER=str(tmp_path / "nope" / "llama-server"))
    with pytest.raises(EngineError) as err:
        lb.ensure_llama_server(missing)
    assert "ARGOSY_LLAMA_SERVER" in (err.value.fix or "")
    exe = tmp_path / "llama-server"
    exe.write_text("#!/bin/sh\necho version 1\n")
    exe.chmod(0o755)
    assert lb.ensure_llama_server(_settings(tmp_path, ARGOSY_LLAMA_SERVER=str(exe))) == exe


def test_cached_binary_is_found_without_building(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    target = lb.cached_binary(s)
    target.parent.mkdir(parents=True)
    target.write_text("#!/bin/sh\necho ok\n")
    target.chmod(0o755)
    calls: list[str] = []
    assert lb.ensure_llama_server(s, lambda m, f=None: calls.append(m)) == target
    assert calls == []  # nothing downloaded or built


def test_build_lock_serialises_builders(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    order: list[str] = []
    messages: list[str] = []
    holding = threading.Event()

    def first() -> None:
        with lb.build_lock(s, "9.9.9"):
            holding.set()
            time.sleep(0.4)
            order.append("first done")

    t = threading.Thread(target=first)
    t.start()
    holding.wait(5)
    with lb.build_lock(s, "9.9.9", lambda m, f=None: messages.append(m)):
        order.append("second in")
    t.join()
    assert order == ["first done", "second in"]
    assert messages and "waiting for another process" in messages[0]


def test_failed_build_shows_the_log_tail(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "CMakeLists.txt").write_text(
        'cmake_minimum_required(VERSION 3.14)\nmessage(FATAL_ERROR "argosy-test: this tree is broken on purpose")\n'
    )
    s = _settings(tmp_path)
    with pytest.raises(EngineError) as err:
        lb._build(s, "0.0.0-test", tree, lambda m, f=None: None)
    assert "configure failed" in err.value.message
    assert "broken on purpose" in err.value.message
    assert err.value.fix and "ARGOSY_LLAMA_SERVER" in err.value.fix


def test_launcher_keeps_o3_only_for_per_token_code(tmp_path: Path) -> None:
    import subprocess

    tree, build = tmp_path / "tree", tmp_path / "build"
    tree.mkdir()
    build.mkdir()
    launcher = lb.write_launcher(build / "launch.py", tree, build)

    def flags(src: Path) -> str:
        # "echo" stands in for the compiler: the launcher execs it with the rewritten arguments.
        return subprocess.run(
            [launcher, "echo", "-O3", "-c", str(src)], capture_output=True, text=True
        ).stdout

    assert flags(tree / "ggml" / "src" / "ggml-cpu" / "ops.cpp").startswith("-O3 ")
    assert flags(tree / "src" / "llama-sampler.cpp").startswith("-O3 ")
    assert flags(build / "src" / "CMakeFiles" / "llama.dir" / "Unity" / "unity_0_cxx.cxx").startswith("-O3 ")
    assert flags(tree / "tools" / "server" / "server-http.cpp").startswith(f"{lb.COLD_OPT} ")
    assert flags(tree / "common" / "arg.cpp").startswith(f"{lb.COLD_OPT} ")


def test_interrupted_build_leaves_no_compiler_running(tmp_path: Path) -> None:
    import os

    import psutil

    script = tmp_path / "slow.sh"
    script.write_text("#!/bin/sh\necho '[1/2] step'\nsleep 30 & wait\n")
    script.chmod(0o755)
    seen: list[int] = []

    def progress(message: str, fraction: float | None = None) -> None:
        seen.extend(c.pid for c in psutil.Process(os.getpid()).children(recursive=True))
        raise KeyboardInterrupt  # what Ctrl-C or a test timeout does mid-build

    with (tmp_path / "b.log").open("w") as log, pytest.raises(KeyboardInterrupt):
        lb._run_logged([str(script)], log, tmp_path / "b.log", progress, "build")
    assert seen and not any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in seen
    )
