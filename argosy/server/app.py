"""The control-plane API: REST over the services, auth on every call, reconciler loops in the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

import argosy
from argosy.core.errors import ArgosyError
from argosy.fleet import nodes as node_svc
from argosy.providers.lifecycle import preflight_all
from argosy.providers.registry import PROVIDERS
from argosy.serve import deployments as dep_svc
from argosy.serve import engine_glue, router_usage
from argosy.serve.reconciler import TERMINAL_STATES
from argosy.server.auth import authenticate, ensure_admin_key
from argosy.server.state import ServerState
from argosy.store.events import events_for, transition
from argosy.store.keys import revoke_node_keys
from argosy.store.ledger import BILLABLE_STATES, accrue_replica, serverless_totals, totals
from argosy.store.models import Deployment, LedgerEntry, Node, Replica

log = logging.getLogger(__name__)


class DeployBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    name: str | None = None
    provider: str | None = None
    engine: str | None = None
    replicas: int = Field(1, ge=0, le=64)
    engine_args: dict[str, Any] = {}
    gpu: str | None = None
    fallback: str | None = None
    fallback_model: str | None = None
    dry_run: bool = False


class RegisterBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    hostname: str = ""


def _node_json(n: Node) -> dict[str, Any]:
    return {
        "id": n.id,
        "name": n.name,
        "provider": n.provider,
        "instance_id": n.provider_instance_id,
        "status": n.status,
        "address": n.address,
        "region": n.region,
        "price_per_hour": n.price_per_hour,
        "resources": n.resources,
        "metrics": n.metrics,
        "last_heartbeat": n.last_heartbeat,
    }


async def _loop(name: str, interval: float, step: Any, stop: asyncio.Event) -> None:
    """Run `step` (blocking) every `interval` seconds until `stop`; errors are logged, never fatal."""
    while not stop.is_set():
        try:
            await asyncio.to_thread(step)
        except Exception:
            log.exception("%s loop step failed; retrying", name)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


def create_app(state: ServerState, run_loops: bool = True) -> FastAPI:
    settings = state.settings
    store = state.store
    clock = state.clock

    def fleet_step() -> None:
        with store.session() as s:
            node_svc.mark_stale(s, clock.now(), settings.server.heartbeat_timeout_s)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        ensure_admin_key(store, settings.credentials_path, state.server_url, clock.now())
        stop = asyncio.Event()
        tasks = []
        if run_loops:
            # Resuming is just reconciling: desired state is in the store, so the first step after a
            # restart picks up every deployment where it was.
            interval = settings.server.reconcile_interval_s
            tasks = [
                asyncio.create_task(_loop("deployments", interval, state.deployments.reconcile, stop)),
                asyncio.create_task(_loop("fleet", interval, fleet_step, stop)),
                asyncio.create_task(_loop("train", interval, state.train.reconcile, stop)),
            ]
        yield
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        runner = getattr(_app.state, "sandbox_runner", None)
        if runner is not None:  # created on first use; its pool and reaper stop with the server
            await asyncio.to_thread(runner.close)
        await asyncio.to_thread(shutdown_local, state)

    app = FastAPI(title="Argosy", version=argosy.__version__, lifespan=lifespan)
    app.state.clock = clock  # areas that create their own workers (sandbox runner) share the clock
    app.state.train_state = state  # the training routes reach the store, settings and providers

    @app.exception_handler(ArgosyError)
    async def _argosy_error(_req: Request, exc: ArgosyError) -> JSONResponse:
        return JSONResponse(status_code=exc.http_status, content=exc.to_dict())

    def user(request: Request) -> None:
        authenticate(store, request, ("admin", "user"))

    def agent(request: Request) -> Any:
        return authenticate(store, request, ("agent", "admin"))

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True, "version": argosy.__version__}

    api = "/api/v1"

    @app.get(f"{api}/info", dependencies=[Depends(user)])
    def info() -> dict[str, Any]:
        return {"version": argosy.__version__, "server_url": state.server_url, "home": str(settings.home)}

    # -- deployments ---------------------------------------------------------------------------
    @app.post(f"{api}/deployments", dependencies=[Depends(user)])
    def deploy(body: DeployBody) -> dict[str, Any]:
        model, name, lora = body.model, body.name, None
        if not Path(body.model).expanduser().exists():
            # A fine-tune by job id or registered name: its base model plus adapter, or its merged dir.
            from argosy.train.jobs import resolve_for_deploy

            with store.session() as s:
                hit = resolve_for_deploy(s, body.model)
            if hit is not None:
                model, lora, name = hit["model"], hit["lora"], name or hit["name"]
        req = dep_svc.validate(
            dep_svc.DeployRequest(
                model,
                name,
                body.provider,
                body.engine,
                body.replicas,
                body.engine_args,
                body.gpu,
                body.fallback,
                body.fallback_model,
                lora,
            ),
            engine_glue.engine_names(),
            settings.engine.default,
        )
        plan = dep_svc.plan_deployment(
            req,
            state.provider,
            engine_glue.engine_plan(req, settings),
            state.server_url,
            body.fallback,
            settings,
        )
        if body.dry_run:
            return {"dry_run": True, "plan": plan}
        with store.session() as s:
            dep = dep_svc.create(s, req, plan, clock.now())
            out = dep_svc.describe(s, dep)
        return {"dry_run": False, "plan": plan, "deployment": out}

    @app.get(f"{api}/deployments", dependencies=[Depends(user)])
    def list_deployments(all: bool = False) -> list[dict[str, Any]]:
        with store.session() as s:
            q = select(Deployment).order_by(Deployment.created_at)
            if not all:
                q = q.where(Deployment.state != "destroyed")
            return [dep_svc.describe(s, d) for d in s.scalars(q)]

    @app.get(f"{api}/deployments/{{name}}", dependencies=[Depends(user)])
    def get_deployment(name: str) -> dict[str, Any]:
        with store.session() as s:
            return dep_svc.describe(s, dep_svc.get(s, name))

    @app.delete(f"{api}/deployments/{{name}}", dependencies=[Depends(user)])
    def destroy(name: str) -> dict[str, Any]:
        with store.session() as s:
            return dep_svc.describe(s, dep_svc.destroy(s, name, clock.now()))

    @app.get(f"{api}/deployments/{{name}}/logs", dependencies=[Depends(user)])
    def logs(name: str, follow: bool = False, tail: int = 100) -> StreamingResponse:
        with store.session() as s:
            dep = dep_svc.get(s, name)
            dep_id = dep.id
        folder = settings.logs_dir / "deployments" / dep_id
        return StreamingResponse(_stream_logs(folder, follow, tail, state, dep_id), media_type="text/plain")

    # -- events, nodes, ledger, providers -------------------------------------------------------
    @app.get(f"{api}/events", dependencies=[Depends(user)])
    def events(
        deployment: str | None = None, after: int = 0, limit: int = Query(200, ge=1, le=1000)
    ) -> list[dict[str, Any]]:
        with store.session() as s:
            dep_id = dep_svc.get(s, deployment).id if deployment else None
            return [
                {
                    "id": e.id,
                    "ts": e.ts,
                    "kind": e.kind,
                    "object_id": e.object_id,
                    "deployment_id": e.deployment_id,
                    "from": e.from_state,
                    "to": e.to_state,
                    "reason": e.reason,
                }
                for e in events_for(s, dep_id, limit=limit, after_id=after)
            ]

    @app.get(f"{api}/nodes", dependencies=[Depends(user)])
    def list_nodes(all: bool = False) -> list[dict[str, Any]]:
        with store.session() as s:
            q = select(Node).order_by(Node.created_at)
            if not all:
                q = q.where(Node.status != "terminated")
            return [_node_json(n) for n in s.scalars(q)]

    @app.get(f"{api}/ledger", dependencies=[Depends(user)])
    def ledger(deployment: str | None = None) -> dict[str, Any]:
        with store.session() as s:
            q = select(Deployment).order_by(Deployment.created_at)
            deps = [dep_svc.get(s, deployment)] if deployment else list(s.scalars(q))
            rows = []
            for d in deps:
                t = totals(s, d.id)
                spans = s.scalars(select(LedgerEntry).where(LedgerEntry.deployment_id == d.id)).all()
                rows.append(
                    {
                        "deployment": d.name,
                        "state": d.state,
                        "provider": d.provider,
                        "seconds": t["seconds"],
                        "cost_usd": t["cost_usd"],
                        "rates": sorted({e.price_per_hour for e in spans}),
                        "tokens": router_usage.totals(s, d.id),
                        # The fallback endpoint's part of seconds/cost_usd, by where the figure came from.
                        "serverless": serverless_totals(s, d.id),
                    }
                )
            grand = totals(s) if not deployment else totals(s, deps[0].id)
            grand_tokens = router_usage.totals(s, deps[0].id if deployment else None)
            grand_serverless = serverless_totals(s, deps[0].id if deployment else None)
            return {
                "deployments": rows,
                "total": {**grand, "tokens": grand_tokens, "serverless": grand_serverless},
            }

    @app.get(f"{api}/providers", dependencies=[Depends(user)])
    def providers(check: bool = False, name: str | None = None) -> list[dict[str, Any]]:
        names = [name] if name else PROVIDERS.names()
        for n in names:
            if n not in PROVIDERS.names():
                PROVIDERS.load(n)  # raises the did-you-mean error
        checks: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        if check:
            for n, c in preflight_all(names, state.provider):
                checks[n].append({"name": c.name, "ok": c.ok, "detail": c.detail, "fix": c.fix})
        return [
            {
                "name": n,
                "summary": PROVIDERS.entries[n].summary if n in PROVIDERS.entries else "",
                "checks": checks[n],
            }
            for n in names
        ]

    # -- agents --------------------------------------------------------------------------------
    @app.post(f"{api}/agents/register")
    def register(body: RegisterBody, key: Any = Depends(agent)) -> dict[str, Any]:
        with store.session() as s:
            node = node_svc.register(s, key, body.model_dump(), clock.now())
            return {"node_id": node.id, "heartbeat_interval_s": 1.0}

    @app.post(f"{api}/agents/{{node_id}}/heartbeat")
    def heartbeat(node_id: str, report: dict[str, Any], key: Any = Depends(agent)) -> dict[str, Any]:
        if key.role == "agent" and key.node_id != node_id:
            raise ArgosyError("this agent key belongs to another node")
        with store.session() as s:
            answer = node_svc.heartbeat(
                s, node_id, report, clock.now(), settings.logs_dir, state.workload_sources
            )
        # Areas that serve through agents (sandbox) learn each node's services from its reports.
        for hook in app.state.agent_report_hooks:
            hook(node_id, report, answer)
        return answer

    app.state.agent_report_hooks = []
    for extra in (
        "argosy.server.routes_catalog",
        "argosy.server.routes_sandbox",
        "argosy.server.routes_train",
    ):
        _include_optional(app, extra, [Depends(user)], state)

    return app


def _include_optional(app: FastAPI, module: str, deps: list[Any], state: ServerState) -> None:
    """Mount an area's routes if that area has landed (each area owns its routes module)."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return
        raise
    app.include_router(mod.router, dependencies=deps)
    if hasattr(mod, "attach"):  # an area that needs the server's state (store, clock, agent reports)
        mod.attach(app, state)


async def _stream_logs(
    folder: Path, follow: bool, tail: int, state: ServerState, dep_id: str
) -> AsyncIterator[bytes]:
    offsets: dict[Path, int] = {}
    first = True
    while True:
        files = sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime) if folder.exists() else []
        for f in files:
            with f.open("rb") as fh:
                if first and f not in offsets:
                    data = fh.read()
                    lines = data.decode("utf-8", "replace").splitlines(keepends=True)[-tail:]
                    offsets[f] = len(data)
                    if lines:
                        yield "".join(lines).encode()
                    continue
                fh.seek(offsets.get(f, 0))
                data = fh.read()
                offsets[f] = offsets.get(f, 0) + len(data)
                if data:
                    yield data
        first = False
        if not follow:
            return
        with state.store.session() as s:
            dep = s.get(Deployment, dep_id)
            if dep is None or dep.state == "destroyed":
                return
        await asyncio.sleep(0.5)


def shutdown_local(state: ServerState) -> None:
    """On server shutdown, stop what this server runs on this machine: routers and the local agent.

    Desired state stays in the store, so the next start recreates the local replicas at once
    (they end as `terminated`, not `failed`, so no crash-loop back-off applies).
    """
    now = state.clock.now()
    with state.store.session() as s:
        for dep in s.scalars(select(Deployment).where(Deployment.state != "destroyed")):
            try:
                state.routers.stop(dep)  # type: ignore[union-attr]
            except Exception:
                log.exception("stopping the router of %s", dep.name)
            dep.router_pid = None
            dep.router_table_version = ""
        for node in s.scalars(
            select(Node).where(Node.provider == "local", Node.status != "terminated")
        ).all():
            try:
                state.provider("local").terminate(node.provider_instance_id)
            except Exception:
                log.exception("stopping the local agent")
            for r in s.scalars(
                select(Replica).where(Replica.node_id == node.id, Replica.state.notin_(TERMINAL_STATES))
            ):
                dep = s.get(Deployment, r.deployment_id)
                if r.state in BILLABLE_STATES and dep is not None:
                    accrue_replica(s, r, dep.provider, now)
                transition(s, r, "terminated", "server shut down; recreated at next start", now)
            revoke_node_keys(s, node.id, now)
            transition(s, node, "terminated", "server shut down", now)
