"""The wrappers of ``AsyncCompletions.create`` and of ``AsyncClient.send`` under it.

``create`` is wrapped to send the policy in force and, unless opentelemetry-instrumentation-openai-v2 is
active, to open a CLIENT span ``chat {model}``. The router's answer headers are read where they arrive, in
``send`` of httpx (or httpx2 under openai 3), which acts only inside an instrumented ``create``, and are
recorded on the span current there: ours, or openai-v2's when it is active, so there is never a duplicate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry import context, trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import Span, Tracer

from ..client_span import (
    Exchange,
    fail,
    finish,
    in_flight,
    inject,
    is_raw_response,
    openai_v2_active,
    record_response,
    start,
    with_policy,
)
from .streams import AsyncStreamWrapper


async def async_httpx_send(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    if not is_instrumentation_enabled():
        return await wrapped(*args, **kwargs)
    exchange = in_flight.get()
    if exchange is None:
        return await wrapped(*args, **kwargs)
    request = args[0] if args else kwargs.get("request")
    if request is not None:
        inject(request)
    response = await wrapped(*args, **kwargs)
    record_response(exchange, response.headers)
    return response


def _handed_back(span: Span, result: Any, streaming: bool) -> Any:
    """The result of ``create``, its span ended now or by the stream wrapper handed back in its place."""
    if streaming and not is_raw_response(result):
        return AsyncStreamWrapper(result, span)
    finish(span, result, streaming)
    return result


def async_chat_completions_create(tracer: Tracer) -> Callable[..., Any]:
    async def traced(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not is_instrumentation_enabled():
            return await wrapped(*args, **kwargs)
        kwargs = with_policy(kwargs)
        if openai_v2_active():
            token = in_flight.set(Exchange(None))
            try:
                return await wrapped(*args, **kwargs)
            finally:
                in_flight.reset(token)
        span = start(tracer, kwargs, instance)
        ctx_token = context.attach(trace.set_span_in_context(span))
        token = in_flight.set(Exchange(span))
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as error:
            fail(span, error)
            raise
        finally:
            in_flight.reset(token)
            context.detach(ctx_token)
        return _handed_back(span, result, bool(kwargs.get("stream")))

    return traced
