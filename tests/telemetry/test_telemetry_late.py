"""Late spans: ids, sampling and start time fixed on the path, the SDK span made after the answer.

The proxy's decision and attempt spans (``Router.aroute(later=...)``) and its
server span are made this way. What must hold: the span made later is the one
the SDK would have started at the time (same ids, flags, trace state, start
time, attributes, parent), the sampler is asked once per span, a provider gets
the context its attempt span ends up with, and span processors see parents
start before their children.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState

from telemetry_fixtures import BODY, catalog, policy, span_id_of
from unhardcoded.semconv import spans as S
from unhardcoded.telemetry import losses, reset_losses
from unhardcoded.telemetry.late import LateSpans
from unhardcoded.testing import TelemetryCapture, capture
from unhardcoded.testing.simulator import error, ok


class Counting(Sampler):
    """Another sampler's answers, counted per span name; ``drop`` names spans it samples out."""

    def __init__(self, inner: Sampler = ALWAYS_ON, drop: tuple[str, ...] = (), state: TraceState | None = None) -> None:
        self.inner, self.drop, self.state = inner, drop, state
        self.asked: list[str] = []

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: Any = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        self.asked.append(name)
        if any(name.startswith(d) for d in self.drop):
            return SamplingResult(Decision.DROP)
        result = self.inner.should_sample(parent_context, trace_id, name, kind, attributes, links)
        if self.state is not None:
            return SamplingResult(result.decision, {**(attributes or {}), "sampler.note": "kept"}, self.state)
        return result

    def get_description(self) -> str:
        return "Counting"


class Starts(SpanProcessor):
    """Every on_start, in order: the span's name and ids, and the ids of the span current in its parent context."""

    def __init__(self) -> None:
        self.started: list[tuple[str, int, int | None]] = []

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        above = trace.get_current_span(parent_context).get_span_context()
        self.started.append((span.name, span.context.span_id, above.span_id if above.is_valid else None))

    def on_end(self, span: ReadableSpan) -> None:
        return None


def provider_with(sampler: Sampler) -> tuple[TracerProvider, InMemorySpanExporter]:
    tel = capture(sampler=sampler)
    return tel.tracer_provider, tel.exporter


# --------------------------------------------------------------------------- LateSpans on its own


def test_the_span_made_later_is_the_one_begun():
    sampler = Counting(state=TraceState([("vendor", "v1")]))
    tp, exporter = provider_with(sampler)
    late_spans = LateSpans(tp.get_tracer("t"))
    before = time.time_ns()
    late = late_spans.begin("work", None, SpanKind.CLIENT, {"a": 1})
    assert late is not None and late.recording
    assert late.current.get_span_context() == late.context and late.context.is_valid
    assert late.context.trace_state == TraceState([("vendor", "v1")])
    assert sampler.asked == ["work"]
    time.sleep(0.01)
    span = late.make()
    assert late.make() is span  # made once
    span.end()
    assert sampler.asked == ["work"]  # the sampler's first answer was kept, not asked again
    [done] = exporter.get_finished_spans()
    assert done.context == late.context
    assert before <= done.start_time == late.start_ns < done.end_time
    assert dict(done.attributes) == {"sampler.note": "kept", "a": 1}
    assert done.kind is SpanKind.CLIENT and done.parent is None


def test_a_child_under_a_late_parent_keeps_its_trace_and_its_parent():
    tp, exporter = provider_with(ParentBased(ALWAYS_ON))
    late_spans = LateSpans(tp.get_tracer("t"))
    parent = late_spans.begin("parent", None, SpanKind.SERVER)
    assert parent is not None
    child = late_spans.begin("child", trace.set_span_in_context(parent.current), SpanKind.CLIENT)
    assert child is not None and child.context.trace_id == parent.context.trace_id
    child.make().end()  # the parent is made first, though asked for second
    parent.make().end()
    child_span, parent_span = exporter.get_finished_spans()
    assert child_span.parent == parent_span.context and not child_span.parent.is_remote
    assert parent_span.start_time <= child_span.start_time


@pytest.mark.parametrize("sampled", [True, False], ids=["remote-sampled", "remote-not-sampled"])
def test_a_remote_parent_decides_as_the_sdk_would(sampled: bool):
    tp, exporter = provider_with(ParentBased(TraceIdRatioBased(0.0)))
    remote = SpanContext(
        0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    )
    ctx = trace.set_span_in_context(NonRecordingSpan(remote))
    late = LateSpans(tp.get_tracer("t")).begin("server", ctx, SpanKind.SERVER)
    eager = tp.get_tracer("t").start_span("server", ctx, SpanKind.SERVER)
    assert late is not None and late.context.trace_id == 0xABC
    assert late.context.trace_flags == eager.get_span_context().trace_flags
    assert late.recording is sampled
    span = late.make()
    assert span.get_span_context() == late.context and span.is_recording() is sampled
    span.end()
    eager.end()
    assert len(exporter.get_finished_spans()) == (2 if sampled else 0)


def test_a_root_sampled_out_by_ratio_has_the_flags_the_sdk_gives_it():
    tp, exporter = provider_with(TraceIdRatioBased(0.0))
    late = LateSpans(tp.get_tracer("t")).begin("root", None, SpanKind.SERVER)
    eager = tp.get_tracer("t").start_span("root")
    assert late is not None and not late.recording
    assert late.context.trace_flags == eager.get_span_context().trace_flags
    late.make().end()
    assert exporter.get_finished_spans() == ()


def test_two_late_span_sources_on_one_tracer_keep_their_ids():
    # The SDK hands out one tracer per instrumentation scope, so two Routers on one provider share it.
    sampler = Counting()
    tp, exporter = provider_with(sampler)
    first, second = LateSpans(tp.get_tracer("t")), LateSpans(tp.get_tracer("t"))
    reset_losses()
    a = first.begin("a", None, SpanKind.INTERNAL)
    b = second.begin("b", None, SpanKind.INTERNAL)
    assert a is not None and b is not None
    b.make().end()
    a.make().end()
    done = {span.name: span.context for span in exporter.get_finished_spans()}
    assert done == {"a": a.context, "b": b.context}
    assert sampler.asked == ["a", "b"]  # each asked once, when it began
    assert losses().errors == 0


def test_only_the_sdk_tracer_can_be_late():
    class Other(trace.TracerProvider):
        def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
            return trace.NoOpTracer()

    assert LateSpans(Other().get_tracer("t")).begin("x", None, SpanKind.INTERNAL) is None
    assert LateSpans(trace.NoOpTracer()).begin("x", None, SpanKind.INTERNAL) is None


def test_a_span_processor_that_raises_when_the_span_is_made_is_counted():
    class Raises(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            raise RuntimeError("boom")

    tp = TracerProvider()
    tp.add_span_processor(Raises())
    reset_losses()
    late = LateSpans(tp.get_tracer("t")).begin("x", None, SpanKind.INTERNAL)
    assert late is not None
    span = late.make()
    assert span.get_span_context() == late.context  # what was current on the path, nothing else
    assert losses().errors == 1


# --------------------------------------------------------------------------- the router's late decision and attempts


@pytest.fixture
def sims(request: pytest.FixtureRequest):
    from telemetry_fixtures import Simulators

    s = Simulators({"sim-a": {"cheap-a": error(500)}, "sim-b": {"mid-b": ok()}})
    yield s
    s.close()


def route_later(tel: TelemetryCapture, sims: Any, **router: Any) -> tuple[Any, list[Any]]:
    cat = catalog()
    later: list[Any] = []

    async def run() -> Any:
        try:
            return await tel.router(cat, sims.client, **router).aroute(
                policy(cat, fallback=["mid-b"]), BODY, later=later
            )
        finally:
            await sims.client.aclose()  # its connections live on this loop, which ends here

    decision, _, _ = asyncio.run(run())
    return decision, later


def test_nothing_is_started_until_later_then_parents_start_first(sims: Any):
    tel = capture()
    starts = Starts()
    tel.tracer_provider.add_span_processor(starts)
    decision, later = route_later(tel, sims)
    assert starts.started == [] and tel.spans() == []  # the path began the spans; none is made yet
    for record in later:
        record()
    [decision_span] = tel.decisions()
    first, second = tel.attempts()
    assert starts.started == [
        (decision_span.name, decision_span.context.span_id, None),
        ("chat cheap-a", first.context.span_id, decision_span.context.span_id),
        ("chat mid-b", second.context.span_id, decision_span.context.span_id),
    ]
    # The decision's ids and timestamp were stamped on the path; they are the span's.
    assert decision.span_id == span_id_of(decision_span)
    assert decision.trace_id == format(decision_span.context.trace_id, "032x")
    assert decision_span.start_time <= first.start_time < first.end_time <= second.start_time
    assert second.end_time <= decision_span.end_time
    # Each provider was sent the context its attempt span has.
    for span, sim in ((first, "sim-a"), (second, "sim-b")):
        _, trace_id, span_id, flags = sims[sim].requests[0].headers["traceparent"].split("-")
        assert (int(trace_id, 16), int(span_id, 16), int(flags, 16) & 1) == (
            span.context.trace_id,
            span.context.span_id,
            1,
        )
    tel.shutdown()


def test_a_sampler_that_drops_attempts_is_asked_once_and_the_provider_hears_it(sims: Any):
    sampler = Counting(drop=(S.ATTEMPT_SPAN_NAME.format(operation="chat", model=""),))
    tel = capture(sampler=sampler)
    exporter = tel.exporter
    decision, later = route_later(tel, sims)
    for record in later:
        record()
    assert sorted(sampler.asked) == sorted([f"route {decision.policy.name}", "chat cheap-a", "chat mid-b"])
    assert [s.name for s in exporter.get_finished_spans()] == [f"route {decision.policy.name}"]
    for sim in ("sim-a", "sim-b"):
        flags = sims[sim].requests[0].headers["traceparent"].split("-")[3]
        assert int(flags, 16) & 1 == 0  # not sampled: the provider's own span is not recorded either
