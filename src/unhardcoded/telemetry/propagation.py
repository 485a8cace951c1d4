"""Carrying a trace and its workflow between services over HTTP: W3C traceparent and baggage.

The caller writes the headers with :func:`inject_headers`; the service that
receives them continues the trace (and the workflow run, if any) with
``with continue_from(request.headers):``, or attaches :func:`extract_context`'s
context itself. The globally configured propagators are used (``OTEL_PROPAGATORS``);
W3C trace context and baggage are added when they leave either out, since the
workflow id travels in baggage.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any, Protocol, TypeAlias, cast

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .losses import count_error
from .workflows import _CURRENT, _Position, workflow, workflow_from_context


class HeaderItems(Protocol):
    """Headers that list their (name, value) pairs: a dict, ``http.server``'s message, httpx or Starlette headers."""

    def items(self) -> Iterable[tuple[Any, Any]]: ...


Headers: TypeAlias = HeaderItems | Iterable[tuple[str | bytes, str | bytes]]
"""What :func:`extract_context` and :func:`continue_from` read: a mapping of header names to values (str, bytes,
or a list of values) or a list of (name, value) pairs."""

_TRACECONTEXT = TraceContextTextMapPropagator()
_BAGGAGE = W3CBaggagePropagator()


def inject_headers(
    headers: MutableMapping[str, str] | None = None, *, context: Context | None = None
) -> MutableMapping[str, str]:
    """Write ``traceparent`` (+ ``tracestate``) and ``baggage`` for the current (or given) context into ``headers``.

    Inside a workflow run the baggage carries its id, name and next node step.
    Returns ``headers`` (a new dict when None was given). Never raises.
    """
    carrier: MutableMapping[str, str] = {} if headers is None else headers
    try:
        ctx = context if context is not None else otel_context.get_current()
        position = _CURRENT.get() if context is None else None
        if position is not None:
            ctx = position.run._baggage(ctx)
        propagate.inject(carrier, context=ctx)
        if "traceparent" not in carrier and trace.get_current_span(ctx).get_span_context().is_valid:
            _TRACECONTEXT.inject(carrier, context=ctx)
        if "baggage" not in carrier:
            _BAGGAGE.inject(carrier, context=ctx)
    except Exception:  # noqa: BLE001 - a request without trace headers is still a request
        count_error("injecting trace headers")
    return carrier


def _lowercased(headers: Headers) -> dict[str, str]:
    """Header names are case-insensitive; a repeated header's values are joined with commas, as HTTP allows."""
    listed = getattr(headers, "items", None)
    pairs = cast("Iterable[tuple[Any, Any]]", listed() if callable(listed) else headers)
    out: dict[str, str] = {}
    for raw_key, raw_value in pairs:
        if isinstance(raw_value, (list, tuple)):
            value = ",".join(str(v) for v in raw_value)
        elif isinstance(raw_value, bytes):
            value = raw_value.decode("latin-1")
        else:
            value = str(raw_value)
        key = (raw_key.decode("latin-1") if isinstance(raw_key, bytes) else str(raw_key)).lower()
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


def extract_context(headers: Headers, context: Context | None = None) -> Context:
    """The context ``headers`` carry (remote parent span, baggage), on top of ``context`` or an empty one.

    Accepts any mapping of header names to values (a dict, ``http.server``'s
    headers, httpx or Starlette headers) or a list of (name, value) pairs. Never raises.
    """
    base = context if context is not None else Context()
    try:
        carrier = _lowercased(headers)
        ctx = propagate.extract(carrier, context=base)
        if "traceparent" in carrier and not trace.get_current_span(ctx).get_span_context().is_valid:
            ctx = _TRACECONTEXT.extract(carrier, context=ctx)
        if "baggage" in carrier and workflow_from_context(ctx) is None:
            ctx = _BAGGAGE.extract(carrier, context=ctx)
        return ctx
    except Exception:  # noqa: BLE001
        count_error("extracting trace headers")
        return base


@contextlib.contextmanager
def continue_from(
    headers: Headers, *, tracer_provider: trace.TracerProvider | None = None
) -> Iterator[workflow | None]:
    """Continue the caller's trace, and its workflow run if the headers carry one, for the block.

    Yields the continued run (``with continue_from(h) as wf: with wf.node("x"): ...``)
    or None when the caller was in no workflow. Decisions made in the block join
    the caller's trace; ``workflow.node(...)`` numbers on from the caller's steps.
    """
    ctx = extract_context(headers)
    run = workflow_from_context(ctx, tracer_provider=tracer_provider)
    token = otel_context.attach(ctx)
    # A request that carries no run is in none, whatever the code around this block runs in.
    position = _CURRENT.set(_Position(run, None, None) if run is not None else None)
    try:
        yield run
    finally:
        _CURRENT.reset(position)
        otel_context.detach(token)
