"""The server's sandbox runner: sends runs to agents with the `sandbox` role, or runs them itself.

Agents with the role report, in every heartbeat, the address of their sandbox endpoint, a token for
it (made fresh at each agent start) and their capacity (`max_concurrent`, `max_queue`) and load.
`AgentTable` keeps the latest report per node, in memory: heartbeats are level-triggered, so after a
server restart the table is whole again within one heartbeat, and the token is never written to
the database.

Placement is least loaded: the requests this server has in flight to a node over its slot count,
then the node's own reported load. A node takes up to `max_concurrent + max_queue` requests (the
node's admission queue holds the excess); when every node is that full the server answers 429 with
Retry-After instead of queueing without bound. Sessions stick to the node that made them.

With no sandbox agent registered, runs execute on the server's own machine, as before agents
existed (`local_fallback`, on by default). When agents are registered but none answers, the request
fails with a clear 503 rather than silently moving untrusted code onto the control plane; once the
dead agent's heartbeats are older than `stale_after_s`, it is no longer registered.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from argosy.core.clock import Clock, SystemClock
from argosy.core.errors import NotFoundError
from argosy.sandbox.errors import SandboxBusyError
from argosy.sandbox.models import ExecRequest, ExecResult, SessionCreate, SessionExec, SessionInfo
from argosy.sandbox.namespaces import OutputSink
from argosy.sandbox.nodeclient import NodeClient, NodeLostError, NodeUnreachableError

log = logging.getLogger(__name__)

DOWN_FOR_S = 10.0  # after a failed connection, skip the node this long (or until it heartbeats anew)

# (result, node_id or None for the server's machine, session id or None) -> None
RunRecorder = Callable[[ExecResult, str | None, str | None], None]


@dataclass
class SandboxAgent:
    node_id: str
    url: str
    token: str
    max_concurrent: int
    max_queue: int
    seen_at: float
    reported_active: int = 0
    reported_waiting: int = 0
    backend: str = ""
    down_until: float = 0.0
    inflight: int = 0
    client: NodeClient | None = field(default=None, repr=False)

    @property
    def capacity(self) -> int:
        return self.max_concurrent + self.max_queue

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "url": self.url,
            "backend": self.backend,
            "max_concurrent": self.max_concurrent,
            "max_queue": self.max_queue,
            "inflight": self.inflight,
            "reported_active": self.reported_active,
            "reported_waiting": self.reported_waiting,
            "seen_s_ago": round(now - self.seen_at, 1),
            "down": self.down_until > now,
        }


class AgentTable:
    """The latest sandbox-service report of each agent, fed by heartbeats."""

    def __init__(self, clock: Clock | None = None, stale_after_s: float = 15.0) -> None:
        self.clock = clock or SystemClock()
        self.stale_after_s = stale_after_s
        self._agents: dict[str, SandboxAgent] = {}
        self._lock = threading.Lock()

    def observe(self, node_id: str, report: dict[str, Any], terminate: bool = False) -> None:
        """Record what a heartbeat says about the node's sandbox service (absent: it has none)."""
        svc = (report.get("services") or {}).get("sandbox") if not terminate else None
        with self._lock:
            old = self._agents.get(node_id)
            if not isinstance(svc, dict) or not svc.get("url") or not svc.get("token"):
                if old is not None:
                    self._drop(old)
                return
            if old is not None and (old.url != svc["url"] or old.token != svc["token"]):
                # The agent restarted: new endpoint, new token. In-flight requests keep their client.
                self._drop(old)
                old = None
            now = self.clock.now()
            if old is None:
                old = SandboxAgent(
                    node_id=node_id,
                    url=str(svc["url"]),
                    token=str(svc["token"]),
                    max_concurrent=max(1, int(svc.get("max_concurrent") or 1)),
                    max_queue=max(0, int(svc.get("max_queue") or 0)),
                    seen_at=now,
                )
                old.client = NodeClient(node_id, old.url, old.token)
                self._agents[node_id] = old
            old.seen_at = now
            old.max_concurrent = max(1, int(svc.get("max_concurrent") or old.max_concurrent))
            old.max_queue = max(0, int(svc.get("max_queue") or 0))
            old.reported_active = int(svc.get("active") or 0)
            old.reported_waiting = int(svc.get("waiting") or 0)
            old.backend = str(svc.get("backend") or "")
            old.down_until = 0.0  # a fresh heartbeat from the agent: worth trying again

    def _drop(self, agent: SandboxAgent) -> None:
        self._agents.pop(agent.node_id, None)
        if agent.client is not None and agent.inflight == 0:
            agent.client.close()

    def live(self) -> list[SandboxAgent]:
        now = self.clock.now()
        with self._lock:
            return [a for a in self._agents.values() if now - a.seen_at <= self.stale_after_s]

    def get(self, node_id: str) -> SandboxAgent | None:
        return next((a for a in self.live() if a.node_id == node_id), None)

    def pick(self, exclude: set[str]) -> SandboxAgent | None:
        """The least loaded live node not in `exclude` and not marked down; None if there is none.

        Raises SandboxBusyError when nodes are up but every one is at its capacity.
        """
        now = self.clock.now()
        with self._lock:
            up = [
                a
                for a in self._agents.values()
                if now - a.seen_at <= self.stale_after_s and a.node_id not in exclude and a.down_until <= now
            ]
            if not up:
                return None
            free = [a for a in up if a.inflight < a.capacity]
            if not free:
                total = sum(a.capacity for a in up)
                raise SandboxBusyError(
                    f"all {len(up)} sandbox nodes are full ({total} runs running or queued)",
                    fix="retry after a moment, or add nodes with `argosy agent --role sandbox`",
                    retry_after=1.0,
                )
            best = min(
                free,
                key=lambda a: (
                    a.inflight / a.max_concurrent,
                    (a.reported_active + a.reported_waiting) / a.max_concurrent,
                ),
            )
            best.inflight += 1  # taken under the lock, so concurrent picks see each other
            return best

    def release(self, agent: SandboxAgent) -> None:
        with self._lock:
            agent.inflight -= 1
            if agent.node_id not in self._agents and agent.inflight == 0 and agent.client is not None:
                agent.client.close()

    @contextlib.contextmanager
    def lease(self, agent: SandboxAgent) -> Iterator[NodeClient]:
        """Count a request against a node already picked (pick() took the slot)."""
        try:
            assert agent.client is not None
            yield agent.client
        finally:
            self.release(agent)

    @contextlib.contextmanager
    def hold(self, agent: SandboxAgent) -> Iterator[NodeClient]:
        """Count a request against a given node (sessions: the node is fixed, not picked)."""
        with self._lock:
            agent.inflight += 1
        with self.lease(agent) as client:
            yield client

    def mark_down(self, agent: SandboxAgent) -> None:
        with self._lock:
            agent.down_until = self.clock.now() + DOWN_FOR_S

    def describe(self) -> list[dict[str, Any]]:
        now = self.clock.now()
        return [a.describe(now) for a in self.live()]

    def close(self) -> None:
        with self._lock:
            for a in self._agents.values():
                if a.client is not None:
                    a.client.close()
            self._agents.clear()


class ClusterRunner:
    """A SandboxRunner over the sandbox agents, falling back to a local runner when none is registered."""

    def __init__(
        self,
        agents: AgentTable,
        local_factory: Callable[[], Any],
        local_fallback: bool = True,
        recorder: RunRecorder | None = None,
    ) -> None:
        self.agents = agents
        self._local_factory = local_factory
        self._local: Any = None
        self.local_fallback = local_fallback
        self.recorder = recorder
        self._local_lock = threading.Lock()
        # session id -> node id (None: the server's machine). Rebuilt on a miss by asking the nodes.
        self._sessions: dict[str, str | None] = {}
        self._sessions_lock = threading.Lock()

    # -- where things run --------------------------------------------------------------------------

    def local(self) -> Any:
        with self._local_lock:
            if self._local is None:
                self._local = self._local_factory()
                self._local.start_background()
            return self._local

    def _no_node(self, tried: list[str]) -> Any:
        """What to do when no node can take a request: the server's machine, or a clear error."""
        # Registered but down (a failed connection in the last DOWN_FOR_S) counts as tried.
        tried = tried or [a.node_id for a in self.agents.live()]
        if tried:
            raise NodeUnreachableError(
                f"no sandbox node answered (tried {', '.join(tried)})",
                fix="restart their agents (`argosy agent --role sandbox`); "
                f"once a dead agent's heartbeats are {self.agents.stale_after_s:.0f} s old it is no longer used",
            )
        if not self.local_fallback:
            raise NodeUnreachableError(
                "no agent with the sandbox role is registered, and this server does not run sandboxes itself",
                fix="start one with `argosy agent --role sandbox`, or unset ARGOSY_SANDBOX_LOCAL_FALLBACK=0",
            )
        return self.local()

    def _on_node(
        self, fn: Callable[[NodeClient], Any], tried: list[str] | None = None
    ) -> tuple[Any, str | None]:
        """Run `fn` on the least loaded node, moving on from nodes that cannot be reached."""
        tried = [] if tried is None else tried
        while True:
            agent = self.agents.pick(set(tried))
            if agent is None:
                return fn(self._no_node(tried)), None
            try:
                with self.agents.lease(agent) as client:
                    return fn(client), agent.node_id
            except NodeUnreachableError:
                log.warning("sandbox node %s unreachable; trying another", agent.node_id)
                self.agents.mark_down(agent)
                tried.append(agent.node_id)
            except NodeLostError:
                self.agents.mark_down(agent)
                raise

    def _record(self, res: ExecResult, node_id: str | None, session_id: str | None) -> ExecResult:
        if res.node is None:
            res.node = node_id
        if self.recorder is not None:
            try:
                self.recorder(res, node_id, session_id)
            except Exception:  # the run happened and its result goes back; the record is logged as lost
                log.exception("could not record sandbox run %s", res.run_id)
        return res

    # -- the runner interface ------------------------------------------------------------------------

    def execute(self, req: ExecRequest, on_output: OutputSink | None = None) -> ExecResult:
        res, node = self._on_node(lambda r: r.execute(req, on_output))
        return self._record(res, node, None)

    def create_session(self, req: SessionCreate) -> SessionInfo:
        info, node = self._on_node(lambda r: r.create_session(req))
        with self._sessions_lock:
            self._sessions[info.id] = node
        return info  # type: ignore[no-any-return]

    def _session_target(self, session_id: str) -> tuple[Any, str | None]:
        """The runner holding `session_id`: sticky, found again by asking after a server restart."""
        with self._sessions_lock:
            known = session_id in self._sessions
            node = self._sessions.get(session_id)
        if known and node is None:
            return self.local(), None
        if known:
            agent = self.agents.get(node)  # type: ignore[arg-type]
            if agent is None:
                raise NodeUnreachableError(
                    f"sandbox session {session_id} lives on node {node}, which no longer heartbeats",
                    fix="its files are on that node; restart its agent, or create a new session",
                )
            return agent, node
        for agent in self.agents.live():
            try:
                with self.agents.hold(agent) as client:
                    client.get_session(session_id)
            except (NotFoundError, NodeUnreachableError, NodeLostError):
                continue
            except Exception:  # a node answering oddly must not hide the session on another
                continue
            with self._sessions_lock:
                self._sessions[session_id] = agent.node_id
            return agent, agent.node_id
        if self.local_fallback:
            local = self.local()
            local.get_session(session_id)  # raises the not-found error with its fix
            with self._sessions_lock:
                self._sessions[session_id] = None
            return local, None
        raise NotFoundError(
            f"no sandbox session '{session_id}' on any node", fix="list sessions with `argosy sandbox ls`"
        )

    def _on_session(self, session_id: str, fn: Callable[[Any], Any]) -> tuple[Any, str | None]:
        target, node = self._session_target(session_id)
        if node is None:
            return fn(target), None
        try:
            with self.agents.hold(target) as client:
                return fn(client), node
        except (NodeUnreachableError, NodeLostError):
            self.agents.mark_down(target)
            raise

    def exec_session(self, session_id: str, req: SessionExec) -> ExecResult:
        res, node = self._on_session(session_id, lambda r: r.exec_session(session_id, req))
        return self._record(res, node, session_id)

    def get_session(self, session_id: str) -> SessionInfo:
        return self._on_session(session_id, lambda r: r.get_session(session_id))[0]  # type: ignore[no-any-return]

    def put_file(self, session_id: str, path: str, data: bytes) -> None:
        self._on_session(session_id, lambda r: r.put_file(session_id, path, data))

    def get_file(self, session_id: str, path: str) -> bytes:
        return self._on_session(session_id, lambda r: r.get_file(session_id, path))[0]  # type: ignore[no-any-return]

    def list_sessions(self) -> list[SessionInfo]:
        out: list[SessionInfo] = []
        for agent in self.agents.live():
            try:
                with self.agents.hold(agent) as client:
                    infos = client.list_sessions()
            except (NodeUnreachableError, NodeLostError):
                continue  # an unreachable node's sessions cannot be listed; doctor says it is down
            with self._sessions_lock:
                for i in infos:
                    self._sessions[i.id] = agent.node_id
            out += infos
        if self.local_fallback and (self._local is not None or not self.agents.live()):
            out += self.local().list_sessions()
        return out

    def delete_session(self, session_id: str) -> None:
        self._on_session(session_id, lambda r: r.delete_session(session_id))
        with self._sessions_lock:
            self._sessions.pop(session_id, None)

    def doctor(self) -> dict[str, Any]:
        agents = self.agents.live()
        nodes: dict[str, Any] = {}
        for agent in agents:
            try:
                with self.agents.hold(agent) as client:
                    nodes[agent.node_id] = client.doctor() | {
                        "agent": agent.describe(self.agents.clock.now())
                    }
            except Exception as exc:  # doctor reports every node, reachable or not
                nodes[agent.node_id] = {"error": str(exc), "agent": agent.describe(self.agents.clock.now())}
        if agents:
            where = f"on {len(agents)} agent(s) with the sandbox role: " + ", ".join(
                a.node_id for a in agents
            )
            base = next((v for v in nodes.values() if "backends" in v), None)
        else:
            where = (
                "on the server's own machine (no agent with the sandbox role is registered)"
                if self.local_fallback
                else "nowhere: no agent with the sandbox role is registered and local runs are off"
            )
            base = None
        if base is None:
            from argosy.sandbox.config import SandboxConfig
            from argosy.sandbox.service import doctor as local_doctor

            base = local_doctor(SandboxConfig.from_env())
        report = {k: v for k, v in base.items() if k not in ("agent", "runs_on", "nodes")}
        return report | {"runs_on": where, "nodes": nodes}

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
        self.agents.close()
