"""The sandbox role of `argosy agent`: this node's sandbox runner behind a small authenticated endpoint.

Why an HTTP endpoint on the node rather than commands over heartbeats: a run is interactive (SSE
output as it comes, results in milliseconds, sessions with file transfer), and a heartbeat round
trip is a second. Why in the agent's process: the runner's sandboxes die with the process that
started them (bwrap --die-with-parent), so nothing a run starts outlives the agent, and the agent
reports the service's load from memory. The endpoint listens on the node's `--address` (the one the
server already uses to reach its engines), on a port of its own, and answers only a bearer token
made fresh at each start and handed to the server in the (authenticated) heartbeats.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from typing import Any

from argosy.core.errors import ArgosyError


class SandboxService:
    def __init__(self, address: str, port: int = 0, node: Any = None, config: Any = None) -> None:
        import uvicorn

        from argosy.sandbox.config import SandboxConfig
        from argosy.sandbox.service import LocalRunner
        from argosy.server.routes_sandbox import node_app

        self.config = config or SandboxConfig.from_env()
        self.runner = LocalRunner(self.config, node=node)
        self.token = secrets.token_urlsafe(32)
        self.sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((address, port))
        except OSError as exc:
            self.sock.close()
            self.runner.close()
            raise ArgosyError(
                f"the sandbox endpoint cannot listen on {address}:{port}: {exc.strerror}",
                fix="pass another --sandbox-port (0 picks a free one) or check --address",
            ) from exc
        self.sock.listen(128)
        host = f"[{address}]" if ":" in address else address
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(
            node_app(self.runner, self.token), log_level="warning", access_log=False, lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.runner.start_background()
        # Not the main thread: uvicorn then leaves signal handling to the agent's loop.
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="sandbox-endpoint", daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            if not self.thread.is_alive():
                raise ArgosyError("the sandbox endpoint failed to start", fix="see the agent's log")
            time.sleep(0.01)

    def services(self) -> dict[str, Any]:
        """What the heartbeat says about this node's sandbox service."""
        adm = self.runner.admission
        return {
            "sandbox": {
                "url": self.url,
                "token": self.token,
                "backend": self.config.backend,
                "max_concurrent": adm.max_concurrent,
                "max_queue": adm.max_queue,
                "active": adm.active,
                "waiting": adm.waiting,
                "pool": {k: len(v) for k, v in self.runner.pool.ready.items()},
            }
        }

    def close(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)
        self.runner.close()
        self.sock.close()
