"""The wrappers: policy header and trace context out, the router's decision headers onto the client span.

``Completions.create`` (sync and async) is wrapped to send the policy in force
and, unless opentelemetry-instrumentation-openai-v2 is active, to open a CLIENT
span ``chat {model}``. The router's answer headers are read where they arrive,
in ``Client.send`` / ``AsyncClient.send`` of httpx, or httpx2 under openai 3 (wrapped too, but acting
only inside an instrumented ``create``), and recorded on the span current
there: ours, or openai-v2's when it is active, so there is never a duplicate.
"""

from __future__ import annotations

import sys
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from opentelemetry import context, propagate, trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.semconv.attributes import server_attributes
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from ..semconv import attributes as A
from ..semconv import gen_ai as G
from .context import current_policy

POLICY_HEADER = "X-Unhardcoded-Policy"
REQUEST_ID_HEADER = "x-unhardcoded-request-id"
MODEL_HEADER = "x-unhardcoded-model"
POLICY_NAME_HEADER = "x-unhardcoded-policy"
FINGERPRINT_HEADER = "x-unhardcoded-policy-fingerprint"
FALLBACK_HEADER = "x-unhardcoded-fallback"
PROVIDER_NAME = "openai"


@dataclass
class _Exchange:
    """One instrumented ``create`` in flight; ``span`` is None when openai-v2 owns the span."""

    span: Span | None


_in_flight: ContextVar[_Exchange | None] = ContextVar("unhardcoded_openai_call", default=None)


def openai_v2_active() -> bool:
    """Whether opentelemetry-instrumentation-openai-v2 has wrapped the client (then its span is the client span)."""
    module = sys.modules.get("opentelemetry.instrumentation.openai_v2")
    instrumentor = getattr(module, "OpenAIInstrumentor", None)
    if instrumentor is None:
        return False
    try:
        return bool(instrumentor().is_instrumented_by_opentelemetry)
    except Exception:
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


def _record_response(exchange: _Exchange, headers: Mapping[str, str]) -> None:
    span = exchange.span if exchange.span is not None else trace.get_current_span()
    if not span.is_recording():
        return
    attrs = decision_attributes(headers)
    if attrs:
        span.set_attributes(attrs)


def _inject(request: Any) -> None:
    # The current span is the client span (ours or openai-v2's): the router's server span becomes its child.
    propagate.inject(request.headers)


def httpx_send(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    exchange = _in_flight.get()
    if exchange is None or not is_instrumentation_enabled():
        return wrapped(*args, **kwargs)
    request = args[0] if args else kwargs.get("request")
    if request is not None:
        _inject(request)
    response = wrapped(*args, **kwargs)
    _record_response(exchange, response.headers)
    return response


async def async_httpx_send(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    exchange = _in_flight.get()
    if exchange is None or not is_instrumentation_enabled():
        return await wrapped(*args, **kwargs)
    request = args[0] if args else kwargs.get("request")
    if request is not None:
        _inject(request)
    response = await wrapped(*args, **kwargs)
    _record_response(exchange, response.headers)
    return response


def _with_policy(kwargs: dict[str, Any]) -> dict[str, Any]:
    name = current_policy()
    if name is None:
        return kwargs
    extra = kwargs.get("extra_headers") or {}
    if any(k.lower() == POLICY_HEADER.lower() for k in extra):
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


def _record_completion(span: Span, completion: Any) -> None:
    if not span.is_recording():
        return
    model = getattr(completion, "model", None)
    if isinstance(model, str):
        span.set_attribute(G.GEN_AI_RESPONSE_MODEL, model)
    usage = getattr(completion, "usage", None)
    if usage is not None:
        for name, key in (
            ("prompt_tokens", G.GEN_AI_USAGE_INPUT_TOKENS),
            ("completion_tokens", G.GEN_AI_USAGE_OUTPUT_TOKENS),
        ):
            value = getattr(usage, name, None)
            if isinstance(value, int):
                span.set_attribute(key, value)


def _fail(span: Span, error: BaseException) -> None:
    if span.is_recording():
        span.set_attribute(G.ERROR_TYPE, type(error).__qualname__)
        span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
    span.end()


def _start(tracer: Tracer, kwargs: Mapping[str, Any], instance: Any) -> Span:
    return tracer.start_span(_span_name(kwargs), kind=SpanKind.CLIENT, attributes=_request_attributes(kwargs, instance))


def _finish(span: Span, result: Any, streaming: bool, is_async: bool) -> Any:
    """End the span now, or hand it to a stream wrapper that ends it with the stream."""
    if hasattr(result, "parse"):  # with_raw_response: the caller reads the body; the headers are recorded
        if not streaming:
            try:
                _record_completion(span, result.parse())
            except Exception:
                pass
        span.end()
        return result
    if streaming:
        from .streams import AsyncStreamWrapper, StreamWrapper

        return AsyncStreamWrapper(result, span) if is_async else StreamWrapper(result, span)
    _record_completion(span, result)
    span.end()
    return result


def chat_completions_create(tracer: Tracer) -> Callable[..., Any]:
    def traced(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
        if not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        kwargs = _with_policy(kwargs)
        if openai_v2_active():
            token = _in_flight.set(_Exchange(None))
            try:
                return wrapped(*args, **kwargs)
            finally:
                _in_flight.reset(token)
        span = _start(tracer, kwargs, instance)
        ctx_token = context.attach(trace.set_span_in_context(span))
        token = _in_flight.set(_Exchange(span))
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as error:
            _fail(span, error)
            raise
        finally:
            _in_flight.reset(token)
            context.detach(ctx_token)
        return _finish(span, result, bool(kwargs.get("stream")), is_async=False)

    return traced


def async_chat_completions_create(tracer: Tracer) -> Callable[..., Any]:
    async def traced(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
        if not is_instrumentation_enabled():
            return await wrapped(*args, **kwargs)
        kwargs = _with_policy(kwargs)
        if openai_v2_active():
            token = _in_flight.set(_Exchange(None))
            try:
                return await wrapped(*args, **kwargs)
            finally:
                _in_flight.reset(token)
        span = _start(tracer, kwargs, instance)
        ctx_token = context.attach(trace.set_span_in_context(span))
        token = _in_flight.set(_Exchange(span))
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as error:
            _fail(span, error)
            raise
        finally:
            _in_flight.reset(token)
            context.detach(ctx_token)
        return _finish(span, result, bool(kwargs.get("stream")), is_async=True)

    return traced
