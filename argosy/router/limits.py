"""Client keys (stored hashed), per-key limits, and the retry budget."""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass, field

from argosy.router.config import ApiKeySpec, RetryConfig, hash_key


class TokenBucket:
    """`rate` tokens per second up to `capacity`. The balance may go negative (usage charged after
    the fact), which then blocks admission until it refills."""

    __slots__ = ("rate", "capacity", "tokens", "at")

    def __init__(self, rate_per_s: float, capacity: float, now: float) -> None:
        self.rate = rate_per_s
        self.capacity = capacity
        self.tokens = capacity
        self.at = now

    def _refill(self, now: float) -> None:
        if now > self.at:
            self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
            self.at = now

    def take(self, now: float, n: float = 1.0) -> bool:
        self._refill(now)
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def positive(self, now: float) -> bool:
        self._refill(now)
        return self.tokens > 0

    def charge(self, now: float, n: float) -> None:
        self._refill(now)
        self.tokens -= n

    def wait_s(self, now: float, n: float = 1.0) -> int:
        """Whole seconds until `n` tokens are there (for Retry-After)."""
        self._refill(now)
        missing = n - self.tokens
        return max(1, math.ceil(missing / self.rate)) if missing > 0 else 1


@dataclass(eq=False)
class ClientKey:
    name: str
    salt: str
    digest: bytes
    spec: ApiKeySpec
    requests: TokenBucket | None = None
    tokens: TokenBucket | None = None
    in_flight: int = 0
    usage: dict[str, int] = field(
        default_factory=lambda: {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    )


class KeyRing:
    """Client API keys, kept only as salted sha256 digests and compared in constant time."""

    def __init__(self, specs: list[ApiKeySpec], now: float) -> None:
        self.keys: list[ClientKey] = []
        for i, spec in enumerate(specs):
            stored = spec.sha256 if spec.sha256 is not None else hash_key(spec.key or "")
            salt, _, hexdigest = stored.partition(":")
            k = ClientKey(
                name=spec.name or f"key-{i + 1}", salt=salt, digest=bytes.fromhex(hexdigest), spec=spec
            )
            if spec.requests_per_minute:
                k.requests = TokenBucket(spec.requests_per_minute / 60, spec.requests_per_minute, now)
            if spec.tokens_per_minute:
                k.tokens = TokenBucket(spec.tokens_per_minute / 60, spec.tokens_per_minute, now)
            self.keys.append(k)
        # The plaintext is not kept: drop it from the specs we hold on to.
        for k in self.keys:
            k.spec = k.spec.model_copy(update={"key": None})

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def verify(self, presented: bytes) -> ClientKey | None:
        found = None
        for k in self.keys:
            d = hashlib.sha256(k.salt.encode() + presented).digest()
            # Check every key (no early exit) so timing does not reveal which one nearly matched.
            if hmac.compare_digest(d, k.digest) and found is None:
                found = k
        return found


class RetryBudget:
    """Retries may add at most `ratio` of the request rate (plus a small floor), so when every
    backend is failing the router does not multiply the load on them (a retry storm)."""

    def __init__(self, cfg: RetryConfig, now: float) -> None:
        self.ratio = cfg.budget_ratio
        self.floor = TokenBucket(cfg.budget_min_per_s, max(1.0, cfg.budget_min_per_s), now)
        self.balance = 0.0
        self.cap = 100.0

    def on_request(self) -> None:
        self.balance = min(self.cap, self.balance + self.ratio)

    def try_retry(self, now: float) -> bool:
        if self.balance >= 1.0:
            self.balance -= 1.0
            return True
        return self.floor.take(now)
