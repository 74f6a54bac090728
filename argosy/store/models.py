"""Tables. Times are epoch seconds (floats) taken from the injectable clock, so tests control them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16), index=True)  # shown in listings; never the key
    key_hash: Mapped[str] = mapped_column(String(128))  # sha256(salt + key), hex
    salt: Mapped[str] = mapped_column(String(32))
    role: Mapped[str] = mapped_column(String(20))  # admin | agent | user
    node_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # agent keys are node-scoped
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Node(Base):
    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    provider: Mapped[str] = mapped_column(String(40))
    provider_instance_id: Mapped[str] = mapped_column(String(200))
    # provisioning -> ready -> unhealthy | cordoned | draining -> terminated; preempted; failed
    status: Mapped[str] = mapped_column(String(20))
    address: Mapped[str | None] = mapped_column(String(200), nullable=True)
    region: Mapped[str] = mapped_column(String(60), default="")
    offering: Mapped[dict[str, Any]] = mapped_column(default=dict)
    price_per_hour: Mapped[float | None] = mapped_column(Float, nullable=True)
    resources: Mapped[dict[str, Any]] = mapped_column(default=dict)  # cpus, ram_gb, gpus[]
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    last_heartbeat: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_nodes_provider_instance", "provider", "provider_instance_id"),)


class Deployment(Base):
    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    model: Mapped[str] = mapped_column(Text)
    engine: Mapped[str] = mapped_column(String(40))
    provider: Mapped[str] = mapped_column(String(40))
    replicas: Mapped[int] = mapped_column(Integer)  # desired
    state: Mapped[str] = mapped_column(String(20))  # active | destroying | destroyed
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)  # engine args, offering, fallbacks...
    router_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    router_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    router_admin_token: Mapped[str | None] = mapped_column(String(100), nullable=True)
    router_table_version: Mapped[str] = mapped_column(String(64), default="")  # hash of the last table pushed
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class Replica(Base):
    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"), index=True)
    node_id: Mapped[str | None] = mapped_column(ForeignKey("nodes.id"), nullable=True)
    # pending -> provisioning -> starting -> ready -> draining -> terminated; failed; preempted
    state: Mapped[str] = mapped_column(String(20), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    offering: Mapped[dict[str, Any]] = mapped_column(default=dict)
    price_per_hour: Mapped[float | None] = mapped_column(Float, nullable=True)
    url: Mapped[str | None] = mapped_column(String(300), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    workload: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the agent's last report
    created_at: Mapped[float] = mapped_column(Float)
    state_changed_at: Mapped[float] = mapped_column(Float)
    billed_until: Mapped[float | None] = mapped_column(Float, nullable=True)


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[float] = mapped_column(Float, index=True)
    kind: Mapped[str] = mapped_column(String(20))  # deployment | replica | node
    object_id: Mapped[str] = mapped_column(String(40), index=True)
    deployment_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    from_state: Mapped[str | None] = mapped_column(String(20), nullable=True)
    to_state: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text, default="")


class LedgerEntry(Base):
    """A span of paid resource time, priced at the rate in force (kept even if the offering disappears)."""

    __tablename__ = "ledger"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    resource_kind: Mapped[str] = mapped_column(String(20))  # replica | node | job | run
    resource_id: Mapped[str] = mapped_column(String(40), index=True)
    deployment_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    provider: Mapped[str] = mapped_column(String(40))
    offering_key: Mapped[str] = mapped_column(String(300), default="")
    start_ts: Mapped[float] = mapped_column(Float)
    end_ts: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    price_per_hour: Mapped[float] = mapped_column(Float)
    cost_usd: Mapped[float] = mapped_column(Float)


class TrainJob(Base):
    """A fine-tuning run: desired state for the train reconciler (queued -> ... -> succeeded)."""

    __tablename__ = "train_jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))  # what the result is registered (and deployed) as
    base_model: Mapped[str] = mapped_column(Text)
    dataset: Mapped[str] = mapped_column(String(80))  # the stored dataset's digest
    method: Mapped[str] = mapped_column(String(20))
    # queued -> placing -> running -> saving -> succeeded | failed | cancelled
    state: Mapped[str] = mapped_column(String(20), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    provider: Mapped[str | None] = mapped_column(String(40), nullable=True)  # asked for; None = placement
    gpu: Mapped[str | None] = mapped_column(String(40), nullable=True)
    share_node: Mapped[bool] = mapped_column(default=False)  # may run beside other jobs on one GPU/node
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the TrainSpec (to_dict)
    offering: Mapped[dict[str, Any]] = mapped_column(default=dict)  # chosen at submit
    memory_gb: Mapped[float] = mapped_column(Float, default=0.0)  # training memory estimate
    node_id: Mapped[str | None] = mapped_column(ForeignKey("nodes.id"), nullable=True)
    price_per_hour: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # runner starts on the current placement
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    workload: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the agent's last report
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)  # last step/eval/checkpoint/done/error
    progress_offset: Mapped[int] = mapped_column(Integer, default=0)  # bytes of progress.jsonl ingested
    rerun_of: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    state_changed_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    billed_until: Mapped[float | None] = mapped_column(Float, nullable=True)


class TrainMetric(Base):
    """One training step's figures (an eval at that step fills eval_loss); upserted, so a resumed
    run that repeats steps since its last checkpoint overwrites them instead of doubling them."""

    __tablename__ = "train_metrics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("train_jobs.id"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    ts: Mapped[float] = mapped_column(Float)
    epoch: Mapped[float | None] = mapped_column(Float, nullable=True)
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    lr: Mapped[float | None] = mapped_column(Float, nullable=True)
    grad_norm: Mapped[float | None] = mapped_column(Float, nullable=True)
    tokens_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    eval_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    energy_kwh: Mapped[float | None] = mapped_column(Float, nullable=True)
    co2_kg: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (Index("ix_train_metrics_job_step", "job_id", "step", unique=True),)


class RegisteredModel(Base):
    """A fine-tune's output that `argosy deploy` accepts by name or by job id."""

    __tablename__ = "registered_models"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("train_jobs.id"), index=True)
    base_model: Mapped[str] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(20))  # adapter | merged
    created_at: Mapped[float] = mapped_column(Float)


class SandboxRun(Base):
    """One sandbox execution (one-shot or in a session), recorded by the server that brokered it."""

    __tablename__ = "sandbox_runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the run id in the API's answer
    node_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)  # None: the server
    session_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    language: Mapped[str] = mapped_column(String(40))
    version: Mapped[str] = mapped_column(String(200), default="")
    backend: Mapped[str] = mapped_column(String(40), default="")
    status: Mapped[str] = mapped_column(String(20))  # ok | error | compile_error | timed_out | ...
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    signal: Mapped[int | None] = mapped_column(Integer, nullable=True)
    timed_out: Mapped[bool] = mapped_column(default=False)
    oom_killed: Mapped[bool] = mapped_column(default=False)
    truncated: Mapped[bool] = mapped_column(default=False)
    warm: Mapped[bool] = mapped_column(default=False)
    limits: Mapped[dict[str, Any]] = mapped_column(default=dict)  # timeout_ms, memory_mb, cpu_count, ...
    duration_ms: Mapped[float] = mapped_column(Float)  # compile + run
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[float] = mapped_column(Float, index=True)


class RouterUsage(Base):
    """Token counters pulled from a deployment's router, one row per router process (its start id).

    A router's counters restart at zero with the process, so each incarnation gets its own row that
    holds its latest cumulative values: pulling twice stores the same numbers (idempotent), and a
    restart starts a new row instead of looking like counters that went backwards.
    """

    __tablename__ = "router_usage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment_id: Mapped[str] = mapped_column(String(40), index=True)
    start_id: Mapped[str] = mapped_column(String(40))
    router_started_at: Mapped[float] = mapped_column(Float)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    by_key: Mapped[dict[str, Any]] = mapped_column(default=dict)  # key name -> {prompt_tokens, ...}
    updated_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ux_router_usage_start", "deployment_id", "start_id", unique=True),)
