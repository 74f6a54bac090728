"""Every API call needs a key. Admin keys are created at first start; agent keys are node-scoped."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request

from argosy.core.credentials import read_credentials, write_credentials
from argosy.core.errors import AuthError
from argosy.store.db import Store
from argosy.store.keys import create_key, verify_key
from argosy.store.models import ApiKey


def ensure_admin_key(store: Store, credentials: Path, server_url: str, now: float) -> None:
    """At first start (or if the CLI's copy is gone or stale), create an admin key for the CLI."""
    creds = read_credentials(credentials)
    with store.session() as s:
        key = creds.get("api_key")
        if key and verify_key(s, key) is not None:
            if creds.get("server_url") != server_url:
                write_credentials(credentials, server_url, key)
            return
        new = create_key(s, "admin (created at first start)", "admin", now)
    write_credentials(credentials, server_url, new)


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthError(
            "this API needs a key: send 'Authorization: Bearer <key>'",
            fix="the CLI reads it from ARGOSY_HOME/credentials; set ARGOSY_API_KEY for a remote server",
        )
    return token.strip()


def authenticate(store: Store, request: Request, roles: tuple[str, ...]) -> ApiKey:
    token = bearer(request)
    with store.session() as s:
        key = verify_key(s, token)
    if key is None:
        raise AuthError("unknown or revoked API key", fix="check ARGOSY_API_KEY or ARGOSY_HOME/credentials")
    if key.role not in roles:
        raise AuthError(f"a key with role '{key.role}' cannot call this endpoint")
    return key
