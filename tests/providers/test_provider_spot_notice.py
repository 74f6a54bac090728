"""Spot reclaim notices end to end: a loopback metadata server that behaves like AWS IMDSv2 and the GCP
metadata server, the providers' SpotNotice capability, the agent polling it and putting it in its
heartbeat, and the server marking the node preempted (real SQLite) so its replicas get replaced."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from argosy.fleet import nodes as node_svc
from argosy.fleet.agent import Agent
from argosy.providers.aws import AwsProvider
from argosy.providers.base import SpotNotice
from argosy.providers.gcp import GcpProvider
from argosy.providers.lambda_cloud import LambdaProvider
from argosy.providers.preemption import METADATA_URL_ENV, gcp_preemption_notice, spot_notice_poller
from argosy.store.db import Store
from argosy.store.models import Event, Node


class Metadata:
    """What the documented endpoints do: IMDSv2 needs a PUT-issued token on every GET (401 without),
    spot/instance-action is 404 until an interruption is scheduled; GCP needs Metadata-Flavor."""

    def __init__(self) -> None:
        self.tokens: set[str] = set()
        self.action: dict[str, str] | None = None
        self.gcp_preempted = False
        self.seen: list[tuple[str, str]] = []
        self.url = ""


@pytest.fixture
def metadata() -> Iterator[Metadata]:
    state = Metadata()

    class H(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: str = "", ctype: str = "text/plain") -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:  # noqa: N802
            state.seen.append(("PUT", self.path))
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if self.path != "/latest/api/token" or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return self._send(400, "bad token request")
            token = secrets.token_hex(8)
            state.tokens.add(token)
            self._send(200, token)

        def do_GET(self) -> None:  # noqa: N802
            state.seen.append(("GET", self.path))
            if self.path.startswith("/latest/"):
                if self.headers.get("X-aws-ec2-metadata-token") not in state.tokens:
                    return self._send(401, "")
                if self.path == "/latest/meta-data/spot/instance-action":
                    if state.action is None:
                        return self._send(404, "Not Found")
                    return self._send(200, json.dumps(state.action), "application/json")
                return self._send(404, "Not Found")
            if self.path == "/computeMetadata/v1/instance/preempted":
                if self.headers.get("Metadata-Flavor") != "Google":
                    return self._send(403, "Missing Metadata-Flavor:Google header")
                return self._send(200, "TRUE" if state.gcp_preempted else "FALSE")
            self._send(404, "")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_aws_imdsv2_token_then_instance_action(metadata, settings, clock):
    aws = AwsProvider(settings, clock, env={METADATA_URL_ENV: metadata.url})
    assert isinstance(aws, SpotNotice)
    assert aws.spot_notice() is None  # 404: nothing scheduled
    metadata.action = {"action": "terminate", "time": "2026-11-22T14:00:00Z"}
    assert aws.spot_notice() == "aws spot interruption notice: terminate at 2026-11-22T14:00:00Z"
    # Every GET came after a PUT for a session token (IMDSv2), never without one.
    assert metadata.seen[0] == ("PUT", "/latest/api/token") and metadata.seen[2] == (
        "PUT",
        "/latest/api/token",
    )


def test_gcp_preempted_flag(metadata, settings, clock):
    gcp = GcpProvider(settings, clock, env={METADATA_URL_ENV: metadata.url})
    assert isinstance(gcp, SpotNotice)
    assert gcp.spot_notice() is None
    metadata.gcp_preempted = True
    assert "gcp preemption notice" in (gcp.spot_notice() or "")


def test_no_metadata_server_means_no_notice():
    assert gcp_preemption_notice("http://127.0.0.1:9", timeout_s=0.2) is None  # nothing listening


def test_only_providers_with_a_notice_get_a_poller(settings, clock):
    assert not isinstance(LambdaProvider(settings, clock, env={}), SpotNotice)
    assert spot_notice_poller("lambda", settings) is None
    assert spot_notice_poller("runpod", settings) is None
    assert callable(spot_notice_poller("aws", settings))


class Capture:
    """The server's heartbeat route as the agent sees it: records bodies, answers 'keep going'."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []


@pytest.fixture
def server() -> Iterator[tuple[str, Capture]]:
    cap = Capture()

    class H(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            n = int(self.headers.get("content-length") or 0)
            cap.bodies.append(json.loads(self.rfile.read(n)))
            data = b'{"workloads": [], "terminate": false}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", cap
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_agent_reports_the_notice_and_the_server_marks_the_node_preempted(
    metadata, server, settings, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv(METADATA_URL_ENV, metadata.url)
    url, cap = server
    poller = spot_notice_poller("aws", settings)
    agent = Agent(url, "tok", settings, prepare=lambda *a: None, spot_notice=poller, spot_poll_s=0.05)
    agent.node_id = "node_1"
    try:
        assert agent.poll_spot_notice() is None
        agent.heartbeat()
        assert "preemption_notice" not in cap.bodies[-1]
        metadata.action = {"action": "terminate", "time": "2026-11-22T14:00:00Z"}
        assert agent.poll_spot_notice() and agent.heartbeat() is not None
        metadata.action = None  # a notice is never withdrawn: later beats still carry it
        agent.poll_spot_notice()
        agent.heartbeat()
    finally:
        agent.client.close()
    reported = cap.bodies[-1]["preemption_notice"]
    assert "2026-11-22T14:00:00Z" in reported and cap.bodies[-2]["preemption_notice"] == reported

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    with store.session() as s:
        s.add(
            Node(
                id="node_1",
                name="n1",
                provider="aws",
                provider_instance_id="i-1",
                status="ready",
                created_at=0,
                updated_at=0,
            )
        )
    with store.session() as s:
        node_svc.heartbeat(s, "node_1", cap.bodies[-3], 1.0, tmp_path)  # before the notice
        assert s.get(Node, "node_1").status == "ready"
        node_svc.heartbeat(s, "node_1", cap.bodies[-1], 2.0, tmp_path)
        assert s.get(Node, "node_1").status == "preempted"
        [event] = s.scalars(select(Event).where(Event.object_id == "node_1")).all()
        assert (event.from_state, event.to_state) == ("ready", "preempted")
        assert "aws spot interruption notice" in event.reason
        node_svc.heartbeat(s, "node_1", cap.bodies[-1], 3.0, tmp_path)  # idempotent
        assert s.get(Node, "node_1").status == "preempted"
    store.close()


def test_agent_run_polls_in_the_background(metadata, server, settings, monkeypatch):
    monkeypatch.setenv(METADATA_URL_ENV, metadata.url)
    url, cap = server
    metadata.action = {"action": "stop", "time": "2026-11-22T14:00:00Z"}
    agent = Agent(
        url,
        "tok",
        settings,
        prepare=lambda *a: None,
        interval=0.05,
        spot_notice=spot_notice_poller("aws", settings),
        spot_poll_s=0.05,
    )
    agent.node_id = "node_1"
    t = threading.Thread(target=agent.run)
    # run() installs signal handlers, which only the main thread may do: skip them for this thread.
    monkeypatch.setattr("argosy.fleet.agent.signal.signal", lambda *a: None)
    t.start()
    try:
        for _ in range(200):
            if any("preemption_notice" in b for b in cap.bodies):
                break
            agent.stop_event.wait(0.05)
    finally:
        agent.stop_event.set()
        t.join(10)
    assert any("stop at" in b.get("preemption_notice", "") for b in cap.bodies)
