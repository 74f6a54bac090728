"""Fine-tuning API: datasets (streaming upload, list, stats, preview) and jobs (submit, list, get,
cancel, resume, rerun, metrics, live progress over SSE, report). Thin: the work is in argosy.train.

The server mounts `router` behind its auth and calls `attach(app, state)` so the handlers reach the
store, settings, clock and providers of this server. `attach` also mounts `agent_router`: what a
node apart from the server calls with its own (node-scoped) agent key to fetch a job's inputs and
upload its output (argosy/train/remote.py is the other side).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import fastapi
from fastapi import Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from argosy.core.errors import ArgosyError, ConflictError, NotFoundError
from argosy.server.auth import authenticate
from argosy.store.models import Event, TrainJob, TrainMetric
from argosy.train import datasets, transfer
from argosy.train import jobs as job_svc
from argosy.train.reconciler import job_of, workload_id

router = fastapi.APIRouter(prefix="/api/v1/train", tags=["train"])

UPLOAD_CHUNK = 1 << 20


def attach(app: fastapi.FastAPI, state: Any) -> None:
    app.state.train_state = state
    if not hasattr(app.state, "train_upload_max_bytes"):
        app.state.train_upload_max_bytes = transfer.DEFAULT_MAX_OUTPUT_BYTES
    app.include_router(agent_router)  # its own auth: node-scoped agent keys, not user keys


def _state(request: Request) -> Any:
    st = getattr(request.app.state, "train_state", None)
    if st is None:
        raise ArgosyError("the training API is not attached to a server state", fix="restart the server")
    return st


# -- datasets -------------------------------------------------------------------------------------
def _meta_path(home: Path, digest: str) -> Path:
    return datasets.dataset_dir(home) / f"{digest}.meta.json"


def _dataset_json(home: Path, path: Path) -> dict[str, Any]:
    digest = path.name.removesuffix(".jsonl")
    try:
        meta = json.loads(_meta_path(home, digest).read_text())
    except (OSError, ValueError):
        meta = {}
    return {
        "digest": digest,
        "name": meta.get("name"),
        "uploaded_at": meta.get("uploaded_at"),
        **meta.get("stats", {}),
    }


@router.post("/datasets")
async def upload_dataset(
    request: Request, name: str | None = None, max_bytes: int | None = None
) -> dict[str, Any]:
    """The request body is the file, streamed: spooled to disk as it arrives (never all in memory),
    refused past the cap, then validated and stored content-addressed."""
    st = _state(request)
    home: Path = st.settings.home
    cap = min(max_bytes or datasets.DEFAULT_MAX_BYTES, datasets.DEFAULT_MAX_BYTES)
    d = datasets.dataset_dir(home)
    d.mkdir(parents=True, exist_ok=True)
    fd, spool = tempfile.mkstemp(dir=d, suffix=".upload")
    try:
        size = 0
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > cap:
                    raise datasets.DatasetError(
                        f"dataset is larger than the {cap} byte limit",
                        fix="split it, or raise the limit (max_bytes) on the server",
                    )
                out.write(chunk)

        def chunks() -> Iterator[bytes]:
            with open(spool, "rb") as f:
                while block := f.read(UPLOAD_CHUNK):
                    yield block

        digest, path, stats = await asyncio.to_thread(datasets.store_stream, chunks(), home, cap)
    finally:
        Path(spool).unlink(missing_ok=True)
    meta = {"name": name, "uploaded_at": time.time(), "stats": stats.to_dict()}
    mp = _meta_path(home, digest)
    if not mp.exists() or name:
        mp.write_text(json.dumps(meta))
    return {"digest": digest, "path": str(path), "name": name, **stats.to_dict()}


@router.get("/datasets")
def list_datasets(request: Request) -> list[dict[str, Any]]:
    home = _state(request).settings.home
    d = datasets.dataset_dir(home)
    files = sorted(d.glob("*.jsonl"), key=lambda p: p.stat().st_mtime) if d.exists() else []
    return [_dataset_json(home, p) for p in files]


def _resolve_dataset(home: Path, ref: str) -> Path:
    try:
        return datasets.resolve(home, ref)
    except datasets.DatasetError:
        pass
    d = datasets.dataset_dir(home)
    for meta in sorted(d.glob("*.meta.json")) if d.exists() else []:
        try:
            if json.loads(meta.read_text()).get("name") == ref:
                return d / meta.name.replace(".meta.json", ".jsonl")
        except (OSError, ValueError):
            continue
    raise NotFoundError(f"no dataset '{ref}'", fix="`argosy dataset ls` lists the uploaded datasets")


@router.get("/datasets/{ref}")
def show_dataset(request: Request, ref: str, model: str | None = None) -> dict[str, Any]:
    """Stats; with `model` (a local HF dir), token counts use that model's tokenizer."""
    home = _state(request).settings.home
    path = _resolve_dataset(home, ref)
    if model:
        counter, used = _tokenizer_counter(model)
        stats = datasets.analyse(path, counter, used)
    else:
        stats = datasets.analyse(path)
    return {**_dataset_json(home, path), **stats.to_dict(), "path": str(path)}


def _tokenizer_counter(model: str) -> tuple[Any, str]:
    base, _ = job_svc.check_base_model(model)
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise ArgosyError(
            "counting tokens with a model's tokenizer needs transformers", fix="pip install -e '.[train]'"
        ) from exc
    tok = AutoTokenizer.from_pretrained(str(base))
    return (lambda text: len(tok(text)["input_ids"])), f"tokenizer of {base.name}"


@router.get("/datasets/{ref}/preview")
def preview_dataset(request: Request, ref: str, n: int = Query(5, ge=1, le=100)) -> dict[str, Any]:
    home = _state(request).settings.home
    path = _resolve_dataset(home, ref)
    return {"digest": path.name.removesuffix(".jsonl"), "rows": datasets.preview(path, n)}


# -- jobs -----------------------------------------------------------------------------------------
class TrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_model: str
    dataset: str
    params: dict[str, Any] = {}
    name: str | None = None
    provider: str | None = None
    gpu: str | None = None
    priority: int = Field(0, ge=-1000, le=1000)
    share_node: bool = False
    max_attempts: int = Field(3, ge=1, le=20)
    node: str | None = None


class RerunBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    params: dict[str, Any] = {}
    name: str | None = None
    priority: int | None = None


@router.post("/jobs")
def submit_job(request: Request, body: TrainBody) -> dict[str, Any]:
    st = _state(request)
    home = st.settings.home
    dataset = body.dataset
    with contextlib.suppress(ArgosyError):  # submit reports a missing dataset with its fix
        dataset = _resolve_dataset(home, body.dataset).name.removesuffix(".jsonl")
    req = job_svc.TrainRequest(
        base_model=body.base_model,
        dataset=dataset,
        params=dict(body.params),
        name=body.name,
        provider=body.provider,
        gpu=body.gpu,
        priority=body.priority,
        share_node=body.share_node,
        max_attempts=body.max_attempts,
        node=body.node,
    )
    with st.store.session() as s:
        job = job_svc.submit(s, req, st.settings, st.provider, st.clock.now())
        return job_svc.describe(s, job)


@router.get("/jobs")
def list_jobs(request: Request, active: bool = False) -> list[dict[str, Any]]:
    st = _state(request)
    with st.store.session() as s:
        return [job_svc.describe(s, j) for j in job_svc.list_jobs(s, all=not active)]


@router.get("/jobs/{ref}")
def get_job(request: Request, ref: str) -> dict[str, Any]:
    st = _state(request)
    with st.store.session() as s:
        job = job_svc.get(s, ref)
        return {**job_svc.describe(s, job), "events": job_svc.job_events(s, job.id)}


@router.post("/jobs/{ref}/cancel")
def cancel_job(request: Request, ref: str) -> dict[str, Any]:
    st = _state(request)
    with st.store.session() as s:
        return job_svc.describe(s, job_svc.cancel(s, ref, st.clock.now()))


@router.post("/jobs/{ref}/resume")
def resume_job(request: Request, ref: str) -> dict[str, Any]:
    st = _state(request)
    with st.store.session() as s:
        return job_svc.describe(s, job_svc.resume(s, ref, st.clock.now()))


@router.post("/jobs/{ref}/rerun")
def rerun_job(request: Request, ref: str, body: RerunBody) -> dict[str, Any]:
    st = _state(request)
    with st.store.session() as s:
        job = job_svc.rerun(
            s, ref, dict(body.params), st.settings, st.provider, st.clock.now(), body.name, body.priority
        )
        return job_svc.describe(s, job)


@router.get("/jobs/{ref}/metrics")
def job_metrics(request: Request, ref: str) -> list[dict[str, Any]]:
    st = _state(request)
    with st.store.session() as s:
        return job_svc.metrics(s, job_svc.get(s, ref).id)


@router.get("/jobs/{ref}/report")
def job_report(request: Request, ref: str) -> dict[str, Any]:
    st = _state(request)
    with st.store.session() as s:
        return job_svc.report(s, job_svc.get(s, ref))


@router.get("/jobs/{ref}/logs")
def job_logs(request: Request, ref: str, tail: int = Query(200, ge=1, le=10000)) -> StreamingResponse:
    st = _state(request)
    with st.store.session() as s:
        job_id = job_svc.get(s, ref).id
    path = st.settings.logs_dir / "jobs" / f"{job_id}.log"
    from argosy.core import proc

    lines = proc.tail(path, tail)
    return StreamingResponse(iter(["\n".join(lines) + ("\n" if lines else "")]), media_type="text/plain")


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n".encode()


@router.get("/jobs/{ref}/events")
async def job_events_stream(
    request: Request, ref: str, interval: float = Query(0.5, ge=0.05, le=10)
) -> StreamingResponse:
    """Live progress as Server-Sent Events: `state` (the job, on every change), `metric` (each step
    as stored), `event` (transitions with reasons); `end` once the job is finished."""
    st = _state(request)
    with st.store.session() as s:
        job_id = job_svc.get(s, ref).id

    async def gen() -> AsyncIterator[bytes]:
        last_event, last_step, last_state = 0, -1, None

        def poll() -> tuple[dict[str, Any], list[dict[str, Any]], list[Event]]:
            with st.store.session() as s:
                job = s.get(TrainJob, job_id)
                assert job is not None
                desc = job_svc.describe(s, job)
                rows = s.scalars(
                    select(TrainMetric)
                    .where(TrainMetric.job_id == job_id, TrainMetric.step > last_step)
                    .order_by(TrainMetric.step)
                ).all()
                ms = [{"step": r.step, "loss": r.loss, "lr": r.lr, "grad_norm": r.grad_norm,
                       "tokens_per_s": r.tokens_per_s, "eval_loss": r.eval_loss,
                       "energy_kwh": r.energy_kwh, "co2_kg": r.co2_kg} for r in rows]  # fmt: skip
                evs = list(
                    s.scalars(
                        select(Event)
                        .where(Event.object_id == job_id, Event.id > last_event)
                        .order_by(Event.id)
                    )
                )
                return desc, ms, evs

        while True:
            desc, ms, evs = await asyncio.to_thread(poll)
            for e in evs:
                last_event = e.id
                yield _sse("event", {"ts": e.ts, "from": e.from_state, "to": e.to_state, "reason": e.reason})
            for m in ms:
                last_step = max(last_step, m["step"])
                yield _sse("metric", m)
            key = (desc["state"], desc["reason"], desc["progress"]["step"])
            if key != last_state:
                last_state = key
                yield _sse("state", desc)
            if desc["state"] in job_svc.TERMINAL_STATES:
                yield _sse("end", {"state": desc["state"], "reason": desc["reason"]})
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(interval)

    return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# -- the node side of remote jobs (agent keys) -----------------------------------------------------
agent_router = fastapi.APIRouter(prefix="/api/v1/agents", tags=["train-agent"])


def _agent_job(request: Request, node_id: str, job_id: str) -> dict[str, Any]:
    """The job, if the caller is `node_id`'s agent (or an admin) and the job is placed on that node."""
    st = _state(request)
    key = authenticate(st.store, request, ("agent", "admin"))
    if key.role == "agent" and key.node_id != node_id:
        raise transfer.ForbiddenError(
            "this agent key belongs to another node", fix="each node calls with its own agent key"
        )
    with st.store.session() as s:
        job = s.get(TrainJob, job_id)
        if job is None or job.node_id != node_id or job.state not in job_svc.ON_NODE_STATES:
            raise transfer.ForbiddenError(
                f"job {job_id} is not placed on node {node_id}",
                fix="a node gets the inputs of, and uploads the output of, only the jobs placed on it",
            )
        return {
            "id": job.id,
            "wid": workload_id(job),
            "base_model": job.base_model,
            "dataset": job.dataset,
            "job_dir": str(job.spec.get("output_dir", "")),
        }


def _model_dir(job: dict[str, Any]) -> Path | None:
    p = Path(job["base_model"])
    return p if p.is_absolute() and p.is_dir() else None


@agent_router.get("/{node_id}/train/{job_id}/inputs")
async def job_inputs(request: Request, node_id: str, job_id: str) -> dict[str, Any]:
    """What the node must fetch: the dataset by digest, the base model as a tar by content hash (or a
    hub id, which the node resolves itself)."""
    st = _state(request)
    job = _agent_job(request, node_id, job_id)
    data = datasets.resolve(st.settings.home, job["dataset"])
    model = _model_dir(job)
    if model is None:
        base: dict[str, Any] = {"kind": "hub", "id": job["base_model"]}
    else:
        sha, size = await asyncio.to_thread(transfer.model_digest, st.settings.home, model)
        base = {"kind": "tar", "sha256": sha, "bytes": size, "name": model.name}
    return {
        "dataset": {"digest": data.stem, "bytes": data.stat().st_size},
        "base_model": base,
    }


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while block := f.read(transfer.CHUNK):
            yield block


@agent_router.get("/{node_id}/train/{job_id}/dataset")
def job_dataset(request: Request, node_id: str, job_id: str) -> StreamingResponse:
    st = _state(request)
    job = _agent_job(request, node_id, job_id)
    path = datasets.resolve(st.settings.home, job["dataset"])
    headers = {"Content-Length": str(path.stat().st_size), "X-Argosy-Sha256": path.stem}
    return StreamingResponse(_file_chunks(path), media_type="application/x-ndjson", headers=headers)


@agent_router.get("/{node_id}/train/{job_id}/base-model")
async def job_base_model(request: Request, node_id: str, job_id: str) -> StreamingResponse:
    st = _state(request)
    job = _agent_job(request, node_id, job_id)
    model = _model_dir(job)
    if model is None:
        raise NotFoundError(
            f"base model '{job['base_model']}' is not a directory on the server",
            fix="a hub id is downloaded by the node itself",
        )
    sha, size = await asyncio.to_thread(transfer.model_digest, st.settings.home, model)
    headers = {"Content-Length": str(size), "X-Argosy-Sha256": sha}
    body = transfer.tar_stream(transfer.tree_members(model))
    return StreamingResponse(body, media_type="application/x-tar", headers=headers)


@agent_router.put("/{node_id}/train/{wid}/output")
async def job_output(request: Request, node_id: str, wid: str) -> dict[str, Any]:
    """The node's output/, emissions.json and progress.jsonl as a tar, streamed to a spool file on the
    server, capped, and checked against the announced size and sha256 before anything is installed."""
    st = _state(request)
    job = _agent_job(request, node_id, job_of(wid))
    if job["wid"] != wid:
        raise ConflictError(
            f"workload {wid} is not the job's current attempt ({job['wid']})",
            fix="nothing to do: the current attempt uploads its own output",
        )
    cap = int(request.app.state.train_upload_max_bytes)
    try:
        declared = int(request.headers["x-argosy-size"])
        sha = str(request.headers["x-argosy-sha256"]).lower()
    except (KeyError, ValueError) as exc:
        raise ArgosyError(
            "an output upload needs X-Argosy-Size and X-Argosy-Sha256 headers",
            fix="upload with the agent (argosy.train.remote)",
        ) from exc
    too_big = transfer.TooLargeError(
        f"the output is larger than the server's {cap} byte limit for uploads",
        fix="raise the limit on the server, or train an adapter (--method lora) instead of a full model",
    )
    if declared > cap:
        raise too_big
    job_dir = Path(job["job_dir"])
    spool = await asyncio.to_thread(transfer.spool_file, job_dir)
    try:
        h, size = hashlib.sha256(), 0
        with spool.open("wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > cap or size > declared:
                    raise (
                        too_big
                        if size > cap
                        else transfer.TransferError(
                            f"the output upload is longer than its announced {declared} bytes",
                            fix="nothing was kept; the agent retries",
                        )
                    )
                h.update(chunk)
                out.write(chunk)
        return await asyncio.to_thread(
            transfer.accept_output, spool, job_dir, wid, sha, declared, h.hexdigest(), size, st.clock.now()
        )
    finally:
        transfer.remove(spool)
