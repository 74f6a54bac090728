"""The deployment reconciler: drives replicas from desired state (rows) to actual state (nodes, engines).

One `reconcile()` step observes and acts once; it is idempotent and reads time only from the
injected clock, so the same code runs in the server loop, in tests and in the simulator.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from argosy.catalog.types import Offering
from argosy.core.clock import Clock
from argosy.core.errors import ArgosyError, CapacityError, ProviderError
from argosy.core.ids import new_id
from argosy.fleet.nodes import live_node_for_instance
from argosy.providers.base import EndpointRequest, Endpoints, InstanceRequest, Instances
from argosy.serve import router_usage, serverless_usage
from argosy.serve.routers import RouterManager
from argosy.store.db import Store
from argosy.store.events import note, transition
from argosy.store.keys import create_key, revoke_node_keys
from argosy.store.ledger import BILLABLE_STATES, accrue_replica
from argosy.store.models import Deployment, Node, Replica, TrainJob

log = logging.getLogger(__name__)

ACTIVE_STATES = ("pending", "provisioning", "starting", "ready")
TERMINAL_STATES = ("terminated", "failed", "preempted")


@dataclass(frozen=True)
class Timeouts:
    provision_s: float = 1800.0
    prepare_s: float = 1800.0  # first run may build the engine and convert the model
    start_s: float = 120.0  # engine process start -> healthy
    drain_s: float = 60.0
    node_lost_s: float = 60.0  # unhealthy this long -> its replicas are failed
    quiet_s: float = 5.0  # an agent silent this long makes us ask the provider (preemption kills agents)
    crash_window_s: float = 600.0
    max_backoff_s: float = 300.0


def offering_from(d: dict[str, Any]) -> Offering:
    fields = Offering.__dataclass_fields__
    return Offering(**{k: v for k, v in d.items() if k in fields})


def offering_dict(o: Offering) -> dict[str, Any]:
    return {**asdict(o), "key": o.key}


def router_table(dep: Deployment, replicas: list[Replica]) -> tuple[list[dict[str, Any]], str]:
    """The backend table for a deployment's router, and its version (a hash).

    Ready replicas are the primary tier; the serverless endpoint, if any, is the fallback tier, with
    the header the router injects (the provider's token never reaches clients).
    """
    table = [
        {"name": r.id, "url": r.url, "tier": "primary", "weight": 1}
        for r in replicas
        if r.state == "ready" and r.url
    ]
    ep = dep.spec.get("fallback_endpoint")
    if ep and ep.get("url"):
        table.append(
            {
                "name": ep["id"],
                "url": ep["url"],
                "tier": "fallback",
                "weight": 1,
                "headers": ep.get("headers", {}),
            }
        )
    return table, hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()


class DeploymentReconciler:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        providers: Callable[[str], Any],
        routers: RouterManager,
        server_url: str,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.providers = providers
        self.routers = routers
        self.server_url = server_url
        self.timeouts = timeouts or Timeouts()

    # -- the step ------------------------------------------------------------------------------
    def reconcile(self) -> None:
        with self.store.session() as s:
            deps = s.scalars(select(Deployment).where(Deployment.state.in_(("active", "destroying")))).all()
            ids = [d.id for d in deps]
        for dep_id in ids:
            # One transaction per deployment: a failure in one does not hold back the others.
            try:
                with self.store.session() as s:
                    dep = s.get(Deployment, dep_id)
                    if dep is not None:
                        self._reconcile_deployment(s, dep)
            except Exception:
                log.exception("reconciling deployment %s failed; will retry", dep_id)
        with self.store.session() as s:
            self._collect_idle_nodes(s)

    def _reconcile_deployment(self, s: Session, dep: Deployment) -> None:
        now = self.clock.now()
        replicas = list(
            s.scalars(select(Replica).where(Replica.deployment_id == dep.id).order_by(Replica.created_at))
        )
        if dep.state == "active":
            self._scale(s, dep, replicas, now)
            replicas = list(
                s.scalars(select(Replica).where(Replica.deployment_id == dep.id).order_by(Replica.created_at))
            )
        else:
            for r in replicas:
                if r.state in ("pending",):
                    transition(s, r, "terminated", "deployment destroyed before the replica was placed", now)
                elif r.state in ("provisioning", "starting", "ready"):
                    self._accrue(s, dep, r, now)
                    transition(s, r, "draining", "deployment is being destroyed", now)
        for r in replicas:
            self._step_replica(s, dep, r, now)
        s.commit()  # the router start below may take seconds: hold no write lock across it
        self._sync_fallback(s, dep, now)
        serverless_usage.adopt(dep, self.providers, now)
        serverless_usage.poll_measured(s, dep, self.providers, now)
        if dep.state == "active":
            self._sync_router(s, dep, replicas, now)
        elif all(r.state in TERMINAL_STATES for r in replicas) and not dep.spec.get("fallback_endpoint"):
            self._pull_usage(s, dep, now)  # the last tokens it counted, before the process goes
            s.commit()
            self.routers.stop(dep)  # nothing is being written: the commit above released the lock
            dep.router_pid = None
            transition(s, dep, "destroyed", "all replicas terminated and the router stopped", now)

    # -- scaling and crash-loop back-off --------------------------------------------------------
    def _scale(self, s: Session, dep: Deployment, replicas: list[Replica], now: float) -> None:
        live = [r for r in replicas if r.state in ACTIVE_STATES]
        missing = dep.replicas - len(live)
        if missing > 0:
            recent = [
                r
                for r in replicas
                if r.state in ("failed",) and now - r.state_changed_at < self.timeouts.crash_window_s
            ]
            if recent:
                last = max(r.state_changed_at for r in recent)
                delay = min(self.timeouts.max_backoff_s, 2.0 ** (len(recent) - 1))
                if now - last < delay:
                    return
            for _ in range(missing):
                r = Replica(
                    id=new_id("rep"),
                    deployment_id=dep.id,
                    state="new",
                    offering=dict(dep.spec.get("offering", {})),
                    created_at=now,
                    state_changed_at=now,
                )
                s.add(r)
                s.flush()
                why = "replacing a failed replica" if recent else "scaling to the desired count"
                transition(s, r, "pending", why, now)
        elif missing < 0:
            # Scale down: drain the youngest first; they hold the least warm cache.
            for r in sorted(live, key=lambda r: r.created_at, reverse=True)[:-missing]:
                if r.state in ("pending",):
                    transition(s, r, "terminated", "scaled down before placement", now)
                else:
                    transition(s, r, "draining", "scaled down", now)

    # -- one replica -----------------------------------------------------------------------------
    def _accrue(self, s: Session, dep: Deployment, r: Replica, now: float) -> None:
        if r.state in BILLABLE_STATES:
            accrue_replica(s, r, dep.provider, now)

    def _fail(self, s: Session, dep: Deployment, r: Replica, state: str, reason: str, now: float) -> None:
        self._accrue(s, dep, r, now)
        transition(s, r, state, reason, now)

    def _step_replica(self, s: Session, dep: Deployment, r: Replica, now: float) -> None:
        if r.state in TERMINAL_STATES:
            return
        self._accrue(s, dep, r, now)
        node = s.get(Node, r.node_id) if r.node_id else None
        if r.state == "pending":
            self._place(s, dep, r, now)
            return
        if node is None:
            self._fail(s, dep, r, "failed", "its node record is missing", now)
            return
        quiet = node.last_heartbeat is not None and now - node.last_heartbeat > self.timeouts.quiet_s
        if r.state != "provisioning" and quiet and node.status not in ("terminated", "preempted", "failed"):
            self._check_instance(s, dep, node, now)
        lost = self._node_lost(node, now)
        work = r.workload or {}
        wstate = work.get("state")
        age = now - r.state_changed_at
        if r.state == "draining":
            if (
                wstate in ("stopped", "exited", "failed")
                or node.status in ("terminated", "preempted", "failed")
                or lost
            ):
                transition(s, r, "terminated", "engine stopped", now)
            elif age > self.timeouts.drain_s:
                transition(
                    s,
                    r,
                    "terminated",
                    f"did not stop within {self.timeouts.drain_s:.0f}s; node will be reclaimed",
                    now,
                )
            return
        if node.status in ("preempted",):
            self._fail(s, dep, r, "preempted", f"node {node.name} was preempted", now)
            return
        if node.status in ("failed", "terminated") or lost:
            self._fail(s, dep, r, "failed", f"node {node.name} is {node.status}", now)
            return
        if r.state == "provisioning":
            self._check_instance(s, dep, node, now)
            if node.status == "ready":
                transition(
                    s, r, "starting", f"node {node.name} is ready; starting the {dep.engine} engine", now
                )
            elif age > self.timeouts.provision_s:
                self._fail(s, dep, r, "failed", f"node not ready after {age:.0f}s", now)
            return
        if wstate in ("exited", "failed"):
            tail = "\n".join(work.get("log_tail", [])[-15:])
            msg = work.get("message") or f"engine exited with code {work.get('exit_code')}"
            self._fail(s, dep, r, "failed", msg + (f"\nlast log lines:\n{tail}" if tail else ""), now)
            return
        if r.state == "starting":
            if wstate == "healthy":
                r.url = f"http://{node.address or '127.0.0.1'}:{work['port']}"
                r.pid = work.get("pid")
                transition(s, r, "ready", f"engine healthy at {r.url}", now)
            elif wstate == "preparing" and age > self.timeouts.prepare_s:
                self._fail(
                    s,
                    dep,
                    r,
                    "failed",
                    f"engine preparation took longer than {self.timeouts.prepare_s:.0f}s",
                    now,
                )
            elif wstate == "starting" and now - float(work.get("since", now)) > self.timeouts.start_s:
                self._fail(s, dep, r, "failed", f"engine not healthy after {self.timeouts.start_s:.0f}s", now)
            return
        if r.state == "ready" and wstate not in (None, "healthy", "unhealthy"):
            self._fail(s, dep, r, "failed", f"engine reported '{wstate}'", now)

    def _node_lost(self, node: Node, now: float) -> bool:
        return node.status == "unhealthy" and now - node.updated_at > self.timeouts.node_lost_s

    def _check_instance(self, s: Session, dep: Deployment, node: Node, now: float) -> None:
        provider = self.providers(node.provider)
        try:
            inst = provider.status(node.provider_instance_id)
        except ArgosyError as exc:
            log.warning("status of %s failed: %s", node.provider_instance_id, exc)
            return
        if inst.state in ("preempted", "failed", "terminated"):
            transition(s, node, inst.state, inst.reason or f"provider reports {inst.state}", now)
        if inst.address and not node.address:
            node.address = inst.address

    def _place(self, s: Session, dep: Deployment, r: Replica, now: float) -> None:
        candidates = [dep.spec.get("offering", {}), *dep.spec.get("fallback_offerings", [])]
        errors = []
        for cand in candidates:
            offering = offering_from(cand)
            # Fallbacks may be on other providers (placement ranks across them).
            provider = self.providers(offering.provider or dep.provider)
            if not isinstance(provider, Instances):
                errors.append(f"{offering.key}: provider '{provider.name}' cannot run replicas")
                continue
            req = InstanceRequest(
                name=f"{dep.name}-{r.id[-6:]}",
                offering=offering,
                server_url=self.server_url,
                labels={"argosy-deployment": dep.name, "argosy-replica": r.id},
            )
            plan = provider.plan(req)
            fixed_id = plan.payload.get("instance_id")
            node = live_node_for_instance(s, provider.name, fixed_id) if fixed_id else None
            if node is None:
                node = Node(
                    id=new_id("node"),
                    name=req.name if not fixed_id else str(fixed_id),
                    provider=provider.name,
                    provider_instance_id=str(fixed_id or ""),
                    status="provisioning",
                    region=offering.region,
                    offering=offering_dict(offering),
                    price_per_hour=offering.price_per_hour,
                    created_at=now,
                    updated_at=now,
                )
                s.add(node)
                s.flush()
                req.agent_token = create_key(s, f"agent {node.name}", "agent", now, node_id=node.id)
                # The agent may register before this step ends: its node and key must be visible.
                s.commit()
                try:
                    inst = provider.provision(provider.plan(req))
                except CapacityError as exc:
                    errors.append(f"{offering.key}: {exc.message}")
                    self._discard(s, node, now)
                    continue
                except ProviderError as exc:
                    self._discard(s, node, now)
                    self._fail(s, dep, r, "failed", f"provisioning failed: {exc.message}", now)
                    return
                node.provider_instance_id = inst.instance_id
                node.address = inst.address
                note(
                    s,
                    "node",
                    node.id,
                    "provisioning",
                    f"provisioned {inst.instance_id} on {provider.name}",
                    now,
                )
            r.node_id = node.id
            r.offering = offering_dict(offering)
            r.price_per_hour = offering.price_per_hour
            r.billed_until = now
            transition(s, r, "provisioning", f"placed on {offering.key} (node {node.name})", now)
            return
        reason = "no capacity: " + "; ".join(errors)
        if r.reason != reason:
            r.reason = reason
            note(s, "replica", r.id, "pending", reason, now, deployment_id=dep.id)

    def _discard(self, s: Session, node: Node, now: float) -> None:
        """A node whose provisioning failed: revoke its key, record why, never reuse it."""
        revoke_node_keys(s, node.id, now)
        transition(s, node, "failed", "provisioning failed", now)

    # -- serverless fallback -------------------------------------------------------------------
    def _sync_fallback(self, s: Session, dep: Deployment, now: float) -> None:
        """Create the fallback endpoint of an active deployment once; destroy it with the deployment."""
        want = dep.spec.get("fallback")
        have = dep.spec.get("fallback_endpoint")
        if not want:
            return
        provider = self.providers(want["provider"])
        if dep.state == "active" and not have:
            if not isinstance(provider, Endpoints):
                note(
                    s,
                    "deployment",
                    dep.id,
                    dep.state,
                    f"'{want['provider']}' cannot run endpoints",
                    now,
                    dep.id,
                )
                return
            request = EndpointRequest(
                name=dep.name,
                model=want["model"],
                min_workers=int(want.get("min_workers", 0)),
                max_workers=int(want.get("max_workers", 1)),
            )
            try:
                ep = provider.deploy(provider.plan_endpoint(request))
            except ArgosyError as exc:
                reason = f"fallback endpoint on {want['provider']} failed: {exc.message}"
                if dep.spec.get("fallback_error") != reason:  # one event per distinct failure, not per step
                    dep.spec = {**dep.spec, "fallback_error": reason}
                    note(s, "deployment", dep.id, dep.state, reason, now, dep.id)
                return
            serverless_usage.register(dep, provider, ep.endpoint_id, ep.price_per_second, now)
            # Stored with the deployment so the router can be given its auth header again after restarts.
            dep.spec = {
                **dep.spec,
                "fallback_endpoint": {
                    "id": ep.endpoint_id,
                    "url": ep.url,
                    "headers": dict(ep.auth_header),
                    "price_per_second": ep.price_per_second,
                },
                "fallback_error": None,
            }
            note(
                s,
                "deployment",
                dep.id,
                dep.state,
                f"fallback endpoint {ep.endpoint_id} on {ep.provider} ready",
                now,
                dep.id,
            )
        elif dep.state == "destroying" and have:
            # Its last usage first: measured buckets so far, and the router's busy seconds.
            serverless_usage.poll_measured(s, dep, self.providers, now, force=True)
            self._pull_usage(s, dep, now)
            try:
                provider.destroy(have["id"])
            except ArgosyError as exc:
                log.warning("destroying fallback endpoint %s failed (will retry): %s", have["id"], exc)
                return
            serverless_usage.mark_destroyed(dep, have["id"], now)
            dep.spec = {k: v for k, v in dep.spec.items() if k != "fallback_endpoint"}
            note(s, "deployment", dep.id, dep.state, f"fallback endpoint {have['id']} destroyed", now, dep.id)

    # -- router --------------------------------------------------------------------------------
    def _sync_router(self, s: Session, dep: Deployment, replicas: list[Replica], now: float) -> None:
        try:
            h = self.routers.ensure(dep)
        except ArgosyError as exc:
            note(s, "deployment", dep.id, dep.state, f"router failed to start: {exc.message}", now, dep.id)
            return
        if h.restarted:
            dep.router_pid, dep.router_port, dep.router_admin_token = h.pid, h.port, h.admin_token
            dep.router_table_version = ""
            note(
                s,
                "deployment",
                dep.id,
                dep.state,
                h.note or f"router listening on port {h.port}",
                now,
                dep.id,
            )
        self._pull_usage(s, dep, now)
        table, version = router_table(dep, replicas)
        if version == dep.router_table_version:
            return
        try:
            self.routers.push(dep, table)
        except (ArgosyError, OSError) as exc:
            log.warning("pushing the backend table for %s failed: %s", dep.name, exc)
            return
        dep.router_table_version = version

    def _pull_usage(self, s: Session, dep: Deployment, now: float) -> None:
        """Token counters from the router into the store (idempotent per router start id)."""
        pull = getattr(self.routers, "usage", None)  # a capability: not every manager has one
        report = pull(dep) if pull is not None else None
        if report is not None:
            router_usage.record(s, dep.id, report, now)
            s.commit()  # the table push that follows is HTTP: hold no write lock across it
            serverless_usage.record_estimates(s, dep, report, now)

    # -- nodes that no longer serve anything ---------------------------------------------------
    def _collect_idle_nodes(self, s: Session) -> None:
        now = self.clock.now()
        # A provider with a deployment short of replicas is about to place one: keep its idle nodes.
        short = set()
        for d in s.scalars(select(Deployment).where(Deployment.state == "active")):
            live = s.scalars(
                select(Replica.id).where(Replica.deployment_id == d.id, Replica.state.in_(ACTIVE_STATES))
            ).all()
            if len(live) < d.replicas:
                short.add(d.provider)
        for node in s.scalars(select(Node).where(Node.status.notin_(("terminated",)))).all():
            if node.provider == "manual":
                continue  # enrolled by hand: never ours to terminate
            busy = s.scalar(
                select(Replica.id)
                .where(Replica.node_id == node.id, Replica.state.notin_(TERMINAL_STATES))
                .limit(1)
            ) or s.scalar(  # a fine-tuning job holds its node as a replica does
                select(TrainJob.id)
                .where(TrainJob.node_id == node.id, TrainJob.state.in_(("placing", "running", "saving")))
                .limit(1)
            )
            if busy or node.provider in short:
                continue
            try:
                self.providers(node.provider).terminate(node.provider_instance_id)
            except ArgosyError as exc:
                log.warning("terminating node %s failed (will retry): %s", node.name, exc)
                continue
            revoke_node_keys(s, node.id, now)
            transition(s, node, "terminated", "no replicas left on it", now)
            s.commit()  # before the next (possibly slow) terminate call
