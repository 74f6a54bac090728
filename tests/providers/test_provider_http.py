"""The shared REST client: Retry-After (seconds and dates), 5xx and timeout retries, redaction."""

from __future__ import annotations

import email.utils

import pytest

from argosy.core.clock import FakeClock
from argosy.core.errors import ProviderError, RateLimitError
from argosy.providers.clients.http import JsonApi, RetryPolicy, parse_retry_after

from .fakehttp import FakeApi, Reply

SECRET = "sk-very-secret"


def _api(fake: FakeApi, clock: FakeClock, timeout_s: float = 5.0) -> JsonApi:
    return JsonApi(
        "demo",
        fake.url,
        headers={"Authorization": f"Bearer {SECRET}"},
        clock=clock,
        classify=lambda s, b, t: None,
        secrets=(SECRET,),
        timeout_s=timeout_s,
    )


def test_parse_retry_after_seconds_and_http_date():
    assert parse_retry_after("12", 0) == 12
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now) == pytest.approx(30, abs=1)
    assert parse_retry_after("garbage", now) is None and parse_retry_after(None, now) is None


def test_get_retries_5xx_with_backoff_but_post_does_not():
    clock = FakeClock()
    with FakeApi() as fake:
        fake.route("GET", "/x", Reply(503, {"e": 1}), Reply(502, {"e": 2}), Reply(200, {"ok": True}))
        fake.route("POST", "/launch", Reply(500, {"e": "boom"}), Reply(200, {"ok": True}))
        api = _api(fake, clock)
        assert api.request("GET", "/x") == {"ok": True}
        assert clock.now() - 1_700_000_000.0 == 1.0 + 2.0  # exponential back-off on the injected clock
        with pytest.raises(ProviderError, match="HTTP 500"):
            api.request("POST", "/launch")  # a retried launch could start two machines
        assert sum(1 for c in fake.calls if c.path == "/launch") == 1


def test_429_without_retry_after_backs_off_then_reports_it():
    clock = FakeClock()
    with FakeApi() as fake:
        fake.route("GET", "/x", Reply(429, {"e": "slow down"}))
        with pytest.raises(RateLimitError) as info:
            _api(fake, clock).request("GET", "/x")
        assert info.value.retry_after is None
        assert sum(1 for c in fake.calls) == RetryPolicy().attempts


def test_timeout_on_launch_is_not_retried_and_says_what_to_check():
    clock = FakeClock()
    with FakeApi() as fake:
        fake.route("POST", "/launch", Reply(200, {"ok": True}, delay_s=0.5))
        with pytest.raises(ProviderError, match="timed out") as info:
            _api(fake, clock, timeout_s=0.1).request("POST", "/launch")
        assert "nodes list" in info.value.fix


def test_errors_never_carry_the_credential():
    clock = FakeClock()
    with FakeApi() as fake:
        fake.route("GET", "/x", Reply(400, {"detail": f"bad key {SECRET}"}))
        with pytest.raises(ProviderError) as info:
            _api(fake, clock).request("GET", "/x")
        assert SECRET not in str(info.value) and "***" in str(info.value)
