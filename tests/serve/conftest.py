"""Fixtures for engine tests: one tiny model per session, the llama-server binary built at most once.

The binary and GGUF files go to the suite's shared cache (`tests.conftest.TEST_CACHE`), so the
whole suite, later runs and `make demo` build llama-server at most once per machine.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from argosy.core.config import Settings, ensure_home, parse_config
from tests.conftest import TEST_CACHE  # one definition for the whole suite

needs_engine_extra = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "tokenizers")),
    reason="needs the engine extra: pip install torch==2.13.0 && pip install -e '.[engine]'",
)


def _progress(message: str, fraction: float | None = None) -> None:
    # Shown with `pytest -s`; a first build takes minutes and should say what it is doing.
    if fraction is None or fraction >= 1.0 or int(fraction * 100) % 10 == 0:
        print(f"[argosy-test] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def engine_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("engine-home")
    s = parse_config("", env={"ARGOSY_HOME": str(home), "ARGOSY_CACHE_DIR": str(TEST_CACHE)})
    ensure_home(s)
    return s


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from argosy.serve.tinymodel import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=0).path


@pytest.fixture(scope="session")
def llama_server(engine_settings: Settings) -> Path:
    from argosy.serve.llamacpp_build import ensure_llama_server

    return ensure_llama_server(engine_settings, _progress)


@pytest.fixture
def log_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "logs"
    d.mkdir()
    yield d
