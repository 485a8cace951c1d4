"""The proxy's SERVER span: continues the caller's trace (W3C traceparent) and parents the decision span.

A small ASGI middleware rather than opentelemetry-instrumentation-asgi: one span
per request with the stable HTTP server attributes, no per-message child spans,
and nothing to install. With no SDK configured the API tracer is a no-op.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter, TextMapPropagator
from opentelemetry.semconv.attributes import (
    client_attributes,
    error_attributes,
    http_attributes,
    network_attributes,
    server_attributes,
    url_attributes,
    user_agent_attributes,
)
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..telemetry.late import LateSpans

ROUTES = ("/v1/chat/completions", "/x/rank", "/x/fields", "/healthz")
RECEIPTS_ROUTE = "/x/receipts/{request_id}"


class _HeaderGetter(Getter[Scope]):
    def get(self, carrier: Scope, key: str) -> list[str] | None:
        name = key.lower().encode("latin-1")
        values = [v.decode("latin-1") for k, v in carrier.get("headers", ()) if k == name]
        return values or None

    def keys(self, carrier: Scope) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier.get("headers", ())]


_GETTER = _HeaderGetter()


class _Fields:
    """The header names the global propagator reads, as bytes, for the propagator object in force."""

    propagator: TextMapPropagator | None = None
    names: frozenset[bytes] = frozenset()

    @classmethod
    def of(cls, propagator: TextMapPropagator) -> frozenset[bytes]:
        if propagator is not cls.propagator:
            cls.names = frozenset(f.lower().encode("latin-1") for f in propagator.fields)
            cls.propagator = propagator
        return cls.names


def caller_context(scope: Scope) -> otel_context.Context:
    """The caller's context from the request's headers (W3C traceparent and baggage by default).

    Most requests carry none of the propagator's headers; they get the current context without
    each propagator scanning the headers for its own.
    """
    propagator = propagate.get_global_textmap()
    try:
        names = _Fields.of(propagator)
    except Exception:  # noqa: BLE001 - a propagator whose fields cannot be read: let it look itself
        return propagate.extract(scope, getter=_GETTER)
    for key, _ in scope.get("headers", ()):
        if key in names:
            return propagate.extract(scope, getter=_GETTER)
    return otel_context.get_current()


def route_of(path: str) -> str | None:
    if path in ROUTES:
        return path
    if path.startswith("/x/receipts/"):
        return RECEIPTS_ROUTE
    return None


class ServerSpans:
    """Wraps every HTTP request in a SERVER span named ``{method} {route}``."""

    def __init__(self, app: ASGIApp, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.app = app
        self.tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        self.late = LateSpans(self.tracer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        path = scope.get("path", "/")
        route = route_of(path)
        # The caller's context, baggage included (a workflow run travels there), stays current under our span.
        parent = caller_context(scope)
        name = f"{method} {route}" if route else method
        # Made once the answer is out (see unhardcoded.telemetry.late); the path only fixes its ids and start.
        late = self.late.begin(name, parent, SpanKind.SERVER)
        span = late.current if late is not None else self.tracer.start_span(name, kind=SpanKind.SERVER, context=parent)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        status_code = 0
        sent_at: int | None = None

        async def send_with_status(message: Message) -> None:
            nonlocal status_code, sent_at
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                sent_at = time.time_ns()

        try:
            try:
                await self.app(scope, receive, send_with_status)
            except Exception as exc:  # recorded as trace.use_span records it, without a generator per request
                if late is not None:
                    span = late.make()
                if span.is_recording():
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise
            finally:
                # Set now, not at the start: the caller has its answer by the time this costs anything.
                if late is not None:
                    span = late.make()
                if span.is_recording():
                    attributes = _request_attributes(scope, method, path, route)
                    if status_code:
                        attributes[http_attributes.HTTP_RESPONSE_STATUS_CODE] = status_code
                        if status_code >= 500:
                            attributes[error_attributes.ERROR_TYPE] = str(status_code)
                            span.set_status(Status(StatusCode.ERROR))
                    span.set_attributes(attributes)
        finally:
            # The request ends with its last byte; recording its telemetry afterwards is not part of it.
            span.end(end_time=sent_at)
            otel_context.detach(token)


def _request_attributes(scope: Scope, method: str, path: str, route: str | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        http_attributes.HTTP_REQUEST_METHOD: method,
        url_attributes.URL_PATH: path,
        url_attributes.URL_SCHEME: scope.get("scheme", "http"),
        network_attributes.NETWORK_PROTOCOL_VERSION: scope.get("http_version", "1.1"),
    }
    if route:
        attrs[http_attributes.HTTP_ROUTE] = route
    server = scope.get("server")
    if server and server[0] is not None:
        attrs[server_attributes.SERVER_ADDRESS] = server[0]
        if server[1] is not None:
            attrs[server_attributes.SERVER_PORT] = server[1]
    client = scope.get("client")
    if client:
        attrs[client_attributes.CLIENT_ADDRESS] = client[0]
        attrs[client_attributes.CLIENT_PORT] = client[1]
    for key, value in scope.get("headers", ()):
        if key == b"user-agent":
            attrs[user_agent_attributes.USER_AGENT_ORIGINAL] = value.decode("latin-1")
            break
    return attrs
