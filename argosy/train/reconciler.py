"""The train reconciler: drives job rows (desired state) to runs on nodes, and back to results.

    queued -> placing -> running -> saving -> succeeded | failed | cancelled

One `reconcile()` step observes and acts once; it is idempotent and reads time only from the
injected clock. Queued jobs are taken in priority order, then FIFO; the head of the queue that
cannot get a slot now blocks the jobs behind it (strict order: a big job is never starved by small
ones). A node runs one job per GPU (one per CPU machine) unless a job asked to share.

The agent side is level-triggered like replicas: a node's heartbeat answers with the jobs it should
run (`TrainWorkloads.desired`), and reports runner state and new lines of progress.jsonl, which
`TrainWorkloads.ingest` stores (TrainMetric per step). A runner that crashes is started again under
a new workload id (`<job>.<attempt>`), up to the job's `max_attempts`, and resumes from its newest
checkpoint; a job whose node is lost (or the server restarted) is queued again and resumes too.

Nodes that do not share the server's filesystem (no `SharedFilesystem` capability on their
provider; a machine enrolled by hand) get `remote` workloads: the node fetches the inputs and uploads
the output (argosy/train/remote.py), and a job succeeds only once that upload has been accepted
into the job's dir on the server (argosy/train/transfer.py). Checkpoints stay on the node, so a
job that lands on a different node than before starts over, and its events say so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from argosy.core.clock import Clock
from argosy.core.errors import ArgosyError, CapacityError, ProviderError
from argosy.core.ids import new_id
from argosy.fleet.nodes import live_node_for_instance
from argosy.providers.base import InstanceRequest, Instances, SharedFilesystem
from argosy.serve.reconciler import offering_from
from argosy.store.db import Store
from argosy.store.events import note as node_note
from argosy.store.events import transition as node_transition
from argosy.store.keys import create_key, revoke_node_keys
from argosy.store.models import Node, TrainJob, TrainMetric
from argosy.train import transfer
from argosy.train.jobs import (
    ACTIVE_STATES,
    ON_NODE_STATES,
    accrue_job,
    note,
    output_complete,
    register,
    transition,
)

log = logging.getLogger(__name__)

DEAD_NODE_STATES = ("terminated", "failed", "preempted")
# Exit codes of the runner (the trainer contract): 2 bad input, 3 disk full; these are not retried.
EXIT_BAD_INPUT, EXIT_DISK_FULL = 2, 3
EXIT_TRANSFER = 4  # a remote node could not move the inputs or the output (argosy/train/remote.py)
MAX_PROGRESS_LINES_PER_BEAT = 2000


@dataclass(frozen=True)
class Timeouts:
    provision_s: float = 1800.0
    start_s: float = 600.0  # placed -> the agent reports the runner running
    node_lost_s: float = 60.0  # unhealthy this long -> the job is queued again elsewhere
    quiet_s: float = 5.0  # an agent silent this long makes us ask the provider whether it still runs
    done_grace_s: float = 30.0  # exit 0 -> the "done" event must have arrived by then


def workload_id(job: TrainJob) -> str:
    return f"{job.id}.{job.attempt}"


def job_of(wid: str) -> str:
    return wid.rsplit(".", 1)[0]


def pinned_node(job: TrainJob) -> str | None:
    """The node a job was submitted to (`--node`), if any."""
    return ((job.offering or {}).get("extra") or {}).get("node_id") or None


def slots_of(node: Node) -> int:
    gpus = (node.resources or {}).get("gpus") or []
    count = len(gpus) or int((node.offering or {}).get("gpu_count") or 0)
    return max(1, count)


class TrainReconciler:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        providers: Callable[[str], Any],
        server_url: str,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.providers = providers
        self.server_url = server_url
        self.timeouts = timeouts or Timeouts()

    def reconcile(self) -> None:
        with self.store.session() as s:
            ids = list(
                s.scalars(
                    select(TrainJob.id)
                    .where(TrainJob.state.in_(ACTIVE_STATES))
                    .order_by(TrainJob.priority.desc(), TrainJob.created_at, TrainJob.id)
                )
            )
        blocked = False
        for job_id in ids:
            # One transaction per job: a failure in one does not hold back the others.
            try:
                with self.store.session() as s:
                    job = s.get(TrainJob, job_id)
                    if job is None:
                        continue
                    if job.state == "queued":
                        if not blocked:
                            blocked = not self._place(s, job)
                        elif job.reason != "waiting behind earlier jobs in the queue":
                            note(s, job, "waiting behind earlier jobs in the queue", self.clock.now())
                            job.reason = "waiting behind earlier jobs in the queue"
                    else:
                        self._step(s, job)
            except Exception:
                log.exception("reconciling training job %s failed; will retry", job_id)

    # -- placing ---------------------------------------------------------------------------------
    def _place(self, s: Session, job: TrainJob) -> bool:
        """Give the job a node (an existing one with a free slot, or a new one). False if it must wait."""
        now = self.clock.now()
        pinned = pinned_node(job)
        if pinned:
            return self._place_pinned(s, job, pinned, now)
        offering = offering_from(job.offering)
        provider = self.providers(offering.provider)
        if not isinstance(provider, Instances):
            transition(s, job, "failed", f"provider '{provider.name}' cannot run jobs (no instances)", now)
            return True
        req = InstanceRequest(
            name=f"train-{job.id[-6:]}",
            offering=offering,
            server_url=self.server_url,
            labels={"argosy-job": job.id},
        )
        plan = provider.plan(req)
        fixed_id = plan.payload.get("instance_id")
        node = live_node_for_instance(s, provider.name, fixed_id) if fixed_id else None
        if node is not None:
            if not self._free_slot(s, job, node, now):
                return False
        else:
            node = Node(
                id=new_id("node"),
                name=req.name if not fixed_id else str(fixed_id),
                provider=provider.name,
                provider_instance_id=str(fixed_id or ""),
                status="provisioning",
                region=offering.region,
                offering=dict(job.offering),
                price_per_hour=offering.price_per_hour,
                created_at=now,
                updated_at=now,
            )
            s.add(node)
            s.flush()
            req.agent_token = create_key(s, f"agent {node.name}", "agent", now, node_id=node.id)
            # The job holds the node before the (slow) provision call, so no idle-node sweep takes it.
            job.node_id = node.id
            s.commit()
            try:
                inst = provider.provision(provider.plan(req))
            except CapacityError as exc:
                revoke_node_keys(s, node.id, now)
                node_transition(s, node, "failed", "provisioning failed", now)
                job.node_id = None
                why = f"no capacity on {offering.key}: {exc.message}; will retry"
                if job.reason != why:
                    note(s, job, why, now)
                    job.reason = why
                return False
            except ProviderError as exc:
                revoke_node_keys(s, node.id, now)
                node_transition(s, node, "failed", "provisioning failed", now)
                job.node_id = None
                transition(s, job, "failed", f"provisioning failed: {exc.message}", now)
                return True
            node.provider_instance_id = inst.instance_id
            node.address = inst.address
            node_note(
                s, "node", node.id, "provisioning", f"provisioned {inst.instance_id} for job {job.id}", now
            )
        self._bind(s, job, node, f"placed on {offering.key} (node {node.name})", now)
        return True

    def _free_slot(self, s: Session, job: TrainJob, node: Node, now: float) -> bool:
        busy = s.scalars(
            select(TrainJob).where(TrainJob.node_id == node.id, TrainJob.state.in_(ON_NODE_STATES))
        ).all()
        exclusive = [j for j in busy if not (j.share_node and job.share_node)]
        if len(exclusive) < slots_of(node):
            return True
        self._wait(
            s,
            job,
            f"waiting for a free slot on node {node.name}: "
            f"{', '.join(j.id for j in busy)} running ({slots_of(node)} slot(s))",
            now,
        )
        return False

    def _wait(self, s: Session, job: TrainJob, why: str, now: float) -> None:
        if job.reason != why:
            note(s, job, why, now)
            job.reason = why

    def _place_pinned(self, s: Session, job: TrainJob, node_id: str, now: float) -> bool:
        """A job submitted to one node (`--node`) waits for that node; nothing is provisioned."""
        node = s.get(Node, node_id)
        if node is None or node.status in ("terminated", "failed"):
            transition(
                s,
                job,
                "failed",
                f"its node {node.name if node else node_id} is gone" + (f" ({node.status})" if node else ""),
                now,
            )
            return True
        if node.status != "ready":
            self._wait(s, job, f"waiting for node {node.name} ({node.status})", now)
            return False
        if not self._free_slot(s, job, node, now):
            return False
        self._bind(s, job, node, f"placed on node {node.name} (asked for by name)", now)
        return True

    def shares_filesystem(self, node: Node) -> bool:
        """Does `node` see the server's paths? Only if its provider says so (a capability)."""
        try:
            p = self.providers(node.provider)
        except ArgosyError:  # e.g. "manual": enrolled by hand, somewhere else
            return False
        return isinstance(p, SharedFilesystem) and bool(p.shares_server_filesystem)

    def _bind(self, s: Session, job: TrainJob, node: Node, why: str, now: float) -> None:
        prog = dict(job.progress or {})
        remote = not self.shares_filesystem(node)
        moved = remote and prog.get("remote_node") not in (None, node.id)
        if moved:
            # Its checkpoints and progress file stayed on the old node: this node begins at step 0.
            prog.update(checkpoint=None, step=None, eval=None, start=None)
            job.progress_offset = 0
            why += f"; starts from scratch (its checkpoints stayed on node {prog['remote_node']})"
        prog.update(remote=remote, remote_node=node.id if remote else None)
        job.progress = prog
        job.node_id = node.id
        job.attempt += 1
        job.workload = {}
        job.billed_until = now
        transition(s, job, "placing", why, now)

    # -- one placed job --------------------------------------------------------------------------
    def _step(self, s: Session, job: TrainJob) -> None:
        now = self.clock.now()
        provider_name = str(job.offering.get("provider", ""))
        node = s.get(Node, job.node_id) if job.node_id else None
        if node is None:
            self._requeue(s, job, "its node record is missing", now)
            return
        quiet = node.last_heartbeat is not None and now - node.last_heartbeat > self.timeouts.quiet_s
        if quiet and node.status in ("ready", "unhealthy"):
            # An agent that died (killed, or gone with the server that ran it) sends no more beats,
            # and its node would look merely unhealthy for node_lost_s, then be reused as it is:
            # the provider knows at once (the local one: the agent's pid is dead), and a dead node
            # sends the job back to the queue, where placing starts a new agent and it resumes.
            self._check_instance(s, node, now)
        lost = node.status == "unhealthy" and now - node.updated_at > self.timeouts.node_lost_s
        if node.status in DEAD_NODE_STATES or lost:
            # Bill only until the node went away (a server that was down must not charge its downtime).
            accrue_job(s, job, provider_name, min(now, max(node.updated_at, job.billed_until or 0.0)))
            self._requeue(s, job, f"node {node.name} is {node.status}", now)
            return
        accrue_job(s, job, provider_name, now)
        age = now - job.state_changed_at
        if node.status == "provisioning":
            self._check_instance(s, node, now)
            if age > self.timeouts.provision_s:
                transition(s, job, "failed", f"node {node.name} not ready after {age:.0f}s", now)
            return
        work = job.workload or {}
        if work.get("wid") != workload_id(job):
            if job.state == "placing" and age > self.timeouts.start_s:
                transition(
                    s, job, "failed", f"the runner did not start within {self.timeouts.start_s:.0f}s", now
                )
            return
        wstate = work.get("state")
        prog = job.progress or {}
        if wstate in ("exited", "failed"):
            self._finished(s, job, work, now)
            return
        if job.state == "placing" and wstate == "running":
            job.started_at = job.started_at or now
            start = prog.get("start") or {}
            transition(s, job, "running", f"runner started on node {node.name} (pid {work.get('pid')})", now)
            if start.get("resumed_from_step"):
                note(s, job, f"resumed from checkpoint step {start['resumed_from_step']}", now)
        if job.state == "running" and prog.get("saving"):
            transition(s, job, "saving", "training finished; saving the output", now)

    def _finished(self, s: Session, job: TrainJob, work: dict[str, Any], now: float) -> None:
        prog = dict(job.progress or {})
        code = work.get("exit_code")
        err = prog.get("error") or {}
        if work.get("state") == "failed" and code is None:
            transition(s, job, "failed", work.get("message") or "the agent could not start the runner", now)
            return
        if code == 0:
            remote = bool(prog.get("remote"))
            receipt = None
            if remote:  # the output counts once the node's upload was accepted on the server
                receipt = transfer.read_receipt(Path(str(job.spec.get("output_dir", ""))), workload_id(job))
                if receipt is not None and not prog.get("done"):  # the upload carried progress.jsonl
                    pairs = transfer.progress_pairs(Path(str(receipt["path"])).parent / "progress.jsonl")
                    ingest_progress(s, job, pairs, now)
                    prog = dict(job.progress or {})
            done = prog.get("done")
            if not done or (remote and receipt is None):
                since = float(work.get("since") or now)
                if now - since > self.timeouts.done_grace_s:
                    why = (
                        "the runner finished on the node but its output never reached the server"
                        if done
                        else "the runner exited 0 but never reported its output"
                    )
                    transition(s, job, "failed", why + "; no model was registered", now)
                return
            if receipt is not None:
                path, kind = Path(str(receipt["path"])), str(receipt["kind"])
            else:
                path, kind = Path(str(done.get("output", ""))), str(done.get("kind", "adapter"))
            problem = output_complete(path, kind)
            if problem:
                transition(
                    s, job, "failed", f"the output is incomplete, so no model was registered: {problem}", now
                )
                return
            m = register(s, job, path, kind, now)
            loss = done.get("final_loss")
            transition(
                s,
                job,
                "succeeded",
                f"registered {kind} '{m.name}' ({done.get('steps')} steps"
                + (f", final loss {loss:.4f}" if isinstance(loss, int | float) else "")
                + f"); deploy it: argosy deploy {m.name}",
                now,
            )
            return
        message = err.get("message") or work.get("message") or f"the runner exited with code {code}"
        if code in (EXIT_BAD_INPUT, EXIT_DISK_FULL, EXIT_TRANSFER):
            fix = f" (fix: {err['fix']})" if err.get("fix") else ""
            transition(s, job, "failed", message + fix, now)
            return
        crashes = int(prog.get("crashes", 0)) + 1
        prog["crashes"] = crashes
        tail = "\n".join((work.get("log_tail") or [])[-10:])
        if crashes >= job.max_attempts:
            job.progress = prog
            transition(
                s,
                job,
                "failed",
                f"the runner crashed {crashes} times; last: {message}"
                + (f"\nlast log lines:\n{tail}" if tail else ""),
                now,
            )
            return
        ck = prog.get("checkpoint")
        prog.update(saving=False, done=None, error=None)
        job.progress = prog
        job.attempt += 1
        job.workload = {}
        where = f"resumes from checkpoint step {ck['step']}" if ck else "starts over (no checkpoint yet)"
        # A new workload id: the agent starts a fresh runner for it (the old one has exited).
        why = f"{message}; restart {crashes + 1}/{job.max_attempts} {where}"
        if not transition(s, job, "placing", why, now):
            note(s, job, why, now)  # it crashed before it was ever reported running
            job.reason, job.state_changed_at = why, now

    def _requeue(self, s: Session, job: TrainJob, why: str, now: float) -> None:
        prog = job.progress or {}
        ck = prog.get("checkpoint")
        where = f"resumes from checkpoint step {ck['step']}" if ck else "starts over (no checkpoint yet)"
        if prog.get("remote") and ck and not pinned_node(job):
            where = "starts over on a new node (its checkpoints stayed on the lost one)"
        elif prog.get("remote") and ck:
            where = f"resumes from checkpoint step {ck['step']} when its node is back"
        job.node_id, job.workload = None, {}
        job.progress = {**(job.progress or {}), "saving": False, "done": None, "error": None}
        transition(s, job, "queued", f"{why}; queued again, {where}", now)

    def _check_instance(self, s: Session, node: Node, now: float) -> None:
        try:
            provider = self.providers(node.provider)
        except ArgosyError:
            return  # enrolled by hand ("manual"): no provider to ask; its heartbeats are all we have
        try:
            inst = provider.status(node.provider_instance_id)
        except ArgosyError as exc:
            log.warning("status of %s failed: %s", node.provider_instance_id, exc)
            return
        if inst.state in DEAD_NODE_STATES:
            node_transition(s, node, inst.state, inst.reason or f"provider reports {inst.state}", now)


class TrainWorkloads:
    """The train jobs' side of the node heartbeat: what a node should run, and what it reported."""

    def desired(self, s: Session, node: Node) -> list[dict[str, Any]]:
        if node.status not in ("ready", "unhealthy"):
            return []
        jobs = s.scalars(
            select(TrainJob).where(TrainJob.node_id == node.id, TrainJob.state.in_(ON_NODE_STATES))
        )
        out = []
        for j in jobs:
            w: dict[str, Any] = {"id": workload_id(j), "kind": "train", "job_id": j.id, "spec": j.spec}
            if (j.progress or {}).get("remote"):  # the node fetches inputs and uploads the output
                w.update(remote=True, node_id=node.id)
            out.append(w)
        return out

    def ingest(self, s: Session, node: Node, report: dict[str, Any], now: float, logs_dir: Path) -> None:
        jobs: dict[str, TrainJob | None] = {}

        def job_for(wid: str) -> TrainJob | None:
            jid = job_of(wid)
            if jid not in jobs:
                j = s.get(TrainJob, jid) if jid.startswith("job_") else None
                jobs[jid] = j if j is not None and j.node_id == node.id else None
            return jobs[jid]

        for wid, state in (report.get("workloads") or {}).items():
            job = job_for(wid)
            if job is not None and wid == workload_id(job):
                job.workload = {**state, "wid": wid, "reported_at": now}
        for wid, lines in (report.get("progress") or {}).items():
            job = job_for(wid)
            if job is not None:
                ingest_progress(s, job, lines[-MAX_PROGRESS_LINES_PER_BEAT:], now)
        for wid, lines in (report.get("logs") or {}).items():
            job = job_for(wid)
            if job is not None and lines:
                d = logs_dir / "jobs"
                d.mkdir(parents=True, exist_ok=True)
                with (d / f"{job.id}.log").open("a", encoding="utf-8", errors="replace") as f:
                    f.writelines(f"[{wid}] {line.rstrip()}\n" for line in lines)


def ingest_progress(s: Session, job: TrainJob, lines: list[Any], now: float) -> int:
    """Store new progress.jsonl lines, given as [byte offset, text]; lines before the job's
    progress_offset were stored already (a re-sent beat, a restarted agent) and are skipped."""
    prog = dict(job.progress or {})
    taken = 0
    for item in lines:
        try:
            offset, text = int(item[0]), str(item[1])
        except (TypeError, ValueError, IndexError):
            continue
        if offset < job.progress_offset:
            continue
        job.progress_offset = offset + len(text.encode()) + 1
        try:
            ev = json.loads(text)
        except ValueError:
            continue  # a torn line cannot happen (whole lines only), but never let one stop ingest
        if not isinstance(ev, dict):
            continue
        taken += 1
        kind = ev.get("type")
        if kind == "start":
            prog.update(start=ev, saving=False, done=None, error=None)
        elif kind == "step" and isinstance(ev.get("step"), int):
            prog["step"] = ev
            _upsert_metric(s, job.id, ev, now)
        elif kind == "eval" and isinstance(ev.get("step"), int):
            prog["eval"] = ev
            _upsert_metric(s, job.id, {"step": ev["step"], "eval_loss": ev.get("eval_loss")}, now)
        elif kind == "checkpoint":
            prog["checkpoint"] = ev
        elif kind == "saving":
            prog["saving"] = True
        elif kind == "done":
            prog["done"] = ev
        elif kind == "error":
            prog["error"] = ev
        elif kind == "stopped":
            prog["stopped"] = ev
    job.progress = prog
    return taken


_METRIC_FIELDS = ("epoch", "loss", "lr", "grad_norm", "tokens_per_s", "eval_loss", "energy_kwh", "co2_kg")


def _upsert_metric(s: Session, job_id: str, ev: dict[str, Any], now: float) -> None:
    step = int(ev["step"])
    row = s.scalars(select(TrainMetric).where(TrainMetric.job_id == job_id, TrainMetric.step == step)).first()
    if row is None:
        row = TrainMetric(job_id=job_id, step=step, ts=float(ev.get("ts") or now))
        s.add(row)
    for k in _METRIC_FIELDS:
        v = ev.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool):
            setattr(row, k, float(v))
    s.flush()
