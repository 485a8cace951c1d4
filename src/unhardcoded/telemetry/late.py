"""Spans whose SDK span is made after the answer: ids, sampling decision and start time are fixed when the work starts.

A provider call must carry its attempt span's ``traceparent``, so that span's
ids and sampled flag have to exist before the call; the SDK span itself (its
attributes, limits, the span processors' ``on_start``) does not. On the proxy's
path :meth:`LateSpans.begin` asks the tracer's own sampler and id generator for
what the SDK would decide, and hands back a :class:`LateSpan` whose
``current`` is a non-recording span with exactly that context: it is what the
path makes current and injects. Once the answer is out, :meth:`LateSpan.make`
starts the SDK span with those ids, that sampling result and the original start
time, through the same tracer; a span started that way is the one the SDK
would have started then, only later.

Late spans begun under a late parent are made after it, so span processors
see them start parent first. A span started the ordinary way under a late one
(another instrumentation's, inside the request) starts before its parent is
made; its parent's ids are right all the same.

Only the OpenTelemetry SDK's tracer can be driven this way (its sampler and id
generator are its own attributes); with any other tracer :meth:`LateSpans.begin`
answers None and the caller starts its span as usual.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags

from .losses import count_error

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import Tracer as SdkTracer
    from opentelemetry.util.types import Attributes

try:  # the SDK is optional: without it nothing is late
    from opentelemetry.sdk.trace import Tracer as _SdkTracer
    from opentelemetry.sdk.trace.id_generator import IdGenerator as _IdGenerator
    from opentelemetry.sdk.trace.sampling import Sampler as _Sampler
    from opentelemetry.sdk.trace.sampling import SamplingResult
except ImportError:  # pragma: no cover - the SDK ships with the package's dependencies
    _SdkTracer = None  # type: ignore[assignment,misc]
    _IdGenerator = object  # type: ignore[assignment,misc]
    _Sampler = object  # type: ignore[assignment,misc]
    SamplingResult = Any  # type: ignore[assignment,misc]

_RANDOM_TRACE_ID = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)


class LateSpan:
    """A span begun on the path: its context is fixed; :meth:`make` starts the SDK span (once)."""

    __slots__ = (
        "_preset",
        "_span",
        "_tracer",
        "above",
        "attributes",
        "context",
        "current",
        "kind",
        "name",
        "parent",
        "result",
        "start_ns",
    )

    def __init__(
        self,
        tracer: SdkTracer,
        preset: _Preset,
        name: str,
        kind: SpanKind,
        parent: Context | None,
        above: Span,
        attributes: Mapping[str, Any] | None,
        context: SpanContext,
        result: SamplingResult,
    ) -> None:
        self._tracer = tracer
        self._preset = preset
        self.name = name
        self.kind = kind
        self.parent = parent
        self.attributes = attributes
        self.start_ns = time.time_ns()
        self.context = context
        self.result = result
        self.current = _Pending(context, self)
        self._span: Span | None = None
        # A parent begun late (``above`` is the span current in ``parent``) is made before this span, so span
        # processors see spans start parent first.
        self.above: LateSpan | None = above.late if isinstance(above, _Pending) else None

    @property
    def recording(self) -> bool:
        """Whether the span will record (the sampler's decision)."""
        return bool(self.result.decision.is_recording())  # type: ignore[no-untyped-call]  # unannotated in the SDK

    def make(self) -> Span:
        """The SDK span, started now with this context and start time (the same span on every call)."""
        if self._span is None:
            if self.above is not None:
                self.above.make()
                self.above = None
            self._span = self._start()
            self.current.late = None  # no cycle left for the collector
        return self._span

    def _start(self) -> Span:
        preset = self._preset
        preset.span = self
        try:
            span = self._tracer.start_span(
                self.name, context=self.parent, kind=self.kind, attributes=self.attributes, start_time=self.start_ns
            )
        except Exception:  # noqa: BLE001 - e.g. a span processor that raises in on_start
            count_error("starting a late span")
            return self.current
        finally:
            preset.span = None
        if span.get_span_context() != self.context:
            count_error("starting a late span")  # an SDK that builds its context otherwise: the ids did not hold
        return span


class _Pending(NonRecordingSpan):
    """What is current on the path for a late span: its context, and the span to make (until it is made)."""

    def __init__(self, context: SpanContext, late: LateSpan) -> None:
        super().__init__(context)
        self.late: LateSpan | None = late


class _Preset(threading.local):
    span: LateSpan | None = None


class _PresetSampler(_Sampler):
    """The tracer's sampler, or, while a late span is made, the result it gave when that span began."""

    def __init__(self, inner: _Sampler, preset: _Preset) -> None:
        self.inner = inner
        self.preset = preset

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        late = self.preset.span
        if late is not None:
            return late.result
        return self.inner.should_sample(parent_context, trace_id, name, kind, attributes, links)

    def get_description(self) -> str:
        return self.inner.get_description()


class _PresetIds(_IdGenerator):
    """The tracer's id generator, or, while a late span is made, the ids that span began with."""

    def __init__(self, inner: _IdGenerator, preset: _Preset) -> None:
        self.inner = inner
        self.preset = preset

    def generate_span_id(self) -> int:
        late = self.preset.span
        return late.context.span_id if late is not None else self.inner.generate_span_id()

    def generate_trace_id(self) -> int:
        late = self.preset.span
        return late.context.trace_id if late is not None else self.inner.generate_trace_id()

    def is_trace_id_random(self) -> bool:
        return bool(getattr(self.inner, "is_trace_id_random", lambda: False)())


class LateSpans:
    """Begins late spans on ``tracer`` (an API tracer; the global proxy tracer is followed to its delegate)."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        self._sdk: SdkTracer | None = None  # the SDK tracer last seen behind ``tracer``, our sampler and ids in place
        self._seen: object = None
        self._preset = _Preset()

    def _resolve(self) -> SdkTracer | None:
        tracer: object = self.tracer
        if isinstance(tracer, trace.ProxyTracer):
            tracer = getattr(tracer, "_tracer", None)
        if tracer is self._seen:
            return self._sdk
        self._seen, self._sdk = tracer, None
        if _SdkTracer is None or type(tracer) is not _SdkTracer:
            return None
        sdk = tracer
        sampler = getattr(sdk, "sampler", None)
        ids = getattr(sdk, "id_generator", None)
        if sampler is None or ids is None:
            return None
        # Wrapping the tracer's sampler and id generator changes nothing for spans started the ordinary way. The
        # provider hands out one tracer per instrumentation scope, so another LateSpans (a second Router on the
        # same provider) may have wrapped this one already: the wrappers then answer from its preset, and so
        # this LateSpans uses that preset too, or the spans it makes would get fresh ids and a second sampling.
        if isinstance(sampler, _PresetSampler):
            self._preset = sampler.preset
        else:
            sdk.sampler = _PresetSampler(sampler, self._preset)
        if not isinstance(ids, _PresetIds) or ids.preset is not self._preset:
            sdk.id_generator = _PresetIds(ids.inner if isinstance(ids, _PresetIds) else ids, self._preset)
        self._sdk = sdk
        return sdk

    def begin(
        self, name: str, context: Context | None, kind: SpanKind, attributes: Mapping[str, Any] | None = None
    ) -> LateSpan | None:
        """A late span under ``context``'s current span, or None when the tracer cannot make one later."""
        sdk = self._resolve()
        if sdk is None:
            return None
        if context is None:
            context = otel_context.get_current()  # the span is made later: fix its parent now
        enabled = getattr(sdk, "_is_enabled", None)
        if enabled is not None and not enabled():
            return None
        above = trace.get_current_span(context)
        parent = above.get_span_context()
        wrapped_ids = cast(_PresetIds, sdk.id_generator)
        ids = wrapped_ids.inner
        if parent is None or not parent.is_valid:
            trace_id = ids.generate_trace_id()
            random_trace_id = wrapped_ids.is_trace_id_random()
        else:
            trace_id = parent.trace_id
            random_trace_id = bool(getattr(parent.trace_flags, "random_trace_id", False))
        result = cast(_PresetSampler, sdk.sampler).inner.should_sample(context, trace_id, name, kind, attributes, ())
        sampled = result.decision.is_sampled()  # type: ignore[no-untyped-call]  # unannotated in the SDK
        flags = TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT
        if random_trace_id:
            flags |= _RANDOM_TRACE_ID
        span_context = SpanContext(
            trace_id,
            ids.generate_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(flags),
            trace_state=result.trace_state,
        )
        return LateSpan(sdk, self._preset, name, kind, context, above, attributes, span_context, result)
