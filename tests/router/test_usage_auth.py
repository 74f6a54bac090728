"""Usage injection and stripping, token accounting, /metrics auth and bad-JSON handling, on loopback."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from argosy.core.errors import ConfigError
from argosy.router.config import parse_router_config
from router.backend import expected_text
from router.conftest import primaries


def _stream(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> list[Any]:
    events = []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers, timeout=10) as s:
        assert s.status_code == 200
        for line in s.iter_lines():
            if line.startswith("data: "):
                data = line[6:]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def _text(events: list[Any]) -> str:
    return "".join(
        (c.get("delta") or {}).get("content") or ""
        for e in events
        if isinstance(e, dict)
        for c in e.get("choices") or []
    )


CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 5}


def test_router_asks_for_usage_and_strips_it_for_a_client_that_did_not(router, backends) -> None:
    a = backends("a")
    r = router(backends=primaries(a), api_keys=[{"name": "team", "key": "sk-team"}], admin_token="adm")
    events = _stream(r.url, CHAT, {"Authorization": "Bearer sk-team"})
    assert _text(events) == expected_text(5) and events[-1] == "[DONE]"
    assert not [e for e in events if isinstance(e, dict) and "usage" in e], "the usage chunk leaked"
    sent = a.completions()[-1]["body"]
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["messages"] == CHAT["messages"] and sent["max_tokens"] == 5  # the rest untouched
    usage = httpx.get(r.url + "/router/usage", headers={"Authorization": "Bearer adm"}).json()
    assert usage["keys"]["team"] == {"requests": 1, "prompt_tokens": 5, "completion_tokens": 5}
    assert usage["backends"]["a"] == {"prompt_tokens": 5, "completion_tokens": 5}
    assert usage["total"]["prompt_tokens"] == 5 and usage["total"]["completion_tokens"] == 5
    assert usage["total"]["requests"] == 1 and len(usage["start_id"]) == 32
    metrics = httpx.get(r.url + "/metrics").text
    assert 'argosy_router_key_tokens_total{key="team",direction="out"} 5' in metrics
    assert 'argosy_router_tokens_total{backend="a",direction="in"} 5' in metrics


def test_a_client_that_asked_for_usage_gets_the_chunk(router, backends) -> None:
    a = backends("a")
    r = router(backends=primaries(a))
    events = _stream(r.url, {**CHAT, "stream_options": {"include_usage": True}})
    usage_chunks = [e for e in events if isinstance(e, dict) and e.get("usage")]
    assert len(usage_chunks) == 1 and usage_chunks[0]["choices"] == []
    assert usage_chunks[0]["usage"]["completion_tokens"] == 5
    assert _text(events) == expected_text(5)


def test_include_usage_false_is_overridden_upstream_and_stripped(router, backends) -> None:
    a = backends("a")
    r = router(backends=primaries(a))
    events = _stream(r.url, {**CHAT, "stream_options": {"include_usage": False}})
    assert not [e for e in events if isinstance(e, dict) and e.get("usage")]
    assert a.completions()[-1]["body"]["stream_options"] == {"include_usage": True}


def test_request_usage_off_passes_the_body_untouched(router, backends) -> None:
    a = backends("a")
    r = router(backends=primaries(a), request_usage=False)
    _stream(r.url, CHAT)
    assert "stream_options" not in a.completions()[-1]["body"]


def test_failover_continuation_asks_for_usage_and_counts_the_second_backend(router, backends) -> None:
    a = backends("a", die_after=2)
    b = backends("b")
    r = router(
        backends=primaries(a, b), policy="round-robin", admin_token="adm", health={"probe_interval_s": 60}
    )
    events = _stream(r.url, {**CHAT, "max_tokens": 6})
    assert _text(events) == expected_text(6)
    assert not [e for e in events if isinstance(e, dict) and e.get("usage")]
    cont = b.completions()[-1]["body"]
    # A continuation (or, if a's reset beat its two chunks to the router, the original request again).
    assert cont["stream_options"] == {"include_usage": True}
    usage = httpx.get(r.url + "/router/usage", headers={"Authorization": "Bearer adm"}).json()
    assert usage["backends"]["b"]["completion_tokens"] == cont["max_tokens"]  # what b generated
    assert "a" not in usage["backends"]  # a died before its usage chunk: nothing counted for it


def test_an_upstream_that_rejects_stream_options_gets_the_clients_own_body(router, backends) -> None:
    a = backends("a", reject_stream_options=True)
    r = router(backends=primaries(a))
    for _ in range(2):
        events = _stream(r.url, CHAT)
        assert _text(events) == expected_text(5) and events[-1] == "[DONE]"
    sent = [c["body"] for c in a.completions()]
    # Asked once, refused, then the client's bytes; the router remembers and asks no more.
    assert ["stream_options" in b for b in sent] == [True, False, False]
    # A client that asked for usage itself still gets the upstream's own answer to that.
    resp = httpx.post(
        r.url + "/v1/chat/completions", json={**CHAT, "stream_options": {"include_usage": True}}
    )
    assert resp.status_code == 400 and "stream_options" in resp.json()["error"]["message"]


def test_bad_json_gets_400_where_the_router_parses(router, backends) -> None:
    a = backends("a")
    r = router(backends=primaries(a))
    # A streaming request is parsed (failover and usage need its fields): malformed -> 400, nothing sent on.
    resp = httpx.post(r.url + "/v1/chat/completions", content=b'{"stream": true, "messages": [')
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert (
        err["code"] == "bad_json"
        and err["type"] == "invalid_request_error"
        and "not valid JSON" in err["message"]
    )
    resp = httpx.post(r.url + "/v1/completions", content=b'["stream"]')
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "bad_json"
    assert a.completions() == []


def test_bad_json_passes_untouched_where_the_router_need_not_parse(router, backends) -> None:
    a = backends("a")
    r = router(backends=primaries(a))
    for path, body in (
        ("/v1/chat/completions", b'{"messages": ['),
        ("/v1/embeddings", b'{"input": "x", "stream"'),
    ):
        resp = httpx.post(r.url + path, content=body)
        assert resp.status_code == 400 and resp.json() == {"error": {"message": "bad json"}}  # the backend's
        assert a.completions()[-1]["body"] == {"__raw__": body.decode()}  # byte for byte


def test_policy_that_reads_the_body_rejects_bad_json(router, backends) -> None:
    a = backends("a")
    r = router(backends=primaries(a), policy="prefix-affinity")
    resp = httpx.post(r.url + "/v1/chat/completions", content=b"{nope")
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "bad_json"
    assert a.completions() == []


def test_metrics_token_required_when_on(router, backends) -> None:
    a = backends("a")
    r = router(backends=primaries(a), metrics_auth="on", metrics_token="mt", admin_token="adm")
    denied = httpx.get(r.url + "/metrics")
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_metrics_token"
    assert "fix:" in denied.json()["error"]["message"]
    assert httpx.get(r.url + "/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(r.url + "/metrics", headers={"Authorization": "Bearer mt"}).status_code == 200
    assert httpx.get(r.url + "/metrics", headers={"Authorization": "Bearer adm"}).status_code == 200
    # The metrics token reads metrics only, not the admin API.
    assert httpx.get(r.url + "/router/status", headers={"Authorization": "Bearer mt"}).status_code == 401


def test_metrics_open_on_loopback_by_default(router, backends) -> None:
    r = router(backends=primaries(backends("a")))
    assert httpx.get(r.url + "/metrics").status_code == 200


@pytest.mark.parametrize(
    ("listen", "protected"),
    [("127.0.0.1:8780", False), ("[::1]:8780", False), ("localhost:8780", False), ("0.0.0.0:8780", True),
     ("10.1.2.3:8780", True)],
)  # fmt: skip
def test_metrics_auth_auto_follows_the_listen_address(listen: str, protected: bool) -> None:
    cfg = parse_router_config("", "test", {"listen": listen, "metrics_token": "t"})
    assert cfg.metrics_protected is protected


def test_metrics_auth_on_without_any_token_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="metrics_token"):
        parse_router_config("metrics_auth: on\n", "router.yaml")
