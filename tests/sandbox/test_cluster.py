"""Placement over sandbox agents: least loaded, per-node caps, 429 when full, stale and restarted agents."""

from __future__ import annotations

import pytest

from argosy.core.clock import FakeClock
from argosy.sandbox.cluster import DOWN_FOR_S, AgentTable
from argosy.sandbox.errors import SandboxBusyError


def report(url: str, token: str = "t", conc: int = 2, queue: int = 1, active: int = 0) -> dict:
    return {
        "services": {
            "sandbox": {
                "url": url,
                "token": token,
                "max_concurrent": conc,
                "max_queue": queue,
                "active": active,
            }
        }
    }


def table() -> tuple[AgentTable, FakeClock]:
    clock = FakeClock()
    return AgentTable(clock, stale_after_s=15), clock


def test_least_loaded_then_full_is_429() -> None:
    t, _ = table()
    t.observe("a", report("http://a", conc=2, queue=1))
    t.observe("b", report("http://b", conc=1, queue=0))
    picks = [t.pick(set()) for _ in range(4)]
    names = [p.node_id for p in picks if p]
    # a: 0/2, b: 0/1 -> a (tie broken by min), then b (0/1 < 1/2), then a, a (its queue slot)
    assert sorted(names) == ["a", "a", "a", "b"]
    with pytest.raises(SandboxBusyError) as exc:
        t.pick(set())
    assert "full" in exc.value.message and exc.value.retry_after >= 1
    t.release(picks[0])  # type: ignore[arg-type]
    assert t.pick(set()) is not None


def test_reported_load_breaks_ties() -> None:
    t, _ = table()
    t.observe("a", report("http://a", active=2))
    t.observe("b", report("http://b", active=0))
    p = t.pick(set())
    assert p is not None and p.node_id == "b"


def test_stale_down_and_restarted_agents() -> None:
    t, clock = table()
    t.observe("a", report("http://a"))
    agent = t.pick(set())
    assert agent is not None
    t.release(agent)
    t.mark_down(agent)
    assert t.pick(set()) is None and [a.node_id for a in t.live()] == ["a"]  # registered, but down
    clock.advance(DOWN_FOR_S + 1)
    assert t.pick(set()) is not None
    clock.advance(30)
    assert t.live() == [] and t.pick(set()) is None  # heartbeats stopped: no longer registered
    t.observe("a", report("http://a2", token="new"))  # the agent restarted: new address and token
    (live,) = t.live()
    assert live.url == "http://a2" and live.token == "new" and live.inflight == 0
    t.observe("a", {})  # the role was dropped
    assert t.live() == []
    t.observe("b", report("http://b"), terminate=True)
    assert t.live() == []
    t.close()


def test_a_malformed_report_is_ignored_not_fatal() -> None:
    t, _ = table()
    with pytest.raises(ValueError):
        t.observe("a", report("http://a", conc="many"))  # type: ignore[arg-type]
    assert t.live() == []
