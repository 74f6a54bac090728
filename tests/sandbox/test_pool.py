"""Pre-warmed pools: a request takes a ready sandbox; the pool refills; network runs go cold."""

from __future__ import annotations

import shutil

import pytest

from argosy.sandbox.models import ExecRequest
from argosy.sandbox.service import LocalRunner, wait_for

from .conftest import BWRAP, fresh_config

pytestmark = pytest.mark.skipif(BWRAP is None, reason="bubblewrap not installed")


def test_warm_pool_serves_and_refills() -> None:
    runner = LocalRunner(fresh_config(pool={"py": 2}))
    try:
        runner.start_background()
        assert wait_for(runner.pool.filled, 20)
        for i in range(4):
            assert wait_for(runner.pool.filled, 20)
            res = runner.execute(ExecRequest(language="python", code=f"print({i})"))
            assert res.warm and res.stdout == f"{i}\n"
        # Pooled sandboxes are the same sandbox: still no network, still the same limits.
        res = runner.execute(
            ExecRequest(language="python", code="import os; print(os.getuid(), os.listdir('/work'))")
        )
        assert res.warm and res.stdout == "65534 ['main.py']\n"
        assert not runner.execute(ExecRequest(language="python", code="print(1)", network=True)).warm
        assert not runner.execute(ExecRequest(language="ruby", code="puts 1")).warm
    finally:
        runner.close()
        shutil.rmtree(runner.config.base_dir, ignore_errors=True)


def test_limits_apply_to_warm_sandboxes() -> None:
    runner = LocalRunner(fresh_config(pool={"python": 1}))
    try:
        runner.start_background()
        assert wait_for(runner.pool.filled, 20)
        res = runner.execute(ExecRequest(language="python", code="while True: pass", timeout_ms=300))
        assert res.warm and res.timed_out
        if runner.backend.cgroups.version != "none":
            assert wait_for(runner.pool.filled, 20)
            res = runner.execute(
                ExecRequest(language="python", code="x = bytearray(500 * 2**20)", memory_mb=64)
            )
            assert res.warm and res.oom_killed
    finally:
        runner.close()
        shutil.rmtree(runner.config.base_dir, ignore_errors=True)


def test_unknown_pool_language_fails_at_start() -> None:
    from argosy.core.errors import NotFoundError

    with pytest.raises(NotFoundError):
        LocalRunner(fresh_config(pool={"pyhton": 1}))
