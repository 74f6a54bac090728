"""A sandbox runner that forwards to the Argosy server through the SDK (used by the CLI when a server is configured)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from argosy.client import ArgosyClient
from argosy.core.errors import ArgosyError
from argosy.core.sse import sse_events
from argosy.sandbox.models import ExecRequest, ExecResult, SessionCreate, SessionExec, SessionInfo
from argosy.sandbox.namespaces import OutputSink


class RemoteRunner:
    def __init__(self, client: ArgosyClient) -> None:
        self.client = client

    def execute(self, req: ExecRequest, on_output: OutputSink | None = None) -> ExecResult:
        body = req.model_dump(exclude_none=True)
        if on_output is None:
            return ExecResult.model_validate(self.client.request("POST", "/sandbox/execute", json=body))
        # Server-sent events: stdout/stderr chunks as they come, then the result (or an error).
        url = "/api/v1/sandbox/execute"
        with self.client._http.stream("POST", url, params={"stream": "true"}, json=body) as r:
            if r.status_code >= 400:
                r.read()
                self.client._raise(r)
            for event, data in sse_events(r.iter_lines()):
                if event in ("stdout", "stderr"):
                    on_output(event, data["text"].encode())
                elif event == "result":
                    return ExecResult.model_validate(data)
                elif event == "error":
                    raise ArgosyError(data["message"], fix=data.get("fix"))
        raise ArgosyError("the server ended the stream without a result", fix="retry; see the server's log")

    def create_session(self, req: SessionCreate) -> SessionInfo:
        return SessionInfo.model_validate(
            self.client.request("POST", "/sandboxes", json=req.model_dump(exclude_none=True))
        )

    def exec_session(self, session_id: str, req: SessionExec) -> ExecResult:
        body = req.model_dump(exclude_none=True)
        return ExecResult.model_validate(
            self.client.request("POST", f"/sandboxes/{quote(session_id)}/exec", json=body)
        )

    def get_session(self, session_id: str) -> SessionInfo:
        return SessionInfo.model_validate(self.client.request("GET", f"/sandboxes/{quote(session_id)}"))

    def put_file(self, session_id: str, path: str, data: bytes) -> None:
        self.client.request("PUT", f"/sandboxes/{quote(session_id)}/files/{quote(path)}", content=data)

    def get_file(self, session_id: str, path: str) -> bytes:
        # Raw bytes, not JSON: go under the SDK's JSON helper but keep its error mapping.
        r = self.client._http.get(f"/api/v1/sandboxes/{quote(session_id)}/files/{quote(path)}")
        self.client._raise(r)
        return r.content

    def list_sessions(self) -> list[SessionInfo]:
        return [SessionInfo.model_validate(x) for x in self.client.request("GET", "/sandboxes")]

    def delete_session(self, session_id: str) -> None:
        self.client.request("DELETE", f"/sandboxes/{quote(session_id)}")

    def list_runs(self, limit: int = 50, node: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if node:
            params["node"] = node
        return list(self.client.request("GET", "/sandbox/runs", params=params))

    def doctor(self) -> dict[str, Any]:
        return dict(self.client.request("GET", "/sandbox/doctor"))
