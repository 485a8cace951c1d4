"""The OpenTelemetry SDK internals that ``unhardcoded.telemetry.late`` drives are still there and still behave so.

``late.py`` fixes a span's ids and sampling decision on the request path and starts the SDK span after the
answer, by swapping the SDK ``Tracer``'s ``sampler`` and ``id_generator`` attributes and following the global
``ProxyTracer``'s private ``_tracer``. None of that is public API. pyproject.toml bounds ``opentelemetry-sdk``
below the next minor version; when a new one is allowed, this file says what moved, if anything.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Tracer, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, Sampler, SamplingResult
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState

SDK = version("opentelemetry-sdk")


def moved(what: str) -> str:
    return f"opentelemetry-sdk {SDK}: {what}; unhardcoded/telemetry/late.py relies on it (see its module docstring)"


class Recorded(Sampler):
    """Answers RECORD_AND_SAMPLE with a trace state, and keeps the arguments it was asked with."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        self.calls.append((parent_context, trace_id, name, kind, attributes, links))
        return SamplingResult(Decision.RECORD_AND_SAMPLE, None, TraceState([("k", "v")]))

    def get_description(self) -> str:
        return "Recorded"


class FixedIds(IdGenerator):
    def __init__(self, random: bool) -> None:
        self.random = random

    def generate_span_id(self) -> int:
        return 0x1234

    def generate_trace_id(self) -> int:
        return 0xABCD

    def is_trace_id_random(self) -> bool:
        return self.random


def sdk_tracer() -> tuple[Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("contract")
    return tracer, exporter  # type: ignore[return-value]  # checked to be the SDK Tracer by the first test


def test_the_provider_hands_out_the_sdk_tracer_class_itself() -> None:
    tracer, _ = sdk_tracer()
    # late.py compares the class exactly (a subclass could start spans some other way).
    assert type(tracer) is Tracer, moved(f"TracerProvider.get_tracer returns {type(tracer)!r}, not sdk.trace.Tracer")


def test_the_tracer_keeps_its_sampler_and_id_generator_as_plain_attributes() -> None:
    tracer, _ = sdk_tracer()
    assert isinstance(getattr(tracer, "sampler", None), Sampler), moved("Tracer.sampler is gone")
    assert isinstance(getattr(tracer, "id_generator", None), IdGenerator), moved("Tracer.id_generator is gone")
    sampler, ids = Recorded(), FixedIds(random=False)
    tracer.sampler, tracer.id_generator = sampler, ids  # late.py wraps them in place, per tracer
    assert tracer.sampler is sampler and tracer.id_generator is ids, moved("Tracer.sampler/id_generator not settable")


def test_the_tracer_says_whether_it_is_enabled() -> None:
    tracer, _ = sdk_tracer()
    enabled = getattr(tracer, "_is_enabled", None)
    assert callable(enabled), moved("Tracer._is_enabled() is gone (late.py skips disabled tracers with it)")
    assert enabled() is True, moved("Tracer._is_enabled() does not answer True for a default tracer")


def test_start_span_takes_the_arguments_late_py_passes() -> None:
    parameters = inspect.signature(Tracer.start_span).parameters
    for name in ("name", "context", "kind", "attributes", "start_time"):
        assert name in parameters, moved(f"Tracer.start_span has no {name!r} parameter")


def test_start_span_takes_its_context_from_the_tracers_sampler_and_id_generator() -> None:
    tracer, exporter = sdk_tracer()
    sampler, ids = Recorded(), FixedIds(random=True)
    tracer.sampler, tracer.id_generator = sampler, ids
    span = tracer.start_span("root", kind=SpanKind.CLIENT, attributes={"a": 1}, start_time=1_000)
    span.end(end_time=2_000)
    assert len(sampler.calls) == 1, moved(f"start_span asked the sampler {len(sampler.calls)} times, not once")
    _, trace_id, name, kind, attributes, _ = sampler.calls[0]
    assert (trace_id, name, kind) == (0xABCD, "root", SpanKind.CLIENT), moved(
        "start_span no longer asks tracer.sampler.should_sample(context, trace_id, name, kind, attributes, links)"
    )
    assert dict(attributes) == {"a": 1}, moved("start_span passes the sampler other attributes")
    [done] = exporter.get_finished_spans()
    expected = SpanContext(
        0xABCD,
        0x1234,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID),
        trace_state=TraceState([("k", "v")]),
    )
    assert done.context == expected and done.context.trace_flags == expected.trace_flags, moved(
        "a root span's context is no longer (id_generator trace and span id, SAMPLED from the decision, "
        "RANDOM_TRACE_ID from id_generator.is_trace_id_random(), the sampling result's trace state)"
    )
    assert done.start_time == 1_000, moved("start_span ignores start_time")


def test_a_child_takes_its_trace_and_random_flag_from_the_parent() -> None:
    tracer, exporter = sdk_tracer()
    tracer.sampler, tracer.id_generator = Recorded(), FixedIds(random=False)
    parent = SpanContext(0x77, 0x88, is_remote=True, trace_flags=TraceFlags(TraceFlags.RANDOM_TRACE_ID))
    tracer.start_span("child", context=trace.set_span_in_context(NonRecordingSpan(parent))).end()
    [done] = exporter.get_finished_spans()
    assert done.context.trace_id == 0x77 and done.context.span_id == 0x1234, moved(
        "a child's trace id is no longer its parent's, or its span id no longer from id_generator"
    )
    assert done.context.trace_flags.random_trace_id, moved("a child no longer inherits RANDOM_TRACE_ID")


def test_sampler_and_id_generator_interfaces() -> None:
    should_sample = list(inspect.signature(Sampler.should_sample).parameters)
    assert should_sample[:7] == [
        "self",
        "parent_context",
        "trace_id",
        "name",
        "kind",
        "attributes",
        "links",
    ], moved(f"Sampler.should_sample's parameters are now {should_sample}")
    assert callable(getattr(Sampler, "get_description", None)), moved("Sampler.get_description is gone")
    result = ALWAYS_ON.should_sample(None, 1, "x")
    assert result.decision.is_recording() and result.decision.is_sampled(), moved(
        "SamplingResult.decision.is_recording()/is_sampled() changed"
    )
    assert hasattr(result, "trace_state"), moved("SamplingResult.trace_state is gone")
    for name in ("generate_span_id", "generate_trace_id", "is_trace_id_random"):
        assert callable(getattr(RandomIdGenerator(), name, None)), moved(f"IdGenerator.{name} is gone")
    assert TraceFlags.RANDOM_TRACE_ID == 0x02, moved("TraceFlags.RANDOM_TRACE_ID moved")
    assert TraceFlags(TraceFlags.RANDOM_TRACE_ID).random_trace_id, moved("TraceFlags.random_trace_id is gone")


def test_the_global_proxy_tracer_names_its_delegate() -> None:
    # late.py follows trace.get_tracer()'s ProxyTracer to the SDK tracer it delegates to through ``_tracer``.
    proxy = trace.ProxyTracer("contract")
    assert isinstance(inspect.getattr_static(trace.ProxyTracer, "_tracer", None), property), moved(
        "ProxyTracer._tracer (the delegate) is gone"
    )
    assert isinstance(proxy._tracer, trace.Tracer), moved("ProxyTracer._tracer is not a Tracer")
