"""A loopback stand-in for an OpenAI-compatible chat completions API, for tests.

It answers ``POST /v1/chat/completions`` the way OpenAI does when asked for logprobs, with
top_logprobs drawn deterministically from a hash of the prompt (``default_answer``), so a test
can recompute what the client should make of them. Knobs: a required API key, replies
injected for the first requests (429s, 5xx, dropped connections, stalls), a mode that leaves
the logprobs out, and a per-request delay that makes the number of requests in flight
observable.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

# Tokens that are label words for some shipped task (nli/safety: yes/maybe/no; synthetic:
# positive/neutral/negative; pairwise: A/B/tie) in assorted case and spacing, and tokens
# that are not (near misses like "yes!" included).
LABEL_TOKENS = (
    "yes", " Yes", "YES", "no", " No", "maybe", " Maybe", "positive", " Positive", "neutral",
    " Neutral", " Negative", "negative", "NEGATIVE", "A", " B", "tie",
)  # fmt: skip
OTHER_TOKENS = (
    "The", " I", "Based", "**", "\n", " sure", "yes!", "Yes.", "pos", "neg", "It", " review",
    "Answer", ":", "Verdict", " sentiment",
)  # fmt: skip

Answer = Callable[[str, int], list[dict[str, Any]]]


def default_answer(content: str, k: int) -> list[dict[str, Any]]:
    """k distinct tokens, most likely first, whose probabilities sum to 0.5-0.95 (so some
    mass always lies outside the top k)."""
    rng = random.Random(hashlib.sha256(content.encode("utf-8")).digest())
    tokens = rng.sample(LABEL_TOKENS + OTHER_TOKENS, min(k, len(LABEL_TOKENS + OTHER_TOKENS)))
    weights = [rng.random() + 0.05 for _ in tokens]
    covered = 0.5 + 0.45 * rng.random()
    probs = sorted((w / sum(weights) * covered for w in weights), reverse=True)
    return [
        {"token": t, "logprob": math.log(p), "bytes": list(t.encode("utf-8"))}
        for t, p in zip(tokens, probs, strict=True)
    ]


@dataclass
class Reply:
    """One injected reply. ``body``: a JSON value, or bytes sent as they are; None with status
    200 is the normal answer. ``drop`` closes the connection unanswered; ``stall_s`` waits
    first (to trip a client's timeout)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    drop: bool = False
    stall_s: float = 0.0


def error_body(message: str, kind: str = "server_error", code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def error_reply(status: int, message: str, **headers: str) -> Reply:
    return Reply(status, {k.replace("_", "-"): v for k, v in headers.items()}, error_body(message))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    stub: OpenAIStub

    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out leaves a broken pipe behind; that is expected here


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(404, error_body(f"no route GET {self.path}", "invalid_request_error"))

    def do_POST(self) -> None:
        stub = self.server.stub
        with stub.lock:
            stub.requests += 1
            stub.in_flight += 1
            stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
        try:
            self._answer(stub)
        finally:
            with stub.lock:
                stub.in_flight -= 1

    def _answer(self, stub: OpenAIStub) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        auth = self.headers.get("Authorization")
        with stub.lock:
            stub.authorization.append(auth)
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._send(
                404, error_body(f"no route POST {self.path}", "invalid_request_error")
            )
        if stub.api_key is not None and auth != f"Bearer {stub.api_key}":
            message = "Incorrect API key provided." if auth else "You didn't provide an API key."
            body = error_body(message, "invalid_request_error", "invalid_api_key")
            return self._send(401, body)
        with stub.lock:
            reply = stub.replies.popleft() if stub.replies else None
        time.sleep(stub.delay_s + (reply.stall_s if reply else 0.0))
        if reply is not None and reply.drop:
            self.close_connection = True
            return None
        if reply is not None and (reply.status != 200 or reply.body is not None):
            return self._send(reply.status, reply.body, reply.headers)
        try:
            request = json.loads(raw)
            content = request["messages"][-1]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return self._send(400, error_body("'messages' is required", "invalid_request_error"))
        with stub.lock:
            stub.bodies.append(request)
        self._send(200, stub.completion(request, content))
        return None


class OpenAIStub:
    """The server, run in a background thread while used as a context manager."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        delay_s: float = 0.02,
        replies: tuple[Reply, ...] = (),
        malformed: bool = False,
        answer: Answer = default_answer,
        model: str = "stub-model",
    ) -> None:
        self.api_key, self.delay_s, self.malformed = api_key, delay_s, malformed
        self.answer, self.model = answer, model
        self.lock = threading.Lock()
        self.replies: collections.deque[Reply] = collections.deque(replies)
        self.requests = 0  # every HTTP request received, failures included
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict] = []  # the well-formed chat requests, in arrival order
        self.served: dict[str, list[dict]] = {}  # prompt content -> top_logprobs sent for it
        self.authorization: list[str | None] = []  # Authorization header of each request
        self._server: _Server | None = None

    @property
    def root_url(self) -> str:
        assert self._server is not None, "use the stub as a context manager"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def inject(self, *replies: Reply) -> None:
        with self.lock:
            self.replies.extend(replies)

    def completion(self, request: dict, content: str) -> dict:
        """The chat completion for one request (first token only, as max_tokens=1 asks)."""
        top = self.answer(content, int(request.get("top_logprobs") or 0))
        with self.lock:
            self.served[content] = top
        first = top[0]["token"] if top else "?"
        logprobs = None
        if request.get("logprobs") and not self.malformed:
            logprobs = {
                "content": [{**top[0], "top_logprobs": top}] if top else [],
                "refusal": None,
            }
        return {
            "id": f"chatcmpl-{hashlib.sha256(content.encode()).hexdigest()[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", self.model),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": first, "refusal": None},
                    "logprobs": logprobs,
                    "finish_reason": "length",
                }
            ],
            "usage": {"prompt_tokens": len(content.split()), "completion_tokens": 1},
        }

    def __enter__(self) -> Self:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.stub = self
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
