"""A SandboxRunner that talks to an Argosy server's sandbox API (what the CLI uses with a server)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from argosy.client import ArgosyClient
from argosy.sandbox.models import ExecRequest, ExecResult, SessionCreate, SessionExec, SessionInfo


class RemoteRunner:
    def __init__(self, client: ArgosyClient) -> None:
        self.client = client

    def execute(self, req: ExecRequest) -> ExecResult:
        return ExecResult.model_validate(
            self.client.request("POST", "/sandbox/execute", json=req.model_dump(exclude_none=True))
        )

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

    def doctor(self) -> dict[str, Any]:
        return dict(self.client.request("GET", "/sandbox/doctor"))
