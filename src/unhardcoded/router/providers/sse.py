"""A streamed answer without I/O: SSE lines in, parsed chunks (or events) out, and what the stream reported on the way.

Chat completions end with ``data: [DONE]``; the Responses API with ``response.completed`` (or ``incomplete``,
``failed``); Anthropic Messages with ``message_stop``. A translated call's chat chunks come out as the caller's
API events (:mod:`unhardcoded.router.translate`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx

from .. import translate
from .classify import (
    error_detail,
    int_or_none,
    json_or_none,
    scrub_json,
    status_failure,
    too_large,
    transport_failure,
    undecodable,
)
from .errors import ProviderCallError
from .http11 import ResponseTooLarge

if TYPE_CHECKING:
    from .calls import HttpReply, PreparedCall

__all__ = ["StreamState", "StreamView"]


class StreamState:
    """What a stream learned so far; shared by the sync and async iterators."""

    def __init__(self, call: PreparedCall) -> None:
        self._call = call
        self.first_chunk_received = False
        self.done = False
        self.status_code: int | None = None
        self.usage: dict[str, Any] | None = None
        self.response_model: str | None = None
        self.duration_ms: float | None = None
        self.time_to_first_chunk_ms: float | None = None
        self._started = time.perf_counter()
        self._data: list[str] = []
        self._api = call.sent_api
        self._input_tokens: int | None = None  # the Messages API reports input and output in separate events
        self._translator = translate.events(call.api, call.model) if call.translated else None

    @property
    def input_tokens(self) -> int | None:
        if self._api == "messages":
            return self._input_tokens
        return int_or_none(self.usage, "input_tokens" if self._api == "responses" else "prompt_tokens")

    @property
    def output_tokens(self) -> int | None:
        return int_or_none(self.usage, "output_tokens" if self._api != "chat_completions" else "completion_tokens")

    def relayed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """What the caller gets for one chunk: itself, or the events it translates to."""
        if self._translator is None:
            return [chunk]
        return self._translator.feed(chunk)

    def closing(self) -> list[dict[str, Any]]:
        """What the caller gets after the provider's last chunk (a translated stream's closing events)."""
        return self._translator.close() if self._translator is not None else []

    def start(self) -> None:
        self._started = time.perf_counter()

    def check_status(self, response: HttpReply, error_text: str) -> None:
        self.status_code = response.status_code
        if not response.is_success:
            raise status_failure(self._call, response, error_text)

    def feed(self, line: str) -> dict[str, Any] | None:
        """One SSE line in; a parsed chunk out when an event completes."""
        if line == "":
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return self._event(data)
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value.removeprefix(" "))
        return None

    def finish(self) -> dict[str, Any] | None:
        """The stream's bytes ended: flush a last event missing its blank line."""
        chunk = None
        if self._data and not self.done:
            data, self._data = "\n".join(self._data), []
            chunk = self._event(data)
        self.duration_ms = (time.perf_counter() - self._started) * 1000
        if not self.done:
            end = {"responses": "response.completed", "messages": "message_stop"}.get(self._api, "data: [DONE]")
            raise self._call.failure(
                f"stream ended before {end}" + ("" if self.first_chunk_received else " and before the first chunk"),
                kind="error",
                error_type="stream_interrupted",
                status_code=self.status_code,
            )
        return chunk

    def interrupted(self, exc: httpx.HTTPError) -> ProviderCallError:
        self.duration_ms = (time.perf_counter() - self._started) * 1000
        if isinstance(exc, ResponseTooLarge):
            return too_large(self._call, exc, self.status_code)
        if isinstance(exc, httpx.DecodingError):
            return undecodable(self._call, exc, self.status_code)
        if isinstance(exc, httpx.TimeoutException) and not self.first_chunk_received:
            return transport_failure(self._call, exc)
        if isinstance(exc, httpx.TimeoutException):
            return self._call.failure(
                f"stream stalled: {exc.__class__.__name__}",
                kind="timeout",
                error_type="timeout",
                status_code=self.status_code,
            )
        if self.status_code is None:
            return transport_failure(self._call, exc)
        return self._call.failure(
            f"connection dropped mid-stream: {exc.__class__.__name__}"
            + ("" if self.first_chunk_received else " before the first chunk"),
            kind="error",
            error_type="stream_interrupted",
            status_code=self.status_code,
        )

    def _event(self, data: str) -> dict[str, Any] | None:
        if self.done:
            return None
        if data.strip() == "[DONE]":
            self.done = True
            self.duration_ms = (time.perf_counter() - self._started) * 1000
            return None
        chunk = json_or_none(data)
        if chunk is None and data.strip() != "null":
            raise self._call.failure(
                "stream chunk is not JSON",
                kind="error",
                error_type="invalid_response",
                status_code=self.status_code,
            )
        if not isinstance(chunk, dict):
            raise self._call.failure(
                "stream chunk is not a JSON object",
                kind="error",
                error_type="invalid_response",
                status_code=self.status_code,
            )
        if isinstance(chunk.get("error"), Mapping):
            raise self._call.failure(
                f"error event in stream: {error_detail(chunk, data, self._call.secret)}",
                kind="error",
                error_type="stream_error",
                status_code=self.status_code,
            )
        event: dict[str, Any] = chunk
        if self._call.secret:  # on the decoded strings: the raw line may spell the key with escapes
            event = scrub_json(event, self._call.secret)
        chunk = event
        if self._api != "chat_completions":
            self._api_event(chunk, data)
        else:
            if self.response_model is None and isinstance(chunk.get("model"), str):
                self.response_model = chunk["model"]
            if isinstance(chunk.get("usage"), dict):
                self.usage = chunk["usage"]
        if not self.first_chunk_received:
            self.first_chunk_received = True
            self.time_to_first_chunk_ms = (time.perf_counter() - self._started) * 1000
        return chunk

    def _api_event(self, event: dict[str, Any], data: str) -> None:
        """What a Responses or Messages event says: the model, the usage, the end (or a failure)."""
        kind = event.get("type")
        inner = event.get("response") if self._api == "responses" else event.get("message")
        if isinstance(inner, Mapping):
            if self.response_model is None and isinstance(inner.get("model"), str):
                self.response_model = inner["model"]
            usage = inner.get("usage")
            if isinstance(usage, dict):
                if self._api == "messages":
                    self._input_tokens = int_or_none(usage, "input_tokens")
                else:
                    self.usage = usage
        if self._api == "messages" and isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        if kind in ("response.failed", "error"):
            raise self._call.failure(
                f"error event in stream: {error_detail(event, data, self._call.secret)}",
                kind="error",
                error_type="stream_error",
                status_code=self.status_code,
            )
        if kind in ("response.completed", "response.incomplete", "message_stop"):
            self.done = True
            self.duration_ms = (time.perf_counter() - self._started) * 1000


class StreamView:
    """What a stream has read so far, the same for the sync and the async stream."""

    _call: PreparedCall
    _state: StreamState

    provider = property(lambda self: self._call.provider)
    model = property(lambda self: self._call.model)
    first_chunk_received = property(lambda self: self._state.first_chunk_received)
    status_code = property(lambda self: self._state.status_code)
    usage = property(lambda self: self._state.usage)
    input_tokens = property(lambda self: self._state.input_tokens)
    output_tokens = property(lambda self: self._state.output_tokens)
    response_model = property(lambda self: self._state.response_model)
    duration_ms = property(lambda self: self._state.duration_ms)
    time_to_first_chunk_ms = property(lambda self: self._state.time_to_first_chunk_ms)
