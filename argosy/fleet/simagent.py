"""Simulated agents for nodes of the `fake` provider: the same server-side protocol, no processes.

The simulator and the reconciler tests use these so that every state transition the real agent
causes (registered, preparing, healthy, exited, stopped) goes through the same server code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from argosy.core.clock import Clock
from argosy.fleet import nodes as node_svc
from argosy.store.db import Store
from argosy.store.models import ApiKey, Node


@dataclass
class SimWorkload:
    started_at: float
    state: str = "preparing"
    exit_code: int | None = None


@dataclass
class SimAgent:
    node_id: str
    start_delay_s: float = 3.0
    registered: bool = False
    alive: bool = True
    workloads: dict[str, SimWorkload] = field(default_factory=dict)
    stopped: dict[str, dict[str, Any]] = field(default_factory=dict)

    def crash_workload(self, wid: str, code: int = 1) -> None:
        self.workloads[wid].state = "exited"
        self.workloads[wid].exit_code = code


@dataclass
class SimFleet:
    """Drives one SimAgent per running fake instance; `step()` is one heartbeat of each."""

    store: Store
    clock: Clock
    provider: Any  # FakeProvider
    logs_dir: Path
    start_delay_s: float = 3.0
    agents: dict[str, SimAgent] = field(default_factory=dict)

    def step(self) -> None:
        now = self.clock.now()
        with self.store.session() as s:
            nodes = s.scalars(select(Node).where(Node.provider == "fake", Node.status != "terminated")).all()
            for node in nodes:
                if not node.provider_instance_id:
                    continue
                inst = self.provider.status(node.provider_instance_id)
                agent = self.agents.setdefault(node.id, SimAgent(node.id, self.start_delay_s))
                if inst.state != "running" or not agent.alive:
                    continue  # a machine that is not up sends no heartbeats
                if not agent.registered:
                    key = s.scalars(select(ApiKey).where(ApiKey.node_id == node.id)).first()
                    if key is None:
                        continue
                    node_svc.register(
                        s, key, {"hostname": node.name, "address": inst.address, "cpus": 8}, now
                    )
                    agent.registered = True
                report = {
                    "workloads": {
                        wid: {
                            "state": w.state,
                            "port": 8000,
                            "pid": None,
                            "since": w.started_at,
                            "exit_code": w.exit_code,
                        }
                        for wid, w in agent.workloads.items()
                    }
                    | agent.stopped
                }
                answer = node_svc.heartbeat(s, node.id, report, now, self.logs_dir)
                agent.stopped = {}
                desired = {w["id"] for w in answer["workloads"]}
                for wid in list(agent.workloads):
                    if wid not in desired:
                        del agent.workloads[wid]
                        agent.stopped[wid] = {"state": "stopped", "port": 8000, "since": now}
                for wid in desired:
                    w = agent.workloads.setdefault(wid, SimWorkload(started_at=now))
                    if w.state == "preparing" and now - w.started_at >= agent.start_delay_s:
                        w.state = "healthy"
