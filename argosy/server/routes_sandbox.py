"""Sandbox API: one-shot execution and sessions. Thin: the work is in argosy.sandbox.service.

The server includes `router` behind its auth and calls `attach(app, state)`, which feeds agents'
heartbeats into an AgentTable. The runner lives on `app.state.sandbox_runner`: `install(app, runner)`
puts one there (tests); otherwise the first request makes a ClusterRunner that proxies to agents
with the `sandbox` role and runs on the server's own machine when none is registered (an app
without `attach`, e.g. an agent's own endpoint, gets a plain LocalRunner).

`node_app(runner, token)` is the same API as an agent serves it: one bearer token, no store.
Handlers are plain `def`s: FastAPI runs them in its thread pool, where a run blocks one thread
while the admission queue bounds how many do.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import fastapi
from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from argosy.core.errors import ArgosyError
from argosy.sandbox.cluster import AgentTable, ClusterRunner
from argosy.sandbox.config import SandboxConfig
from argosy.sandbox.errors import SandboxBusyError
from argosy.sandbox.models import ExecRequest, ExecResult, SessionCreate, SessionExec, SessionInfo
from argosy.sandbox.service import LocalRunner, SandboxRunner

router = fastapi.APIRouter(prefix="/api/v1", tags=["sandbox"])
log = logging.getLogger(__name__)

# Guards the one-time creation of the default runner; holds no state of its own.
_CREATE_LOCK = threading.Lock()
T = TypeVar("T")


def install(app: fastapi.FastAPI, runner: SandboxRunner) -> None:
    app.state.sandbox_runner = runner


def attach(app: fastapi.FastAPI, server_state: Any) -> None:
    """Inside the server: learn sandbox agents from heartbeats, record runs in the store."""
    from argosy.sandbox.runs import StoreRecorder

    agents = AgentTable(server_state.clock, server_state.settings.server.heartbeat_timeout_s)
    app.state.sandbox_agents = agents
    app.state.sandbox_recorder = StoreRecorder(server_state.store, server_state.clock)
    app.state.sandbox_store = server_state.store
    hooks = getattr(app.state, "agent_report_hooks", None)
    if hooks is None:
        hooks = app.state.agent_report_hooks = []

    def observe(node_id: str, report: dict[str, Any], answer: dict[str, Any]) -> None:
        try:
            agents.observe(node_id, report, bool(answer.get("terminate")))
        except (TypeError, ValueError, AttributeError):  # a malformed report must not fail the heartbeat
            log.warning("node %s sent a malformed sandbox service report; ignored", node_id)

    hooks.append(observe)


def runner_of(request: Request) -> SandboxRunner:
    state = request.app.state
    existing = getattr(state, "sandbox_runner", None)
    if existing is not None:
        return existing  # type: ignore[no-any-return]
    with _CREATE_LOCK:
        existing = getattr(state, "sandbox_runner", None)
        if existing is None:
            clock = getattr(state, "clock", None)
            agents = getattr(state, "sandbox_agents", None)
            if agents is None:
                local = LocalRunner(clock=clock)
                local.start_background()
                existing = local
            else:
                existing = ClusterRunner(
                    agents,
                    lambda: LocalRunner(clock=clock),
                    local_fallback=SandboxConfig.from_env().local_fallback,
                    recorder=getattr(state, "sandbox_recorder", None),
                )
            state.sandbox_runner = existing
    return existing  # type: ignore[no-any-return]


def _answer(fn: Callable[[], T]) -> T | JSONResponse:
    """Errors as the rest of the API shapes them; 429 also says when to retry."""
    try:
        return fn()
    except SandboxBusyError as exc:
        return JSONResponse(
            exc.to_dict(), status_code=429, headers={"Retry-After": str(max(1, round(exc.retry_after)))}
        )
    except ArgosyError as exc:
        return JSONResponse(exc.to_dict(), status_code=exc.http_status)


@router.post("/sandbox/execute", response_model=ExecResult)
def execute(req: ExecRequest, request: Request, stream: bool = False) -> Any:
    """Run code once in a fresh sandbox. `?stream=true` answers with SSE: `stdout` / `stderr` events
    as output arrives, then one `result` event (the same JSON as without streaming) or `error`."""
    runner = runner_of(request)
    if not stream:
        return _answer(lambda: runner.execute(req))
    return StreamingResponse(
        _sse(runner, req), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


async def _sse(runner: SandboxRunner, req: ExecRequest) -> AsyncIterator[bytes]:
    # The run blocks, so it gets its own thread, which must outlive the run: bwrap's
    # --die-with-parent is tied to the thread that started it. The queue holds at most the
    # output cap's worth of chunks plus one result.
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    decoders = {s: codecs.getincrementaldecoder("utf-8")("replace") for s in ("stdout", "stderr")}

    def on_output(stream_name: str, chunk: bytes) -> None:
        text = decoders[stream_name].decode(chunk)
        if text:
            events.put((stream_name, {"text": text}))

    def work() -> None:
        try:
            res = runner.execute(req, on_output=on_output)
            events.put(("result", res.model_dump()))
        except ArgosyError as exc:
            events.put(("error", exc.to_dict() | {"status": exc.http_status}))
        except Exception as exc:  # the stream must end with an event, whatever happened
            events.put(
                ("error", {"error": type(exc).__name__, "message": str(exc), "fix": None, "status": 500})
            )

    threading.Thread(target=work, name="sandbox-sse", daemon=True).start()
    while True:
        name, data = await asyncio.to_thread(events.get)
        yield _event(name, data)
        if name in ("result", "error"):
            return


@router.get("/sandbox/runs")
def list_runs(
    request: Request, limit: int = fastapi.Query(50, ge=1, le=1000), node: str | None = None
) -> Any:
    """Recent runs this server brokered, newest first (with what each cost)."""
    from argosy.sandbox.runs import list_runs as query

    store = getattr(request.app.state, "sandbox_store", None)
    if store is None:
        return JSONResponse(
            {
                "error": "NotFoundError",
                "message": "this endpoint keeps no run history (runs are recorded by the server)",
                "fix": "ask the Argosy server: `argosy sandbox ls --runs`",
            },
            status_code=404,
        )
    with store.session() as s:
        return query(s, limit, node)


@router.get("/sandbox/doctor")
def doctor(request: Request) -> Any:
    runner = runner_of(request)
    return _answer(runner.doctor)


@router.post("/sandboxes", response_model=SessionInfo, status_code=201)
def create_session(req: SessionCreate, request: Request) -> Any:
    runner = runner_of(request)
    return _answer(lambda: runner.create_session(req))


@router.get("/sandboxes", response_model=list[SessionInfo])
def list_sessions(request: Request) -> Any:
    runner = runner_of(request)
    return _answer(runner.list_sessions)


@router.get("/sandboxes/{session_id}", response_model=SessionInfo)
def get_session(session_id: str, request: Request) -> Any:
    runner = runner_of(request)

    return _answer(lambda: runner.get_session(session_id))


@router.post("/sandboxes/{session_id}/exec", response_model=ExecResult)
def exec_session(session_id: str, req: SessionExec, request: Request) -> Any:
    runner = runner_of(request)
    return _answer(lambda: runner.exec_session(session_id, req))


@router.put("/sandboxes/{session_id}/files/{path:path}")
async def put_file(session_id: str, path: str, request: Request) -> Any:
    runner = runner_of(request)
    data = await request.body()

    def put() -> dict[str, Any]:
        runner.put_file(session_id, path, data)
        return {"path": path, "bytes": len(data)}

    # File writes are quick, but keep the event loop free of disk work all the same.
    return await fastapi.concurrency.run_in_threadpool(_answer, put)


@router.get("/sandboxes/{session_id}/files/{path:path}")
def get_file(session_id: str, path: str, request: Request) -> Any:
    runner = runner_of(request)
    out = _answer(lambda: runner.get_file(session_id, path))
    if isinstance(out, JSONResponse):
        return out
    return Response(content=out, media_type="application/octet-stream")


@router.delete("/sandboxes/{session_id}")
def delete_session(session_id: str, request: Request) -> Any:
    runner = runner_of(request)

    def delete() -> dict[str, Any]:
        runner.delete_session(session_id)
        return {"id": session_id, "deleted": True}

    return _answer(delete)


def node_app(runner: SandboxRunner, token: str) -> fastapi.FastAPI:
    """The sandbox API as an agent serves it to the server: this node's runner, one bearer token."""
    import hmac

    def check(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise fastapi.HTTPException(401, "this sandbox node only answers its server")

    app = fastapi.FastAPI(title="Argosy sandbox node", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True}

    app.include_router(router, dependencies=[fastapi.Depends(check)])
    install(app, runner)
    return app
