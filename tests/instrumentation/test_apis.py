"""Every API an app calls gets the policy and a client span: parse(), stream(), raw and streamed responses,
Responses, embeddings and Anthropic Messages, sync and async, with the real ``openai`` and ``anthropic`` clients.

Chat completions go through the real proxy; Responses, embeddings and Messages through a loopback server that
answers as the router does (``api_server.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider, SpanKind
from pydantic import BaseModel

from apps.proxy_harness import HELLO, SELECTED, Stack, make_stack
from unhardcoded.instrumentation import UnhardcodedInstrumentor, policy
from unhardcoded.instrumentation.client_span import OPENAI_V2_SCOPES
from unhardcoded.semconv import attributes as A
from unhardcoded.semconv import gen_ai as G
from unhardcoded.testing import TelemetryCapture
from unhardcoded.testing.simulator import ok

from .api_server import ANSWER, ANSWERED, INPUT_TOKENS, OUTPUT_TOKENS, VECTOR, APIServer

ANTHROPIC_MODEL = "claude-haiku-4-5"


class Answer(BaseModel):
    answer: str


@pytest.fixture
def exporter(tel: TelemetryCapture) -> Iterator[InMemorySpanExporter]:
    UnhardcodedInstrumentor().instrument(tracer_provider=tel.tracer_provider)
    yield tel.exporter
    UnhardcodedInstrumentor().uninstrument()


@pytest.fixture
def stack(simulated_provider: Any) -> Iterator[Stack]:
    yield from make_stack(simulated_provider, timeout_s=2.0)


@pytest.fixture
def server() -> Iterator[APIServer]:
    with APIServer() as running:
        yield running


def client_spans(exporter: InMemorySpanExporter) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]


def the_span(exporter: InMemorySpanExporter) -> tuple[Any, dict[str, Any]]:
    [span] = client_spans(exporter)
    return span, dict(span.attributes)


def assert_traced(server: APIServer, span: Any, *, policy_name: str = "triage") -> None:
    """The request carried the policy and the client span as its parent; the span carries the decision."""
    [seen] = server.seen
    assert seen.headers["x-unhardcoded-policy"] == policy_name
    _, trace_id, parent, _ = seen.headers["traceparent"].split("-")
    assert int(trace_id, 16) == span.context.trace_id and int(parent, 16) == span.context.span_id
    attrs = dict(span.attributes)
    assert attrs[A.UNHARDCODED_POLICY_NAME] == policy_name
    assert attrs[A.UNHARDCODED_ANSWERED_MODEL] == ANSWERED
    assert attrs[A.UNHARDCODED_REQUEST_ID] == "req_0001"


def openai_client(server: APIServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def async_openai_client(server: APIServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


# ---- chat completions through the proxy: parse() and the stream() helper


def test_parse_sends_the_policy_and_gets_a_span(exporter: InMemorySpanExporter, stack: Stack) -> None:
    stack.behave(SELECTED, ok(ANSWER))
    with policy("support"), stack.client() as client:
        parsed = client.chat.completions.parse(model="auto", messages=HELLO, response_format=Answer)

    assert parsed.choices[0].message.parsed == Answer(answer="hello")
    span, attrs = the_span(exporter)
    assert span.name == "chat auto"
    assert attrs[G.GEN_AI_OPERATION_NAME] == "chat" and attrs[G.GEN_AI_PROVIDER_NAME] == "openai"
    assert attrs[A.UNHARDCODED_POLICY_NAME] == "support"
    assert attrs[A.UNHARDCODED_ANSWERED_MODEL] == SELECTED and attrs[G.GEN_AI_RESPONSE_MODEL] == SELECTED
    assert stack.receipt(attrs[A.UNHARDCODED_REQUEST_ID])["policy"]["name"] == "support"


def test_parse_with_the_policy_from_the_environment_is_routed(
    exporter: InMemorySpanExporter, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNHARDCODED_POLICY", "triage")
    stack.sims["meta"].set_behavior("llama-4-scout", ok(ANSWER))  # triage's cheapest
    with stack.client() as client:
        raw = client.beta.chat.completions.with_raw_response.parse(model="auto", messages=HELLO, response_format=Answer)
    assert raw.headers["x-unhardcoded-policy"] == "triage"
    assert raw.parse().choices[0].message.parsed == Answer(answer="hello")
    _, attrs = the_span(exporter)
    assert attrs[A.UNHARDCODED_POLICY_NAME] == "triage"
    assert attrs[A.UNHARDCODED_REQUEST_ID] == raw.headers["x-unhardcoded-request-id"]


def test_async_parse(exporter: InMemorySpanExporter, stack: Stack) -> None:
    stack.behave(SELECTED, ok(ANSWER))

    async def go() -> Any:
        async with stack.aclient() as client:
            with policy("support"):
                return await client.chat.completions.parse(model="auto", messages=HELLO, response_format=Answer)

    assert asyncio.run(go()).choices[0].message.parsed == Answer(answer="hello")
    _, attrs = the_span(exporter)
    assert attrs[A.UNHARDCODED_ANSWERED_MODEL] == SELECTED


def test_stream_helper_ends_the_span_with_the_stream(exporter: InMemorySpanExporter, stack: Stack) -> None:
    with policy("support"), stack.client() as client:
        with client.chat.completions.stream(model="auto", messages=HELLO) as stream:
            assert client_spans(exporter) == []  # open while the caller reads
            text = "".join(e.delta for e in stream if e.type == "content.delta")
    assert text.endswith(f"to {SELECTED}.")
    _, attrs = the_span(exporter)
    assert attrs[A.UNHARDCODED_ANSWERED_MODEL] == SELECTED and attrs[G.GEN_AI_RESPONSE_MODEL] == SELECTED


def test_stream_helper_left_early_ends_the_span(exporter: InMemorySpanExporter, server: APIServer) -> None:
    with policy("triage"), openai_client(server) as client:
        with client.responses.stream(model="auto", input="Where is my parcel?") as stream:
            next(iter(stream))
        span, _ = the_span(exporter)  # ended on leaving the block, not left open
    assert_traced(server, span)


def test_with_streaming_response_leaves_the_body_to_the_caller(exporter: InMemorySpanExporter, stack: Stack) -> None:
    with policy("support"), stack.client() as client:
        with client.chat.completions.with_streaming_response.create(model="auto", messages=HELLO) as response:
            request_id = response.headers["x-unhardcoded-request-id"]
            completion = response.parse()  # the body is read here, by the caller, not by the instrumentation
    assert completion.model == SELECTED
    _, attrs = the_span(exporter)
    assert attrs[A.UNHARDCODED_REQUEST_ID] == request_id


def test_model_list_carries_the_policy_and_gets_no_span(exporter: InMemorySpanExporter, server: APIServer) -> None:
    with policy("triage"), openai_client(server) as client:
        client.models.list()
    [seen] = server.seen
    assert seen.path == "/v1/models" and seen.headers["x-unhardcoded-policy"] == "triage"
    assert client_spans(exporter) == []


# ---- Responses


def test_responses_create(exporter: InMemorySpanExporter, server: APIServer) -> None:
    with policy("triage"), openai_client(server) as client:
        response = client.responses.create(model="auto", input="Where is my parcel?")
    assert response.output_text == ANSWER
    span, attrs = the_span(exporter)
    assert span.name == "chat auto" and attrs[G.GEN_AI_OPERATION_NAME] == "chat"
    assert attrs[G.GEN_AI_USAGE_INPUT_TOKENS] == INPUT_TOKENS and attrs[G.GEN_AI_USAGE_OUTPUT_TOKENS] == OUTPUT_TOKENS
    assert_traced(server, span)


def test_responses_parse(exporter: InMemorySpanExporter, server: APIServer) -> None:
    with policy("triage"), openai_client(server) as client:
        parsed = client.responses.parse(model="auto", input="Where is my parcel?", text_format=Answer)
    assert parsed.output_parsed == Answer(answer="hello")
    span, _ = the_span(exporter)
    assert_traced(server, span)


def test_responses_stream_helper(exporter: InMemorySpanExporter, server: APIServer) -> None:
    with policy("triage"), openai_client(server) as client:
        with client.responses.stream(model="auto", input="Where is my parcel?") as stream:
            text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
            final = stream.get_final_response()
    assert text == ANSWER and final.output_text == ANSWER
    span, attrs = the_span(exporter)
    assert attrs[G.GEN_AI_RESPONSE_MODEL] == "auto" and attrs[G.GEN_AI_USAGE_OUTPUT_TOKENS] == OUTPUT_TOKENS
    assert_traced(server, span)


def test_async_responses_streamed(exporter: InMemorySpanExporter, server: APIServer) -> None:
    async def go() -> list[str]:
        async with async_openai_client(server) as client:
            with policy("triage"):
                stream = await client.responses.create(model="auto", input="Where is my parcel?", stream=True)
            return [event.type async for event in stream]

    types = asyncio.run(go())
    assert types[0] == "response.created" and types[-1] == "response.completed"
    span, attrs = the_span(exporter)
    assert attrs[G.GEN_AI_USAGE_INPUT_TOKENS] == INPUT_TOKENS
    assert_traced(server, span)


# ---- Embeddings


def test_embeddings_create(exporter: InMemorySpanExporter, server: APIServer) -> None:
    with policy("triage"), openai_client(server) as client:
        embedded = client.embeddings.create(model="text-embedding-3-small", input=["parcel"])
    assert embedded.data[0].embedding == list(VECTOR)
    span, attrs = the_span(exporter)
    assert span.name == "embeddings text-embedding-3-small"
    assert attrs[G.GEN_AI_OPERATION_NAME] == "embeddings" and attrs[G.GEN_AI_USAGE_INPUT_TOKENS] == INPUT_TOKENS
    assert_traced(server, span)


def test_async_embeddings(exporter: InMemorySpanExporter, server: APIServer) -> None:
    async def go() -> None:
        async with async_openai_client(server) as client:
            with policy("triage"):
                await client.embeddings.create(model="text-embedding-3-small", input="parcel")

    asyncio.run(go())
    span, _ = the_span(exporter)
    assert_traced(server, span)


# ---- Anthropic Messages


def anthropic_client(server: APIServer) -> anthropic.Anthropic:
    # open_telemetry=False: the client's own spans are off, so the client span is ours (see the last test).
    return anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0, open_telemetry=False)


def test_anthropic_messages_create(exporter: InMemorySpanExporter, server: APIServer) -> None:
    with policy("triage"), anthropic_client(server) as client:
        message = client.messages.create(model=ANTHROPIC_MODEL, max_tokens=64, messages=HELLO)  # type: ignore[arg-type]
    assert message.content[0].text == ANSWER  # type: ignore[union-attr]
    span, attrs = the_span(exporter)
    assert span.name == f"chat {ANTHROPIC_MODEL}" and attrs[G.GEN_AI_PROVIDER_NAME] == "anthropic"
    assert attrs[G.GEN_AI_USAGE_INPUT_TOKENS] == INPUT_TOKENS and attrs[G.GEN_AI_USAGE_OUTPUT_TOKENS] == OUTPUT_TOKENS
    assert server.seen[0].path == "/v1/messages"
    assert_traced(server, span)


def test_anthropic_messages_stream_helper(exporter: InMemorySpanExporter, server: APIServer) -> None:
    with policy("triage"), anthropic_client(server) as client:
        with client.messages.stream(model=ANTHROPIC_MODEL, max_tokens=64, messages=HELLO) as stream:  # type: ignore[arg-type]
            text = "".join(stream.text_stream)
    assert text == ANSWER
    span, attrs = the_span(exporter)
    assert attrs[G.GEN_AI_RESPONSE_MODEL] == ANTHROPIC_MODEL
    assert attrs[G.GEN_AI_USAGE_INPUT_TOKENS] == INPUT_TOKENS and attrs[G.GEN_AI_USAGE_OUTPUT_TOKENS] == OUTPUT_TOKENS
    assert_traced(server, span)


def test_async_anthropic_messages_streamed(exporter: InMemorySpanExporter, server: APIServer) -> None:
    async def go() -> list[str]:
        async with anthropic.AsyncAnthropic(
            base_url=server.base_url, api_key="unused", max_retries=0, open_telemetry=False
        ) as client:
            with policy("triage"):
                stream = await client.messages.create(
                    model=ANTHROPIC_MODEL,
                    max_tokens=64,
                    messages=HELLO,  # type: ignore[arg-type]
                    stream=True,
                )
            return [event.type async for event in stream]

    assert asyncio.run(go())[-1] == "message_stop"
    span, _ = the_span(exporter)
    assert_traced(server, span)


def test_anthropic_client_tracing_itself_gets_the_decision_and_no_twin(
    tel: TelemetryCapture, exporter: InMemorySpanExporter, server: APIServer
) -> None:
    client = anthropic.Anthropic(
        base_url=server.base_url,
        api_key="unused",
        max_retries=0,
        open_telemetry={"tracer_provider": tel.tracer_provider},  # type: ignore[typeddict-unknown-key]
    )
    with policy("triage"), client:
        client.messages.create(model=ANTHROPIC_MODEL, max_tokens=64, messages=HELLO)  # type: ignore[arg-type]
    span, attrs = the_span(exporter)
    assert span.instrumentation_scope.name != UnhardcodedInstrumentor.__module__
    assert attrs[A.UNHARDCODED_ANSWERED_MODEL] == ANSWERED


def test_anthropic_client_tracing_to_nowhere_gets_our_span(exporter: InMemorySpanExporter, server: APIServer) -> None:
    client = anthropic.Anthropic(
        base_url=server.base_url,
        api_key="unused",
        max_retries=0,
        open_telemetry={"tracer_provider": NoOpTracerProvider()},  # type: ignore[typeddict-unknown-key]
    )
    with policy("triage"), client:
        client.messages.create(model=ANTHROPIC_MODEL, max_tokens=64, messages=HELLO)  # type: ignore[arg-type]
    span, _ = the_span(exporter)
    assert span.instrumentation_scope.name == UnhardcodedInstrumentor.__module__
    assert_traced(server, span)


def test_beside_openai_v2_each_call_has_one_client_span_with_the_decision(
    tel: TelemetryCapture, server: APIServer
) -> None:
    import opentelemetry.instrumentation.openai_v2 as openai_v2  # the pinned pair of the test extra

    ours, theirs = UnhardcodedInstrumentor(), openai_v2.OpenAIInstrumentor()
    ours.instrument(tracer_provider=tel.tracer_provider)
    theirs.instrument(tracer_provider=tel.tracer_provider)
    try:
        with policy("triage"), openai_client(server) as client:
            client.chat.completions.create(model="auto", messages=HELLO)  # type: ignore[arg-type]
            client.chat.completions.parse(model="auto", messages=HELLO, response_format=Answer)  # type: ignore[arg-type]
            client.embeddings.create(model="text-embedding-3-small", input="parcel")
            client.responses.create(model="auto", input="Where is my parcel?")
    finally:
        theirs.uninstrument()
        ours.uninstrument()

    spans = client_spans(tel.exporter)
    scopes = [s.instrumentation_scope.name.startswith(OPENAI_V2_SCOPES) for s in spans]  # its own or util-genai's
    assert scopes == [True, False, True, False]  # openai-v2 wraps create and embeddings; parse and responses are ours
    for span, request in zip(spans, server.seen, strict=True):
        assert dict(span.attributes)[A.UNHARDCODED_ANSWERED_MODEL] == ANSWERED
        assert request.headers["traceparent"].split("-")[2] == format(span.context.span_id, "016x")
        assert request.headers["x-unhardcoded-policy"] == "triage"
