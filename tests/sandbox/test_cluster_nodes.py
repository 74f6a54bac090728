"""The server's ClusterRunner over two real sandbox node endpoints (real HTTP, real sandboxes).

Least loaded across nodes, per-node caps and 429 when every node is full, sessions sticking to
their node, and results stamped with the node that ran them.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from argosy.cli.sandbox_agent import SandboxService
from argosy.core.clock import FakeClock
from argosy.sandbox.cluster import AgentTable, ClusterRunner
from argosy.sandbox.errors import SandboxBusyError
from argosy.sandbox.models import ExecRequest, SessionCreate, SessionExec

from .conftest import BWRAP, fresh_config

pytestmark = pytest.mark.skipif(BWRAP is None, reason="bubblewrap not installed")


@pytest.fixture
def two_nodes() -> Iterator[tuple[ClusterRunner, dict[str, SandboxService]]]:
    services: dict[str, SandboxService] = {}
    for name in ("node_a", "node_b"):
        svc = SandboxService(
            "127.0.0.1", 0, node=lambda n=name: n, config=fresh_config(max_concurrent=1, max_queue=0)
        )
        svc.start()
        services[name] = svc
    agents = AgentTable(FakeClock(), stale_after_s=15)
    for name, svc in services.items():
        agents.observe(name, {"services": svc.services()})

    def no_local() -> Any:
        raise AssertionError("must not run on the server's machine")

    runner = ClusterRunner(agents, no_local, local_fallback=False)
    yield runner, services
    runner.close()
    for svc in services.values():
        svc.close()
        shutil.rmtree(svc.config.base_dir, ignore_errors=True)


def test_least_loaded_caps_and_429(two_nodes: tuple[ClusterRunner, dict[str, SandboxService]]) -> None:
    runner, _ = two_nodes
    started = threading.Barrier(3)
    results: list[Any] = []
    slow = ExecRequest(language="python", code="import time\ntime.sleep(1.5)\nprint('done')")

    def run() -> None:
        started.wait()
        results.append(runner.execute(slow))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    started.wait()
    # Both nodes have their one slot taken (or about to be): a third request is refused, not queued.
    for _ in range(100):
        if sum(a.inflight for a in runner.agents.live()) == 2:
            break
        threading.Event().wait(0.01)
    with pytest.raises(SandboxBusyError):
        runner.execute(ExecRequest(language="python", code="print(1)"))
    for t in threads:
        t.join(30)
    assert sorted(r.node for r in results) == ["node_a", "node_b"]  # one each: least loaded
    assert all(r.stdout == "done\n" for r in results)


def test_sessions_stick_to_their_node(two_nodes: tuple[ClusterRunner, dict[str, SandboxService]]) -> None:
    runner, services = two_nodes
    info = runner.create_session(SessionCreate(ttl_s=60))
    home = next(n for n, s in services.items() if any(i.id == info.id for i in s.runner.list_sessions()))
    other = "node_b" if home == "node_a" else "node_a"
    runner.agents.get(home).reported_active = 5  # type: ignore[union-attr]  # busier: still goes home
    runner.put_file(info.id, "x.txt", b"kept")
    for _ in range(3):
        res = runner.exec_session(info.id, SessionExec(code="print(open('x.txt').read())"))
        assert res.node == home and res.stdout == "kept\n", res
    assert runner.get_file(info.id, "x.txt") == b"kept"
    assert not services[other].runner.list_sessions()
    # A new ClusterRunner (a restarted server) finds the session again by asking the nodes.
    again = ClusterRunner(runner.agents, lambda: None, local_fallback=False)
    assert again.exec_session(info.id, SessionExec(code="print(2)")).node == home
    runner.delete_session(info.id)
    assert not services[home].runner.list_sessions()
