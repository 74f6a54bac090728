"""Sandbox errors: each says what happened and what to do (`fix`)."""

from __future__ import annotations

from argosy.core.errors import ArgosyError


class SandboxError(ArgosyError):
    """A sandbox could not be set up or run (the node's fault, not the code's)."""

    http_status = 500


class SandboxRequestError(ArgosyError):
    """The request itself is invalid: unknown language, a limit above the cap, a bad path."""

    http_status = 400


class SandboxBusyError(ArgosyError):
    """Every execution slot is busy and the queue is full."""

    http_status = 429

    def __init__(self, message: str, fix: str | None = None, retry_after: float = 1.0) -> None:
        super().__init__(message, fix)
        self.retry_after = retry_after


class BackendUnavailableError(ArgosyError):
    """The isolation backend asked for cannot work on this node."""

    http_status = 503
