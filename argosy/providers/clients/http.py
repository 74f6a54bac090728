"""One small JSON-over-HTTP client for the REST providers (Lambda, RunPod, Vast.ai, the serverless ones).

Why one: retry/back-off, `Retry-After`, timeouts and credential redaction are the same problem for
every REST provider, and getting any of them wrong either bills a user twice or hides the provider's
own error message. Each provider passes a `classify` function that turns its error bodies into typed
errors (capacity, quota, auth); this module handles transport and rate limits.
"""

from __future__ import annotations

import email.utils
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import httpx

from argosy.core.clock import Clock
from argosy.core.errors import ProviderAuthError, ProviderError, RateLimitError

# Methods that are safe to repeat after a 5xx or a timeout: repeating a POST that launches a VM could
# launch two, so POSTs are never retried except on 429 (the provider refused it outright).
IDEMPOTENT = frozenset({"GET", "HEAD", "DELETE"})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # total tries, including the first
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0  # never wait longer than this on one Retry-After

    def backoff(self, attempt: int) -> float:
        return min(self.max_delay_s, self.base_delay_s * (2**attempt))


Classifier = Callable[[int, Any, str], ProviderError | None]


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` header: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """Remove credentials from text that may end up in an error message or a log."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


class JsonApi:
    """A JSON API at `base_url`, authenticated by `headers`, with typed errors."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        *,
        headers: Mapping[str, str],
        clock: Clock,
        classify: Classifier,
        secrets: tuple[str, ...] = (),
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        params: Mapping[str, str] | None = None,
    ) -> None:
        self.provider = provider
        self._clock = clock
        self._classify = classify
        self._secrets = secrets
        self._retry = retry or RetryPolicy()
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Accept": "application/json", "User-Agent": "argosy", **headers},
            params=dict(params or {}),
            timeout=timeout_s,
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        idempotent: bool | None = None,
    ) -> Any:
        """Send one request; return the decoded JSON body (None for an empty one).

        `idempotent=True` marks a POST that only reads (a search, a GraphQL query) as safe to retry.
        """
        retry_on_failure = method.upper() in IDEMPOTENT if idempotent is None else idempotent
        last_error: ProviderError | None = None
        for attempt in range(self._retry.attempts):
            try:
                resp = self._client.request(method, path, json=json_body, params=params)
            except httpx.TimeoutException as exc:
                last_error = ProviderError(
                    f"{self.provider}: {method} {path} timed out",
                    fix=(
                        "retry; if this was a launch, run `argosy nodes list` first: it may have been created"
                        if not retry_on_failure
                        else "check your network, or the provider's status page"
                    ),
                    provider=self.provider,
                )
                if not retry_on_failure:
                    raise last_error from exc
                self._clock.sleep(self._retry.backoff(attempt))
                continue
            except httpx.HTTPError as exc:
                raise ProviderError(
                    f"{self.provider}: cannot reach {self._client.base_url}: {redact(str(exc), self._secrets)}",
                    fix="check your network connection and any proxy settings",
                    provider=self.provider,
                ) from exc

            if resp.status_code < 400:
                return self._decode(resp)

            body = self._decode_error(resp)
            text = redact(resp.text[:500], self._secrets)
            if resp.status_code == 429:
                wait = parse_retry_after(resp.headers.get("Retry-After"), self._clock.now())
                last_error = RateLimitError(
                    f"{self.provider}: rate limited (HTTP 429): {text}",
                    fix="wait and retry; Argosy already backed off"
                    + (f" (provider asked for {wait:.0f}s)" if wait else ""),
                    provider=self.provider,
                    retry_after=wait,
                )
                if attempt + 1 < self._retry.attempts and (wait is None or wait <= self._retry.max_delay_s):
                    self._clock.sleep(wait if wait is not None else self._retry.backoff(attempt))
                    continue
                raise last_error
            typed = self._classify(resp.status_code, body, text)
            if typed is not None:
                raise typed
            if resp.status_code in (401, 403):
                raise ProviderAuthError(
                    f"{self.provider}: the API rejected the credentials (HTTP {resp.status_code}): {text}",
                    fix=f"check the {self.provider} API key (see `argosy check`)",
                    provider=self.provider,
                )
            last_error = ProviderError(
                f"{self.provider}: {method} {path} failed (HTTP {resp.status_code}): {text}",
                fix="retry later; if it persists, check the provider's status page",
                provider=self.provider,
            )
            if resp.status_code >= 500 and retry_on_failure and attempt + 1 < self._retry.attempts:
                self._clock.sleep(self._retry.backoff(attempt))
                continue
            raise last_error
        assert last_error is not None
        raise last_error

    def _decode(self, resp: httpx.Response) -> Any:
        if not resp.content:
            return None
        try:
            return resp.json()
        except json.JSONDecodeError as exc:
            raise ProviderError(
                f"{self.provider}: the API answered with something that is not JSON: "
                f"{redact(resp.text[:200], self._secrets)}",
                provider=self.provider,
            ) from exc

    @staticmethod
    def _decode_error(resp: httpx.Response) -> Any:
        try:
            return resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None


class BearerApiClient:
    """Construction shared by the one-API-key REST clients (Lambda, RunPod, Vast.ai): a JsonApi with
    the key as a bearer token (and redacted from errors); subclasses set the three class attributes."""

    PROVIDER: str
    DEFAULT_URL: str
    EXTRA_HEADERS: Mapping[str, str] = MappingProxyType({})

    @staticmethod
    def classify(status: int, body: Any, text: str) -> ProviderError | None:
        return None

    def __init__(
        self,
        api_key: str,
        clock: Clock,
        base_url: str | None = None,
        transport: httpx.BaseTransport | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._api = JsonApi(
            self.PROVIDER,
            base_url or self.DEFAULT_URL,
            headers={"Authorization": f"Bearer {api_key}", **self.EXTRA_HEADERS},
            clock=clock,
            classify=self.classify,
            secrets=(api_key,),
            transport=transport,
            retry=retry,
        )


class ApiKeyEndpoints:
    """`_api()` shared by the serverless REST providers keyed by one API key (Baseten, RunPod Serverless).

    A subclass sets the class attributes and, in its __init__, `clock`, `_key`, `_invoke_key`,
    `_base_url` and `_transport`. The client is built per call so that plans and dry runs need no
    key; a missing key fails before any request, naming the variable to set and where keys are made.
    Both keys are redacted from errors: the invoke key is the one the router holds.
    """

    name: str
    KEY_VAR: str
    KEYS_URL: str
    AUTH_SCHEME: str  # the Authorization header's scheme: "Bearer", "Api-Key"
    clock: Clock
    _key: str
    _invoke_key: str
    _base_url: str
    _transport: httpx.BaseTransport | None

    @staticmethod
    def classify_error(status: int, body: Any, text: str) -> ProviderError | None:
        return None

    def _api(self) -> JsonApi:
        if not self._key:
            raise ProviderAuthError(
                f"{self.name}: {self.KEY_VAR} is not set",
                fix=f"create an API key at {self.KEYS_URL}, then `export {self.KEY_VAR}=...`",
                provider=self.name,
            )
        return JsonApi(
            self.name,
            self._base_url,
            headers={"Authorization": f"{self.AUTH_SCHEME} {self._key}"},
            clock=self.clock,
            classify=self.classify_error,
            secrets=(self._key, self._invoke_key),
            transport=self._transport,
        )
