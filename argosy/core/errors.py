"""Typed errors. Every error a user can cause says what happened and what to do next (`fix`)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ArgosyError(Exception):
    """Base error: `message` says what happened, `fix` says what to do next."""

    exit_code = 1
    http_status = 400

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return self.message if not self.fix else f"{self.message}\nfix: {self.fix}"

    def to_dict(self) -> dict[str, str | None]:
        return {"error": type(self).__name__, "message": self.message, "fix": self.fix}


class ConfigError(ArgosyError):
    """Malformed or unknown configuration."""


class NotFoundError(ArgosyError):
    http_status = 404


class ConflictError(ArgosyError):
    http_status = 409


class AuthError(ArgosyError):
    http_status = 401


class ServerUnreachableError(ArgosyError):
    exit_code = 3
    http_status = 503


class EngineError(ArgosyError):
    """An inference engine failed to build, start or answer."""

    http_status = 500


class ProviderError(ArgosyError):
    """A provider failed; carries the provider's own message."""

    http_status = 502

    def __init__(self, message: str, fix: str | None = None, provider: str | None = None) -> None:
        super().__init__(message, fix)
        self.provider = provider


class CapacityError(ProviderError):
    """No capacity for this offering right now: placement should try the next one."""


class QuotaError(ProviderError):
    """The account's quota does not allow this."""


class RateLimitError(ProviderError):
    http_status = 429

    def __init__(
        self,
        message: str,
        fix: str | None = None,
        provider: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, fix, provider)
        self.retry_after = retry_after


class ProviderAuthError(ProviderError):
    http_status = 401


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The nearest valid choice to `word`, or None if nothing is close."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_name(kind: str, name: str, choices: Iterable[str], fix: str | None = None) -> NotFoundError:
    """A NotFoundError for an unknown `kind` called `name`, suggesting the nearest valid one."""
    choices = sorted(choices)
    near = did_you_mean(name, choices)
    hint = f" Did you mean '{near}'?" if near else ""
    known = ", ".join(choices) if choices else "none"
    return NotFoundError(f"unknown {kind} '{name}'.{hint} Known: {known}.", fix=fix)
