"""API keys: only a salted hash is stored; the key itself is shown once."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from argosy.core.ids import new_id
from argosy.store.models import ApiKey

KEY_PREFIX = "ak_"


def _hash(salt: str, key: str) -> str:
    # Keys are 256-bit random, so a fast salted hash is enough (no password stretching needed).
    return hashlib.sha256((salt + key).encode()).hexdigest()


def create_key(session: Session, name: str, role: str, now: float, node_id: str | None = None) -> str:
    """Create a key and return it in clear text (the only time it is available)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    salt = secrets.token_hex(8)
    session.add(
        ApiKey(
            id=new_id("key"),
            name=name,
            prefix=key[:10],
            key_hash=_hash(salt, key),
            salt=salt,
            role=role,
            node_id=node_id,
            created_at=now,
        )
    )
    return key


def verify_key(session: Session, key: str) -> ApiKey | None:
    """The active key record matching `key`, compared in constant time, or None."""
    if not key.startswith(KEY_PREFIX):
        return None
    for row in session.scalars(select(ApiKey).where(ApiKey.prefix == key[:10], ApiKey.revoked_at.is_(None))):
        if hmac.compare_digest(row.key_hash, _hash(row.salt, key)):
            return row
    return None


def has_admin(session: Session) -> bool:
    return (
        session.scalars(select(ApiKey.id).where(ApiKey.role == "admin", ApiKey.revoked_at.is_(None))).first()
        is not None
    )


def revoke_node_keys(session: Session, node_id: str, now: float) -> None:
    for row in session.scalars(select(ApiKey).where(ApiKey.node_id == node_id, ApiKey.revoked_at.is_(None))):
        row.revoked_at = now
