"""Simulated providers: real HTTP servers on loopback that fail on demand.

Used by the tests, by ``unhardcoded demo`` and by anyone testing their own policies. Each :class:`SimulatedProvider`
serves ``POST /v1/chat/completions``, ``/v1/responses`` (OpenAI's Responses API), ``/v1/messages`` (Anthropic's
Messages API, errors in Anthropic's shape) and ``/v1/embeddings``, plain and streamed, and ``GET /v1/models``
on ``127.0.0.1`` with an ephemeral port, answering each model according to a
:class:`Behavior`: a well-formed answer, an HTTP error, a stall, a 429, or a
stream cut short. It is faithful enough for the ``openai`` and ``anthropic`` clients to talk to.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import math
import re
import socket
import ssl
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Self, cast

from ..router import translate

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..router.providers import ProviderConfig

__all__ = [
    "Behavior",
    "CutAfterTokens",
    "CutBeforeFirstToken",
    "Error",
    "FailTimes",
    "Ok",
    "RateLimit",
    "Raw",
    "RecordedRequest",
    "SimulatedProvider",
    "Timeout",
    "cut_after_tokens",
    "cut_before_first_token",
    "error",
    "fail_times",
    "ok",
    "rate_limit",
    "raw",
    "timeout",
]

# The name it had before it moved into unhardcoded.testing: log configuration that filters on it keeps working.
logger = logging.getLogger("unhardcoded.simulator")


# --------------------------------------------------------------------------- behaviors


class Behavior:
    """How a simulated provider answers one model; build one with the factory functions."""


@dataclass(frozen=True)
class Ok(Behavior):
    text: str | None = None
    latency_s: float = 0.0
    chunk_delay_s: float = 0.0
    tool_call: bool = False
    response_model: str | None = None
    echo_authorization: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    usage: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Error(Behavior):
    status: int = 500
    body: dict[str, Any] | str | bytes | None = None
    message: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    echo_authorization: bool = False


@dataclass(frozen=True)
class Timeout(Behavior):
    sleep_s: float = 30.0
    then_close: bool = False


@dataclass(frozen=True)
class RateLimit(Behavior):
    retry_after_s: float | None = 1.0
    retry_after: str | None = None
    retry_after_ms: float | None = None


@dataclass(frozen=True)
class CutBeforeFirstToken(Behavior):
    pass


@dataclass(frozen=True)
class CutAfterTokens(Behavior):
    n: int = 2


@dataclass(frozen=True)
class Raw(Behavior):
    status: int = 200
    body: str | bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


class _Countdown:
    def __init__(self, n: int) -> None:
        self._left = n
        self._lock = threading.Lock()

    def take(self) -> bool:
        """True while failures remain."""
        with self._lock:
            if self._left > 0:
                self._left -= 1
                return True
            return False


@dataclass(frozen=True)
class FailTimes(Behavior):
    n: int
    then: Behavior
    failure: Behavior
    # Shared by every model this object is assigned to: the count is per Behavior object.
    _countdown: _Countdown = field(compare=False, repr=False, default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self._countdown is None:
            object.__setattr__(self, "_countdown", _Countdown(self.n))

    def next(self) -> Behavior:
        return self.failure if self._countdown.take() else self.then


def ok(
    text: str | None = None,
    latency_s: float = 0.0,
    *,
    chunk_delay_s: float = 0.0,
    tool_call: bool = False,
    response_model: str | None = None,
    echo_authorization: bool = False,
    headers: dict[str, str] | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    cached_tokens: int | None = None,
    cache_write_tokens: int | None = None,
    reasoning_tokens: int | None = None,
) -> Ok:
    """A well-formed completion (``text`` or a deterministic default) after ``latency_s``.

    ``tool_call=True`` answers with a call to the request's first tool when it has
    tools. ``response_model`` reports a model other than the one requested (a dated
    snapshot, say). ``echo_authorization`` puts the request's Authorization header in
    the answer, as a careless provider might (for leak tests). ``headers`` go out with a plain (not streamed)
    answer: rate-limit headroom such as ``{"x-ratelimit-remaining-tokens": "12", "x-ratelimit-reset-tokens": "1s"}``.

    The token counts, when given, are the usage reported instead of counting the
    text: ``cached_tokens`` and ``cache_write_tokens`` in ``prompt_tokens_details``
    and ``reasoning_tokens`` in ``completion_tokens_details``, as OpenAI sends them
    (cached and reasoning tokens are part of ``prompt_tokens`` and ``completion_tokens``).
    """
    given = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cached_tokens": cached_tokens,
        "cache_write_tokens": cache_write_tokens,
        "reasoning_tokens": reasoning_tokens,
    }
    usage = tuple((k, v) for k, v in given.items() if v is not None)
    return Ok(
        text,
        latency_s,
        chunk_delay_s,
        tool_call,
        response_model,
        echo_authorization,
        tuple((headers or {}).items()),
        usage,
    )


def error(
    status: int = 500,
    body: dict[str, Any] | str | bytes | None = None,
    *,
    message: str | None = None,
    headers: dict[str, str] | None = None,
    echo_authorization: bool = False,
) -> Error:
    """An HTTP error with an OpenAI-shaped body (or ``body`` verbatim).

    ``echo_authorization`` quotes the request's Authorization header in the error
    message, as some providers do.
    """
    return Error(status, body, message, tuple((headers or {}).items()), echo_authorization)


def timeout(sleep_s: float = 30.0, *, then_close: bool = False) -> Timeout:
    """Stall ``sleep_s`` seconds (longer than the client waits), then answer or close."""
    return Timeout(sleep_s, then_close)


def rate_limit(
    retry_after_s: float | None = 1.0, *, retry_after: str | None = None, retry_after_ms: float | None = None
) -> RateLimit:
    """429 with ``Retry-After`` (seconds, or ``retry_after`` verbatim, e.g. an HTTP-date)."""
    return RateLimit(retry_after_s, retry_after, retry_after_ms)


def cut_before_first_token() -> CutBeforeFirstToken:
    """Status 200 and headers, then the connection closes with no data."""
    return CutBeforeFirstToken()


def cut_after_tokens(n: int = 2) -> CutAfterTokens:
    """A stream that sends ``n`` content chunks (after the role chunk), then drops without ``[DONE]``."""
    return CutAfterTokens(n)


def fail_times(n: int, then: Behavior | None = None, failure: Behavior | None = None) -> FailTimes:
    """Behave like ``failure`` (default a 500) for the first ``n`` calls, then like ``then``."""
    return FailTimes(n, then if then is not None else ok(), failure if failure is not None else error())


def raw(
    status: int = 200,
    body: str | bytes = b"",
    *,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> Raw:
    """Any status and body verbatim: malformed JSON, a 200 without ``choices``, ..."""
    return Raw(status, body, content_type, tuple((headers or {}).items()))


# --------------------------------------------------------------------------- recorded requests


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the simulator received it (headers lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None


# --------------------------------------------------------------------------- server


class _Closed(Exception):
    """The simulator is shutting down or the connection must be dropped."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    timeout = None  # handle_request() waits for a connection as long as it takes

    def __init__(self, simulator: SimulatedProvider) -> None:
        self.simulator = simulator
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        context = self.simulator.ssl_context
        if context is not None:
            sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients resetting idle keep-alive connections is routine; the default
        # prints a traceback to stderr. A real fault in the simulator is logged.
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            logger.warning("%s: error serving a request", self.simulator.name, exc_info=exc)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "unhardcoded-simulator"
    sys_version = ""
    timeout = 60  # idle keep-alive connections are let go after this
    server: _HTTPServer
    api = "chat_completions"
    """The API of the request being answered (set from its path); errors of ``messages`` take Anthropic's shape."""

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            # In the handler's thread, so a client that refuses the certificate holds up nobody else.
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle's
        # algorithm meets delayed ACKs and every answer waits ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.simulator._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.simulator._untrack(self.connection)

    def do_POST(self) -> None:
        self.server.simulator._serve(self)

    def do_GET(self) -> None:
        self.server.simulator._serve(self)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Method, path and status only: request headers carry the caller's key.
        logger.debug("%s %s %s -> %s", self.server.simulator.name, self.command, self.path.split("?")[0], code)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class SimulatedProvider:
    """A simulated OpenAI-compatible provider on ``127.0.0.1`` with an ephemeral port.

    >>> with SimulatedProvider("acme", {"m-bad": error(503)}) as sim:
    ...     sim.base_url  # doctest: +SKIP
    'http://127.0.0.1:54321/v1'
    """

    def __init__(
        self,
        name: str,
        behaviors: dict[str, Behavior] | None = None,
        default: Behavior | None = None,
        expected_api_key: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``ssl_context`` (a server context holding the certificate) serves HTTPS instead of HTTP."""
        self.name = name
        self.ssl_context = ssl_context
        self.default = default if default is not None else ok()
        self.expected_api_key = expected_api_key
        self._behaviors: dict[str, Behavior] = dict(behaviors or {})
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ids = itertools.count(1)

    # ---- lifecycle

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._closing.clear()
        self._server = _HTTPServer(self)
        self._thread = threading.Thread(
            target=self._accept_until_closed,
            args=(self._server,),
            name=f"simulated-provider-{self.name}",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._closing.set()  # wakes handlers sleeping in a latency or a stall
        try:
            # The accept loop blocks without polling; one connection wakes it to see _closing.
            address = cast("tuple[str, int]", server.server_address[:2])  # an AF_INET server: (host, port)
            socket.create_connection(address, timeout=1).close()
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            # Idle keep-alive handlers are blocked reading; this wakes them to exit.
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept_until_closed(self, server: _HTTPServer) -> None:
        while not self._closing.is_set():
            server.handle_request()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"simulated provider {self.name!r} is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/v1"

    def provider_config(self, *, api_key_env: str | None = None, timeout_s: float = 30.0) -> ProviderConfig:
        """A providers-file entry pointing at this simulator."""
        from ..router import ProviderConfig

        return ProviderConfig(name=self.name, base_url=self.base_url, api_key_env=api_key_env, timeout_s=timeout_s)

    # ---- behaviors and recorded requests

    def set_behavior(self, model: str, behavior: Behavior) -> None:
        with self._lock:
            self._behaviors[model] = behavior

    def behavior_for(self, model: str) -> Behavior:
        with self._lock:
            return self._behaviors.get(model, self.default)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    # ---- serving

    def _serve(self, h: _Handler) -> None:
        try:
            raw_body = _read_body(h)
            body: Any = None
            bad_json = False
            if raw_body:
                try:
                    body = json.loads(raw_body)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    bad_json = True
            headers = {k.lower(): v for k, v in h.headers.items()}
            path = h.path.split("?", 1)[0]
            with self._lock:
                self._requests.append(RecordedRequest(h.command, path, headers, body))
            self._route(h, path, headers, body, bad_json)
        except (_Closed, OSError):
            h.close_connection = True

    def _route(self, h: _Handler, path: str, headers: dict[str, str], body: Any, bad_json: bool) -> None:
        path = path.rstrip("/")
        api = _PATHS.get(path)
        h.api = api or "chat_completions"
        if self.expected_api_key is not None:
            auth = headers.get("authorization")
            if api == "messages" and "x-api-key" in headers:
                auth = f"Bearer {headers['x-api-key']}"
            if auth is None:
                return _send_error(
                    h,
                    401,
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth.",
                    "invalid_request_error",
                    None,
                )
            if auth != f"Bearer {self.expected_api_key}":
                return _send_error(h, 401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        if h.command == "GET" and path == "/v1/models":
            with self._lock:
                models = sorted(self._behaviors)
            created = int(time.time())
            data = [{"id": m, "object": "model", "created": created, "owned_by": self.name} for m in models]
            return _send_json(h, 200, {"object": "list", "data": data})
        if api is None:
            return _send_error(
                h, 404, f"Unknown request URL: {h.command} {path}.", "invalid_request_error", "unknown_url"
            )
        if h.command != "POST":
            return _send_error(h, 405, f"Method {h.command} not allowed.", "invalid_request_error", None)
        if bad_json or not isinstance(body, dict):
            return _send_error(
                h, 400, "We could not parse the JSON body of your request.", "invalid_request_error", None
            )
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _send_error(h, 400, "You must provide a model parameter.", "invalid_request_error", None)
        required = {
            "chat_completions": "messages",
            "messages": "messages",
            "responses": "input",
            "embeddings": "input",
        }[api]
        if body.get(required) is None or (required == "messages" and not isinstance(body.get("messages"), list)):
            return _send_error(
                h,
                400,
                f"Missing required parameter: '{required}'.",
                "invalid_request_error",
                "missing_required_parameter",
                param=required,
            )
        if api == "messages" and not isinstance(body.get("max_tokens"), int):
            return _send_error(h, 400, "max_tokens: Field required", "invalid_request_error", None)

        behavior = self.behavior_for(model)
        while isinstance(behavior, FailTimes):
            behavior = behavior.next()
        return self._answer(h, behavior, model, body, headers)

    def _answer(self, h: _Handler, b: Behavior, model: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        streaming = body.get("stream") is True and h.api != "embeddings"
        if isinstance(b, Ok):
            self._wait(b.latency_s)
            completion = self._completion(b, model, body, headers)
            if streaming:
                return self._stream(h, completion, body, chunk_delay_s=b.chunk_delay_s)
            return _send_json(h, 200, self._whole(h, completion, body), dict(b.headers))
        if isinstance(b, Error):
            extra = dict(b.headers)
            if b.body is not None:
                return _send_bytes(h, b.status, _encode(b.body), "application/json", extra)
            message = b.message or (
                "The server had an error while processing your request. Sorry about that!"
                if b.status >= 500
                else f"Simulated error {b.status}."
            )
            if b.echo_authorization:
                message += f" (received Authorization: {headers.get('authorization', '')})"
            kind = "server_error" if b.status >= 500 else "invalid_request_error"
            return _send_error(h, b.status, message, kind, None, headers=extra)
        if isinstance(b, RateLimit):
            extra = {}
            if b.retry_after is not None:
                extra["Retry-After"] = b.retry_after
            elif b.retry_after_s is not None:
                extra["Retry-After"] = f"{b.retry_after_s:g}"
            if b.retry_after_ms is not None:
                extra["retry-after-ms"] = f"{b.retry_after_ms:g}"
            return _send_error(
                h,
                429,
                f"Rate limit reached for {model} on {self.name} (simulated). Please try again later.",
                "requests",
                "rate_limit_exceeded",
                headers=extra,
            )
        if isinstance(b, Timeout):
            self._wait(b.sleep_s)
            if b.then_close:
                raise _Closed
            completion = self._completion(Ok(), model, body, headers)
            if streaming:
                return self._stream(h, completion, body)
            return _send_json(h, 200, self._whole(h, completion, body))
        if isinstance(b, CutBeforeFirstToken):
            if streaming:
                _start_stream(h)
            else:
                payload = _encode(self._completion(Ok(), model, body, headers).as_response())
                h.send_response(200)
                h.send_header("Content-Type", "application/json")
                h.send_header("Content-Length", str(len(payload)))
                h.end_headers()
            _drop(h)
            return None
        if isinstance(b, CutAfterTokens):
            completion = self._completion(Ok(), model, body, headers)
            if streaming:
                return self._stream(h, completion, body, cut_after=b.n)
            payload = _encode(completion.as_response())
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload[: len(payload) // 2])
            _drop(h)
            return None
        if isinstance(b, Raw):
            return _send_bytes(h, b.status, _encode(b.body), b.content_type, dict(b.headers))
        raise TypeError(f"unknown simulated behavior {b!r}")

    def _whole(self, h: _Handler, c: _Completion, body: dict[str, Any]) -> dict[str, Any]:
        """The plain answer in the API of the request's path."""
        if h.api == "embeddings":
            given = body.get("input")
            inputs = given if isinstance(given, list) and given and not isinstance(given[0], int) else [given]
            base64_wanted = body.get("encoding_format") == "base64"  # what the openai client asks for by default
            data = [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": _vector(json.dumps(text), 8, as_base64=base64_wanted),
                }
                for i, text in enumerate(inputs)
            ]
            tokens = sum(_tokens(text if isinstance(text, str) else json.dumps(text)) for text in inputs)
            return {
                "object": "list",
                "data": data,
                "model": c.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        answer = c.as_response()
        if h.api in ("responses", "messages"):
            return translate.answer(h.api, answer, c.model)
        return answer

    def _wait(self, seconds: float) -> None:
        if seconds > 0 and self._closing.wait(seconds):
            raise _Closed

    def _completion(self, b: Ok, model: str, body: dict[str, Any], headers: dict[str, str]) -> _Completion:
        tools = body.get("tools") if isinstance(body.get("tools"), list) else []
        tool_call = _tool_call(_as_chat_tool(tools[0])) if b.tool_call and tools else None
        text = b.text if b.text is not None else f"This is a simulated answer from {self.name} to {model}."
        if b.echo_authorization:
            text += f" You sent Authorization: {headers.get('authorization', '')}"
        usage = dict(b.usage)
        prompt = body.get("messages") if "messages" in body else body.get("input")
        prompt_tokens = usage.pop("prompt_tokens", None) or _tokens(
            prompt if isinstance(prompt, str) else _prompt_text(prompt)
        )
        completion_tokens = usage.pop("completion_tokens", None) or _tokens(
            json.dumps(tool_call) if tool_call else text
        )
        return _Completion(
            id=f"chatcmpl-sim{next(self._ids):06d}",
            created=int(time.time()),
            model=b.response_model or model,
            text=None if tool_call else text,
            tool_call=tool_call,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            details=usage,
        )

    def _stream(
        self,
        h: _Handler,
        c: _Completion,
        body: dict[str, Any],
        *,
        chunk_delay_s: float = 0.0,
        cut_after: int | None = None,
    ) -> None:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        _start_stream(h)
        # The Responses and Messages streams are the chat stream's events in those APIs (as the proxy translates).
        events = translate.events(h.api, c.model) if h.api in ("responses", "messages") else None
        if events is not None:
            include_usage = True

        def write(chunk: dict[str, Any]) -> None:
            if events is None:
                _write_event(h, json.dumps(chunk))
                return
            for event in events.feed(chunk):
                _write_named_event(h, event)

        def send(delta: dict[str, Any], finish_reason: str | None = None) -> None:
            chunk = c.chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])
            if include_usage:
                chunk["usage"] = None
            write(chunk)

        delta_of: Callable[[str], dict[str, Any]]
        if c.tool_call is not None:
            call = c.tool_call
            send(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""},
                        }
                    ],
                }
            )
            pieces = [call["function"]["arguments"]]

            def delta_of(piece: str) -> dict[str, Any]:
                return {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}

            finish = "tool_calls"
        else:
            send({"role": "assistant", "content": "", "refusal": None})
            pieces = re.findall(r"\S+\s*", c.text or "") or [""]

            def delta_of(piece: str) -> dict[str, Any]:
                return {"content": piece}

            finish = "stop"

        if cut_after is not None:
            pieces = list(itertools.islice(itertools.cycle(pieces), cut_after))
        for piece in pieces:
            self._wait(chunk_delay_s)
            send(delta_of(piece))
        if cut_after is not None:
            _drop(h)
            return
        send({}, finish)
        if include_usage:
            usage_chunk = c.chunk([])
            usage_chunk["usage"] = c.usage()
            write(usage_chunk)
        if events is None:
            _write_event(h, "[DONE]")
        else:
            for event in events.close():
                _write_named_event(h, event)
        _write_chunk(h, b"")


@dataclass
class _Completion:
    id: str
    created: int
    model: str
    text: str | None
    tool_call: dict[str, Any] | None
    prompt_tokens: int
    completion_tokens: int
    details: dict[str, int] = field(default_factory=dict)

    def usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        d = self.details
        if d:
            prompt = {"cached_tokens": d.get("cached_tokens", 0), "audio_tokens": 0}
            if "cache_write_tokens" in d:
                prompt["cache_write_tokens"] = d["cache_write_tokens"]
            usage["prompt_tokens_details"] = prompt
            usage["completion_tokens_details"] = {
                "reasoning_tokens": d.get("reasoning_tokens", 0),
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            }
        return usage

    def chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_simulated",
            "choices": choices,
        }

    def as_response(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text, "refusal": None}
        if self.tool_call is not None:
            message["tool_calls"] = [self.tool_call]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_simulated",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if self.tool_call is not None else "stop",
                }
            ],
            "usage": self.usage(),
        }


# --------------------------------------------------------------------------- wire helpers


def _tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: one token per four characters."""
    return max(1, math.ceil(len(text) / 4))


def _prompt_text(messages: Any) -> str:
    parts: list[str] = []
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "\n".join(parts)


def _tool_call(tool: Any) -> dict[str, Any]:
    function = tool.get("function", {}) if isinstance(tool, dict) else {}
    name = function.get("name", "tool") if isinstance(function, dict) else "tool"
    params = function.get("parameters", {}) if isinstance(function, dict) else {}
    properties = params.get("properties", {}) if isinstance(params, dict) else {}
    required = params.get("required", []) if isinstance(params, dict) else []
    placeholder = {"string": "simulated", "integer": 1, "number": 1, "boolean": True, "array": [], "object": {}}
    arguments = {key: placeholder.get(properties.get(key, {}).get("type")) for key in required if isinstance(key, str)}
    return {"id": "call_sim_0001", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


_PATHS = {
    "/v1/chat/completions": "chat_completions",
    "/v1/responses": "responses",
    "/v1/messages": "messages",
    "/v1/embeddings": "embeddings",
}


def _as_chat_tool(tool: Any) -> Any:
    """A Responses (flat) or Messages (``input_schema``) tool in the chat-completions form."""
    if isinstance(tool, dict) and "function" not in tool and "name" in tool:
        params = tool.get("parameters", tool.get("input_schema", {}))
        return {"type": "function", "function": {"name": tool["name"], "parameters": params}}
    return tool


def _vector(text: str, size: int, *, as_base64: bool = False) -> list[float] | str:
    """A deterministic unit-length stand-in for an embedding of ``text`` (float32 little-endian, base64, if asked)."""
    seed = sum(text.encode("utf-8")) or 1
    raw = [math.sin(seed * (i + 1)) for i in range(size)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    vector = [v / norm for v in raw]
    if as_base64:
        return base64.b64encode(struct.pack(f"<{size}f", *vector)).decode("ascii")
    return vector


def _encode(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return json.dumps(body).encode("utf-8")


def _read_body(h: _Handler) -> bytes:
    if "chunked" in h.headers.get("Transfer-Encoding", "").lower():
        parts: list[bytes] = []
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(h.rfile.read(size))
            h.rfile.readline()
    length = int(h.headers.get("Content-Length") or 0)
    return h.rfile.read(length) if length > 0 else b""


def _send_bytes(h: _Handler, status: int, payload: bytes, content_type: str, headers: dict[str, str]) -> None:
    h.send_response(status)
    h.send_header("Content-Type", content_type)
    h.send_header("Content-Length", str(len(payload)))
    h.send_header("x-request-id", f"req_sim_{int(time.time() * 1000)}")
    for name, value in headers.items():
        h.send_header(name, value)
    h.end_headers()
    h.wfile.write(payload)


def _send_json(h: _Handler, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    _send_bytes(h, status, _encode(body), "application/json", headers or {})


def _send_error(
    h: _Handler,
    status: int,
    message: str,
    type_: str,
    code: str | None,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    body: dict[str, Any] = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    if h.api == "messages":
        kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error", 529: "overloaded_error"}
        anthropic_type = kind.get(status, "api_error" if status >= 500 else "invalid_request_error")
        body = {"type": "error", "error": {"type": anthropic_type, "message": message}}
    _send_json(h, status, body, headers)


def _start_stream(h: _Handler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "text/event-stream; charset=utf-8")
    h.send_header("Cache-Control", "no-cache")
    h.send_header("Transfer-Encoding", "chunked")
    h.send_header("x-request-id", f"req_sim_{int(time.time() * 1000)}")
    h.end_headers()


def _write_chunk(h: _Handler, data: bytes) -> None:
    h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
    h.wfile.flush()


def _write_event(h: _Handler, data: str) -> None:
    _write_chunk(h, f"data: {data}\n\n".encode())


def _write_named_event(h: _Handler, event: dict[str, Any]) -> None:
    """A Responses or Messages event: ``event: TYPE`` then its data."""
    _write_chunk(h, f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())


def _drop(h: _Handler) -> None:
    """Close the connection abruptly, mid-response."""
    h.close_connection = True
    try:
        h.wfile.flush()
        h.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
