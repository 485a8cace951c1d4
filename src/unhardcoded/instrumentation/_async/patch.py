"""The wrappers of the client's ``AsyncAPIClient.request`` and of ``AsyncClient.send`` under it.

``request`` is the one method every call of the ``openai`` and ``anthropic`` clients goes through (``create``,
``parse``, ``stream``, raw and streamed responses alike). It is wrapped to send the policy in force and, for the
APIs in the table it is given, to open a CLIENT span ``{operation} {model}`` unless another instrumentation's
span is that call's client span (openai-v2's, or the ``anthropic`` client's own). The router's answer headers
are read where they arrive, in ``send`` of httpx (or httpx2), which acts only inside an instrumented call, and
are recorded on the span current there, so there is never a duplicate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import context, trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import Span, Tracer

from ..client_span import (
    Api,
    Exchange,
    api_of,
    fail,
    finish,
    in_flight,
    inject,
    raw_mode,
    record_response,
    request_options,
    start,
    traced_elsewhere,
    with_options,
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


def _handed_back(span: Span, result: Any, streaming: bool, raw: str | None) -> Any:
    """The result of ``request``, its span ended now or by the stream wrapper handed back in its place."""
    if streaming and raw is None:
        return AsyncStreamWrapper(result, span)
    finish(span, result, streaming, raw)
    return result


def async_client_request(tracer: Tracer, apis: Mapping[str, Api]) -> Callable[..., Any]:
    """The wrapper of a client's async ``request``, opening a span for the POST paths in ``apis``."""

    async def traced(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not is_instrumentation_enabled():
            return await wrapped(*args, **kwargs)
        options = request_options(args, kwargs)
        if options is None:
            return await wrapped(*args, **kwargs)
        sent = with_policy(options)
        if sent is not options:
            args, kwargs = with_options(args, kwargs, sent)
        api = api_of(apis, sent)
        if api is None:  # a model list, a file upload: the policy goes along (the router filters by it), no span
            return await wrapped(*args, **kwargs)
        if traced_elsewhere(instance):
            token = in_flight.set(Exchange(None))
            try:
                return await wrapped(*args, **kwargs)
            finally:
                in_flight.reset(token)
        span = start(tracer, api, sent, instance)
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
        return _handed_back(span, result, bool(kwargs.get("stream")), raw_mode(sent))

    return traced
