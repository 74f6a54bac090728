"""Running the server process in the foreground (what `argosy server` and the background start do)."""

from __future__ import annotations

import json
import logging
import os

import uvicorn

from argosy.core.config import Settings, ensure_home
from argosy.core.errors import ArgosyError
from argosy.core.host import port_in_use
from argosy.core.log import setup_logging
from argosy.server.app import create_app
from argosy.server.state import ServerState
from argosy.store.db import Store


def serve(settings: Settings, host: str, port: int) -> None:
    ensure_home(settings)
    setup_logging(settings.log_level, "server")
    if port_in_use(host, port):
        raise ArgosyError(
            f"port {port} on {host} is already in use",
            fix="stop the program using it (`argosy server stop` if it is Argosy) or pass --port",
        )
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    store = Store(settings.db_url)
    state = ServerState(settings=settings, store=store, server_url=url)
    app = create_app(state)
    run_file = settings.run_dir / "server.json"
    run_file.write_text(json.dumps({"pid": os.getpid(), "url": url}))
    logging.getLogger(__name__).info(
        "Argosy server on %s (home %s, db %s)", url, settings.home, store.engine.url
    )
    try:
        uvicorn.run(
            app, host=host, port=port, log_level=settings.log_level.lower(), timeout_graceful_shutdown=10
        )
    finally:
        try:
            if json.loads(run_file.read_text()).get("pid") == os.getpid():
                run_file.unlink()
        except (OSError, ValueError):
            pass
        store.close()
