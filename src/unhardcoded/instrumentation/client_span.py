"""The client span of one instrumented API call: opened with the request, given the router's decision headers, ended.

The ``openai`` and ``anthropic`` clients are generated alike (Stainless): every call of every resource method
(``create``, ``parse``, ``stream``, ``with_raw_response``, ``with_streaming_response``) goes through the client's
``request(cast_to, options, *, stream, stream_cls)``, whose ``options`` name the path and carry the body. The
instrumentor wraps that one method; the path says which API was called (:data:`OPENAI_APIS`,
:data:`ANTHROPIC_APIS`). The sync and async wrappers (``_async/patch.py`` and the ``_sync/`` twin generated
from it) and the stream wrappers share everything here, so what a span records is written once.
"""

from __future__ import annotations

import copy
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
# Set by the client's with_raw_response ("true", "raw") and with_streaming_response ("stream"), read back by it.
RAW_RESPONSE_HEADER = "x-stainless-raw-response"
# The tracers whose spans are the client span when they are current: openai-v2's, and util-genai's under it.
OPENAI_V2_SCOPES = ("opentelemetry.instrumentation.openai_v2", "opentelemetry.util.genai")

_CHAT = G.GenAiOperationNameValues.CHAT.value
_EMBEDDINGS = G.GenAiOperationNameValues.EMBEDDINGS.value


@dataclass(frozen=True)
class Api:
    """An API a client calls: the ``gen_ai.operation.name`` and ``gen_ai.provider.name`` of its span."""

    operation: str
    provider: str


OPENAI_APIS: Mapping[str, Api] = {
    "/chat/completions": Api(_CHAT, PROVIDER_NAME),
    "/responses": Api(_CHAT, PROVIDER_NAME),
    "/embeddings": Api(_EMBEDDINGS, PROVIDER_NAME),
}
"""The POST paths (relative to ``base_url``) of the ``openai`` client that get a client span."""

ANTHROPIC_APIS: Mapping[str, Api] = {"/v1/messages": Api(_CHAT, "anthropic")}
"""The POST paths of the ``anthropic`` client that get a client span (``beta.messages`` adds ``?beta=true``)."""


@dataclass
class Exchange:
    """One instrumented API call in flight; ``span`` is None when another instrumentation owns the client span."""

    span: Span | None


in_flight: ContextVar[Exchange | None] = ContextVar("unhardcoded_openai_call", default=None)
"""The call the current context is inside, for the transport wrappers to find its span."""


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


def _traces_itself(client: Any) -> bool:
    """Whether the client makes spans of its own that are exported: a tracer, and not one of the no-op provider."""
    tracer = getattr(client, "_tracer", None)
    if tracer is None or isinstance(tracer, trace.NoOpTracer):
        return False
    if isinstance(tracer, trace.ProxyTracer):  # the global provider's: a no-op until an SDK is set
        return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider)
    return True


def traced_elsewhere(client: Any) -> bool:
    """Whether another instrumentation's span is this call's client span: openai-v2's, or the client's own.

    openai-v2 wraps some resource methods (``chat.completions.create``, ``embeddings.create``): its span is
    current when the call reaches ``request``. A client with a tracer of its own (``anthropic`` 2.x traces itself
    with the global provider unless built with ``open_telemetry=False``) makes its span current for the transport;
    while no SDK is set globally those spans go nowhere, so ours is made. Either way the policy
    and the decision go on that span, and there is no twin.
    """
    if _traces_itself(client):
        return True
    if not openai_v2_active():
        return False
    span = trace.get_current_span()
    scope = getattr(span, "instrumentation_scope", None)
    name = getattr(scope, "name", None) or ""
    return span.is_recording() and name.startswith(OPENAI_V2_SCOPES)


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


def request_options(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """The ``options`` of ``request(cast_to, options, *, stream, stream_cls)``, however they were passed."""
    return args[1] if len(args) > 1 else kwargs.get("options")


def with_options(args: tuple[Any, ...], kwargs: dict[str, Any], options: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``request``'s arguments with ``options`` in place of the caller's."""
    if len(args) > 1:
        return (args[0], options, *args[2:]), kwargs
    return args, {**kwargs, "options": options}


def _headers(options: Any) -> Mapping[str, Any]:
    headers = getattr(options, "headers", None)
    return headers if isinstance(headers, Mapping) else {}


def with_policy(options: Any) -> Any:
    """A copy of the request ``options`` with the policy in force as a header, unless the caller named one."""
    name = current_policy()
    if name is None:
        return options
    headers = _headers(options)
    if any(k.lower() == POLICY_NAME_HEADER for k in headers):
        return options  # the caller said which policy; theirs wins
    sent = copy.copy(options)  # the client copies them again per attempt; the caller's stay as they were
    sent.headers = {**headers, POLICY_HEADER: name}
    return sent


def api_of(apis: Mapping[str, Api], options: Any) -> Api | None:
    """The API a request calls, None for the client's other requests (model lists, files, batches)."""
    if str(getattr(options, "method", "")).lower() != "post":
        return None
    url = getattr(options, "url", None)
    return apis.get(url.split("?", 1)[0]) if isinstance(url, str) else None


def raw_mode(options: Any) -> str | None:
    """How the caller asked for the response: None (parsed), ``true``/``raw`` (read), ``stream`` (unread)."""
    for key, value in _headers(options).items():
        if key.lower() == RAW_RESPONSE_HEADER:
            return str(value)
    return None


def _request_attributes(api: Api, model: Any, client: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {G.GEN_AI_OPERATION_NAME: api.operation, G.GEN_AI_PROVIDER_NAME: api.provider}
    if isinstance(model, str):
        attrs[G.GEN_AI_REQUEST_MODEL] = model
    base_url = getattr(client, "base_url", None)
    host = getattr(base_url, "host", None)
    if host:
        attrs[server_attributes.SERVER_ADDRESS] = host
        port = getattr(base_url, "port", None)
        if port:
            attrs[server_attributes.SERVER_PORT] = port
    return attrs


def start(tracer: Tracer, api: Api, options: Any, client: Any) -> Span:
    """The CLIENT span ``{operation} {model}`` of one call of ``api`` on ``client``, as the GenAI conventions name it."""
    body = getattr(options, "json_data", None)
    model = body.get("model") if isinstance(body, Mapping) else None
    name = f"{api.operation} {model}" if isinstance(model, str) and model else api.operation
    return tracer.start_span(name, kind=SpanKind.CLIENT, attributes=_request_attributes(api, model, client))


# Token counts as each API names them: chat completions and embeddings, then Responses and Anthropic Messages.
_INPUT_TOKENS = ("prompt_tokens", "input_tokens")
_OUTPUT_TOKENS = ("completion_tokens", "output_tokens")


def _record_usage(span: Span, answer: Any) -> None:
    """The response model and token usage of an answer or a stream event, where it carries them.

    A Responses stream event carries them in ``.response``, Anthropic's ``message_start`` in ``.message``.
    """
    for nested in ("response", "message"):
        inner = getattr(answer, nested, None)
        if inner is not None and hasattr(inner, "model"):
            answer = inner
            break
    model = getattr(answer, "model", None)
    if isinstance(model, str) and model:
        span.set_attribute(G.GEN_AI_RESPONSE_MODEL, model)
    usage = getattr(answer, "usage", None)
    if usage is None:
        return
    for names, key in ((_INPUT_TOKENS, G.GEN_AI_USAGE_INPUT_TOKENS), (_OUTPUT_TOKENS, G.GEN_AI_USAGE_OUTPUT_TOKENS)):
        for name in names:
            value = getattr(usage, name, None)
            if isinstance(value, int):
                span.set_attribute(key, value)
                break


def _record_error(span: Span, error: BaseException) -> None:
    if span.is_recording():
        span.set_attribute(G.ERROR_TYPE, type(error).__qualname__)
        span.set_status(Status(StatusCode.ERROR, str(error)[:200]))


def fail(span: Span, error: BaseException) -> None:
    """End the span of a call that raised."""
    _record_error(span, error)
    span.end()


def finish(span: Span, result: Any, streaming: bool, raw: str | None) -> None:
    """End the span of a call that answered, with what the answer says; a stream ends its own span.

    A raw response (``with_raw_response``) is parsed for its usage, as the caller will (the client keeps the
    parse); one whose body is still unread (``with_streaming_response``) is left for the caller to read.
    """
    if raw is not None:
        if raw != "stream" and not streaming and span.is_recording():
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
