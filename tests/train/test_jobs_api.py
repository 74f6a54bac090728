"""The training API over the real app (TestClient, SQLite, fake clock, the fake provider): dataset
upload (streamed, capped, validated) / list / stats / preview, job submit / list / get / cancel /
resume / rerun, errors with fixes, SSE progress, the report, and the agent heartbeat carrying train
workloads and progress."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from argosy.core.config import Settings
from argosy.store.keys import create_key
from argosy.store.models import Node
from tests.conftest import write_model_config

ROWS = "".join(json.dumps({"prompt": f"p{i}", "completion": f" c{i}"}) + "\n" for i in range(12))


@pytest.fixture
def model(settings: Settings) -> Path:
    d = write_model_config(settings.home / "base")
    (d / "model.safetensors").write_bytes(b"\0" * 16)
    return d


def _upload(client: TestClient, body: str | bytes, name: str | None = None):  # type: ignore[no-untyped-def]
    data = body.encode() if isinstance(body, str) else body
    chunks = (data[i : i + 7] for i in range(0, len(data), 7))  # streamed in small pieces
    return client.post("/api/v1/train/datasets", content=chunks, params={"name": name} if name else {})


def test_datasets_upload_list_show_preview_and_bad_files(api, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    r = _upload(client, ROWS, "pc")
    assert r.status_code == 200, r.text
    up = r.json()
    assert (up["format"], up["rows"]) == ("completion", 12)
    assert [d["name"] for d in client.get("/api/v1/train/datasets").json()] == ["pc"]
    assert client.get("/api/v1/train/datasets/pc").json()["digest"] == up["digest"]
    assert client.get(f"/api/v1/train/datasets/{up['digest'][:10]}/preview", params={"n": 2}).json()[
        "rows"
    ] == [
        "p0 c0",
        "p1 c1",
    ]
    bad = _upload(client, ROWS + '{"prompt": "x", "completion": 3}\n')
    assert bad.status_code == 400 and "line 13" in bad.json()["message"] and bad.json()["fix"]
    big = client.post("/api/v1/train/datasets", content=ROWS.encode(), params={"max_bytes": 10})
    assert big.status_code == 400 and "limit" in big.json()["message"]
    left = sorted(p.name for p in (settings.home / "datasets").iterdir())
    assert left == [f"{up['digest']}.jsonl", f"{up['digest']}.meta.json"]  # rejected uploads left nothing
    assert client.get("/api/v1/train/datasets/nope").status_code == 404


def test_jobs_submit_list_get_cancel_resume_rerun(api, model: Path) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    _upload(client, ROWS, "pc")
    body = {
        "base_model": str(model),
        "dataset": "pc",
        "params": {"max_steps": 4},
        "provider": "fake",
        "name": "t1",
    }
    r = client.post("/api/v1/train/jobs", json=body)
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["state"] == "queued" and job["params"]["max_steps"] == 4 and job["memory_gb"] > 0
    assert [j["id"] for j in client.get("/api/v1/train/jobs").json()] == [job["id"]]
    got = client.get(f"/api/v1/train/jobs/{job['id']}").json()
    assert got["events"][0]["to"] == "queued"
    assert client.post(f"/api/v1/train/jobs/{job['id']}/cancel").json()["state"] == "cancelled"
    assert client.post(f"/api/v1/train/jobs/{job['id']}/resume").json()["state"] == "queued"
    re = client.post(f"/api/v1/train/jobs/{job['id']}/rerun", json={"params": {"lr": 1e-3}}).json()
    assert re["rerun_of"] == job["id"] and re["params"]["lr"] == 1e-3 and re["params"]["max_steps"] == 4
    dup = client.post("/api/v1/train/jobs", json={**body, "params": {"lora_rank": 2}})
    assert dup.status_code == 400 and "lora_r" in dup.json()["message"]
    missing = client.post("/api/v1/train/jobs", json={**body, "dataset": "zzzzzzzzzz"})
    assert missing.status_code == 404 and "argosy dataset upload" in missing.json()["fix"]
    assert client.get("/api/v1/train/jobs/job_nope").status_code == 404


def test_heartbeat_runs_the_job_and_sse_streams_it_to_the_end(api, model: Path, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    client, state = api
    _upload(client, ROWS, "pc")
    # This machine's node, registered (as after its agent started); the job is placed on it.
    with state.store.session() as s:
        now = state.clock.now()
        s.add(Node(id="node_l", name="local", provider="local", provider_instance_id="local", status="provisioning",
                   created_at=now, updated_at=now))  # fmt: skip
        s.flush()
        token = create_key(s, "agent", "agent", now, node_id="node_l")
    agent = TestClient(client.app)
    agent.headers["Authorization"] = f"Bearer {token}"
    assert agent.post("/api/v1/agents/register", json={"hostname": "h", "cpus": 2}).status_code == 200
    job = client.post(
        "/api/v1/train/jobs", json={"base_model": str(model), "dataset": "pc", "provider": "local"}
    ).json()
    state.train.reconcile()
    beat = agent.post("/api/v1/agents/node_l/heartbeat", json={"workloads": {}}).json()
    [w] = [w for w in beat["workloads"] if w["kind"] == "train"]
    assert w["id"] == f"{job['id']}.1" and w["spec"]["job_id"] == job["id"]
    out = Path(w["spec"]["output_dir"]) / "output"
    out.mkdir(parents=True)
    (out / "adapter_config.json").write_text("{}")
    (out / "adapter_model.safetensors").write_bytes(b"\1")
    lines, pos = [], 0
    for ev in (
        {"type": "start", "total_steps": 2},
        {"type": "step", "step": 1, "loss": 2.0, "total_steps": 2},
        {"type": "step", "step": 2, "loss": 1.5, "total_steps": 2, "energy_kwh": 1e-4, "co2_kg": 5e-5},
        {"type": "saving"},
        {"type": "done", "output": str(out), "kind": "adapter", "final_loss": 1.5, "steps": 2},
    ):
        text = json.dumps(ev)
        lines.append([pos, text])
        pos += len(text) + 1
    report = {"workloads": {w["id"]: {"state": "running", "pid": 1}}, "progress": {w["id"]: lines[:3]}}
    agent.post("/api/v1/agents/node_l/heartbeat", json=report)
    state.train.reconcile()
    assert client.get(f"/api/v1/train/jobs/{job['id']}").json()["state"] == "running"
    report = {"workloads": {w["id"]: {"state": "exited", "exit_code": 0}}, "progress": {w["id"]: lines}}
    agent.post("/api/v1/agents/node_l/heartbeat", json=report)  # lines 0-2 again: skipped
    state.train.reconcile()
    with client.stream("GET", f"/api/v1/train/jobs/{job['id']}/events") as r:
        text = "".join(r.iter_text())
    assert text.count("event: metric") == 2 and "event: end" in text and '"succeeded"' in text
    metrics = client.get(f"/api/v1/train/jobs/{job['id']}/metrics").json()
    assert [m["loss"] for m in metrics] == [2.0, 1.5]
    rep = client.get(f"/api/v1/train/jobs/{job['id']}/report").json()
    assert rep["emissions"]["co2_kg"] == 5e-5 and rep["emissions"]["equivalents"]
    assert rep["final_loss"] == 1.5 and rep["cost"]["source"].startswith("the ledger")
    # `argosy deploy <job>` resolves the registered adapter on top of its base model.
    d = client.post(
        "/api/v1/deployments", json={"model": job["id"], "provider": "local", "dry_run": True}
    ).json()
    assert d["plan"]["model"] == str(model) and "--lora" in d["plan"]["engine_plan"]["argv"]
    assert d["plan"]["name"] == job["name"]
