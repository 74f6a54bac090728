"""The Python SDK: a thin REST client of the Argosy server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from argosy.core.errors import ArgosyError, AuthError, NotFoundError, ServerUnreachableError

_ERRORS: dict[int, type[ArgosyError]] = {401: AuthError, 404: NotFoundError}


class ArgosyClient:
    def __init__(self, url: str, api_key: str | None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ArgosyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _raise(self, r: httpx.Response) -> None:
        if r.status_code < 400:
            return
        try:
            body = r.json()
        except ValueError:
            body = {}
        if isinstance(body, dict) and "message" in body:
            raise _ERRORS.get(r.status_code, ArgosyError)(body["message"], fix=body.get("fix"))
        detail = body.get("detail") if isinstance(body, dict) else None
        raise ArgosyError(f"the server answered {r.status_code}: {detail or r.text[:300]}")

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self._http.request(method, f"/api/v1{path}", **kw)
        except httpx.TransportError as exc:
            raise ServerUnreachableError(
                f"cannot reach the Argosy server at {self.url} ({exc.__class__.__name__})",
                fix="start it with `argosy server start`, or check ARGOSY_SERVER_URL",
            ) from exc
        self._raise(r)
        return r.json()

    # -- deployments -----------------------------------------------------------------------------
    def deploy(self, model: str, **kw: Any) -> dict[str, Any]:
        return dict(self.request("POST", "/deployments", json={"model": model, **kw}))

    def deployments(self, all: bool = False) -> list[dict[str, Any]]:
        return list(self.request("GET", "/deployments", params={"all": all}))

    def deployment(self, name: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/deployments/{name}"))

    def destroy(self, name: str) -> dict[str, Any]:
        return dict(self.request("DELETE", f"/deployments/{name}"))

    def events(self, deployment: str | None = None, after: int = 0) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"after": after}
        if deployment:
            params["deployment"] = deployment
        return list(self.request("GET", "/events", params=params))

    def nodes(self, all: bool = False) -> list[dict[str, Any]]:
        return list(self.request("GET", "/nodes", params={"all": all}))

    def ledger(self, deployment: str | None = None) -> dict[str, Any]:
        return dict(self.request("GET", "/ledger", params={"deployment": deployment} if deployment else {}))

    def providers(self, check: bool = False, name: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"check": check}
        if name:
            params["name"] = name
        return list(self.request("GET", "/providers", params=params))

    def stream_lines(self, method: str, path: str, **kw: Any) -> Iterator[str]:
        """A streamed response's lines as they arrive (SSE, logs); errors as for `request`."""
        try:
            with self._http.stream(method, f"/api/v1{path}", timeout=None, **kw) as r:
                if r.status_code >= 400:
                    r.read()
                    self._raise(r)
                yield from r.iter_lines()
        except httpx.TransportError as exc:
            raise ServerUnreachableError(f"lost the connection to {self.url}: {exc}") from exc

    def logs(self, name: str, follow: bool = False, tail: int = 100) -> Iterator[str]:
        try:
            with self._http.stream(
                "GET",
                f"/api/v1/deployments/{name}/logs",
                params={"follow": follow, "tail": tail},
                timeout=None,
            ) as r:
                if r.status_code >= 400:
                    r.read()
                    self._raise(r)
                yield from r.iter_text()
        except httpx.TransportError as exc:
            raise ServerUnreachableError(f"lost the connection to {self.url}: {exc}") from exc
