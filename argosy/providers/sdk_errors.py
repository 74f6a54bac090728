"""Retry and typed errors around SDK calls (linode_api4, google-cloud-compute, boto3).

The SDKs raise their own exceptions; callers of Argosy providers only ever see Argosy's typed errors.
Rate limits are retried here, on the injectable clock, so tests need no real sleeps and every
provider honours `Retry-After` the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from argosy.core.clock import Clock
from argosy.core.errors import ProviderError, RateLimitError
from argosy.providers.clients.http import RetryPolicy

T = TypeVar("T")


def call_with_retry(
    fn: Callable[[], T],
    *,
    clock: Clock,
    translate: Callable[[Exception], ProviderError | None],
    idempotent: bool,
    retry: RetryPolicy | None = None,
) -> T:
    """Call `fn`; translate SDK errors; retry rate limits (always) and transient 5xx (idempotent only)."""
    policy = retry or RetryPolicy()
    for attempt in range(policy.attempts):
        try:
            return fn()
        except ProviderError:
            raise
        except Exception as exc:
            typed = translate(exc)
            if typed is None:
                raise
            last = attempt + 1 >= policy.attempts
            if isinstance(typed, RateLimitError):
                wait = typed.retry_after if typed.retry_after is not None else policy.backoff(attempt)
                if last or wait > policy.max_delay_s:
                    raise typed from exc
                clock.sleep(wait)
                continue
            if getattr(typed, "transient", False) and idempotent and not last:
                clock.sleep(policy.backoff(attempt))
                continue
            raise typed from exc
    raise AssertionError("unreachable")  # the loop either returns or raises


def transient(err: ProviderError) -> ProviderError:
    """Mark an error as worth retrying (a 5xx, a dropped connection) for idempotent calls."""
    err.transient = True  # type: ignore[attr-defined]
    return err
