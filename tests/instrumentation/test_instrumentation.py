"""UnhardcodedInstrumentor with the real openai client: policy header out, the router's decision onto the span."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from apps.proxy_harness import FIRST_FALLBACK, HELLO, SELECTED, Stack, make_stack
from unhardcoded.instrumentation import UnhardcodedInstrumentor, policy
from unhardcoded.instrumentation.patch import decision_attributes
from unhardcoded.semconv import attributes as A
from unhardcoded.semconv import gen_ai as G
from unhardcoded.testing import TelemetryCapture
from unhardcoded.testing.simulator import error


@pytest.fixture
def exporter(tel: TelemetryCapture) -> Iterator[InMemorySpanExporter]:
    exporter, provider = tel.exporter, tel.tracer_provider
    UnhardcodedInstrumentor().instrument(tracer_provider=provider)
    exporter.tracer_provider = provider  # type: ignore[attr-defined]
    yield exporter
    UnhardcodedInstrumentor().uninstrument()


@pytest.fixture
def stack(simulated_provider: Any) -> Iterator[Stack]:
    yield from make_stack(simulated_provider, timeout_s=2.0)


def client_spans(exporter: InMemorySpanExporter) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]


def test_sync_call_records_the_decision_on_its_client_span(exporter: InMemorySpanExporter, stack: Stack) -> None:
    raw = stack.client().chat.completions.with_raw_response.create(model="auto", messages=HELLO)

    [span] = client_spans(exporter)
    assert span.name == "chat auto"
    attrs = dict(span.attributes)
    assert attrs[G.GEN_AI_REQUEST_MODEL] == "auto"
    assert attrs[G.GEN_AI_RESPONSE_MODEL] == SELECTED
    assert attrs[A.UNHARDCODED_REQUEST_ID] == raw.headers["x-unhardcoded-request-id"]
    assert attrs[A.UNHARDCODED_ANSWERED_MODEL] == SELECTED
    assert attrs[A.UNHARDCODED_SELECTED_MODEL] == SELECTED
    assert attrs[A.UNHARDCODED_POLICY_NAME] == "support"
    assert attrs[A.UNHARDCODED_POLICY_FINGERPRINT] == raw.headers["x-unhardcoded-policy-fingerprint"]
    assert attrs[A.UNHARDCODED_FALLBACK_TRIGGERED] is False
    assert attrs[A.UNHARDCODED_FALLBACK_HOPS] == 0


def test_policy_context_manager_is_sent_as_the_header(exporter: InMemorySpanExporter, stack: Stack) -> None:
    with policy("triage"):
        raw = stack.client().chat.completions.with_raw_response.create(model="auto", messages=HELLO)
    after = stack.client().chat.completions.with_raw_response.create(model="auto", messages=HELLO)

    assert raw.headers["x-unhardcoded-policy"] == "triage"
    assert after.headers["x-unhardcoded-policy"] == "support"  # the proxy's default once the block ends
    assert [dict(s.attributes)[A.UNHARDCODED_POLICY_NAME] for s in client_spans(exporter)] == ["triage", "support"]


def test_policy_from_the_environment(
    exporter: InMemorySpanExporter, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNHARDCODED_POLICY", "triage")
    raw = stack.client().chat.completions.with_raw_response.create(model="auto", messages=HELLO)
    assert raw.headers["x-unhardcoded-policy"] == "triage"
    explicit = stack.client().chat.completions.with_raw_response.create(
        model="auto", messages=HELLO, extra_headers={"x-unhardcoded-policy": "support"}
    )
    assert explicit.headers["x-unhardcoded-policy"] == "support"  # the caller's own header wins


def test_fallback_is_on_the_span(exporter: InMemorySpanExporter, stack: Stack) -> None:
    stack.behave(SELECTED, error(500))
    stack.client().chat.completions.create(model="auto", messages=HELLO)

    attrs = dict(client_spans(exporter)[0].attributes)
    assert attrs[A.UNHARDCODED_FALLBACK_TRIGGERED] is True
    assert attrs[A.UNHARDCODED_FALLBACK_HOPS] == 1
    assert attrs[A.UNHARDCODED_SELECTED_MODEL] == SELECTED
    assert attrs[A.UNHARDCODED_ANSWERED_MODEL] == FIRST_FALLBACK


def test_async_call(exporter: InMemorySpanExporter, stack: Stack) -> None:
    async def go() -> None:
        async with stack.aclient() as client:
            with policy("triage"):
                await client.chat.completions.create(model="auto", messages=HELLO)

    asyncio.run(go())
    [span] = client_spans(exporter)
    assert dict(span.attributes)[A.UNHARDCODED_POLICY_NAME] == "triage"
    assert A.UNHARDCODED_REQUEST_ID in span.attributes


def test_sync_stream_ends_the_span_with_the_stream(exporter: InMemorySpanExporter, stack: Stack) -> None:
    stream = stack.client().chat.completions.create(model="auto", messages=HELLO, stream=True)
    assert client_spans(exporter) == []  # still open while the caller reads
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    assert text.endswith(f"to {SELECTED}.")
    [span] = client_spans(exporter)
    assert dict(span.attributes)[A.UNHARDCODED_ANSWERED_MODEL] == SELECTED
    assert dict(span.attributes)[G.GEN_AI_RESPONSE_MODEL] == SELECTED


def test_async_stream(exporter: InMemorySpanExporter, stack: Stack) -> None:
    async def go() -> str:
        async with stack.aclient() as client:
            stream = await client.chat.completions.create(model="auto", messages=HELLO, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert asyncio.run(go()).endswith(f"to {SELECTED}.")
    [span] = client_spans(exporter)
    assert dict(span.attributes)[A.UNHARDCODED_ANSWERED_MODEL] == SELECTED


def test_router_error_is_recorded_and_raised(exporter: InMemorySpanExporter, stack: Stack) -> None:
    for model in ("grok-4-fast-non-reasoning", "mistral-large-2512", "gpt-4.1"):
        stack.behave(model, error(500))
    with pytest.raises(openai.InternalServerError):
        stack.client().chat.completions.create(model="auto", messages=HELLO)
    [span] = client_spans(exporter)
    attrs = dict(span.attributes)
    assert attrs[G.ERROR_TYPE] == "InternalServerError"
    assert attrs[A.UNHARDCODED_FALLBACK_HOPS] == 2 and A.UNHARDCODED_ANSWERED_MODEL not in attrs


def test_plain_openai_endpoint_gets_trace_context_and_records_nothing_extra(
    exporter: InMemorySpanExporter, simulated_provider: Any
) -> None:
    plain = simulated_provider("openai")
    client = openai.OpenAI(base_url=plain.base_url, api_key="unused", max_retries=0)
    with policy("support"):
        completion = client.chat.completions.create(model="gpt-5.5", messages=HELLO)

    assert completion.model == "gpt-5.5"
    [span] = client_spans(exporter)
    assert not any(k.startswith(A.UNHARDCODED_REQUEST_ID.split(".")[0] + ".") for k in span.attributes)
    [sent] = plain.requests
    trace_id, parent_id = sent.headers["traceparent"].split("-")[1:3]
    assert int(trace_id, 16) == span.context.trace_id and int(parent_id, 16) == span.context.span_id
    assert sent.headers["x-unhardcoded-policy"] == "support"


def test_caller_trace_is_the_parent(exporter: InMemorySpanExporter, simulated_provider: Any) -> None:
    plain = simulated_provider("openai")
    client = openai.OpenAI(base_url=plain.base_url, api_key="unused", max_retries=0)
    tracer = exporter.tracer_provider.get_tracer("app")  # type: ignore[attr-defined]
    with tracer.start_as_current_span("handle ticket") as root:
        client.chat.completions.create(model="gpt-5.5", messages=HELLO)
    [span] = client_spans(exporter)
    assert span.parent is not None and span.parent.span_id == root.get_span_context().span_id


def test_suppressed_instrumentation_does_nothing(exporter: InMemorySpanExporter, simulated_provider: Any) -> None:
    plain = simulated_provider("openai")
    client = openai.OpenAI(base_url=plain.base_url, api_key="unused", max_retries=0)
    with suppress_instrumentation(), policy("support"):
        client.chat.completions.create(model="gpt-5.5", messages=HELLO)
    assert client_spans(exporter) == []
    [sent] = plain.requests
    assert "x-unhardcoded-policy" not in sent.headers and "traceparent" not in sent.headers


def test_uninstrument_restores_the_client(exporter: InMemorySpanExporter, simulated_provider: Any) -> None:
    UnhardcodedInstrumentor().uninstrument()
    plain = simulated_provider("openai")
    client = openai.OpenAI(base_url=plain.base_url, api_key="unused", max_retries=0)
    with policy("support"):
        client.chat.completions.create(model="gpt-5.5", messages=HELLO)
    assert client_spans(exporter) == []
    assert "x-unhardcoded-policy" not in plain.requests[0].headers
    UnhardcodedInstrumentor().instrument(tracer_provider=exporter.tracer_provider)  # type: ignore[attr-defined]


def test_policy_names_are_checked() -> None:
    with pytest.raises(ValueError, match="not a policy name"), policy("Not A Name"):
        pass


def test_decision_attributes_of_headers() -> None:
    assert decision_attributes({}) == {}
    attrs = decision_attributes(
        {"x-unhardcoded-request-id": "req_1", "x-unhardcoded-fallback": "a>b>c", "x-unhardcoded-model": "c"}
    )
    assert attrs[A.UNHARDCODED_FALLBACK_HOPS] == 2 and attrs[A.UNHARDCODED_SELECTED_MODEL] == "a"


# --------------------------------------------------------------------------- with opentelemetry-instrumentation-openai-v2


import opentelemetry.instrumentation.openai_v2 as openai_v2  # noqa: E402 - in the test extra


@pytest.mark.parametrize("order", ["ours-first", "openai-v2-first"])
def test_with_openai_v2_there_is_one_client_span_carrying_the_decision(
    order: str, stack: Stack, simulated_provider: Any, tel: TelemetryCapture
) -> None:
    provider, exporter = tel.tracer_provider, tel.exporter
    ours, theirs = UnhardcodedInstrumentor(), openai_v2.OpenAIInstrumentor()
    first, second = (ours, theirs) if order == "ours-first" else (theirs, ours)
    first.instrument(tracer_provider=provider)
    second.instrument(tracer_provider=provider)
    try:
        with policy("triage"):
            stack.client().chat.completions.create(model="auto", messages=HELLO)
            stream = stack.client().chat.completions.create(model="auto", messages=HELLO, stream=True)
            for _ in stream:
                pass
    finally:
        theirs.uninstrument()
        ours.uninstrument()

    spans = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert len(spans) == 2, [s.name for s in spans]
    for span in spans:
        assert span.instrumentation_scope.name != UnhardcodedInstrumentor.__module__  # openai-v2's span, not a twin
        assert dict(span.attributes)[A.UNHARDCODED_POLICY_NAME] == "triage"
        assert dict(span.attributes)[A.UNHARDCODED_ANSWERED_MODEL] == "llama-4-scout"  # triage's cheapest here
