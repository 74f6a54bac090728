"""The deployment reconciler against the fake provider and simulated agents, on a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from argosy.core.clock import FakeClock
from argosy.core.config import Settings
from argosy.fleet.simagent import SimFleet
from argosy.providers.fake import FakeProvider
from argosy.serve import deployments as dep_svc
from argosy.serve.reconciler import DeploymentReconciler
from argosy.serve.routers import MemoryRouters
from argosy.store.db import Store
from argosy.store.ledger import totals
from argosy.store.models import Event, Node, Replica
from tests.conftest import write_model_config


class World:
    def __init__(self, settings: Settings, db_url: str, **fake_cfg: object) -> None:
        for k, v in fake_cfg.items():
            setattr(settings.providers.fake, k, v)
        self.clock = FakeClock()
        self.store = Store(db_url)
        self.fake = FakeProvider(settings, self.clock)
        self.routers = MemoryRouters()
        self.rec = DeploymentReconciler(
            self.store, self.clock, lambda _n: self.fake, self.routers, "http://server"
        )
        self.fleet = SimFleet(self.store, self.clock, self.fake, settings.logs_dir, start_delay_s=3)
        self.settings = settings

    def deploy(self, name: str = "m", replicas: int = 1, model: str | None = None) -> None:
        model_dir = write_model_config(Path(self.settings.home) / "model")
        req = dep_svc.validate(
            dep_svc.DeployRequest(model or str(model_dir), name, "fake", "llamacpp", replicas),
            ["llamacpp"],
            "llamacpp",
        )
        plan = dep_svc.plan_deployment(req, lambda _n: self.fake, {}, "http://server", settings=self.settings)
        with self.store.session() as s:
            dep_svc.create(s, req, plan, self.clock.now())

    def run(self, seconds: float, step: float = 1.0) -> None:
        t = 0.0
        while t < seconds:
            self.rec.reconcile()
            self.fleet.step()
            self.clock.advance(step)
            t += step
        self.rec.reconcile()

    def replicas(self) -> list[Replica]:
        with self.store.session() as s:
            return list(s.scalars(select(Replica).order_by(Replica.created_at)))

    def states(self) -> list[str]:
        return [r.state for r in self.replicas()]


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> World:
    return World(settings, f"sqlite:///{tmp_path / 'w.db'}", provision_delay_s=5)


def test_replicas_walk_the_states_to_ready_and_reach_the_router(world: World) -> None:
    world.deploy(replicas=2)
    world.run(20)
    assert world.states() == ["ready", "ready"]
    table = world.routers.tables["m"]
    assert sorted(b["name"] for b in table) == sorted(r.id for r in world.replicas())
    with world.store.session() as s:
        changes = [
            (e.from_state, e.to_state) for e in s.scalars(select(Event).where(Event.kind == "replica"))
        ]
    for step in [("pending", "provisioning"), ("provisioning", "starting"), ("starting", "ready")]:
        assert changes.count(step) == 2


def test_crashed_engine_is_marked_failed_and_replaced(world: World) -> None:
    world.deploy()
    world.run(15)
    [first] = world.replicas()
    assert first.state == "ready"
    agent = world.fleet.agents[first.node_id]
    agent.crash_workload(first.id, code=139)
    world.run(15)
    reps = world.replicas()
    assert reps[0].state == "failed"
    assert "139" in reps[0].reason
    assert reps[1].state == "ready"
    assert [b["name"] for b in world.routers.tables["m"]] == [reps[1].id]


def test_preempted_node_replica_is_replaced_and_node_terminated(world: World) -> None:
    world.deploy()
    world.run(15)
    [first] = world.replicas()
    with world.store.session() as s:
        iid = s.get(Node, first.node_id).provider_instance_id
    world.fake.preempt(iid)
    world.run(20)
    reps = world.replicas()
    assert reps[0].state == "preempted"
    assert "preempted" in reps[0].reason
    assert reps[-1].state == "ready"
    with world.store.session() as s:
        # The preempted machine is released too (a stopped spot VM still holds its disk).
        assert s.get(Node, first.node_id).status == "terminated"
    assert ("terminate", iid) in world.fake.log


def test_capacity_error_keeps_replica_pending_with_a_reason(settings: Settings, tmp_path: Path) -> None:
    w = World(settings, f"sqlite:///{tmp_path / 'c.db'}", provision_delay_s=5, capacity=1)
    w.deploy(replicas=2)
    w.run(15)
    states = sorted(w.states())
    assert states == ["pending", "ready"]
    pending = next(r for r in w.replicas() if r.state == "pending")
    assert "no capacity" in pending.reason


def test_destroy_drains_terminates_nodes_and_stops_router(world: World) -> None:
    world.deploy(replicas=2)
    world.run(15)
    with world.store.session() as s:
        dep_svc.destroy(s, "m", world.clock.now())
    world.run(10)
    assert set(world.states()) == {"terminated"}
    assert "m" not in world.routers.running
    with world.store.session() as s:
        assert {n.status for n in s.scalars(select(Node))} == {"terminated"}
        dep = s.scalars(select(dep_svc.Deployment)).one()
        assert dep.state == "destroyed"
    # Destroying again finds nothing to destroy and says so.
    with world.store.session() as s, pytest.raises(Exception, match="no deployment named 'm'"):
        dep_svc.destroy(s, "m", world.clock.now())


def test_ledger_charges_replica_seconds_at_the_offering_price(world: World) -> None:
    world.deploy()
    world.run(3600 + 10, step=10)
    [rep] = world.replicas()
    assert rep.price_per_hour is not None and rep.price_per_hour > 0
    with world.store.session() as s:
        t = totals(s)
    # Billed from placement: one replica for ~1 hour at the chosen offering's price.
    assert t["seconds"] == pytest.approx(3610, abs=20)
    assert t["cost_usd"] == pytest.approx(t["seconds"] / 3600 * rep.price_per_hour)


def test_crash_loop_backs_off(world: World) -> None:
    world.deploy()
    world.run(15)
    delays = []
    for _ in range(4):
        [live] = [r for r in world.replicas() if r.state == "ready"]
        world.fleet.agents[live.node_id].crash_workload(live.id)
        world.run(2)
        failed_at = next(r.state_changed_at for r in world.replicas() if r.id == live.id)
        world.run(40)
        nxt = world.replicas()[-1]
        assert nxt.id != live.id and nxt.state == "ready"
        delays.append(nxt.created_at - failed_at)
    # Each replacement waits longer than the one before (1, 2, 4, 8 s), so a crash loop cannot spin.
    assert delays == sorted(delays)
    assert delays[-1] >= 8


def test_unknown_provider_and_missing_model_are_clear(world: World) -> None:
    with pytest.raises(Exception, match="unknown provider 'lokal'. Did you mean 'local'"):
        dep_svc.validate(dep_svc.DeployRequest("/tmp", "x", "lokal"), ["llamacpp"], "llamacpp")
    with pytest.raises(Exception, match="does not exist") as exc:
        dep_svc.validate(dep_svc.DeployRequest("./nope", "x", "local"), ["llamacpp"], "llamacpp")
    assert "make-tiny" in exc.value.fix


def test_serverless_fallback_joins_the_router_table_and_goes_with_the_deployment(
    settings: Settings, tmp_path: Path
) -> None:
    w = World(
        settings,
        f"sqlite:///{tmp_path / 'f.db'}",
        provision_delay_s=5,
        endpoint_url="http://10.9.9.9:8000/v1",
    )
    model_dir = write_model_config(Path(settings.home) / "model")
    req = dep_svc.validate(
        dep_svc.DeployRequest(
            str(model_dir), "m", "fake", "llamacpp", 1, fallback="fake", fallback_model="org/tiny"
        ),
        ["llamacpp"],
        "llamacpp",
    )
    plan = dep_svc.plan_deployment(req, lambda _n: w.fake, {}, "http://server", settings=settings)
    with w.store.session() as s:
        dep_svc.create(s, req, plan, w.clock.now())
    w.run(2)
    # While the replica is still provisioning, the fallback already serves (spills while spot warms up).
    [fallback] = w.routers.tables["m"]
    assert fallback["tier"] == "fallback" and fallback["url"] == "http://10.9.9.9:8000/v1"
    assert fallback["headers"]["Authorization"].startswith("Bearer fake-endpoint-token")
    w.run(15)
    tiers = sorted(b["tier"] for b in w.routers.tables["m"])
    assert tiers == ["fallback", "primary"]
    with w.store.session() as s:
        dep_svc.destroy(s, "m", w.clock.now())
    w.run(10)
    assert ("destroy", fallback["name"]) in w.fake.log
    with w.store.session() as s:
        assert s.scalars(select(dep_svc.Deployment)).one().state == "destroyed"


def test_a_local_model_needs_a_hub_id_for_its_fallback(settings: Settings) -> None:
    model_dir = write_model_config(Path(settings.home) / "model2")
    with pytest.raises(Exception, match="cannot load a model from this machine") as exc:
        dep_svc.validate(
            dep_svc.DeployRequest(str(model_dir), "m", "fake", fallback="modal"), ["llamacpp"], "llamacpp"
        )
    assert "--fallback-model" in exc.value.fix
