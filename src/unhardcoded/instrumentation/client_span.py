"""The client span of one instrumented ``create``: opened with the request, given the router's decision headers, ended.

The sync and async wrappers (``_async/patch.py`` and the ``_sync/`` twin generated from it) and the stream
wrappers share everything here, so what a span records is written once.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.semconv.attributes import server_attributes
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from ..semconv import attributes as A
from ..semconv import gen_ai as G
from ..semconv import headers as H
from .context import current_policy

POLICY_HEADER = H.X_UNHARDCODED_POLICY
# The answer's headers are read lower-case: httpx's are case-insensitive, and a plain mapping of them is lower-case.
REQUEST_ID_HEADER = H.X_UNHARDCODED_REQUEST_ID.lower()
MODEL_HEADER = H.X_UNHARDCODED_MODEL.lower()
POLICY_NAME_HEADER = H.X_UNHARDCODED_POLICY.lower()
FINGERPRINT_HEADER = H.X_UNHARDCODED_POLICY_FINGERPRINT.lower()
FALLBACK_HEADER = H.X_UNHARDCODED_FALLBACK.lower()
PROVIDER_NAME = "openai"


@dataclass
class Exchange:
    """One instrumented ``create`` in flight; ``span`` is None when openai-v2 owns the span."""

    span: Span | None


in_flight: ContextVar[Exchange | None] = ContextVar("unhardcoded_openai_call", default=None)
"""The ``create`` the current context is inside, for the transport wrappers to find its span."""


def openai_v2_active() -> bool:
    """Whether opentelemetry-instrumentation-openai-v2 has wrapped the client (then its span is the client span)."""
    module = sys.modules.get("opentelemetry.instrumentation.openai_v2")
    instrumentor = getattr(module, "OpenAIInstrumentor", None)
    if instrumentor is None:
        return False
    try:
        return bool(instrumentor().is_instrumented_by_opentelemetry)
    except Exception:  # noqa: BLE001 - an openai-v2 we cannot ask is one we do not defer to
        return False


def decision_attributes(headers: Mapping[str, str]) -> dict[str, Any]:
    """The router's decision headers as span attributes; empty when the answer came from no router."""
    request_id = headers.get(REQUEST_ID_HEADER)
    if not request_id:
        return {}
    attrs: dict[str, Any] = {A.UNHARDCODED_REQUEST_ID: request_id}
    model = headers.get(MODEL_HEADER)
    if model:
        attrs[A.UNHARDCODED_ANSWERED_MODEL] = model
    for header, key in (
        (POLICY_NAME_HEADER, A.UNHARDCODED_POLICY_NAME),
        (FINGERPRINT_HEADER, A.UNHARDCODED_POLICY_FINGERPRINT),
    ):
        value = headers.get(header)
        if value:
            attrs[key] = value
    fallback = headers.get(FALLBACK_HEADER)
    if fallback == "false":
        attrs[A.UNHARDCODED_FALLBACK_TRIGGERED] = False
        attrs[A.UNHARDCODED_FALLBACK_HOPS] = 0
        if model:
            attrs[A.UNHARDCODED_SELECTED_MODEL] = model
    elif fallback:
        path = [m for m in fallback.split(">") if m]
        attrs[A.UNHARDCODED_FALLBACK_TRIGGERED] = True
        attrs[A.UNHARDCODED_FALLBACK_HOPS] = max(0, len(path) - 1)
        if path:
            attrs[A.UNHARDCODED_SELECTED_MODEL] = path[0]
    return attrs


def record_response(exchange: Exchange, headers: Mapping[str, str]) -> None:
    """Put the router's decision, read from the answer's headers, on the client span (ours or openai-v2's)."""
    span = exchange.span if exchange.span is not None else trace.get_current_span()
    if not span.is_recording():
        return
    attrs = decision_attributes(headers)
    if attrs:
        span.set_attributes(attrs)


def inject(request: Any) -> None:
    """Trace context into an outgoing ``httpx.Request``."""
    # The current span is the client span (ours or openai-v2's): the router's server span becomes its child.
    propagate.inject(request.headers)


def with_policy(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``create``'s keyword arguments, with the policy in force added as a header unless the caller named one."""
    name = current_policy()
    if name is None:
        return kwargs
    extra = kwargs.get("extra_headers") or {}
    if any(k.lower() == POLICY_NAME_HEADER for k in extra):
        return kwargs  # the caller said which policy; theirs wins
    return {**kwargs, "extra_headers": {**extra, POLICY_HEADER: name}}


def _request_attributes(kwargs: Mapping[str, Any], instance: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {G.GEN_AI_OPERATION_NAME: "chat", G.GEN_AI_PROVIDER_NAME: PROVIDER_NAME}
    model = kwargs.get("model")
    if isinstance(model, str):
        attrs[G.GEN_AI_REQUEST_MODEL] = model
    base_url = getattr(getattr(instance, "_client", None), "base_url", None)
    host = getattr(base_url, "host", None)
    if host:
        attrs[server_attributes.SERVER_ADDRESS] = host
        port = getattr(base_url, "port", None)
        if port:
            attrs[server_attributes.SERVER_PORT] = port
    return attrs


def _span_name(kwargs: Mapping[str, Any]) -> str:
    model = kwargs.get("model")
    return f"chat {model}" if isinstance(model, str) and model else "chat"


def start(tracer: Tracer, kwargs: Mapping[str, Any], instance: Any) -> Span:
    """The CLIENT span ``chat {model}`` of one ``create`` on ``instance`` (a ``Completions`` resource)."""
    return tracer.start_span(_span_name(kwargs), kind=SpanKind.CLIENT, attributes=_request_attributes(kwargs, instance))


def _record_usage(span: Span, answer: Any) -> None:
    """The response model and token usage of a completion or a stream chunk, where it carries them."""
    model = getattr(answer, "model", None)
    if isinstance(model, str) and model:
        span.set_attribute(G.GEN_AI_RESPONSE_MODEL, model)
    usage = getattr(answer, "usage", None)
    if usage is not None:
        for name, key in (
            ("prompt_tokens", G.GEN_AI_USAGE_INPUT_TOKENS),
            ("completion_tokens", G.GEN_AI_USAGE_OUTPUT_TOKENS),
        ):
            value = getattr(usage, name, None)
            if isinstance(value, int):
                span.set_attribute(key, value)


def _record_error(span: Span, error: BaseException) -> None:
    if span.is_recording():
        span.set_attribute(G.ERROR_TYPE, type(error).__qualname__)
        span.set_status(Status(StatusCode.ERROR, str(error)[:200]))


def fail(span: Span, error: BaseException) -> None:
    """End the span of a ``create`` that raised."""
    _record_error(span, error)
    span.end()


def is_raw_response(result: Any) -> bool:
    """``with_raw_response``: the caller parses the body; the headers are recorded already."""
    return hasattr(result, "parse")


def finish(span: Span, result: Any, streaming: bool) -> None:
    """End the span of a ``create`` that answered, with what the completion says; a stream ends its own span."""
    if is_raw_response(result):
        if not streaming and span.is_recording():
            try:
                _record_usage(span, result.parse())
            except Exception:  # noqa: BLE001 - a body the caller cannot parse either: the span still ends
                pass
    elif span.is_recording():
        _record_usage(span, result)
    span.end()


class Tally:
    """What a stream wrapper records: each chunk's model and usage, then the end of the span, once."""

    def __init__(self, span: Span) -> None:
        self.span = span
        self.ended = False

    def chunk(self, chunk: Any) -> None:
        if self.span.is_recording():
            _record_usage(self.span, chunk)

    def end(self, error: BaseException | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        if error is not None:
            _record_error(self.span, error)
        self.span.end()
