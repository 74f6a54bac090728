"""Fine-tuning job service: validate and record a job (desired state), list, cancel, resume, rerun,
describe, report. The train reconciler (argosy/train/reconciler.py) drives the rows to real runs.

Submission checks everything a user can get wrong before a row exists: the base model, the dataset,
every hyperparameter (the runner's own strict TrainSpec), and whether the job fits *anywhere* given
its training-memory estimate — so a job never waits in the queue for a machine that cannot exist.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from argosy.catalog import load_cpu_defaults, load_gpus, load_offerings, load_regions
from argosy.catalog.sizing import usable_vram_gb
from argosy.catalog.types import Offering
from argosy.core.config import Settings
from argosy.core.errors import ArgosyError, ConflictError, NotFoundError, did_you_mean
from argosy.core.ids import new_id, valid_name
from argosy.placement import PlacementRequest, place
from argosy.placement.types import NoPlacementError
from argosy.providers.base import Instances, Offerings, Preflight, SharedFilesystem
from argosy.providers.registry import PROVIDERS
from argosy.serve.reconciler import offering_dict
from argosy.store.ledger import accrue
from argosy.store.models import Event, LedgerEntry, Node, RegisteredModel, TrainJob, TrainMetric
from argosy.train import datasets

STATES = ("queued", "placing", "running", "saving", "succeeded", "failed", "cancelled")
ACTIVE_STATES = ("queued", "placing", "running", "saving")
ON_NODE_STATES = ("placing", "running", "saving")  # the job holds a slot on its node
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
# Hyperparameters a request may set: the TrainSpec fields that are not the job machinery's to fill in.
MACHINE_FIELDS = (
    "job_id",
    "base_model",
    "dataset",
    "output_dir",
    "carbon_intensity_g_per_kwh",
    "carbon_source",
    "country_iso",
    "region",
)
# The fake provider's made-up prices must never win a real placement (as for deployments).
NEVER_IMPLICIT = frozenset({"fake"})
# A Hugging Face Hub id ("org/name"): passed through for a node apart from the server to download.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class TrainRequest:
    base_model: str
    dataset: str  # a stored dataset's digest (or unique prefix)
    params: dict[str, Any] = field(default_factory=dict)  # TrainSpec hyperparameters (method, lr, ...)
    name: str | None = None  # what the result is registered as
    provider: str | None = None
    gpu: str | None = None
    priority: int = 0
    share_node: bool = False
    max_attempts: int = 3
    node: str | None = None  # run on this node (name or id), e.g. a machine enrolled by hand


# -- events and the ledger ------------------------------------------------------------------------
def transition(s: Session, job: TrainJob, to_state: str, reason: str, now: float) -> bool:
    """Move `job` to `to_state` with an event row (kind "job"). False if it is already there."""
    if job.state == to_state:
        return False
    s.add(
        Event(
            ts=now,
            kind="job",
            object_id=job.id,
            deployment_id=None,
            from_state=job.state,
            to_state=to_state,
            reason=reason,
        )
    )
    job.state, job.reason, job.state_changed_at = to_state, reason, now
    if to_state in TERMINAL_STATES:
        job.finished_at = now
    return True


def note(s: Session, job: TrainJob, reason: str, now: float) -> None:
    s.add(
        Event(ts=now, kind="job", object_id=job.id, from_state=job.state, to_state=job.state, reason=reason)
    )


def job_events(s: Session, job_id: str, after_id: int = 0) -> list[dict[str, Any]]:
    q = select(Event).where(Event.object_id == job_id, Event.id > after_id).order_by(Event.id)
    return [
        {"id": e.id, "ts": e.ts, "from": e.from_state, "to": e.to_state, "reason": e.reason}
        for e in s.scalars(q)
    ]


def accrue_job(s: Session, job: TrainJob, provider: str, now: float) -> float:
    """Charge the job's node time up to `now` (idempotent at the same `now`); resource_kind "job"."""
    return accrue(s, job, "job", provider, now)


def job_cost(s: Session, job_id: str) -> dict[str, float]:
    seconds, cost = s.execute(
        select(
            func.coalesce(func.sum(LedgerEntry.seconds), 0.0),
            func.coalesce(func.sum(LedgerEntry.cost_usd), 0.0),
        ).where(LedgerEntry.resource_kind == "job", LedgerEntry.resource_id == job_id)
    ).one()
    return {"seconds": float(seconds), "cost_usd": float(cost)}


# -- validation -----------------------------------------------------------------------------------
def check_base_model(base_model: str) -> tuple[Path, dict[str, Any]]:
    p = Path(base_model).expanduser()
    if not p.exists():
        raise ArgosyError(
            f"unknown base model '{base_model}': no such directory on the server's machine"
            + (
                ""
                if base_model.startswith((".", "/", "~"))
                else ", and this machine cannot download from a hub"
            ),
            fix=f"pass a local Hugging Face model directory; try `argosy model make-tiny {base_model}`",
        )
    p = p.resolve()
    cfg_path = p / "config.json"
    if not p.is_dir() or not cfg_path.exists():
        raise ArgosyError(
            f"{p} is not a Hugging Face model directory (no config.json)",
            fix="point at the directory holding config.json, the *.safetensors weights and the tokenizer",
        )
    if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
        raise ArgosyError(
            f"{p} has a config.json but no weights (*.safetensors)",
            fix="fine-tuning needs the weights: download the full model directory",
        )
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as exc:
        raise ArgosyError(f"{cfg_path} is not valid JSON: {exc}", fix="re-download the model") from exc
    return p, cfg


def _spec_fields() -> list[str]:
    from argosy.train.spec import TrainSpec

    return [f.name for f in fields(TrainSpec)]


def check_params(params: dict[str, Any]) -> None:
    allowed = [f for f in _spec_fields() if f not in MACHINE_FIELDS]
    for key in params:
        if key not in allowed:
            near = did_you_mean(key, allowed)
            raise ArgosyError(
                f"unknown training parameter '{key}'" + (f"; did you mean '{near}'?" if near else ""),
                fix=f"use one of: {', '.join(allowed)}",
            )


def build_spec(
    job_id: str,
    base: Path,
    dataset_path: Path,
    params: dict[str, Any],
    output_dir: Path,
    carbon: dict[str, Any],
) -> dict[str, Any]:
    """The runner's TrainSpec for a job, validated by the runner's own rules."""
    from argosy.train.spec import TrainSpec, validate_spec

    spec = TrainSpec.from_dict(
        {
            **params,
            "job_id": job_id,
            "base_model": str(base),
            "dataset": str(dataset_path),
            "output_dir": str(output_dir),
            **carbon,
        }
    )
    # qlora's GPU kernels are checked where the job runs (the runner exits 2 if they are missing);
    # here only its values are, since the server's own machine may have no GPU.
    validate_spec(replace(spec, method="lora") if spec.method == "qlora" else spec)
    return spec.to_dict()


def memory_needed_gb(cfg: dict[str, Any], params: dict[str, Any]) -> float:
    from argosy.train.memory import train_memory_gb

    return float(
        train_memory_gb(
            cfg,
            str(params.get("method", "lora")),
            int(params.get("batch_size", 4)),
            int(params.get("max_seq_len", 512)),
        )
    )


def carbon_for(offering: Offering, settings: Settings) -> dict[str, Any]:
    """The grid carbon intensity where the job runs: the catalog's region figure; for the local machine
    the country set in providers.local.country (world average otherwise, and the source says so)."""
    regions = load_regions()
    if offering.provider == "local":
        country = (settings.providers.local.country or "").upper()
        rows = [r for r in regions.rows.values() if r.country == country] if country else []
        if rows:
            r = rows[0]
            return {
                "carbon_intensity_g_per_kwh": r.gco2_per_kwh,
                "carbon_source": f"{country} grid average: {r.intensity_source}, {r.intensity_year}",
                "region": f"local ({country})",
            }
        fb = regions.fallback
        return {
            "carbon_intensity_g_per_kwh": fb.gco2_per_kwh,
            "carbon_source": f"world average ({fb.intensity_source}, {fb.intensity_year}); "
            "set providers.local.country in argosy.yaml for this machine's grid",
            "region": "local",
        }
    r = regions.get(offering.provider, offering.region)
    known = (offering.provider, offering.region) in regions.rows
    return {
        "carbon_intensity_g_per_kwh": r.gco2_per_kwh,
        "carbon_source": f"{offering.provider}/{offering.region} ({r.location}): {r.intensity_source}, "
        f"{r.intensity_year}" + ("" if known else " (region not in the catalog: world average)"),
        "region": f"{offering.provider}/{offering.region}",
    }


def _fits(o: Offering, need_gb: float) -> bool:
    if o.gpu:
        spec = load_gpus().specs.get(o.gpu)
        return spec is not None and usable_vram_gb(spec.vram_gb) >= need_gb
    return o.ram_gb is not None and o.ram_gb * load_cpu_defaults().usable_ram_fraction >= need_gb


def choose_offering(
    need_gb: float,
    gpu: str | None,
    settings: Settings,
    provider_for: Callable[[str], Any],
    only: str | None = None,
) -> tuple[Offering, list[str]]:
    """Where the job can run: catalog placement (cost first) over the offerings whose GPU memory
    (or, for CPU machines, RAM) holds the training-memory estimate. Raises if nothing can."""
    names = [only] if only else [n for n in PROVIDERS.names() if n not in NEVER_IMPLICIT]
    usable: list[str] = []
    live: list[Offering] = []
    for name in names:
        try:
            p = provider_for(name)
        except ArgosyError:
            continue
        if not isinstance(p, Instances):
            continue
        if not only and isinstance(p, Preflight) and any(not c.ok for c in p.preflight()):
            continue
        usable.append(name)
        if isinstance(p, Offerings):
            with contextlib.suppress(ArgosyError):  # the catalog snapshot still prices it
                live.extend(p.offerings())
    offerings = [
        o for o in load_offerings(settings, live=live) if o.provider in usable and o.kind != "serverless"
    ]
    fitting = [o for o in offerings if _fits(o, need_gb)]
    if gpu:
        wanted = load_gpus().resolve(gpu)
        fitting = [o for o in fitting if o.gpu == wanted]
    if not fitting:
        biggest = _largest(offerings)
        raise ArgosyError(
            f"this job cannot fit anywhere: training needs about {need_gb:.1f} GB "
            f"(weights, gradients, optimizer state and activations), and the largest "
            f"{'matching ' if gpu else ''}machine available {'on ' + only + ' ' if only else ''}has {biggest}",
            fix="use --method lora (or qlora on a GPU), lower --batch-size or --max-seq-len, "
            "or allow a provider/GPU with more memory (`argosy gpus`)",
        )
    try:
        placement = place(PlacementRequest(allow_cpu=True), fitting, "cost")
    except NoPlacementError as exc:
        raise ArgosyError(f"no offering can run this job: {exc.message}", fix=exc.fix) from exc
    return placement.choice.offering, placement.explanation


def _largest(offerings: list[Offering]) -> str:
    best_gpu = max(
        (usable_vram_gb(load_gpus().specs[o.gpu].vram_gb) for o in offerings if o.gpu in load_gpus().specs),
        default=0.0,
    )
    best_ram = max(
        (o.ram_gb * load_cpu_defaults().usable_ram_fraction for o in offerings if not o.gpu and o.ram_gb),
        default=0.0,
    )
    parts = []
    if best_gpu:
        parts.append(f"{best_gpu:.1f} GB usable on one GPU")
    if best_ram:
        parts.append(f"{best_ram:.1f} GB usable RAM on a CPU machine")
    return " and ".join(parts) or "no machines at all (no provider is set up: `argosy check`)"


def find_node(s: Session, ref: str) -> Node:
    """A live node by id or name (the newest of that name)."""
    node = s.get(Node, ref)
    if node is None:
        node = s.scalars(
            select(Node)
            .where(Node.name == ref, Node.status.notin_(("terminated", "failed")))
            .order_by(Node.created_at.desc())
        ).first()
    if node is None or node.status in ("terminated", "failed"):
        names = [n.name for n in s.scalars(select(Node).where(Node.status.notin_(("terminated", "failed"))))]
        near = did_you_mean(ref, names) if names else None
        raise NotFoundError(
            f"no live node '{ref}'" + (f"; did you mean '{near}'?" if near else ""),
            fix="`argosy nodes` lists them; enrol a machine with `argosy agent --server URL --token KEY`",
        )
    return node


def node_offering(node: Node) -> Offering:
    """What a node that exists already offers a job: its own offering if Argosy provisioned it, else
    (a machine enrolled by hand) what its agent reported: GPUs, RAM, CPUs; no price known."""
    if node.offering:
        from argosy.serve.reconciler import offering_from

        o = offering_from(node.offering)
        return replace(o, extra={**o.extra, "node_id": node.id})
    res = node.resources or {}
    gpus = [g for g in res.get("gpus") or [] if isinstance(g, dict)]
    gpu = None
    if gpus:
        with contextlib.suppress(ArgosyError):
            gpu = load_gpus().resolve(str(gpus[0].get("name", "")), gpus[0].get("memory_gb"))
    return Offering(
        provider=node.provider,
        region=node.region or node.provider,
        instance_type=node.name,
        gpu=gpu,
        gpu_count=len(gpus) if gpu else 0,
        kind="vm",
        price_per_hour=node.price_per_hour,
        vcpus=res.get("cpus"),
        ram_gb=res.get("ram_gb"),
        source=f"node {node.name}, as its agent reported it",
        extra={"node_id": node.id},
    )


def shares_filesystem(node: Node, provider_for: Callable[[str], Any]) -> bool:
    try:
        p = provider_for(node.provider)
    except ArgosyError:
        return False
    return isinstance(p, SharedFilesystem) and bool(p.shares_server_filesystem)


def default_name(base: Path, job_id: str) -> str:
    stem = "".join(c if c.isalnum() else "-" for c in base.name.lower()).strip("-")[:30] or "model"
    return f"{stem}-ft-{job_id[-6:]}"


def job_dir(settings: Settings, job_id: str) -> Path:
    return settings.home / "train" / "jobs" / job_id


def submit(
    s: Session, req: TrainRequest, settings: Settings, provider_for: Callable[[str], Any], now: float
) -> TrainJob:
    """Validate everything, choose where it can run, and queue the job."""
    if req.provider is not None and req.provider not in PROVIDERS.names():
        near = did_you_mean(req.provider, PROVIDERS.names())
        raise ArgosyError(
            f"unknown provider '{req.provider}'." + (f" Did you mean '{near}'?" if near else ""),
            fix=f"use one of: {', '.join(PROVIDERS.names())}",
        )
    if not 1 <= req.max_attempts <= 20:
        raise ArgosyError(f"max_attempts must be between 1 and 20, not {req.max_attempts}")
    check_params(req.params)
    node = find_node(s, req.node) if req.node else None
    hub = (
        node is not None
        and not shares_filesystem(node, provider_for)
        and not Path(req.base_model).expanduser().exists()
        and HUB_ID.match(req.base_model) is not None
    )
    cfg: dict[str, Any] | None = None
    if hub:  # the node downloads it (it needs internet); the server has no copy to check or size
        base = Path(req.base_model)
    else:
        base, cfg = check_base_model(req.base_model)
    try:
        dataset_path = datasets.resolve(settings.home, req.dataset)
    except datasets.DatasetError as exc:
        raise NotFoundError(
            f"dataset '{req.dataset}' not found on the server", fix="upload it: `argosy dataset upload FILE`"
        ) from exc
    job_id = new_id("job")
    name = req.name or default_name(base, job_id)
    if not valid_name(name):
        raise ArgosyError(
            f"'{name}' is not a valid model name",
            fix="use lower-case letters, digits and '-', up to 63 characters (e.g. --name my-tune)",
        )
    if s.scalars(select(RegisteredModel).where(RegisteredModel.name == name)).first() is not None:
        raise ConflictError(f"a model named '{name}' is already registered", fix="choose another --name")
    out = job_dir(settings, job_id)
    # Values first (a bad --lr should not be reported as "does not fit"), with placeholder carbon.
    build_spec(job_id, base, dataset_path, req.params, out, {})
    need = memory_needed_gb(cfg, req.params) if cfg is not None else 0.0
    if node is not None:
        offering = node_offering(node)
        if cfg is not None and not _fits(offering, need):
            raise ArgosyError(
                f"this job cannot fit on node {node.name}: training needs about {need:.1f} GB and "
                f"the node has {_largest([offering])}",
                fix="use --method lora, lower --batch-size or --max-seq-len, or choose another --node",
            )
        explanation = [f"on node {node.name} (asked for with --node)"]
        if hub:
            explanation.append(
                f"{req.base_model} is a hub id: node {node.name} downloads it (it needs internet); "
                "its training memory was not estimated"
            )
    else:
        offering, explanation = choose_offering(need, req.gpu, settings, provider_for, req.provider)
    method = str(req.params.get("method", "lora"))
    if method == "qlora" and not offering.gpu:
        raise ArgosyError(
            "method qlora needs an NVIDIA GPU, and the only place this job can run has none",
            fix="use --method lora, or --gpu G / --provider P to place it on a GPU machine",
        )
    spec = build_spec(job_id, base, dataset_path, req.params, out, carbon_for(offering, settings))
    job = TrainJob(
        id=job_id,
        name=name,
        base_model=req.base_model if hub else str(base),
        dataset=dataset_path.stem,
        method=method,
        state="new",
        priority=req.priority,
        provider=node.provider if node is not None else req.provider,
        gpu=req.gpu,
        share_node=req.share_node,
        spec=spec,
        offering=offering_dict(offering),
        memory_gb=round(need, 3),
        price_per_hour=offering.price_per_hour,
        max_attempts=req.max_attempts,
        progress={"placement": explanation, "crashes": 0},
        created_at=now,
        state_changed_at=now,
    )
    s.add(job)
    s.flush()
    transition(
        s,
        job,
        "queued",
        f"fine-tune {base.name} ({method}) on {offering.key}; needs ~{need:.1f} GB",
        now,
    )
    return job


def get(s: Session, ref: str) -> TrainJob:
    """A job by id, unique id prefix, or the name its result is registered under."""
    job = s.get(TrainJob, ref)
    if job is None:
        hits = s.scalars(select(TrainJob).where(TrainJob.id.startswith(ref))).all() if len(ref) >= 6 else []
        if len(hits) == 1:
            job = hits[0]
    if job is None:
        job = s.scalars(
            select(TrainJob).where(TrainJob.name == ref).order_by(TrainJob.created_at.desc())
        ).first()
    if job is None:
        raise NotFoundError(f"no training job '{ref}'", fix="`argosy train ls` lists the jobs")
    return job


def list_jobs(s: Session, all: bool = True) -> list[TrainJob]:
    q = select(TrainJob).order_by(TrainJob.created_at)
    if not all:
        q = q.where(TrainJob.state.in_(ACTIVE_STATES))
    return list(s.scalars(q))


def cancel(s: Session, ref: str, now: float) -> TrainJob:
    """Stop a job; its runner is stopped by its agent (no longer desired), checkpoints are kept."""
    job = get(s, ref)
    if job.state in TERMINAL_STATES:
        return job  # idempotent
    if job.state in ON_NODE_STATES:
        accrue_job(s, job, str(job.offering.get("provider", "")), now)
    transition(
        s,
        job,
        "cancelled",
        "stopped by the user; `argosy train resume` continues from the last checkpoint",
        now,
    )
    return job


def resume(s: Session, ref: str, now: float) -> TrainJob:
    """Queue a failed or stopped job again: the runner resumes from its newest checkpoint."""
    job = get(s, ref)
    if job.state in ACTIVE_STATES:
        return job
    if job.state == "succeeded":
        raise ConflictError(
            f"job {job.id} already succeeded; there is nothing to resume",
            fix=f"`argosy train rerun {job.id} --max-steps N` trains again with changed parameters",
        )
    ck = (job.progress or {}).get("checkpoint")
    job.node_id, job.workload, job.finished_at = None, {}, None
    job.progress = {**(job.progress or {}), "crashes": 0, "done": None, "error": None, "saving": False}
    where = f"from checkpoint step {ck['step']}" if ck else "from the start (no checkpoint was written)"
    transition(s, job, "queued", f"resume requested; continues {where}", now)
    return job


def rerun(
    s: Session,
    ref: str,
    changes: dict[str, Any],
    settings: Settings,
    provider_for: Callable[[str], Any],
    now: float,
    name: str | None = None,
    priority: int | None = None,
) -> TrainJob:
    """A new job with the old one's inputs and `changes` applied to its hyperparameters."""
    old = get(s, ref)
    check_params(changes)
    params = {k: v for k, v in old.spec.items() if k not in MACHINE_FIELDS}
    params.update(changes)
    job = submit(
        s,
        TrainRequest(
            base_model=old.base_model,
            dataset=old.dataset,
            params=params,
            name=name,
            provider=old.provider,
            gpu=old.gpu,
            priority=old.priority if priority is None else priority,
            share_node=old.share_node,
            max_attempts=old.max_attempts,
            node=((old.offering or {}).get("extra") or {}).get("node_id"),
        ),
        settings,
        provider_for,
        now,
    )
    job.rerun_of = old.id
    changed = ", ".join(f"{k}={v}" for k, v in changes.items()) or "no changes"
    note(s, job, f"rerun of {old.id} with {changed}", now)
    return job


# -- results --------------------------------------------------------------------------------------
def output_complete(path: Path, kind: str) -> str | None:
    """None if `path` holds a complete result of `kind`; else what is missing."""
    if not path.is_dir():
        return f"{path} does not exist"
    if path.name.startswith("output.tmp") or ".tmp" in path.name:
        return f"{path} is a temporary directory"
    if kind == "adapter":
        need = ["adapter_config.json", "adapter_model.safetensors"]
    else:
        need = ["config.json"]
        if not any(path.glob("*.safetensors")):
            return f"{path} has no *.safetensors weights"
    missing = [n for n in need if not (path / n).is_file() or (path / n).stat().st_size == 0]
    return f"{path} lacks {', '.join(missing)}" if missing else None


def register(s: Session, job: TrainJob, path: Path, kind: str, now: float) -> RegisteredModel:
    existing = s.scalars(select(RegisteredModel).where(RegisteredModel.job_id == job.id)).first()
    if existing is not None:
        return existing
    name = job.name
    if s.scalars(select(RegisteredModel).where(RegisteredModel.name == name)).first() is not None:
        name = f"{name[:50]}-{job.id[-6:]}"
    m = RegisteredModel(
        id=new_id("mdl"),
        name=name,
        job_id=job.id,
        base_model=job.base_model,
        path=str(path),
        kind=kind,
        created_at=now,
    )
    s.add(m)
    s.flush()
    return m


def registered(s: Session, ref: str) -> RegisteredModel | None:
    """The registered model for a model name, a job id (or unique prefix), or None."""
    m = s.scalars(select(RegisteredModel).where(RegisteredModel.name == ref)).first()
    if m is not None:
        return m
    m = s.scalars(select(RegisteredModel).where(RegisteredModel.job_id == ref)).first()
    if m is not None or len(ref) < 6:
        return m
    hits = s.scalars(select(RegisteredModel).where(RegisteredModel.job_id.startswith(ref))).all()
    return hits[0] if len(hits) == 1 else None


def resolve_for_deploy(s: Session, ref: str) -> dict[str, Any] | None:
    """What `argosy deploy REF` serves when REF names a fine-tune: the base model plus the adapter, or
    the merged model's directory. None if REF is no job or registered model."""
    m = registered(s, ref)
    if m is None:
        try:
            job = get(s, ref)
        except NotFoundError:
            return None
        raise ConflictError(
            f"job {job.id} has no registered model to deploy (it is {job.state})",
            fix="wait for it to succeed (`argosy train show " + job.id + "`), or resume it if it failed",
        )
    if m.kind == "adapter":
        return {"model": m.base_model, "lora": m.path, "name": m.name, "registered": m.name}
    return {"model": m.path, "lora": None, "name": m.name, "registered": m.name}


def metrics(s: Session, job_id: str) -> list[dict[str, Any]]:
    q = select(TrainMetric).where(TrainMetric.job_id == job_id).order_by(TrainMetric.step)
    return [
        {
            "step": m.step,
            "ts": m.ts,
            "epoch": m.epoch,
            "loss": m.loss,
            "lr": m.lr,
            "grad_norm": m.grad_norm,
            "tokens_per_s": m.tokens_per_s,
            "eval_loss": m.eval_loss,
            "energy_kwh": m.energy_kwh,
            "co2_kg": m.co2_kg,
        }
        for m in s.scalars(q)
    ]


def describe(s: Session, job: TrainJob) -> dict[str, Any]:
    m = s.scalars(select(RegisteredModel).where(RegisteredModel.job_id == job.id)).first()
    prog = job.progress or {}
    step = prog.get("step") or {}
    spec = job.spec or {}
    return {
        "id": job.id,
        "name": job.name,
        "state": job.state,
        "reason": job.reason,
        "base_model": job.base_model,
        "dataset": job.dataset,
        "method": job.method,
        "priority": job.priority,
        "provider": job.offering.get("provider"),
        "offering": job.offering,
        "memory_gb": job.memory_gb,
        "node_id": job.node_id,
        "remote": bool(prog.get("remote")),  # runs on a node apart from the server (inputs shipped)
        "attempt": job.attempt,
        "crashes": prog.get("crashes", 0),
        "max_attempts": job.max_attempts,
        "params": {k: v for k, v in spec.items() if k not in MACHINE_FIELDS},
        "carbon": {k: spec.get(k) for k in ("carbon_intensity_g_per_kwh", "carbon_source", "region")},
        "output_dir": spec.get("output_dir"),
        "progress": {
            "step": step.get("step"),
            "total_steps": step.get("total_steps") or (prog.get("start") or {}).get("total_steps"),
            "epoch": step.get("epoch"),
            "loss": step.get("loss"),
            "lr": step.get("lr"),
            "grad_norm": step.get("grad_norm"),
            "tokens_per_s": step.get("tokens_per_s"),
            "eta_s": step.get("eta_s"),
            "eval_loss": (prog.get("eval") or {}).get("eval_loss"),
            "energy_kwh": step.get("energy_kwh"),
            "co2_kg": step.get("co2_kg"),
            "checkpoint": (prog.get("checkpoint") or {}).get("step"),
            "resumed_from_step": (prog.get("start") or {}).get("resumed_from_step"),
            "device": (prog.get("start") or {}).get("device"),
        },
        "error": prog.get("error"),
        "placement": prog.get("placement"),
        "model": None if m is None else {"name": m.name, "kind": m.kind, "path": m.path},
        "rerun_of": job.rerun_of,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "since": job.state_changed_at,
        "cost": job_cost(s, job.id),
    }


def report(s: Session, job: TrainJob) -> dict[str, Any]:
    """The job's energy, emissions (with equivalents and the sources of their factors) and cost."""
    from argosy.train import carbon

    out_dir = Path(job.spec.get("output_dir", ""))
    emissions: dict[str, Any] | None = None
    source = "emissions.json"
    try:
        emissions = json.loads((out_dir / "emissions.json").read_text())
    except (OSError, ValueError):
        step = (job.progress or {}).get("step") or {}
        if step.get("energy_kwh") is not None:
            source = "last progress event (the run wrote no emissions.json yet)"
            emissions = {
                "energy_kwh": step.get("energy_kwh"),
                "co2_kg": step.get("co2_kg"),
                "intensity_g_per_kwh": job.spec.get("carbon_intensity_g_per_kwh"),
                "intensity_source": job.spec.get("carbon_source"),
                "measured": False,
                "method": "estimate",
                "notes": ["partial: taken from the last step's running totals"],
            }
    cost = job_cost(s, job.id)
    rows = metrics(s, job.id)
    losses = [r["loss"] for r in rows if r["loss"] is not None and math.isfinite(r["loss"])]
    return {
        "job_id": job.id,
        "name": job.name,
        "state": job.state,
        "base_model": job.base_model,
        "method": job.method,
        "region": job.spec.get("region"),
        "steps": len(rows),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "emissions": None if emissions is None else carbon.report(emissions),
        "emissions_source": source if emissions is not None else None,
        "cost": {
            **cost,
            "price_per_hour": job.price_per_hour,
            "offering": job.offering.get("key"),
            "source": "the ledger (node time while the job held it)",
        },
    }
