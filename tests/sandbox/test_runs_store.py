"""Sandbox runs in the store (SQLite, and PostgreSQL when configured): a row per run, a ledger row per node run."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from argosy.sandbox.models import CompileOutput, ExecResult
from argosy.sandbox.runs import list_runs, record_run, run_price_per_hour
from argosy.store.db import Store
from argosy.store.models import LedgerEntry, Node, SandboxRun


def result(run_id: str, **kw: object) -> ExecResult:
    base: dict[str, object] = dict(
        run_id=run_id,
        status="ok",
        stdout="",
        stderr="",
        exit_code=0,
        signal=None,
        timed_out=False,
        oom_killed=False,
        truncated=False,
        duration_ms=1800.0,
        language="python",
        version="Python 3.11",
        backend="namespaces",
        limits={"timeout_ms": 10000, "memory_mb": 256, "cpu_count": 2.0},
    )
    return ExecResult.model_validate(base | kw)


def test_runs_and_their_ledger_rows(db_url: str) -> None:
    store = Store(db_url)
    try:
        with store.session() as s:
            s.add(
                Node(
                    id="node_a",
                    name="a",
                    provider="fake",
                    provider_instance_id="i-1",
                    status="ready",
                    price_per_hour=3.6,
                    resources={"cpus": 8},
                    created_at=0.0,
                    updated_at=0.0,
                )
            )
        with store.session() as s:
            record_run(s, result("run_1"), "node_a", None, 100.0)
            compiled = result(
                "run_2",
                language="c",
                status="timed_out",
                timed_out=True,
                exit_code=None,
                signal=9,
                compile=CompileOutput(stdout="", stderr="", exit_code=0, duration_ms=200.0),
            )
            record_run(s, compiled, "node_a", "sbs_x", 101.0)
            record_run(s, result("run_3"), None, None, 102.0)  # the server's own machine
            record_run(s, result("run_1"), "node_a", None, 200.0)  # again: idempotent
        with store.session() as s:
            assert s.scalars(select(SandboxRun)).all().__len__() == 3
            ledger = {e.resource_id: e for e in s.scalars(select(LedgerEntry))}
            assert set(ledger) == {"run_1", "run_2"}  # nothing rented for the server's machine
            # 2 of 8 CPUs of a $3.60/h node for 1.8 s
            assert ledger["run_1"].resource_kind == "run"
            assert ledger["run_1"].price_per_hour == pytest.approx(0.9)
            assert ledger["run_1"].cost_usd == pytest.approx(0.9 * 1.8 / 3600)
            assert ledger["run_2"].seconds == pytest.approx(2.0)  # compile + run
            runs = list_runs(s)
            assert [r["id"] for r in runs] == ["run_3", "run_2", "run_1"]
            r2 = runs[1]
            assert r2["timed_out"] and r2["session"] == "sbs_x" and r2["signal"] == 9
            assert r2["cost_usd"] == pytest.approx(0.9 * 2.0 / 3600)
            assert [r["id"] for r in list_runs(s, node_id="node_a")] == ["run_2", "run_1"]
            assert run_price_per_hour(s.get(Node, "node_a"), 64) == pytest.approx(3.6)  # capped at the node
    finally:
        store.close()
