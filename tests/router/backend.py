"""A real OpenAI-style HTTP backend on loopback whose behaviour tests control.

It "generates" tokens `t0 t1 t2 ...`; a continuation (chat with `continue_final_message`, or a
completion whose prompt ends with generated tokens) resumes from the token after the last one it was
given, so a stream spliced across backends has exactly the text of an unbroken one.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN_RE = re.compile(r"t\d+ ")


def expected_text(n: int) -> str:
    return "".join(f"t{i} " for i in range(n))


@dataclass
class Behaviour:
    chunks: int = 8  # tokens per answer unless max_tokens says otherwise
    die_after: int | None = None  # close the socket after this many stream chunks (no [DONE])
    status: int = 200  # answer completions with this status (500, 429, ...)
    hang_s: float = 0.0  # sleep before answering completions
    chunk_delay_s: float = 0.0
    health_status: int = 200
    reject_continuation: bool = False
    model: str = "tiny"
    pad: int = 0  # bytes of filler after each streamed token (big streams for back-pressure tests)
    reject_stream_options: bool = False  # answer 400 to a body with stream_options, like a strict upstream


@dataclass
class Seen:
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    chunks_written: int = 0  # stream chunks handed to the socket so far (all streams)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _json(self, status: int, obj: Any, extra: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        b = self.server.behaviour
        self._record(None)
        if self.path == "/health":
            self._json(b.health_status, {"status": "ok" if b.health_status == 200 else "down"})
        elif self.path == "/v1/models":
            self._json(
                200,
                {
                    "object": "list",
                    "data": [{"id": b.model, "object": "model", "owned_by": self.server.name}],
                },
            )
        else:
            self._json(404, {"error": {"message": "not found"}})

    def _record(self, body: Any) -> None:
        with self.server.seen.lock:
            self.server.seen.requests.append(
                {"path": self.path, "method": self.command, "headers": dict(self.headers), "body": body}
            )

    def do_POST(self) -> None:
        b = self.server.behaviour
        raw = self.rfile.read(int(self.headers.get("content-length", "0")))
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"__raw__": raw.decode("latin-1")}
        self._record(body)
        if b.hang_s:
            time.sleep(b.hang_s)
        if self.path.endswith("/echo"):
            self._json(200, {"raw": raw.decode("latin-1"), "served_by": self.server.name})
            return
        if b.status != 200:
            self._json(b.status, {"error": {"message": f"backend says {b.status}", "type": "x", "code": b.status}},
                       {"retry-after": "1"} if b.status == 429 else None)  # fmt: skip
            return
        chat = self.path.endswith("/chat/completions")
        if not isinstance(body, dict) or "__raw__" in body:
            self._json(400, {"error": {"message": "bad json"}})
            return
        if b.reject_stream_options and "stream_options" in body:
            self._json(400, {"error": {"message": "Unrecognized request argument supplied: stream_options"}})
            return
        if chat:
            msgs = body.get("messages") or []
            start = 0
            if body.get("continue_final_message") and msgs and msgs[-1].get("role") == "assistant":
                if b.reject_continuation:
                    self._json(400, {"error": {"message": "continue_final_message is not supported"}})
                    return
                start = len(TOKEN_RE.findall(msgs[-1].get("content") or ""))
        else:
            start = len(TOKEN_RE.findall(str(body.get("prompt", ""))))
        n = body.get("max_tokens") or b.chunks
        tokens = [f"t{i} " for i in range(start, start + n)]
        rid = f"cmpl-{self.server.name}-{int(time.time() * 1000)}"
        if not body.get("stream"):
            text = "".join(tokens)
            choice = (
                {"index": 0, "message": {"role": "assistant", "content": text}}
                if chat
                else {"index": 0, "text": text}
            )
            choice["finish_reason"] = "length"
            self._json(200, {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": 1,
                             "model": b.model, "choices": [choice], "served_by": self.server.name,
                             "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}})  # fmt: skip
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

        def send(obj: Any) -> None:
            data = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        created = int(time.time()) + hash(self.server.name) % 1000  # differs per backend on purpose
        for i, tok in enumerate(tokens):
            if b.die_after is not None and i >= b.die_after:
                # Die like a preempted spot VM: no terminal chunk, no [DONE], connection reset.
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                self.close_connection = True
                self.connection.close()
                return
            if b.pad:
                tok = tok + "x" * b.pad
            if chat:
                delta: dict[str, Any] = {"content": tok}
                if i == 0:
                    delta["role"] = "assistant"
                choice = {"index": 0, "delta": delta, "finish_reason": None}
            else:
                choice = {"index": 0, "text": tok, "finish_reason": None}
            send({"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
                  "model": f"{b.model}@{self.server.name}", "choices": [choice]})  # fmt: skip
            with self.server.seen.lock:
                self.server.seen.chunks_written += 1
            if b.chunk_delay_s:
                time.sleep(b.chunk_delay_s)
        end_choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
        end_choice.update({"delta": {}} if chat else {"text": ""})
        send({"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
              "model": f"{b.model}@{self.server.name}", "choices": [end_choice]})  # fmt: skip
        if (body.get("stream_options") or {}).get("include_usage"):
            send(
                {
                    "id": rid,
                    "choices": [],
                    "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n},
                }
            )
        send(b"[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str, behaviour: Behaviour) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self.behaviour = behaviour
        self.seen = Seen()


class Backend:
    """Start with `Backend(name)`; `.url`, `.behaviour` (mutable live), `.requests`, `.stop()`."""

    def __init__(self, name: str, behaviour: Behaviour | None = None) -> None:
        self.name = name
        self._server = _Server(name, behaviour or Behaviour())
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def behaviour(self) -> Behaviour:
        return self._server.behaviour

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._server.seen.lock:
            return list(self._server.seen.requests)

    @property
    def chunks_written(self) -> int:
        with self._server.seen.lock:
            return self._server.seen.chunks_written

    def completions(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST"]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
