"""The node agent: registers, heartbeats, and runs the workloads the server wants on this node.

Level-triggered: every heartbeat reports what actually runs and receives what should run; the agent
converges one to the other. Engine preparation (building a binary, converting weights) happens in a
worker thread so heartbeats never stall; processes are started from the main thread so that
PR_SET_PDEATHSIG ties them to the agent's life. Nothing it starts survives it being stopped.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from argosy.core import proc
from argosy.core.config import Settings
from argosy.core.errors import ArgosyError
from argosy.core.host import free_port, host_facts

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 30
MAX_LOG_SHIP_BYTES = 64 * 1024


@dataclass
class Launch:
    """What a prepared workload needs to start: argv, env, and where to probe its health.

    A workload with no health URL runs to completion (a training run): it is "running" while its
    process lives, and its exit code is the result. Its `progress_path`, if any, is a JSON-lines
    file whose new whole lines are shipped in heartbeats (with their byte offsets, so the server
    can skip what it already has after a lost beat or an agent restart).
    """

    argv: list[str]
    env: dict[str, str]
    health_url: str | None
    progress_path: str | None = None
    cwd: str | None = None


# prepare(spec, port, progress) -> Launch; runs in a worker thread (may take minutes the first time).
Preparer = Callable[[dict[str, Any], int, Callable[[str], None]], Launch]


@dataclass
class Workload:
    id: str
    spec: dict[str, Any]
    port: int
    log_path: Path
    state: str = "preparing"  # preparing -> starting -> healthy | unhealthy (or running, no health URL) -> exited | failed | stopped
    since: float = field(default_factory=time.time)
    message: str = ""
    launch: Launch | None = None
    process: Any = None  # subprocess.Popen
    exit_code: int | None = None
    log_offset: int = 0
    progress_offset: int = 0  # bytes of the progress file the server has acknowledged
    progress_sent: int | None = None  # where the last shipped batch ended, until the server answers
    health_failures: int = 0
    thread: threading.Thread | None = None

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": self.state,
            "port": self.port,
            "pid": self.process.pid if self.process is not None else None,
            "since": self.since,
            "message": self.message,
        }
        if self.exit_code is not None:
            out["exit_code"] = self.exit_code
        if self.state in ("exited", "failed"):
            out["log_tail"] = proc.tail(self.log_path, LOG_TAIL_LINES)
        return out


class Agent:
    def __init__(
        self,
        server_url: str,
        token: str,
        settings: Settings,
        prepare: Preparer,
        name: str | None = None,
        interval: float = 1.0,
        host: str = "127.0.0.1",
        roles: tuple[str, ...] = (),
        services: Callable[[], dict[str, Any]] | None = None,
        spot_notice: Callable[[], str | None] | None = None,
        spot_poll_s: float = 5.0,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        # Roles beyond running workloads (e.g. "sandbox"), and what their services report in each
        # heartbeat: {"sandbox": {"url", "token", "max_concurrent", ...}}. The role's service
        # itself is started by the caller (the CLI); this layer only reports it.
        self.roles = roles
        self.services = services
        # On a spot machine: the provider's reclaim-notice check (SpotNotice), polled every
        # spot_poll_s in its own thread; the first notice rides on every heartbeat from then on.
        self.spot_notice = spot_notice
        self.spot_poll_s = spot_poll_s
        self.preemption_notice: str | None = None
        self.settings = settings
        self.prepare = prepare
        self.name = name
        self.interval = interval
        self.host = host
        self.client = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=10.0)
        self.node_id: str | None = None
        self.workloads: dict[str, Workload] = {}
        self.finished: dict[str, dict[str, Any]] = {}  # stopped workloads, reported once
        self.stop_event = threading.Event()
        self.work_dir = settings.home / "agent"

    # -- talking to the server -----------------------------------------------------------------
    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self.client.post(f"{self.server_url}/api/v1{path}", json=body)
        if r.status_code == 401:
            raise ArgosyError(
                f"the server refused this agent's token: {r.text[:200]}", fix="re-provision the node"
            )
        r.raise_for_status()
        return dict(r.json())

    def register(self) -> None:
        facts = host_facts()
        facts["address"] = self.host
        if self.name:
            facts["name"] = self.name
        if self.roles:
            facts["roles"] = list(self.roles)
        self.node_id = str(self._post("/agents/register", facts)["node_id"])
        log.info("registered as node %s", self.node_id)

    def heartbeat(self) -> dict[str, Any]:
        report = {
            "workloads": {w.id: w.report() for w in self.workloads.values()} | self.finished,
            "logs": self._new_logs(),
            "metrics": {
                "cpu_percent": psutil.cpu_percent(interval=None),
                "mem_percent": psutil.virtual_memory().percent,
                "load1": psutil.getloadavg()[0],
            },
        }
        if self.roles:
            report["roles"] = list(self.roles)
        if self.services is not None:
            report["services"] = self.services()
        if self.preemption_notice:
            report["preemption_notice"] = self.preemption_notice
        progress = self._new_progress()
        if progress:
            report["progress"] = progress
        answer = self._post(f"/agents/{self.node_id}/heartbeat", report)
        self.finished = {}
        for w in self.workloads.values():  # acknowledged: the next beat ships what follows
            if w.progress_sent is not None:
                w.progress_offset, w.progress_sent = w.progress_sent, None
        return answer

    def _new_progress(self) -> dict[str, list[list[Any]]]:
        """New whole lines of each workload's progress file, as [byte offset, line] pairs."""
        out: dict[str, list[list[Any]]] = {}
        for w in self.workloads.values():
            w.progress_sent = None
            if w.launch is None or not w.launch.progress_path:
                continue
            try:
                with open(w.launch.progress_path, "rb") as f:
                    f.seek(w.progress_offset)
                    data = f.read(MAX_LOG_SHIP_BYTES)
            except OSError:
                continue
            cut = data.rfind(b"\n") + 1
            if not cut:
                continue
            pairs, pos = [], w.progress_offset
            for raw in data[:cut].split(b"\n")[:-1]:
                pairs.append([pos, raw.decode("utf-8", "replace")])
                pos += len(raw) + 1
            w.progress_sent = pos
            out[w.id] = pairs
        return out

    def _new_logs(self) -> dict[str, list[str]]:
        out = {}
        for w in self.workloads.values():
            try:
                with w.log_path.open("rb") as f:
                    f.seek(w.log_offset)
                    data = f.read(MAX_LOG_SHIP_BYTES)
            except OSError:
                continue
            # Ship whole lines only; a partial last line waits for the next beat.
            cut = data.rfind(b"\n") + 1
            if cut:
                w.log_offset += cut
                out[w.id] = data[:cut].decode("utf-8", "replace").splitlines()
        return out

    # -- converging workloads --------------------------------------------------------------------
    def converge(self, desired: list[dict[str, Any]]) -> None:
        wanted = {d["id"]: d for d in desired}
        for wid in list(self.workloads):
            if wid not in wanted:
                self._stop(self.workloads.pop(wid))
        for wid, spec in wanted.items():
            if wid not in self.workloads:
                self._begin(spec)
        for w in self.workloads.values():
            self._observe(w)

    def _begin(self, spec: dict[str, Any]) -> None:
        wid = spec["id"]
        w = Workload(
            id=wid, spec=spec, port=free_port(self.host), log_path=self.work_dir / "logs" / f"{wid}.log"
        )
        w.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.workloads[wid] = w

        def progress(msg: str) -> None:
            w.message = msg
            with w.log_path.open("a") as f:
                f.write(f"[argosy-agent] {msg}\n")

        def run() -> None:
            try:
                w.launch = self.prepare(spec, w.port, progress)
            except ArgosyError as exc:
                w.state, w.message = "failed", str(exc)
                progress(f"preparation failed: {exc}")
            except Exception as exc:  # report, never die: the server decides what to do
                log.exception("preparing %s", wid)
                w.state, w.message = "failed", f"preparation failed: {exc!r}"
                progress(w.message)

        w.thread = threading.Thread(target=run, name=f"prepare-{wid}", daemon=True)
        w.thread.start()

    def _observe(self, w: Workload) -> None:
        if w.state == "preparing" and w.launch is not None:
            self._spawn(w)
        if w.process is None or w.state in ("exited", "failed", "stopped"):
            return
        code = w.process.poll()
        if code is not None:
            w.exit_code = code
            w.state = "exited"
            w.since = time.time()
            what = "engine" if w.spec.get("kind", "engine") == "engine" else str(w.spec.get("kind"))
            w.message = f"{what} exited with code {code}" + (f" (signal {-code})" if code < 0 else "")
            return
        if w.launch is not None and w.launch.health_url is None:
            return  # runs to completion: alive is all there is to know until it exits
        ok = self._probe(w)
        if ok:
            w.health_failures = 0
            if w.state != "healthy":
                w.state, w.since, w.message = "healthy", time.time(), "serving"
        elif w.state == "healthy":
            w.health_failures += 1
            if w.health_failures >= 3:
                w.state, w.since, w.message = "unhealthy", time.time(), "health check failing"

    def _probe(self, w: Workload) -> bool:
        assert w.launch is not None and w.launch.health_url is not None
        try:
            return httpx.get(w.launch.health_url, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _spawn(self, w: Workload) -> None:
        assert w.launch is not None
        try:
            w.process = proc.spawn(
                w.launch.argv,
                w.log_path,
                env=w.launch.env,
                cwd=Path(w.launch.cwd) if w.launch.cwd else None,
                die_with_parent=True,
            )
        except OSError as exc:
            w.state, w.message = "failed", f"could not start the {w.spec.get('kind', 'engine')}: {exc}"
            return
        # Without a health URL there is no "healthy" to wait for: the process running is the state.
        w.state = "starting" if w.launch.health_url is not None else "running"
        w.since, w.message = time.time(), f"started pid {w.process.pid}"

    def _stop(self, w: Workload) -> None:
        if w.process is not None:
            proc.stop(w.process.pid, timeout=10)
            w.process.wait(timeout=5)
        self.finished[w.id] = {"state": "stopped", "port": w.port, "since": time.time(), "message": "stopped"}

    def stop_all(self) -> None:
        for wid in list(self.workloads):
            self._stop(self.workloads.pop(wid))

    # -- spot reclaim notice ------------------------------------------------------------------------
    def poll_spot_notice(self) -> str | None:
        """Check the metadata notice once; the first one seen is kept (a notice is never withdrawn)."""
        if self.spot_notice is not None and self.preemption_notice is None:
            notice = self.spot_notice()
            if notice:
                log.warning("spot reclaim notice: %s", notice)
                self.preemption_notice = notice
        return self.preemption_notice

    def _watch_spot(self) -> None:
        while not self.stop_event.is_set() and self.poll_spot_notice() is None:
            self.stop_event.wait(self.spot_poll_s)

    # -- main loop -------------------------------------------------------------------------------
    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        if self.spot_notice is not None:
            threading.Thread(target=self._watch_spot, name="spot-notice", daemon=True).start()
        backoff = 0.5
        try:
            while not self.stop_event.is_set():
                try:
                    if self.node_id is None:
                        self.register()
                    answer = self.heartbeat()
                    if answer.get("terminate"):
                        log.info("the server terminated this node; stopping")
                        break
                    self.converge(answer.get("workloads", []))
                    backoff = 0.5
                    self.stop_event.wait(self.interval)
                except (httpx.HTTPError, OSError) as exc:
                    # The server may be restarting: keep the workloads, retry with back-off.
                    log.warning("server unreachable (%s); retrying in %.1fs", exc, backoff)
                    for w in self.workloads.values():
                        self._observe(w)
                    self.stop_event.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
        finally:
            self.stop_all()
            self.client.close()
