"""A loopback server that answers the OpenAI Responses, Embeddings and Chat Completions APIs and Anthropic's Messages
API, plain and streamed in each API's own event format, the way the router answers them: with its decision headers.

The instrumentation tests call it with the real ``openai`` and ``anthropic`` clients. It stands in for the router
only at the wire (the decision headers are the router's contract, ``x-unhardcoded-*``), so the client side can be
tested for the APIs whatever the proxy serves. It keeps each request (path and headers) for the test to check
what the client sent.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

ANSWERED = "sim-answered-model"
"""The model the stand-in router says answered, in ``x-unhardcoded-model``."""
ANSWER = '{"answer": "hello"}'
"""Every answer's text: JSON, so ``parse()`` with a ``{"answer": str}`` schema reads it."""
VECTOR = (0.25, -0.5, 1.0)
INPUT_TOKENS, OUTPUT_TOKENS = 7, 3


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class APIServer:
    """``with APIServer() as server:``; ``server.base_url`` is ``http://127.0.0.1:PORT`` (append ``/v1`` for openai)."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._count = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                outer._serve(self)

            def do_GET(self) -> None:
                outer._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = json.loads(h.rfile.read(length)) if length else None
        headers = {k.lower(): v for k, v in h.headers.items()}
        path = h.path.split("?", 1)[0]
        with self._lock:
            self.seen.append(Seen(h.command, path, headers, body))
            self._count += 1
            number = self._count
        decision = _decision_headers(headers, number)
        if h.command == "GET" and path == "/v1/models":
            return _send(h, 200, "application/json", json.dumps({"object": "list", "data": []}), decision)
        answer = ANSWERS.get((h.command, path))
        if answer is None or not isinstance(body, dict):
            error = {"error": {"message": f"Unknown request URL: {h.command} {path}.", "type": "invalid_request_error"}}
            return _send(h, 404, "application/json", json.dumps(error), {})
        model = str(body.get("model") or "")
        if body.get("stream") is True:
            events = STREAMS[path](model, number)
            text = "".join(_sse(name, data) for name, data in events)
            if path == "/v1/chat/completions":
                text += "data: [DONE]\n\n"
            return _send(h, 200, "text/event-stream", text, decision)
        return _send(h, 200, "application/json", json.dumps(answer(model, body, number)), decision)


def _decision_headers(headers: dict[str, str], number: int) -> dict[str, str]:
    """The router's decision headers, sent when the request named a policy (as the proxy always answers)."""
    policy = headers.get("x-unhardcoded-policy")
    if not policy:
        return {}
    return {
        "x-unhardcoded-request-id": f"req_{number:04d}",
        "x-unhardcoded-model": ANSWERED,
        "x-unhardcoded-policy": policy,
        "x-unhardcoded-policy-fingerprint": "sha256:" + "0" * 16,
        "x-unhardcoded-fallback": "false",
    }


def _sse(name: str | None, data: Any) -> str:
    """One server-sent event; chat completion chunks are sent without an event name, as OpenAI sends them."""
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(data)}\n\n"


def _send(h: BaseHTTPRequestHandler, status: int, content_type: str, text: str, headers: dict[str, str]) -> None:
    payload = text.encode()
    h.send_response(status)
    h.send_header("Content-Type", content_type)
    h.send_header("Content-Length", str(len(payload)))
    for name, value in headers.items():
        h.send_header(name, value)
    h.end_headers()
    h.wfile.write(payload)


# ---- OpenAI Chat Completions


def _chat(model: str, body: dict[str, Any], n: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop", "logprobs": None}
        ],
        "usage": {"prompt_tokens": INPUT_TOKENS, "completion_tokens": OUTPUT_TOKENS, "total_tokens": 10},
    }


def _chat_stream(model: str, n: int) -> list[tuple[str | None, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> tuple[str | None, Any]:
        return None, {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            "usage": usage,
        }

    usage = {"prompt_tokens": INPUT_TOKENS, "completion_tokens": OUTPUT_TOKENS, "total_tokens": 10}
    return [chunk({"role": "assistant", "content": ANSWER}), chunk({}, "stop", usage)]


# ---- OpenAI Responses


def _response(model: str, n: int, *, done: bool = True) -> dict[str, Any]:
    message = {
        "type": "message",
        "id": f"msg_{n}",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": ANSWER, "annotations": []}],
    }
    return {
        "id": f"resp_{n}",
        "object": "response",
        "created_at": 1_700_000_000,
        "model": model,
        "status": "completed" if done else "in_progress",
        "output": [message] if done else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": INPUT_TOKENS,
            "output_tokens": OUTPUT_TOKENS,
            "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        if done
        else None,
    }


def _responses(model: str, body: dict[str, Any], n: int) -> dict[str, Any]:
    return _response(model, n)


def _responses_stream(model: str, n: int) -> list[tuple[str | None, Any]]:
    item = {"type": "message", "id": f"msg_{n}", "status": "in_progress", "role": "assistant", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    done_part = {**part, "text": ANSWER}
    where = {"item_id": f"msg_{n}", "output_index": 0, "content_index": 0}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": _response(model, n, done=False)}),
        ("response.output_item.added", {"output_index": 0, "item": item}),
        ("response.content_part.added", {**where, "part": part}),
        ("response.output_text.delta", {**where, "delta": ANSWER, "logprobs": []}),
        ("response.output_text.done", {**where, "text": ANSWER, "logprobs": []}),
        ("response.content_part.done", {**where, "part": done_part}),
        ("response.output_item.done", {"output_index": 0, "item": _response(model, n)["output"][0]}),
        ("response.completed", {"response": _response(model, n)}),
    ]
    return [(name, {"type": name, "sequence_number": i, **data}) for i, (name, data) in enumerate(events)]


# ---- OpenAI Embeddings


def _embeddings(model: str, body: dict[str, Any], n: int) -> dict[str, Any]:
    inputs = body.get("input")
    count = len(inputs) if isinstance(inputs, list) else 1
    vector: Any = list(VECTOR)
    if body.get("encoding_format") == "base64":  # what the openai client asks for unless told otherwise
        vector = base64.b64encode(struct.pack(f"<{len(VECTOR)}f", *VECTOR)).decode()
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": vector} for i in range(count)],
        "model": model,
        "usage": {"prompt_tokens": INPUT_TOKENS, "total_tokens": INPUT_TOKENS},
    }


# ---- Anthropic Messages


def _message(model: str, n: int, *, text: str = ANSWER, output_tokens: int = OUTPUT_TOKENS) -> dict[str, Any]:
    return {
        "id": f"msg_{n}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}] if text else [],
        "stop_reason": "end_turn" if text else None,
        "stop_sequence": None,
        "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": output_tokens},
    }


def _messages(model: str, body: dict[str, Any], n: int) -> dict[str, Any]:
    return _message(model, n)


def _messages_stream(model: str, n: int) -> list[tuple[str | None, Any]]:
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"message": _message(model, n, text="", output_tokens=1)}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": ANSWER}}),
        ("content_block_stop", {"index": 0}),
        (
            "message_delta",
            {"delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": OUTPUT_TOKENS}},
        ),
        ("message_stop", {}),
    ]
    return [(name, {"type": name, **data}) for name, data in events]


ANSWERS = {
    ("POST", "/v1/chat/completions"): _chat,
    ("POST", "/v1/responses"): _responses,
    ("POST", "/v1/embeddings"): _embeddings,
    ("POST", "/v1/messages"): _messages,
}
STREAMS = {
    "/v1/chat/completions": _chat_stream,
    "/v1/responses": _responses_stream,
    "/v1/messages": _messages_stream,
}
