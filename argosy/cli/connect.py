"""Finding the server: a configured remote one, or the embedded local one (started on demand)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console

from argosy.client import ArgosyClient
from argosy.core import proc
from argosy.core.config import Settings, ensure_home, load_settings
from argosy.core.credentials import read_credentials
from argosy.core.errors import ArgosyError, ServerUnreachableError
from argosy.core.host import port_in_use


@dataclass
class LocalServer:
    pid: int
    url: str


def server_file(settings: Settings) -> Path:
    return settings.run_dir / "server.json"


def running_local(settings: Settings) -> LocalServer | None:
    try:
        data = json.loads(server_file(settings).read_text())
    except (OSError, ValueError):
        return None
    if not proc.alive(data.get("pid")):
        return None
    return LocalServer(int(data["pid"]), str(data["url"]))


def healthy(url: str) -> bool:
    try:
        return httpx.get(url.rstrip("/") + "/healthz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def start_local(
    settings: Settings, console: Console, host: str | None = None, port: int | None = None
) -> LocalServer:
    """Start the embedded server in the background and wait until it answers."""
    ensure_home(settings)
    host = host or settings.server.host
    port = port or settings.server.port
    url = f"http://{host}:{port}"
    if port_in_use(host, port):
        raise ArgosyError(
            f"port {port} on {host} is already in use by another program",
            fix="stop that program, or choose another port: ARGOSY_SERVER_PORT=<port> (or `argosy server start --port <port>`)",
        )
    log = settings.logs_dir / "server.log"
    argv = [sys.executable, "-m", "argosy", "server", "--host", host, "--port", str(port)]
    p = proc.spawn(argv, log, env={**os.environ, "ARGOSY_HOME": str(settings.home)})
    with console.status(f"starting a local Argosy server at {url}…"):
        ok = proc.wait_until(lambda: healthy(url) or p.poll() is not None, timeout=60, interval=0.2)
    if not ok or p.poll() is not None:
        proc.stop(p.pid)
        last = "\n".join(proc.tail(log, 15))
        raise ArgosyError(f"the local server did not start:\n{last}", fix=f"see {log}")
    console.print(
        f"[dim]started a local Argosy server at {url} (pid {p.pid}; logs: {log}; stop: argosy server stop)[/]"
    )
    return LocalServer(p.pid, url)


def connect(console: Console | None = None, autostart: bool = True) -> ArgosyClient:
    """A client for the configured server, starting the embedded one if none is configured or running."""
    console = console or Console(stderr=True, soft_wrap=True)
    settings = load_settings()
    creds = read_credentials(settings.credentials_path)
    if settings.server.url:
        key = os.environ.get("ARGOSY_API_KEY") or creds.get("api_key")
        return ArgosyClient(settings.server.url, key)
    local = running_local(settings)
    if local is None or not healthy(local.url):
        if not autostart:
            raise ServerUnreachableError(
                "no Argosy server is running", fix="start one with `argosy server start`"
            )
        local = start_local(settings, console)
        creds = read_credentials(settings.credentials_path)
    key = os.environ.get("ARGOSY_API_KEY") or creds.get("api_key")
    if not key:
        raise ArgosyError(
            f"no API key in {settings.credentials_path}",
            fix="restart the server (`argosy server stop && argosy server start`)",
        )
    return ArgosyClient(local.url, key)
