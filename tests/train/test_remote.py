"""Jobs on nodes that do not share the server's filesystem, over the real app (TestClient, SQLite, a
fake clock): the node-scoped agent endpoints that hand a node its job's inputs and take its output
back, and the reconciler registering a model only once an upload was accepted.

The node is a machine "enrolled by hand" (provider `manual`, no SharedFilesystem capability); its
agent is played through the HTTP API with its own agent key. The real processes (a second agent
with its own ARGOSY_HOME, the real runner) are in tests/e2e/test_train_remote_e2e.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from argosy.core.config import Settings
from argosy.server.state import ServerState
from argosy.store.keys import create_key
from argosy.store.models import Event, Node, RegisteredModel, TrainJob
from argosy.train import transfer
from tests.conftest import write_model_config

ROWS = "".join(json.dumps({"prompt": f"p{i}", "completion": f" c{i}"}) + "\n" for i in range(12))


def _node(state: ServerState, name: str) -> tuple[str, str]:
    """A machine enrolled by hand, ready, with its own node-scoped agent key."""
    now = state.clock.now()
    with state.store.session() as s:
        node = Node(
            id=f"node_{name}",
            name=name,
            provider="manual",
            provider_instance_id=name,
            status="ready",
            resources={"cpus": 4, "ram_gb": 16, "gpus": []},
            last_heartbeat=now,
            created_at=now,
            updated_at=now,
        )
        s.add(node)
        s.flush()
        key = create_key(s, f"agent {name}", "agent", now, node_id=node.id)
    return node.id, key


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def placed(api, settings: Settings):  # type: ignore[no-untyped-def]
    """A job submitted with --node n1 and placed there; n2 is another node with its own key."""
    client, state = api
    model = write_model_config(settings.home / "base")
    (model / "model.safetensors").write_bytes(b"\1" * 4096)
    (model / "tokenizer.json").write_text("{}")
    n1, k1 = _node(state, "n1")
    n2, k2 = _node(state, "n2")
    up = client.post("/api/v1/train/datasets", content=ROWS.encode(), params={"name": "pc"}).json()
    r = client.post(
        "/api/v1/train/jobs",
        json={"base_model": str(model), "dataset": "pc", "node": "n1", "params": {"max_steps": 4}},
    )
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["offering"]["extra"]["node_id"] == n1 and job["provider"] == "manual"
    state.train.reconcile()
    with state.store.session() as s:
        row = s.get(TrainJob, job["id"])
        assert row is not None and (row.state, row.node_id) == ("placing", n1)
        assert row.progress["remote"] is True  # a manual node does not share the server's files
    return {"client": client, "state": state, "job": job["id"], "wid": f"{job['id']}.1",
            "n1": n1, "k1": k1, "n2": n2, "k2": k2, "model": model, "digest": up["digest"]}  # fmt: skip


def test_heartbeat_marks_the_workload_remote_and_the_local_provider_shares_files(placed) -> None:  # type: ignore[no-untyped-def]
    p = placed
    r = p["client"].post(f"/api/v1/agents/{p['n1']}/heartbeat", json={}, headers=_auth(p["k1"]))
    [w] = r.json()["workloads"]
    assert (w["id"], w["kind"], w["remote"], w["node_id"]) == (p["wid"], "train", True, p["n1"])
    from argosy.providers.base import SharedFilesystem

    local = p["state"].provider("local")
    assert isinstance(local, SharedFilesystem) and local.shares_server_filesystem
    assert not isinstance(p["state"].provider("fake"), SharedFilesystem)


def test_node_fetches_dataset_by_digest_and_model_as_verified_tar(placed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = placed
    c, base = p["client"], f"/api/v1/agents/{p['n1']}/train/{p['job']}"
    inputs = c.get(f"{base}/inputs", headers=_auth(p["k1"])).json()
    assert inputs["dataset"] == {"digest": p["digest"], "bytes": len(ROWS.encode())}
    assert inputs["base_model"]["kind"] == "tar" and inputs["base_model"]["name"] == "base"
    r = c.get(f"{base}/dataset", headers=_auth(p["k1"]))
    assert r.content == ROWS.encode() and hashlib.sha256(r.content).hexdigest() == p["digest"]
    assert r.headers["x-argosy-sha256"] == p["digest"]
    r = c.get(f"{base}/base-model", headers=_auth(p["k1"]))
    sha = hashlib.sha256(r.content).hexdigest()
    assert sha == inputs["base_model"]["sha256"] == r.headers["x-argosy-sha256"]
    assert len(r.content) == inputs["base_model"]["bytes"]
    # Deterministic: asking again gives the same bytes (so the digest is a cache key on the node).
    assert c.get(f"{base}/base-model", headers=_auth(p["k1"])).content == r.content
    tar = tmp_path / "m.tar"
    tar.write_bytes(r.content)
    transfer.unpack(tar, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == b"\1" * 4096
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "llama"
    # A corrupt copy is caught before it is used.
    with pytest.raises(transfer.TransferError, match="corrupt"):
        transfer.check_received(
            "the model", sha, len(r.content), hashlib.sha256(b"x").hexdigest(), len(r.content)
        )
    with pytest.raises(transfer.TransferError, match="truncated"):
        transfer.check_received("the model", sha, len(r.content), sha, len(r.content) - 1)


def test_agent_key_of_another_node_is_refused(placed) -> None:  # type: ignore[no-untyped-def]
    p = placed
    c = p["client"]
    # n2's key calling as n1, and n2's key asking for a job that is not on n2.
    for node, key in ((p["n1"], p["k2"]), (p["n2"], p["k2"])):
        for path in ("inputs", "dataset", "base-model"):
            r = c.get(f"/api/v1/agents/{node}/train/{p['job']}/{path}", headers=_auth(key))
            assert r.status_code == 403, (node, path, r.text)
            assert r.json()["fix"]
        r = c.put(f"/api/v1/agents/{node}/train/{p['wid']}/output", content=b"x",
                  headers={**_auth(key), "X-Argosy-Size": "1", "X-Argosy-Sha256": "00"})  # fmt: skip
        assert r.status_code == 403
    assert "another node" in c.get(f"/api/v1/agents/{p['n1']}/train/{p['job']}/inputs",
                                   headers=_auth(p["k2"])).json()["message"]  # fmt: skip
    assert (
        c.get(f"/api/v1/agents/{p['n1']}/train/{p['job']}/inputs", headers=_auth("ak_nope")).status_code
        == 401
    )


def _output_tar(tmp: Path, complete: bool = True, extra: dict[str, bytes] | None = None) -> bytes:
    work = tmp / "work"
    out = work / "output"
    out.mkdir(parents=True)
    (out / "adapter_config.json").write_text('{"r": 8}')
    if complete:
        (out / "adapter_model.safetensors").write_bytes(b"\2" * 3000)
    (out / "argosy_train.json").write_text("{}")
    (work / "emissions.json").write_text(json.dumps({"energy_kwh": 1e-5, "co2_kg": 1e-6}))
    done = {"type": "done", "ts": 1, "output": "/elsewhere/output", "kind": "adapter", "steps": 4,
            "final_loss": 1.5, "tokens": 100}  # fmt: skip
    (work / "progress.jsonl").write_text(
        json.dumps({"type": "start", "ts": 0}) + "\n" + json.dumps(done) + "\n"
    )
    members = [("output", out), *transfer.tree_members(out, "output")]
    members += [(n, work / n) for n in ("emissions.json", "progress.jsonl")]
    data = b"".join(transfer.tar_stream(members))
    if extra:  # a hand-made archive with other members
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for name, body in extra.items():
                ti = tarfile.TarInfo(name)
                ti.size = len(body)
                tf.addfile(ti, io.BytesIO(body))
        data = buf.getvalue()
    return data


def _put(
    p: dict[str, Any], data: bytes, sha: str | None = None, size: int | None = None, body: bytes | None = None
):  # type: ignore[no-untyped-def]
    sent = data if body is None else body
    chunks = (sent[i : i + 1000] for i in range(0, len(sent), 1000))  # streamed
    return p["client"].put(
        f"/api/v1/agents/{p['n1']}/train/{p['wid']}/output",
        content=chunks,
        headers={
            **_auth(p["k1"]),
            "X-Argosy-Size": str(len(data) if size is None else size),
            "X-Argosy-Sha256": sha or hashlib.sha256(data).hexdigest(),
        },
    )


def _nothing_installed(settings: Settings, job_id: str) -> None:
    d = settings.home / "train" / "jobs" / job_id
    left = sorted(x.name for x in d.iterdir()) if d.exists() else []
    assert left == [], left  # no output, no receipt, no spool, no staging dir


def test_bad_uploads_keep_nothing(placed, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = placed
    good = _output_tar(tmp_path / "a")
    r = _put(p, good, sha=hashlib.sha256(b"other").hexdigest())
    assert r.status_code == 400 and "corrupt" in r.json()["message"], r.text
    _nothing_installed(settings, p["job"])
    r = _put(p, good, body=good[: len(good) // 2])  # the connection dropped half-way
    assert r.status_code == 400 and "truncated" in r.json()["message"], r.text
    _nothing_installed(settings, p["job"])
    r = _put(p, good, size=len(good) - 10)  # more bytes than announced
    assert r.status_code == 400 and "longer than" in r.json()["message"]
    incomplete = _output_tar(tmp_path / "b", complete=False)
    r = _put(p, incomplete)
    assert r.status_code == 400 and "adapter_model.safetensors" in r.json()["message"], r.text
    _nothing_installed(settings, p["job"])
    evil = _output_tar(tmp_path / "c", extra={"../../escape.txt": b"x"})
    r = _put(p, evil)
    assert r.status_code == 400 and "not a plain file" in r.json()["message"]
    other = _output_tar(tmp_path / "d", extra={"notes/secret.txt": b"x"})
    assert "only output" in _put(p, other).json()["message"]
    assert not (settings.home / "escape.txt").exists()
    _nothing_installed(settings, p["job"])
    p["client"].app.state.train_upload_max_bytes = 1000
    r = _put(p, good)
    assert r.status_code == 413 and "limit" in r.json()["message"] and r.json()["fix"]
    _nothing_installed(settings, p["job"])
    # A stale attempt cannot install over the current one.
    p["client"].app.state.train_upload_max_bytes = transfer.DEFAULT_MAX_OUTPUT_BYTES
    stale = p["client"].put(f"/api/v1/agents/{p['n1']}/train/{p['job']}.0/output", content=good,
                            headers={**_auth(p["k1"]), "X-Argosy-Size": str(len(good)),
                                     "X-Argosy-Sha256": hashlib.sha256(good).hexdigest()})  # fmt: skip
    assert stale.status_code == 409


def _beat(p: dict[str, Any], state: str, code: int | None = None, progress: list[Any] | None = None) -> None:
    report: dict[str, Any] = {
        "workloads": {
            p["wid"]: {"state": state, "pid": 7, "since": p["state"].clock.now(), "exit_code": code}
        }
    }
    if progress is not None:
        report["progress"] = {p["wid"]: progress}
    r = p["client"].post(f"/api/v1/agents/{p['n1']}/heartbeat", json=report, headers=_auth(p["k1"]))
    assert r.status_code == 200, r.text


def test_exit_0_registers_only_after_an_accepted_upload(placed, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = placed
    state = p["state"]
    # The heartbeat shipped the first line of the node's progress.jsonl (the same file is uploaded).
    _beat(p, "running", progress=[[0, json.dumps({"type": "start", "ts": 0})]])
    state.train.reconcile()
    # The runner finished (its done event names a path on the node) but nothing was uploaded yet.
    _beat(p, "exited", 0)
    state.train.reconcile()
    with state.store.session() as s:
        assert s.get(TrainJob, p["job"]).state == "running"  # waits for the upload, within the grace
    good = _output_tar(tmp_path / "a")
    r = _put(p, good)
    assert r.status_code == 200, r.text
    assert r.json()["kind"] == "adapter" and r.json()["sha256"] == hashlib.sha256(good).hexdigest()
    state.train.reconcile()  # the done event came in the upload's progress.jsonl, not a heartbeat
    job_dir = settings.home / "train" / "jobs" / p["job"]
    with state.store.session() as s:
        job = s.get(TrainJob, p["job"])
        assert job.state == "succeeded", job.reason
        [m] = s.query(RegisteredModel).all()
        assert Path(m.path) == job_dir / "output" and m.kind == "adapter"
    assert (job_dir / "output" / "adapter_model.safetensors").read_bytes() == b"\2" * 3000
    assert json.loads((job_dir / "emissions.json").read_text())["co2_kg"] == 1e-6
    rep = p["client"].get(f"/api/v1/train/jobs/{p['job']}/report").json()
    assert rep["emissions_source"] == "emissions.json"  # the report reads the uploaded record
    dep = p["client"].post("/api/v1/deployments", json={"model": p["job"], "dry_run": True})
    assert dep.status_code == 200, dep.text


def test_missing_upload_fails_with_a_reason_and_registers_nothing(placed) -> None:  # type: ignore[no-untyped-def]
    p = placed
    state = p["state"]
    done = {"type": "done", "ts": 1, "output": "/node/output", "kind": "adapter", "steps": 4}
    _beat(p, "running", progress=[[0, json.dumps({"type": "start", "ts": 0})], [30, json.dumps(done)]])
    state.train.reconcile()
    _beat(p, "exited", 0)
    state.clock.advance(120)
    state.train.reconcile()
    with state.store.session() as s:
        job = s.get(TrainJob, p["job"])
        assert job.state == "failed" and "never reached the server" in job.reason
        assert s.query(RegisteredModel).count() == 0


def test_transfer_failure_exit_fails_at_once_with_the_nodes_reason(placed) -> None:  # type: ignore[no-untyped-def]
    p = placed
    state = p["state"]
    err = {"type": "error", "ts": 1, "code": "transfer", "fix": "check the network",
           "message": "training finished but uploading the output failed 4 times; last: timed out"}  # fmt: skip
    _beat(p, "running", progress=[[0, json.dumps(err)]])
    state.train.reconcile()
    _beat(p, "exited", 4)
    state.train.reconcile()
    with state.store.session() as s:
        job = s.get(TrainJob, p["job"])
        assert job.state == "failed" and "uploading the output failed" in job.reason
        assert "check the network" in job.reason


def test_a_job_moved_to_another_node_starts_over_and_says_so(placed) -> None:  # type: ignore[no-untyped-def]
    p = placed
    state = p["state"]
    ck = {"type": "checkpoint", "ts": 1, "step": 2, "path": "/node/checkpoints/checkpoint-2"}
    _beat(p, "running", progress=[[0, json.dumps(ck)]])
    state.train.reconcile()
    with state.store.session() as s:
        job = s.get(TrainJob, p["job"])
        # Unpin it (as a job on a provisioned node is): node loss queues it for a new node.
        job.offering = {**job.offering, "extra": {}}
        node = s.get(Node, p["n1"])
        node.status = "terminated"
    state.train.reconcile()
    with state.store.session() as s:
        job = s.get(TrainJob, p["job"])
        assert job.state == "queued" and "starts over on a new node" in job.reason
        assert job.progress["checkpoint"]["step"] == 2
        # Place it by hand on n2 through the same binding the reconciler uses.
        state.train._bind(s, job, s.get(Node, p["n2"]), "placed on node n2", state.clock.now())
        assert "starts from scratch (its checkpoints stayed on node node_n1)" in job.reason
        assert job.progress["checkpoint"] is None and job.progress_offset == 0
        reasons = [e.reason for e in s.query(Event).filter(Event.object_id == p["job"])]
        assert any("starts from scratch" in r for r in reasons)


def test_pinned_node_waits_for_its_node_and_fails_when_it_is_gone(api, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    client, state = api
    model = write_model_config(settings.home / "base")
    (model / "model.safetensors").write_bytes(b"\1" * 64)
    _node(state, "n1")
    client.post("/api/v1/train/datasets", content=ROWS.encode(), params={"name": "pc"})
    bad = client.post("/api/v1/train/jobs", json={"base_model": str(model), "dataset": "pc", "node": "n7"})
    assert bad.status_code == 404 and "n1" in bad.json()["message"] and bad.json()["fix"]
    hub = client.post(
        "/api/v1/train/jobs", json={"base_model": "org/some-model", "dataset": "pc", "node": "n1"}
    )
    assert hub.status_code == 200, hub.text  # a hub id goes to a remote node, which downloads it
    assert any("downloads it" in line for line in hub.json()["placement"])
    no_hub = client.post("/api/v1/train/jobs", json={"base_model": "org/some-model", "dataset": "pc"})
    assert no_hub.status_code == 400 and "unknown base model" in no_hub.json()["message"]
    with state.store.session() as s:
        s.get(Node, "node_n1").status = "unhealthy"
    state.train.reconcile()
    job = client.get(f"/api/v1/train/jobs/{hub.json()['id']}").json()
    assert job["state"] == "queued" and "waiting for node n1 (unhealthy)" in job["reason"]
    with state.store.session() as s:
        s.get(Node, "node_n1").status = "terminated"
    state.train.reconcile()
    job = client.get(f"/api/v1/train/jobs/{hub.json()['id']}").json()
    assert job["state"] == "failed" and "is gone" in job["reason"]
