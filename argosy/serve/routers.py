"""Each deployment's router process: start it, push its backend table, stop it.

`RouterManager` is the effect boundary the reconciler talks to; `ProcessRouters` runs real
`argosy router` processes on this machine, `MemoryRouters` records tables for simulation.
"""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from argosy.core import proc
from argosy.core.config import Settings
from argosy.core.errors import ArgosyError
from argosy.core.host import free_port, port_in_use
from argosy.store.models import Deployment


@dataclass
class RouterHandle:
    pid: int | None
    port: int
    admin_token: str
    restarted: bool = False
    note: str = ""


class RouterManager(Protocol):
    def ensure(self, dep: Deployment) -> RouterHandle: ...

    def push(self, dep: Deployment, backends: list[dict[str, Any]]) -> None: ...

    def stop(self, dep: Deployment) -> None: ...

    def usage(self, dep: Deployment) -> dict[str, Any] | None:
        """The router's `/router/usage` report (token counters since its start), None if unreachable."""
        ...


class ProcessRouters:
    """Real router processes on loopback (or `host`), one per deployment."""

    def __init__(self, settings: Settings, host: str = "127.0.0.1") -> None:
        self.settings = settings
        self.host = host

    def _url(self, port: int) -> str:
        return f"http://{self.host}:{port}"

    def _healthy(self, port: int) -> bool:
        try:
            return httpx.get(self._url(port) + "/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def ensure(self, dep: Deployment) -> RouterHandle:
        token = dep.router_admin_token or secrets.token_urlsafe(24)
        if dep.router_port and proc.alive(dep.router_pid) and self._healthy(dep.router_port):
            return RouterHandle(dep.router_pid, dep.router_port, token)
        proc.stop(dep.router_pid)
        port, note = dep.router_port, ""
        if not port or port_in_use(self.host, port):
            if port:
                note = f"port {port} is taken by another process; the router moved to a new port"
            port = free_port(self.host)
        argv = [sys.executable, "-m", "argosy", "router", "--listen", f"{self.host}:{port}"]
        env = {**os.environ, "ARGOSY_ROUTER_ADMIN_TOKEN": token, "ARGOSY_HOME": str(self.settings.home)}
        log = self.settings.logs_dir / f"router-{dep.name}.log"
        p = proc.spawn(argv, log, env=env)
        if not proc.wait_until(lambda: self._healthy(port) or p.poll() is not None, timeout=30):
            proc.stop(p.pid)
            raise ArgosyError(f"the router for '{dep.name}' did not start in 30 s", fix=f"see {log}")
        if p.poll() is not None:
            last = "\n".join(proc.tail(log, 10))
            raise ArgosyError(f"the router for '{dep.name}' exited at start:\n{last}", fix=f"see {log}")
        return RouterHandle(p.pid, port, token, restarted=True, note=note)

    def push(self, dep: Deployment, backends: list[dict[str, Any]]) -> None:
        if not dep.router_port:
            raise ArgosyError(f"deployment '{dep.name}' has no router yet")
        r = httpx.put(
            self._url(dep.router_port) + "/router/backends",
            json={"backends": backends},
            headers={"Authorization": f"Bearer {dep.router_admin_token}"},
            timeout=5.0,
        )
        if r.status_code >= 300:
            raise ArgosyError(
                f"the router for '{dep.name}' refused its backend table: {r.status_code} {r.text[:200]}"
            )

    def stop(self, dep: Deployment) -> None:
        proc.stop(dep.router_pid)

    def usage(self, dep: Deployment) -> dict[str, Any] | None:
        if not dep.router_port or not dep.router_admin_token:
            return None
        try:
            r = httpx.get(
                self._url(dep.router_port) + "/router/usage",
                headers={"Authorization": f"Bearer {dep.router_admin_token}"},
                timeout=2.0,
            )
            body = r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        return body if isinstance(body, dict) else None


@dataclass
class MemoryRouters:
    """Routers as in-memory tables: for reconciler tests and the simulator."""

    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    running: dict[str, int] = field(default_factory=dict)
    next_port: int = 20000
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)  # what `usage` answers, by name

    def ensure(self, dep: Deployment) -> RouterHandle:
        if dep.name in self.running:
            return RouterHandle(None, self.running[dep.name], dep.router_admin_token or "t")
        self.next_port += 1
        self.running[dep.name] = dep.router_port or self.next_port
        return RouterHandle(None, self.running[dep.name], "t", restarted=True)

    def push(self, dep: Deployment, backends: list[dict[str, Any]]) -> None:
        self.tables[dep.name] = backends

    def stop(self, dep: Deployment) -> None:
        self.running.pop(dep.name, None)
        self.tables.pop(dep.name, None)

    def usage(self, dep: Deployment) -> dict[str, Any] | None:
        return self.reports.get(dep.name) if dep.name in self.running else None
