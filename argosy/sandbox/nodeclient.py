"""The client side of a sandbox agent's endpoint: the same API as the server's, spoken to one node.

The server's ClusterRunner holds one `NodeClient` per agent with the `sandbox` role. Failures are
told apart, because what the server may do next differs:

- `NodeUnreachableError`: the connection could not be made. Nothing ran; another node may be tried.
- `NodeLostError`: the node went away with the request in flight. The run may or may not have
  happened; the server must not retry it silently (code can have effects outside the sandbox only
  through the network, but a retry would still run the user's code twice).
- any error the node answered with (429, 400, 404, ...) is raised again with the node's status and
  message, so the user sees exactly what the node said.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from argosy.core.errors import ArgosyError, NotFoundError
from argosy.core.sse import sse_events
from argosy.sandbox.errors import (
    BackendUnavailableError,
    SandboxBusyError,
    SandboxError,
    SandboxRequestError,
)
from argosy.sandbox.models import ExecRequest, ExecResult, SessionCreate, SessionExec, SessionInfo
from argosy.sandbox.namespaces import OutputSink

CONNECT_TIMEOUT_S = 3.0
# Beyond the run's own deadline: the node's queue wait, a compile step, the response.
READ_MARGIN_S = 90.0
DEFAULT_RUN_S = 60.0


class NodeUnreachableError(ArgosyError):
    http_status = 503


class NodeLostError(ArgosyError):
    http_status = 502


class NodeAnswerError(ArgosyError):
    """An error the node answered with, re-raised with the node's HTTP status."""

    def __init__(self, message: str, fix: str | None, status: int, name: str) -> None:
        super().__init__(message, fix)
        self.http_status = status
        self.name = name

    def to_dict(self) -> dict[str, str | None]:
        return {"error": self.name, "message": self.message, "fix": self.fix}


_BY_NAME: dict[str, type[ArgosyError]] = {
    "SandboxBusyError": SandboxBusyError,
    "SandboxRequestError": SandboxRequestError,
    "SandboxError": SandboxError,
    "BackendUnavailableError": BackendUnavailableError,
    "NotFoundError": NotFoundError,
}


def _read_timeout(timeout_ms: int | None) -> float:
    return 2 * ((timeout_ms or DEFAULT_RUN_S * 1000) / 1000) + READ_MARGIN_S


class NodeClient:
    def __init__(self, node_id: str, url: str, token: str) -> None:
        self.node_id = node_id
        self.url = url.rstrip("/")
        self.token = token
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(30.0, connect=CONNECT_TIMEOUT_S),
        )

    def close(self) -> None:
        self._http.close()

    # -- plumbing ------------------------------------------------------------------------------------

    def _lost(self, exc: Exception) -> NodeLostError:
        return NodeLostError(
            f"sandbox node {self.node_id} ({self.url}) went away while handling the request: {exc}",
            fix="retry; the server no longer sends work to that node until it heartbeats again",
        )

    def _unreachable(self, exc: Exception) -> NodeUnreachableError:
        return NodeUnreachableError(
            f"sandbox node {self.node_id} ({self.url}) is unreachable: {exc}",
            fix="check that its agent (`argosy agent --role sandbox`) is running and reachable from the server",
        )

    def _raise_for(self, r: httpx.Response) -> None:
        if r.status_code < 400:
            return
        try:
            body = r.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        message = str(body.get("message") or r.text[:300] or f"HTTP {r.status_code}")
        fix = body.get("fix")
        name = str(body.get("error") or "")
        if r.status_code == 401:
            # The server's copy of the node's token is stale (agent restarted): next heartbeat fixes it.
            raise NodeUnreachableError(
                f"sandbox node {self.node_id} refused the server's token", fix="retry in a second"
            )
        if r.status_code == 429:
            retry = float(r.headers.get("Retry-After", "1") or 1)
            raise SandboxBusyError(message, fix=fix, retry_after=retry)
        cls = _BY_NAME.get(name)
        if cls is not None and cls.http_status == r.status_code:
            raise cls(message, fix=fix)
        raise NodeAnswerError(message, fix, r.status_code, name or "SandboxError")

    def _request(self, method: str, path: str, timeout: float | None = None, **kw: Any) -> httpx.Response:
        try:
            r = self._http.request(
                method,
                f"/api/v1{path}",
                timeout=httpx.Timeout(timeout or 30.0, connect=CONNECT_TIMEOUT_S),
                **kw,
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise self._unreachable(exc) from exc
        except httpx.HTTPError as exc:
            raise self._lost(exc) from exc
        self._raise_for(r)
        return r

    # -- the runner interface --------------------------------------------------------------------------

    def execute(self, req: ExecRequest, on_output: OutputSink | None = None) -> ExecResult:
        body = req.model_dump(exclude_none=True)
        timeout = _read_timeout(req.timeout_ms)
        if on_output is None:
            r = self._request("POST", "/sandbox/execute", timeout=timeout, json=body)
            return ExecResult.model_validate(r.json())
        try:
            with self._http.stream(
                "POST",
                "/api/v1/sandbox/execute",
                params={"stream": "true"},
                json=body,
                timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_S),
            ) as r:
                if r.status_code >= 400:
                    r.read()
                    self._raise_for(r)
                for event, data in sse_events(r.iter_lines()):
                    if event in ("stdout", "stderr"):
                        on_output(event, data["text"].encode())
                    elif event == "result":
                        return ExecResult.model_validate(data)
                    elif event == "error":
                        status = int(data.get("status") or 500)
                        name = str(data.get("error") or "SandboxError")
                        cls = _BY_NAME.get(name)
                        if cls is not None and cls.http_status == status:
                            raise cls(data.get("message", ""), fix=data.get("fix"))
                        raise NodeAnswerError(data.get("message", ""), data.get("fix"), status, name)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise self._unreachable(exc) from exc
        except httpx.HTTPError as exc:
            raise self._lost(exc) from exc
        raise self._lost(RuntimeError("the stream ended without a result"))

    def create_session(self, req: SessionCreate) -> SessionInfo:
        r = self._request("POST", "/sandboxes", json=req.model_dump(exclude_none=True))
        return SessionInfo.model_validate(r.json())

    def exec_session(self, session_id: str, req: SessionExec) -> ExecResult:
        r = self._request(
            "POST",
            f"/sandboxes/{quote(session_id)}/exec",
            timeout=_read_timeout(req.timeout_ms),
            json=req.model_dump(exclude_none=True),
        )
        return ExecResult.model_validate(r.json())

    def get_session(self, session_id: str) -> SessionInfo:
        return SessionInfo.model_validate(self._request("GET", f"/sandboxes/{quote(session_id)}").json())

    def put_file(self, session_id: str, path: str, data: bytes) -> None:
        self._request("PUT", f"/sandboxes/{quote(session_id)}/files/{quote(path)}", content=data)

    def get_file(self, session_id: str, path: str) -> bytes:
        return self._request("GET", f"/sandboxes/{quote(session_id)}/files/{quote(path)}").content

    def list_sessions(self) -> list[SessionInfo]:
        return [SessionInfo.model_validate(x) for x in self._request("GET", "/sandboxes").json()]

    def delete_session(self, session_id: str) -> None:
        self._request("DELETE", f"/sandboxes/{quote(session_id)}")

    def doctor(self) -> dict[str, Any]:
        return dict(self._request("GET", "/sandbox/doctor", timeout=60.0).json())
