"""SSE helpers for mid-stream failover.

The hot path never parses events: it forwards whole events (cut at the last blank line) and keeps
the bytes it sent. Only when a stream breaks are those bytes parsed to learn what the client has
already seen, so a continuation request can be built and its events rewritten to match.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


def event_cut(buf: bytes | bytearray) -> int:
    """Index just past the last complete SSE event in `buf` (0 if none)."""
    a = buf.rfind(b"\n\n")
    b = buf.rfind(b"\r\n\r\n")
    return max(a + 2 if a >= 0 else 0, b + 4 if b >= 0 else 0)


def iter_data(raw: bytes) -> list[bytes]:
    """The `data:` payloads of the complete events in `raw`."""
    out = []
    for event in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = [ln[5:].lstrip(b" ") for ln in event.split(b"\n") if ln.startswith(b"data:")]
        if lines:
            out.append(b"\n".join(lines))
    return out


@dataclass
class Seen:
    """What the client has received on a stream so far."""

    id: str | None = None
    created: int | None = None
    model: str | None = None
    text: list[str] = field(default_factory=list)
    tokens: int = 0
    finished: bool = False  # a choice carried a finish_reason
    done: bool = False  # [DONE] was sent
    unsupported: str | None = None  # why a continuation cannot reproduce this stream
    role_sent: bool = False  # the client already got the assistant's `role` announcement

    @property
    def content(self) -> str:
        return "".join(self.text)


def parse_seen(raw: bytes, chat: bool) -> Seen:
    seen = Seen()
    for data in iter_data(raw):
        if data.strip() == b"[DONE]":
            seen.done = True
            continue
        try:
            obj = json.loads(data)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        if seen.id is None and "id" in obj:
            seen.id, seen.created, seen.model = obj.get("id"), obj.get("created"), obj.get("model")
        for ch in obj.get("choices") or []:
            if ch.get("index", 0) != 0:
                seen.unsupported = "the request asked for several choices (n > 1)"
            if chat:
                delta = ch.get("delta") or {}
                if "role" in delta:
                    seen.role_sent = True
                if delta.get("tool_calls") or delta.get("function_call"):
                    seen.unsupported = "the stream carried tool calls"
                piece = delta.get("content")
            else:
                piece = ch.get("text")
            if piece:
                seen.text.append(piece)
                seen.tokens += 1
            if ch.get("finish_reason"):
                seen.finished = True
    return seen


def continuation_body(original: dict[str, Any], seen: Seen, chat: bool) -> dict[str, Any] | str:
    """The request that continues a broken stream, or a reason why there is none."""
    if seen.unsupported:
        return seen.unsupported
    body = dict(original)
    if not seen.text:
        return body  # nothing was sent yet: the original request is the continuation
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(key), int):
            left = body[key] - seen.tokens
            if left <= 0:
                return "the token limit was already reached"
            body[key] = left
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list):
            return "the request has no 'messages' list"
        body["messages"] = [*messages, {"role": "assistant", "content": seen.content}]
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            return "only a single string prompt can be continued"
        body["prompt"] = prompt + seen.content
    return body


def rewrite_events(raw: bytes, seen: Seen, chat: bool) -> bytes:
    """Make a continuation's events look like the original stream: same id, created and model,
    and no second `role` announcement."""
    out = []
    for data in iter_data(raw):
        if data.strip() == b"[DONE]":
            out.append(b"data: [DONE]\n\n")
            continue
        try:
            obj = json.loads(data)
        except ValueError:
            out.append(b"data: " + data + b"\n\n")
            continue
        if isinstance(obj, dict):
            if seen.id is not None:
                obj["id"] = seen.id
            if seen.created is not None:
                obj["created"] = seen.created
            if seen.model is not None:
                obj["model"] = seen.model
            if chat:
                for ch in obj.get("choices") or []:
                    delta = ch.get("delta")
                    if isinstance(delta, dict) and seen.role_sent:
                        # Announced once per stream: if the first backend died before its role
                        # chunk reached the client, the continuation's role must go through.
                        delta.pop("role", None)
                        if not delta and not ch.get("finish_reason"):
                            ch["__drop__"] = True
                obj["choices"] = [c for c in obj.get("choices") or [] if not c.get("__drop__")]
                if not obj["choices"] and "usage" not in obj:
                    continue
        out.append(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")
    return b"".join(out)


def is_usage_only(event: bytes) -> bool:
    """True for the extra chunk `stream_options.include_usage` adds: a usage object and no choices."""
    for data in iter_data(event):
        try:
            obj = json.loads(data)
        except ValueError:
            return False
        return isinstance(obj, dict) and isinstance(obj.get("usage"), dict) and not obj.get("choices")
    return False


def error_event(message: str, code: str) -> bytes:
    err = {"error": {"message": message, "type": "upstream_error", "code": code}}
    return b"data: " + json.dumps(err).encode() + b"\n\ndata: [DONE]\n\n"
