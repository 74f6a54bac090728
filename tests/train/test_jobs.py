"""The train job service and reconciler on a fake clock with SQLite: the state machine, FIFO with
priorities, one job per node, crash -> restart -> resume, cancel/resume/rerun, bad input, and no
model registered when the output is incomplete.

Nodes are the fake provider's (provisioning on the clock) or this machine's `local` node row; the
agent is simulated at the protocol level (the same server functions the real agent's heartbeats
reach), and the "runner" is scripted by the test through the progress lines it would write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select

from argosy.core.clock import FakeClock
from argosy.core.config import Settings
from argosy.core.errors import ArgosyError, ConflictError, NotFoundError
from argosy.fleet import nodes as node_svc
from argosy.providers.fake import FakeProvider
from argosy.providers.local import LocalProvider
from argosy.store.db import Store
from argosy.store.keys import create_key
from argosy.store.models import ApiKey, Event, LedgerEntry, Node, RegisteredModel, TrainJob, TrainMetric
from argosy.train import datasets
from argosy.train import jobs as job_svc
from argosy.train.reconciler import TrainReconciler, TrainWorkloads, ingest_progress
from tests.conftest import write_model_config

CHAT = b"".join(
    json.dumps(
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
    ).encode()
    + b"\n"
    for i in range(20)
)


@dataclass
class Runner:
    """What the test makes one runner process do: its state and the lines it appends."""

    state: str = "running"
    exit_code: int | None = None


@dataclass
class SimNode:
    node_id: str
    registered: bool = False
    runners: dict[str, Runner] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)  # per workload: progress bytes shipped


class World:
    def __init__(self, settings: Settings, db: str, **fake_cfg: Any) -> None:
        for k, v in {"provision_delay_s": 5, **fake_cfg}.items():
            setattr(settings.providers.fake, k, v)
        self.settings = settings
        self.clock = FakeClock()
        self.store = Store(db)
        self.fake = FakeProvider(settings, self.clock)
        # The scripted runner writes its output at the server's paths: these fake nodes share the
        # server's filesystem (remote nodes, which ship inputs and upload output, are test_remote.py).
        self.fake.shares_server_filesystem = True
        self.local = LocalProvider(settings, self.clock)
        self.rec = TrainReconciler(self.store, self.clock, self.provider, "http://server")
        self.source = TrainWorkloads()
        self.nodes: dict[str, SimNode] = {}
        self.files: dict[str, bytearray] = {}  # job id -> its progress.jsonl (shared by attempts)
        self.model = write_model_config(settings.home / "base")
        (self.model / "model.safetensors").write_bytes(b"\0" * 64)
        self.digest, _, _ = datasets.store_stream([CHAT], settings.home)

    def provider(self, name: str) -> Any:
        return {"fake": self.fake, "local": self.local}[name]

    def submit(self, **kw: Any) -> str:
        params = {"max_steps": 10, "save_every": 5, **kw.pop("params", {})}
        req = job_svc.TrainRequest(str(self.model), self.digest, params=params, **{"provider": "fake", **kw})
        with self.store.session() as s:
            return job_svc.submit(s, req, self.settings, self.provider, self.clock.now()).id

    def local_node(self) -> str:
        """This machine's node, registered and ready (as after `argosy deploy` started its agent)."""
        with self.store.session() as s:
            node = Node(
                id="node_local",
                name="local",
                provider="local",
                provider_instance_id="local",
                status="ready",
                resources={"cpus": 2, "ram_gb": 24, "gpus": []},
                last_heartbeat=self.clock.now(),
                created_at=self.clock.now(),
                updated_at=self.clock.now(),
            )
            s.add(node)
        self.nodes["node_local"] = SimNode("node_local", registered=True)
        return "node_local"

    def emit(self, job_id: str, **event: Any) -> None:
        self.files.setdefault(job_id, bytearray()).extend(
            json.dumps({"ts": self.clock.now(), **event}).encode() + b"\n"
        )

    def beat(self) -> None:
        now = self.clock.now()
        with self.store.session() as s:
            for node in s.scalars(select(Node).where(Node.status != "terminated")).all():
                sim = self.nodes.setdefault(node.id, SimNode(node.id))
                if node.provider == "fake" and (
                    not node.provider_instance_id
                    or self.fake.status(node.provider_instance_id).state != "running"
                ):
                    continue
                if not sim.registered:
                    key = s.scalars(select(ApiKey).where(ApiKey.node_id == node.id)).first()
                    node_svc.register(s, key, {"hostname": node.name, "cpus": 8}, now)
                    sim.registered = True
                progress = {}
                for wid in sim.runners:
                    data = bytes(self.files.get(wid.rsplit(".", 1)[0], b""))
                    start = sim.offsets.get(wid, 0)
                    pairs, pos = [], start
                    for raw in data[start:].split(b"\n")[:-1]:
                        pairs.append([pos, raw.decode()])
                        pos += len(raw) + 1
                    sim.offsets[wid] = pos
                    progress[wid] = pairs
                report = {
                    "workloads": {
                        wid: {
                            "state": r.state,
                            "pid": 4242,
                            "since": now,
                            "exit_code": r.exit_code,
                            "message": "",
                        }
                        for wid, r in sim.runners.items()
                    },
                    "progress": progress,
                }
                answer = node_svc.heartbeat(s, node.id, report, now, self.settings.logs_dir, [self.source])
                wanted = {w["id"] for w in answer["workloads"] if w["kind"] == "train"}
                for wid in list(sim.runners):
                    if wid not in wanted:
                        del sim.runners[wid]  # the agent stops what is no longer desired
                for wid in wanted:
                    sim.runners.setdefault(wid, Runner())

    def run(self, seconds: float, step: float = 1.0) -> None:
        t = 0.0
        while t < seconds:
            self.rec.reconcile()
            self.beat()
            self.clock.advance(step)
            t += step
        self.rec.reconcile()

    def job(self, job_id: str) -> TrainJob:
        with self.store.session() as s:
            job = s.get(TrainJob, job_id)
            assert job is not None
            return job

    def runner(self, job_id: str) -> tuple[str, Runner]:
        for sim in self.nodes.values():
            for wid, r in sim.runners.items():
                if wid.startswith(job_id + "."):
                    return wid, r
        raise AssertionError(f"no runner for {job_id}")

    def train(
        self, job_id: str, steps: range, checkpoint: int | None = None, resumed: int | None = None
    ) -> None:
        self.emit(job_id, type="start", total_steps=10, resumed_from_step=resumed, device="cpu", backend="hf")
        for i in steps:
            self.emit(job_id, type="step", step=i, total_steps=10, loss=3.0 - 0.1 * i, lr=2e-4, grad_norm=1.0,
                      tokens_per_s=100.0, eta_s=1.0, energy_kwh=1e-5 * i, co2_kg=1e-6 * i, epoch=0.1 * i)  # fmt: skip
        if checkpoint:
            self.emit(job_id, type="checkpoint", step=checkpoint, path=f"checkpoints/checkpoint-{checkpoint}")

    def finish(self, job_id: str, complete: bool = True) -> Path:
        out = Path(self.job(job_id).spec["output_dir"]) / "output"
        out.mkdir(parents=True, exist_ok=True)
        (out / "adapter_config.json").write_text("{}")
        if complete:
            (out / "adapter_model.safetensors").write_bytes(b"\1" * 32)
        self.emit(job_id, type="saving")
        self.emit(job_id, type="done", output=str(out), kind="adapter", final_loss=2.1, steps=10, tokens=1000)
        _, r = self.runner(job_id)
        r.state, r.exit_code = "exited", 0
        return out

    def states(self, job_id: str) -> list[tuple[str | None, str]]:
        with self.store.session() as s:
            evs = s.scalars(select(Event).where(Event.object_id == job_id).order_by(Event.id))
            return [(e.from_state, e.to_state) for e in evs if e.from_state != e.to_state]


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> World:
    return World(settings, f"sqlite:///{tmp_path / 'w.db'}")


def test_job_walks_the_states_stores_metrics_bills_and_registers_its_model(world: World) -> None:
    jid = world.submit(name="my-tune")
    assert world.job(jid).state == "queued"
    world.run(3)
    assert world.job(jid).state == "placing"  # the fake node is still provisioning
    world.run(5)
    assert world.job(jid).state == "running"
    world.train(jid, range(1, 11), checkpoint=10)
    world.run(2)
    world.emit(jid, type="saving")
    world.run(2)
    assert world.job(jid).state == "saving"
    out = world.finish(jid)
    world.run(2)
    job = world.job(jid)
    assert job.state == "succeeded", job.reason
    assert "argosy deploy my-tune" in job.reason
    assert world.states(jid) == [
        ("new", "queued"),
        ("queued", "placing"),
        ("placing", "running"),
        ("running", "saving"),
        ("saving", "succeeded"),
    ]
    with world.store.session() as s:
        steps = [
            m.step
            for m in s.scalars(
                select(TrainMetric).where(TrainMetric.job_id == jid).order_by(TrainMetric.step)
            )
        ]
        assert steps == list(range(1, 11))
        [model] = s.scalars(select(RegisteredModel)).all()
        assert (model.name, model.kind, model.path, model.job_id) == ("my-tune", "adapter", str(out), jid)
        ledger = s.scalars(select(LedgerEntry).where(LedgerEntry.resource_id == jid)).all()
        assert ledger and all(e.resource_kind == "job" for e in ledger)
        cost = job_svc.job_cost(s, jid)
        assert cost["seconds"] > 0 and cost["cost_usd"] > 0  # the fake spot offering has a price
        assert job_svc.resolve_for_deploy(s, jid) == job_svc.resolve_for_deploy(s, "my-tune")
        assert job_svc.resolve_for_deploy(s, "my-tune")["lora"] == str(out)
    # The carbon intensity of the node's region came from the catalog into the runner's spec.
    assert world.job(jid).spec["carbon_intensity_g_per_kwh"] > 0
    assert "fake" in world.job(jid).spec["region"]


def test_queue_is_fifo_within_priority_and_the_head_blocks(settings: Settings, tmp_path: Path) -> None:
    w = World(settings, f"sqlite:///{tmp_path / 'q.db'}", capacity=1)
    a = w.submit()
    w.clock.advance(1)
    b = w.submit()
    w.clock.advance(1)
    c = w.submit(priority=5)
    w.run(8)
    assert [w.job(j).state for j in (a, b, c)] == ["queued", "queued", "running"]
    assert "no capacity" in w.job(a).reason
    assert w.job(b).reason == "waiting behind earlier jobs in the queue"
    w.finish(c)
    w.run(12)  # c's node is released by the idle sweep in the server; here: terminate it ourselves
    assert w.job(c).state == "succeeded"
    with w.store.session() as s:
        iid = s.get(Node, w.job(c).node_id).provider_instance_id
    w.fake.terminate(iid)
    w.run(10)
    assert [w.job(j).state for j in (a, b)] == ["running", "queued"]


def test_one_job_per_cpu_node_unless_they_share(world: World) -> None:
    node = world.local_node()
    a = world.submit(provider="local")
    b = world.submit(provider="local")
    world.run(5)
    assert world.job(a).state == "running" and world.job(a).node_id == node
    assert world.job(b).state == "queued" and "free slot" in world.job(b).reason
    c = world.submit(provider="local", share_node=True)
    d = world.submit(provider="local", share_node=True, priority=1)
    world.run(2)
    assert world.job(d).state == "queued"  # a's exclusive job fills the only slot
    world.finish(a)
    world.run(5)
    assert world.job(a).state == "succeeded"
    # d (priority 1) goes first; b may not share d's node, and c waits behind b (strict order).
    assert [world.job(j).state for j in (b, c, d)] == ["queued", "queued", "running"]
    world.finish(d)
    world.run(5)
    assert [world.job(j).state for j in (b, c)] == ["running", "queued"]
    world.finish(b)
    world.run(5)
    assert world.job(c).state == "running"
    e = world.submit(provider="local", share_node=True)
    world.run(2)
    assert world.job(e).state == "running" and world.job(e).node_id == world.job(c).node_id  # they share


def test_crashed_runner_restarts_and_resumes_from_its_checkpoint(world: World) -> None:
    jid = world.submit()
    world.run(8)
    world.train(jid, range(1, 8), checkpoint=5)
    world.run(2)
    wid1, r = world.runner(jid)
    r.state, r.exit_code = "exited", 1
    world.run(2)
    job = world.job(jid)
    assert job.state in ("placing", "running") and job.attempt == 2
    assert any("restart 2/3 resumes from checkpoint step 5" in x for x in _reasons(world, jid))
    wid2, _ = world.runner(jid)
    assert wid2 != wid1
    world.train(jid, range(6, 11), resumed=5)
    world.run(2)
    assert world.job(jid).state == "running"
    world.finish(jid)
    world.run(2)
    assert world.job(jid).state == "succeeded"
    with world.store.session() as s:
        rows = s.scalars(select(TrainMetric).where(TrainMetric.job_id == jid)).all()
        assert sorted(m.step for m in rows) == list(range(1, 11))  # steps 6-7 overwritten, not doubled
    assert any("resumed from checkpoint step 5" in x for x in _reasons(world, jid))


def _reasons(world: World, jid: str) -> list[str]:
    with world.store.session() as s:
        return [e.reason for e in s.scalars(select(Event).where(Event.object_id == jid).order_by(Event.id))]


def test_crash_loop_fails_after_max_attempts_and_bad_input_is_not_retried(world: World) -> None:
    jid = world.submit(max_attempts=2)
    bad = world.submit()
    world.run(8)
    for _ in range(2):
        _, r = world.runner(jid)
        r.state, r.exit_code = "exited", 1
        world.run(2)
    assert world.job(jid).state == "failed"
    assert "crashed 2 times" in world.job(jid).reason
    world.emit(
        bad, type="error", message="dataset line 3: not valid JSON", fix="fix line 3", code="bad_input"
    )
    _, r = world.runner(bad)
    r.state, r.exit_code = "exited", 2
    world.run(2)
    job = world.job(bad)
    assert job.state == "failed" and job.attempt == 1
    assert "dataset line 3" in job.reason and "fix line 3" in job.reason


def test_cancel_stops_the_runner_and_resume_continues_from_the_checkpoint(world: World) -> None:
    jid = world.submit()
    world.run(8)
    world.train(jid, range(1, 5), checkpoint=4)
    world.run(2)
    with world.store.session() as s:
        job_svc.cancel(s, jid, world.clock.now())
    world.run(2)
    assert world.job(jid).state == "cancelled"
    assert not any(sim.runners for sim in world.nodes.values())  # the agent was told to stop it
    with world.store.session() as s:
        job = job_svc.resume(s, jid, world.clock.now())
        assert job.state == "queued" and "checkpoint step 4" in job.reason
    world.run(10)
    assert world.job(jid).state == "running"
    world.finish(jid)
    world.run(2)
    assert world.job(jid).state == "succeeded"
    with world.store.session() as s, pytest.raises(ConflictError, match="rerun"):
        job_svc.resume(s, jid, world.clock.now())  # succeeded: nothing to resume


def test_rerun_changes_parameters_and_keeps_the_rest(world: World) -> None:
    jid = world.submit(params={"lr": 1e-4, "lora_r": 4})
    with world.store.session() as s:
        new = job_svc.rerun(s, jid, {"lr": 5e-4}, world.settings, world.provider, world.clock.now())
        assert new.rerun_of == jid and new.id != jid
        assert new.spec["lr"] == 5e-4 and new.spec["lora_r"] == 4 and new.spec["max_steps"] == 10
        assert new.spec["output_dir"] != s.get(TrainJob, jid).spec["output_dir"]
        with pytest.raises(ArgosyError, match="did you mean 'lora_r'"):
            job_svc.rerun(s, jid, {"lora_rank": 8}, world.settings, world.provider, world.clock.now())


def test_incomplete_output_fails_the_job_and_registers_nothing(world: World) -> None:
    jid = world.submit()
    world.run(8)
    world.train(jid, range(1, 11))
    world.finish(jid, complete=False)
    world.run(2)
    job = world.job(jid)
    assert job.state == "failed" and "incomplete" in job.reason and "adapter_model.safetensors" in job.reason
    with world.store.session() as s:
        assert s.scalars(select(RegisteredModel)).all() == []
        with pytest.raises(ConflictError, match="no registered model"):
            job_svc.resolve_for_deploy(s, jid)


def test_a_lost_node_queues_the_job_again(world: World) -> None:
    jid = world.submit()
    world.run(8)
    world.train(jid, range(1, 4), checkpoint=3)
    world.run(2)
    with world.store.session() as s:
        iid = s.get(Node, world.job(jid).node_id).provider_instance_id
    world.fake.preempt(iid)
    with world.store.session() as s:
        node = s.get(Node, world.job(jid).node_id)
        node.status = "preempted"
    world.run(1)
    assert world.job(jid).state in ("queued", "placing")
    assert any("queued again, resumes from checkpoint step 3" in r for r in _reasons(world, jid))
    world.run(10)
    assert world.job(jid).state == "running"


def test_a_silent_agent_is_checked_with_its_provider_and_the_job_moves_on(world: World) -> None:
    # The agent died (killed, or with the server that started it): no more beats. Its node still
    # says "ready"; the reconciler must not wait for it to look lost, but ask the provider.
    jid = world.submit()
    world.run(8)
    world.train(jid, range(1, 4), checkpoint=3)
    world.run(2)
    first = world.job(jid).node_id
    with world.store.session() as s:
        iid = s.get(Node, first).provider_instance_id
    world.fake.terminate(iid)  # the machine (and its agent) is gone; nobody told the server
    world.run(7)  # past quiet_s (5 s), well before heartbeat_timeout + node_lost (75 s)
    assert any("queued again, resumes from checkpoint step 3" in r for r in _reasons(world, jid))
    with world.store.session() as s:
        assert s.get(Node, first).status == "terminated"
    world.run(10)
    job = world.job(jid)
    assert job.state == "running" and job.node_id != first


def test_bad_input_is_refused_before_anything_is_recorded(world: World) -> None:
    with pytest.raises(ArgosyError, match="unknown base model") as e, world.store.session() as s:
        job_svc.submit(s, job_svc.TrainRequest("./nope", world.digest), world.settings, world.provider, 0)
    assert e.value.fix and "make-tiny" in e.value.fix
    with pytest.raises(NotFoundError, match="not found") as e, world.store.session() as s:
        job_svc.submit(
            s, job_svc.TrainRequest(str(world.model), "deadbeef00"), world.settings, world.provider, 0
        )
    assert "argosy dataset upload" in (e.value.fix or "")
    with pytest.raises(ArgosyError, match="did you mean 'lora_r'"):
        world.submit(params={"lora_rank": 8})
    with pytest.raises(ArgosyError, match="lr must be positive"):
        world.submit(params={"lr": -1.0})
    with pytest.raises(ArgosyError, match="unknown provider 'fak'"):
        world.submit(provider="fak")
    # A 70B model, fully fine-tuned, fits neither a 24 GB L4 nor a 64 GB CPU machine.
    big = world.settings.home / "big"
    big.mkdir()
    (big / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_size": 8192,
                "intermediate_size": 28672,
                "num_hidden_layers": 80,
                "num_attention_heads": 64,
                "num_key_value_heads": 8,
                "vocab_size": 128256,
                "torch_dtype": "bfloat16",
            }  # fmt: skip
        )
    )
    (big / "model.safetensors").write_bytes(b"\0")
    with pytest.raises(ArgosyError, match="cannot fit anywhere") as e, world.store.session() as s:
        req = job_svc.TrainRequest(str(big), world.digest, params={"method": "full"}, provider="fake")
        job_svc.submit(s, req, world.settings, world.provider, 0)
    assert "--batch-size" in (e.value.fix or "")
    with world.store.session() as s:
        assert s.scalars(select(TrainJob)).all() == []


def test_progress_is_ingested_once_even_when_sent_again(world: World) -> None:
    jid = world.submit()
    lines = []
    pos = 0
    for i in (1, 2):
        text = json.dumps({"type": "step", "step": i, "loss": 1.0 / i})
        lines.append([pos, text])
        pos += len(text) + 1
    with world.store.session() as s:
        job = s.get(TrainJob, jid)
        assert ingest_progress(s, job, lines, 1.0) == 2
        assert ingest_progress(s, job, lines, 2.0) == 0  # a re-sent beat, or a restarted agent
        assert job.progress_offset == pos
    with world.store.session() as s:
        assert len(s.scalars(select(TrainMetric)).all()) == 2


def test_local_carbon_intensity_follows_the_configured_country(world: World) -> None:
    world.settings.providers.local.country = "FR"
    world.local_node()
    jid = world.submit(provider="local")
    spec = world.job(jid).spec
    assert spec["carbon_intensity_g_per_kwh"] < 100 and "FR" in spec["carbon_source"]
    world.settings.providers.local.country = None
    spec = world.job(world.submit(provider="local")).spec
    assert "world average" in spec["carbon_source"] and "providers.local.country" in spec["carbon_source"]


def test_tables_exist_on_every_backend(db_url: str) -> None:
    store = Store(db_url)
    names = set(inspect(store.engine).get_table_names())
    assert {"train_jobs", "train_metrics", "registered_models"} <= names
    with store.session() as s:
        create_key(s, "x", "admin", 1.0)
    store.close()
