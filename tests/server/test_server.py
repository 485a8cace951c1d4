"""The proxy's own endpoints, its spans, the `serve` command, and that provider keys never leak."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from apps.proxy_harness import (
    FIRST_FALLBACK,
    HELLO,
    SECOND_FALLBACK,
    SELECTED,
    Stack,
    all_requests,
    catalog_simulators,
    free_port,
    make_stack,
    providers_for,
    serving,
)
from unhardcoded import cli
from unhardcoded.catalog import Catalog
from unhardcoded.receipts.model import RECEIPT_SCHEMA, Receipt
from unhardcoded.router import Router
from unhardcoded.router.cascade import AttemptObserver
from unhardcoded.router.providers import ProviderClient
from unhardcoded.semconv import attributes as A
from unhardcoded.server import create_app
from unhardcoded.testing import TelemetryCapture
from unhardcoded.testing.simulator import cut_after_tokens, cut_before_first_token, error, ok


def traced_router(client: ProviderClient, provider: TracerProvider) -> Router:
    return Router(Catalog.builtin(), client, tracer_provider=provider)


@pytest.fixture
def stack(simulated_provider: Any) -> Iterator[Stack]:
    yield from make_stack(simulated_provider, timeout_s=2.0)


# --------------------------------------------------------------------------- /x endpoints


def test_fields(stack: Stack) -> None:
    r = httpx.get(f"{stack.server.base_url}/x/fields")
    assert r.status_code == 200
    body = r.json()
    assert body["catalog_version"] == Catalog.builtin().version
    names = {f["name"] for f in body["fields"]}
    assert {"supports_tools", "bench_intelligence", "regions", "context_window"} <= names


def test_rank_is_a_dry_run_receipt(stack: Stack) -> None:
    r = httpx.post(f"{stack.server.base_url}/x/rank", json={"messages": HELLO, "policy": "support"})
    assert r.status_code == 200
    receipt = r.json()
    assert receipt["receipt"] == RECEIPT_SCHEMA
    assert receipt["outcome"] == "dry_run" and receipt["attempts"] == []
    assert receipt["selected"]["model"] == SELECTED
    assert receipt["fallback"]["chain"] == [FIRST_FALLBACK, SECOND_FALLBACK]
    assert r.headers["x-unhardcoded-request-id"] == receipt["request_id"]
    assert r.headers["x-unhardcoded-policy-fingerprint"] == receipt["policy"]["fingerprint"]
    assert all_requests(stack.sims) == []
    again = httpx.get(f"{stack.server.base_url}/x/receipts/{receipt['request_id']}").json()
    assert again["request_id"] == receipt["request_id"]


def test_rank_refuses_bad_requests_like_the_proxy(stack: Stack) -> None:
    r = httpx.post(f"{stack.server.base_url}/x/rank", json={"messages": HELLO, "policy": "nope"})
    assert r.status_code == 404 and "unknown policy 'nope'" in r.json()["error"]["message"]


def test_unknown_receipt(stack: Stack) -> None:
    r = httpx.get(f"{stack.server.base_url}/x/receipts/req_0000")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "receipt_not_found"


def test_unknown_paths_and_methods_answer_in_openai_shape(stack: Stack) -> None:
    r = httpx.post(f"{stack.server.base_url}/v1/audio/speech", json={"input": "x"})
    assert r.status_code == 404 and r.json()["error"]["message"] == "POST /v1/audio/speech: no such endpoint"
    r = httpx.get(f"{stack.server.openai_base_url}/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["message"].endswith("method not allowed")


def test_healthz(stack: Stack) -> None:
    body = httpx.get(f"{stack.server.base_url}/healthz").json()
    assert body["status"] == "ok" and body["policies"] == ["support", "triage"] and body["default_policy"] == "support"


def test_body_policy_wins_over_the_header(stack: Stack) -> None:
    r = httpx.post(
        f"{stack.server.openai_base_url}/chat/completions",
        json={"messages": HELLO, "policy": "triage"},
        headers={"X-Unhardcoded-Policy": "support"},
    )
    assert r.headers["x-unhardcoded-policy"] == "triage"


def test_no_policy_and_no_default(simulated_provider: Any) -> None:
    for stack in make_stack(simulated_provider, default_policy=None):
        r = httpx.post(f"{stack.server.openai_base_url}/chat/completions", json={"messages": HELLO})
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "missing_policy"
        assert "X-Unhardcoded-Policy" in r.json()["error"]["message"]
        assert all_requests(stack.sims) == []


def test_policy_directory(simulated_provider: Any, tmp_path: Path) -> None:
    (tmp_path / "eu.yaml").write_text(
        "schema: sigma-pol/v1\nname: eu\nrules:\n  - {id: eu, field: regions, op: contains, value: eu}\n"
    )
    for stack in make_stack(simulated_provider, policies=tmp_path, default_policy="eu"):
        r = httpx.post(f"{stack.server.openai_base_url}/chat/completions", json={"messages": HELLO})
        assert r.status_code == 200 and r.headers["x-unhardcoded-policy"] == "eu"
        (tmp_path / "later.json").write_text(json.dumps({"schema": "sigma-pol/v1", "name": "later"}))
        time.sleep(1.1)  # a miss rescans the directory, at most once a second
        r = httpx.post(f"{stack.server.openai_base_url}/chat/completions", json={"messages": HELLO, "policy": "later"})
        assert r.status_code == 200, r.text


def test_receipt_from_the_store(simulated_provider: Any) -> None:
    from unhardcoded.policy import load_policy_file
    from unhardcoded.policy.builtin import builtin_policy_dir
    from unhardcoded.receipts.stores import open_store

    store = open_store()
    policy = load_policy_file(builtin_policy_dir() / "support.yaml")
    decision = (
        Router()
        .compile(policy)
        .decide(Router().decide(policy, {"messages": HELLO}).features, request_id="req_fromstore")
    )
    store.put(Receipt.from_decision(decision), policy.canonical)
    for stack in make_stack(simulated_provider, store=store):
        r = httpx.get(f"{stack.server.base_url}/x/receipts/req_fromstore")
        assert r.status_code == 200 and r.json()["request_id"] == "req_fromstore"
    store.close()


def test_recent_decisions_give_back_each_decision_whole_and_keep_only_the_last(simulated_provider: Any) -> None:
    from unhardcoded.policy import load_policy_file
    from unhardcoded.policy.builtin import builtin_policy_dir
    from unhardcoded.server import RecentDecisions

    sims = catalog_simulators(simulated_provider)
    sims["xai"].set_behavior(SELECTED, error(500))
    policy = load_policy_file(builtin_policy_dir() / "support.yaml")
    with ProviderClient(providers_for(sims, timeout_s=2.0)) as client:
        router = Router(Catalog.builtin(), client)
        routed = [router.route(policy, {"messages": HELLO}, request_id=f"req_{i}")[0] for i in range(3)]
    assert routed[0].hops and len(routed[0].attempts) == 2 and routed[0].cost.usd  # a decision with everything in it

    recent = RecentDecisions(capacity=2)
    for decision in routed:
        recent.add(decision)
    assert recent.get("req_0") is None
    assert recent.get("req_1") == routed[1] and recent.get("req_2") == routed[2]
    assert recent.get("req_2").policy is policy
    assert recent.get("req_2") is not routed[2]  # kept as JSON, not as the live model

    later = RecentDecisions()
    later.add(routed[0], compact=False)
    assert later.get("req_0") is routed[0]  # answerable at once, turned into JSON when the server is free
    later.compact("req_0")
    assert later.get("req_0") == routed[0] and later.get("req_0") is not routed[0]


# --------------------------------------------------------------------------- spans


@pytest.fixture
def traced(simulated_provider: Any, tel: TelemetryCapture) -> Iterator[tuple[Stack, InMemorySpanExporter]]:
    provider, exporter = tel.tracer_provider, tel.exporter
    sims = catalog_simulators(simulated_provider)
    client = ProviderClient(providers_for(sims, timeout_s=2.0))
    router = traced_router(client, provider)
    app = create_app(router, default_policy="support", tracer_provider=provider)
    with serving(app, closing=[client]) as server:
        yield Stack(sims, server), exporter
    client.close()


CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def finished(exporter: InMemorySpanExporter) -> list[Any]:
    """The spans, once the server span has ended (it ends just after the last byte is sent)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        spans = list(exporter.get_finished_spans())
        if any(s.kind == SpanKind.SERVER for s in spans):
            return spans
        time.sleep(0.01)
    raise AssertionError("no server span")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_spans_nest_from_the_caller_to_the_provider(traced: tuple[Stack, InMemorySpanExporter], stream: bool) -> None:
    stack, exporter = traced
    stack.behave(SELECTED, error(500))
    body = {"messages": HELLO, "stream": stream}
    r = httpx.post(
        f"{stack.server.openai_base_url}/chat/completions",
        json=body,
        headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
    )
    assert r.status_code == 200

    spans = finished(exporter)
    assert {format(s.context.trace_id, "032x") for s in spans} == {CALLER_TRACE}
    [server] = [s for s in spans if s.kind == SpanKind.SERVER]
    assert server.name == "POST /v1/chat/completions"
    assert format(server.parent.span_id, "016x") == CALLER_SPAN
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.route"] == "/v1/chat/completions"
    [decision] = [s for s in spans if s.name == "route support"]
    assert decision.parent.span_id == server.context.span_id
    assert decision.attributes[A.UNHARDCODED_REQUEST_ID] == r.headers["x-unhardcoded-request-id"]
    assert decision.attributes[A.UNHARDCODED_FALLBACK_HOPS] == 1
    attempts = sorted((s for s in spans if s.kind == SpanKind.CLIENT), key=lambda s: s.start_time)
    assert [s.name for s in attempts] == [f"chat {SELECTED}", f"chat {FIRST_FALLBACK}"]
    assert all(s.parent.span_id == decision.context.span_id for s in attempts)
    # Each provider got the trace context of its own attempt span.
    for attempt, sim in zip(attempts, (stack.sim_for(SELECTED), stack.sim_for(FIRST_FALLBACK))):
        [sent] = sim.requests
        _, trace_id, parent_id, _ = sent.headers["traceparent"].split("-")
        assert trace_id == CALLER_TRACE and int(parent_id, 16) == attempt.context.span_id
    # The receipt in memory is the decision the spans describe.
    receipt = stack.receipt(r.headers["x-unhardcoded-request-id"])
    assert receipt["trace_id"] == CALLER_TRACE and receipt["span_id"] == format(decision.context.span_id, "016x")


class WatchedStreams(ProviderClient):
    """The real client; it notes which span is current each time the proxy reads from a provider's stream."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads: list[tuple[str, int]] = []

    def astream(self, provider: str, model: str, body: Any, **kwargs: Any) -> Any:
        return _Watched(super().astream(provider, model, body, **kwargs), model, self.reads)


class _Watched:
    def __init__(self, inner: Any, model: str, reads: list[tuple[str, int]]) -> None:
        self.inner, self.model, self.reads = inner, model, reads

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __aiter__(self) -> _Watched:
        return self

    async def __anext__(self) -> Any:
        self.reads.append((self.model, trace.get_current_span().get_span_context().span_id))
        return await self.inner.__anext__()

    async def aclose(self) -> None:
        await self.inner.aclose()


class HookLog(AttemptObserver):
    """An application's own observer, chained after the attempt spans: what it is shown, and in which span."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []

    def start(self, decision: Any, planned: Any) -> Any:
        return planned.model

    def headers(self, token: Any) -> dict[str, str]:
        self.calls.append(("headers", token, trace.get_current_span().get_span_context().span_id))
        return {"x-hook": token}

    def answered(self, token: Any, result: Any) -> None:
        self.calls.append(("answered", token, getattr(result, "response_model", None)))

    def end(self, token: Any, attempt: Any, error: Any) -> None:
        self.calls.append(("end", token, attempt.status))


def test_a_streamed_attempt_has_the_telemetry_of_a_plain_one(simulated_provider: Any, tel: TelemetryCapture) -> None:
    provider, exporter = tel.tracer_provider, tel.exporter
    sims = catalog_simulators(simulated_provider)
    sims["xai"].set_behavior(SELECTED, cut_before_first_token())
    sims["mistral"].set_behavior(FIRST_FALLBACK, ok("one two three four five six", response_model="claude-snap"))
    client = WatchedStreams(providers_for(sims, timeout_s=2.0))
    hooks = HookLog()
    router = Router(Catalog.builtin(), client, tracer_provider=provider, observer=hooks)
    with serving(create_app(router, default_policy="support", tracer_provider=provider), closing=[client]) as server:
        with httpx.stream(
            "POST", f"{server.openai_base_url}/chat/completions", json={"messages": HELLO, "stream": True}
        ) as r:
            text = r.read().decode()
    client.close()
    assert r.status_code == 200 and text.rstrip().endswith("data: [DONE]")

    spans = finished(exporter)
    [first, second] = sorted((s for s in spans if s.kind == SpanKind.CLIENT), key=lambda s: s.start_time)
    # Every read of each provider's stream, the relay after the first token included, ran in its attempt's span.
    reads = {model: {span_id for m, span_id in client.reads if m == model} for model, _ in client.reads}
    assert reads == {SELECTED: {first.context.span_id}, FIRST_FALLBACK: {second.context.span_id}}
    assert sum(m == FIRST_FALLBACK for m, _ in client.reads) > 3  # well past the first token
    # Each provider was sent its own attempt's trace context, and the chained observer's headers.
    for attempt, model in ((first, SELECTED), (second, FIRST_FALLBACK)):
        [sent] = stack_requests(sims, model)
        assert int(sent.headers["traceparent"].split("-")[2], 16) == attempt.context.span_id
        assert sent.headers["x-hook"] == model
    # Status, error, duration, response model and usage, as a plain attempt records them.
    assert first.attributes[A.UNHARDCODED_ATTEMPT_STATUS] == "error"
    assert first.attributes["error.type"] == "stream_interrupted"
    assert first.status.status_code.name == "ERROR"
    assert second.attributes[A.UNHARDCODED_ATTEMPT_STATUS] == "ok"
    assert second.attributes["gen_ai.response.model"] == "claude-snap"
    assert second.attributes["gen_ai.usage.output_tokens"] > 0 and second.attributes["gen_ai.usage.input_tokens"] > 0
    assert second.attributes[A.UNHARDCODED_ATTEMPT_DURATION_MS] > 0
    assert second.attributes[A.UNHARDCODED_FALLBACK_REASON] == "error"
    # The chained observer got the same hooks, in the same order, each `headers` inside its attempt's span.
    assert [c[:2] for c in hooks.calls] == [
        ("headers", SELECTED),
        ("end", SELECTED),
        ("headers", FIRST_FALLBACK),
        ("answered", FIRST_FALLBACK),
        ("end", FIRST_FALLBACK),
    ]
    assert hooks.calls[0][2] == first.context.span_id and hooks.calls[2][2] == second.context.span_id
    assert hooks.calls[3][2] == "claude-snap" and hooks.calls[4][2] == "ok"


def stack_requests(sims: dict[str, Any], model: str) -> list[Any]:
    return [r for sim in sims.values() for r in sim.requests if r.model == model]


def test_stream_broken_after_tokens_is_on_the_spans(traced: tuple[Stack, InMemorySpanExporter]) -> None:
    stack, exporter = traced
    stack.behave(SELECTED, cut_after_tokens(2))
    with httpx.stream(
        "POST", f"{stack.server.openai_base_url}/chat/completions", json={"messages": HELLO, "stream": True}
    ) as r:
        r.read()
    spans = finished(exporter)
    [decision] = [s for s in spans if s.name == "route support"]
    [attempt] = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert decision.attributes[A.UNHARDCODED_DECISION_OUTCOME] == "failed"
    assert attempt.attributes["error.type"] == "stream_interrupted"
    assert attempt.attributes[A.UNHARDCODED_ATTEMPT_STATUS] == "error"


def test_no_candidate_reply_is_the_decision_the_span_recorded(traced: tuple[Stack, InMemorySpanExporter]) -> None:
    stack, exporter = traced
    impossible = {
        "schema": "sigma-pol/v1",
        "name": "impossible",
        "rules": [{"id": "genius", "field": "bench_intelligence", "op": "gte", "value": 0.999}],
    }
    r = httpx.post(f"{stack.server.openai_base_url}/chat/completions", json={"messages": HELLO, "policy": impossible})
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_candidate"
    spans = finished(exporter)
    [decision] = [s for s in spans if s.name == "route impossible"]  # decided once, not again for the reply
    assert decision.attributes[A.UNHARDCODED_DECISION_OUTCOME] == "no_candidate"
    receipt = stack.receipt(r.headers["x-unhardcoded-request-id"])
    assert receipt["trace_id"] == format(decision.context.trace_id, "032x")
    assert receipt["span_id"] == format(decision.context.span_id, "016x")
    assert len(receipt["rejected"]) == decision.attributes[A.UNHARDCODED_REJECTED_COUNT]


def test_the_answer_goes_out_before_the_decision_is_recorded(simulated_provider: Any, tel: TelemetryCapture) -> None:
    """The caller does not wait for the spans' attributes and events or for the metrics; each span still ends when
    its work did (the server span at the last byte sent), and every span is whole once the request is over."""
    import asyncio

    from opentelemetry.sdk.trace import SpanProcessor

    happened: list[tuple[str, int]] = []

    class Ends(SpanProcessor):
        def on_end(self, span: Any) -> None:
            happened.append((f"end {span.name}", time.time_ns()))

    provider, exporter, reader = tel.tracer_provider, tel.exporter, tel.reader
    provider.add_span_processor(Ends())
    sims = catalog_simulators(simulated_provider)
    body = json.dumps({"messages": HELLO}).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 5000),
    }

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            happened.append(("answer sent", time.time_ns()))

    async def serve_one() -> Any:
        async with ProviderClient(providers_for(sims)) as client:
            router = Router(
                Catalog.builtin(),
                client,
                tracer_provider=provider,
                meter_provider=tel.meter_provider,
            )
            app = create_app(router, default_policy="support", tracer_provider=provider)
            await app(scope, receive, send)
            return app

    app = asyncio.run(serve_one())
    assert [what for what, _ in happened] == [
        "answer sent",
        f"end chat {SELECTED}",
        "end route support",
        "end POST /v1/chat/completions",
    ]
    spans = {s.name: s for s in exporter.get_finished_spans()}
    server, decision, attempt = spans["POST /v1/chat/completions"], spans["route support"], spans[f"chat {SELECTED}"]
    assert happened[0][1] <= server.end_time <= happened[1][1]  # the server span ends with its answer
    assert attempt.end_time <= happened[0][1]  # the attempt span ends when its call did
    assert attempt.attributes[A.UNHARDCODED_ATTEMPT_STATUS] == "ok"
    assert server.attributes["http.response.status_code"] == 200 and server.attributes["http.route"]
    assert decision.attributes[A.UNHARDCODED_ANSWERED_MODEL] == SELECTED and decision.events
    assert decision.parent.span_id == server.context.span_id
    names = {m.name for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert "unhardcoded.decisions" in names
    [(request_id, kept)] = app.state.proxy.recent._items.items()  # the receipt was turned into JSON afterwards too
    assert isinstance(kept, tuple) and app.state.proxy.recent.get(request_id).answered_by == SELECTED


def test_bad_request_has_a_server_span_and_no_decision(traced: tuple[Stack, InMemorySpanExporter]) -> None:
    stack, exporter = traced
    r = httpx.post(f"{stack.server.openai_base_url}/chat/completions", content=b"{nope")
    assert r.status_code == 400
    [span] = finished(exporter)
    assert span.kind == SpanKind.SERVER and span.attributes["http.response.status_code"] == 400


# --------------------------------------------------------------------------- keys


CANARY = "sk-canary-7f3a9b1c0d2e4f6a8b9c"


def _everything_said(spans: list[Any], responses: list[httpx.Response], logs: str, receipts: list[dict]) -> str:
    parts = [logs, json.dumps(receipts)]
    for r in responses:
        parts.append(r.text)
        parts.extend(f"{k}: {v}" for k, v in r.headers.items())
    for span in spans:
        parts.append(span.to_json())
    return "\n".join(parts)


def test_canary_key_never_leaves_the_provider_call(
    simulated_provider: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tel: TelemetryCapture
) -> None:
    monkeypatch.setenv("CANARY_KEY", CANARY)
    caplog.set_level(logging.DEBUG)
    provider, exporter = tel.tracer_provider, tel.exporter
    sims = catalog_simulators(simulated_provider)
    keys = dict.fromkeys(sims, "CANARY_KEY")
    client = ProviderClient(providers_for(sims, timeout_s=2.0, api_key_env=keys))
    app = create_app(traced_router(client, provider), default_policy="support", tracer_provider=provider)
    stack_sims = sims
    responses: list[httpx.Response] = []
    with serving(app, closing=[client], log_level="debug") as server:
        stack = Stack(stack_sims, server)
        stack.behave(SELECTED, error(401, echo_authorization=True))
        stack.behave(FIRST_FALLBACK, ok(echo_authorization=True))
        url = f"{server.openai_base_url}/chat/completions"
        responses.append(httpx.post(url, json={"messages": HELLO}))
        with httpx.stream("POST", url, json={"messages": HELLO, "stream": True}) as r:
            r.read()
            responses.append(r)
        stack.behave(FIRST_FALLBACK, error(500, echo_authorization=True))
        stack.behave(SECOND_FALLBACK, error(403, echo_authorization=True))
        responses.append(httpx.post(url, json={"messages": HELLO}))
        receipts = [stack.receipt(r.headers["x-unhardcoded-request-id"]) for r in responses]
    client.close()

    assert [r.status_code for r in responses] == [200, 200, 502]
    assert stack.sim_for(SELECTED).requests[0].headers["authorization"] == f"Bearer {CANARY}"  # it was used
    said = _everything_said(finished(exporter), responses, caplog.text, receipts)
    assert "REDACTED" in said  # the echoes were there, and scrubbed
    assert CANARY not in said


def test_forwarded_client_key_goes_only_to_the_named_provider(
    simulated_provider: Any, caplog: pytest.LogCaptureFixture, tel: TelemetryCapture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider, exporter = tel.tracer_provider, tel.exporter
    sims = catalog_simulators(simulated_provider)
    client = ProviderClient(providers_for(sims, timeout_s=2.0))
    router = traced_router(client, provider)
    app = create_app(router, default_policy="support", forward_client_key=["xai"], tracer_provider=provider)
    responses = []
    # The app put its own key-forwarding client in the router, and closes it on the server's loop at shutdown.
    forwarding = router.client
    assert forwarding is not client
    with serving(app) as server:
        stack = Stack(sims, server)
        stack.behave(SELECTED, error(500, echo_authorization=True))
        oa = openai.OpenAI(base_url=server.openai_base_url, api_key=CANARY, max_retries=0)
        raw = oa.chat.completions.with_raw_response.create(model="auto", messages=HELLO)
        responses.append(raw.http_response)
        stack.behave(SELECTED, ok(echo_authorization=True))
        raw2 = oa.chat.completions.with_raw_response.create(model="auto", messages=HELLO)
        responses.append(raw2.http_response)
        with oa.chat.completions.with_streaming_response.create(model="auto", messages=HELLO, stream=True) as s:
            s.read()
            responses.append(s.http_response)
        receipts = [stack.receipt(r.headers["x-unhardcoded-request-id"]) for r in responses]
        assert forwarding._pool is not None  # the lean client's connections, open on the server's loop
    assert forwarding._pool is None, "the app did not close the provider client it made"

    google = stack.sim_for(SELECTED).requests
    assert [r.headers.get("authorization") for r in google] == [f"Bearer {CANARY}"] * 3
    anthropic = stack.sim_for(FIRST_FALLBACK).requests
    assert len(anthropic) == 1 and "authorization" not in anthropic[0].headers  # never another provider's key
    said = _everything_said(finished(exporter), responses, caplog.text, receipts)
    assert CANARY not in said and "REDACTED" in said


def test_forwarding_to_a_provider_with_an_env_key_is_refused(simulated_provider: Any) -> None:
    from unhardcoded.errors import ConfigError

    sims = catalog_simulators(simulated_provider)
    client = ProviderClient(providers_for(sims, api_key_env={"google": "GOOGLE_KEY"}))
    with pytest.raises(ConfigError, match="must not also take one from the environment"):
        create_app(Router(Catalog.builtin(), client), forward_client_key=["google"])
    with pytest.raises(ConfigError, match="no provider named 'nowhere'"):
        create_app(Router(Catalog.builtin(), client), forward_client_key=["nowhere"])


# --------------------------------------------------------------------------- the real command


def _serve(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", cli.__name__, "serve", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_ready(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError("serve did not come up")


def test_serve_command(simulated_provider: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sims = catalog_simulators(simulated_provider)
    sims["xai"].set_behavior(SELECTED, error(503))
    providers = tmp_path / "providers.yaml"
    providers.write_text(
        json.dumps(
            {
                "providers": [
                    {"name": n, "base_url": s.base_url, "api_key_env": "SIM_KEY", "timeout_s": 2}
                    for n, s in sims.items()
                ]
            }
        )
    )
    port = free_port()
    env = {
        **os.environ,
        "UNHARDCODED_PROVIDERS": str(providers),
        "SIM_KEY": CANARY,
        "UNHARDCODED_STORE": str(tmp_path / "receipts.db"),
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
    }
    proc = _serve(["--port", str(port), "--default-policy", "support"], env)
    try:
        _wait_ready(port, proc)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=HELLO)
        assert raw.parse().model == FIRST_FALLBACK
        assert raw.headers["x-unhardcoded-fallback"] == f"{SELECTED}>{FIRST_FALLBACK}"
        chunks = list(client.chat.completions.create(model="auto", messages=HELLO, stream=True))
        assert chunks[0].model == FIRST_FALLBACK
        receipt = httpx.get(f"http://127.0.0.1:{port}/x/receipts/{raw.headers['x-unhardcoded-request-id']}").json()
        assert receipt["answered_by"] == FIRST_FALLBACK
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    # uvicorn's access log line, written by the proxy once each request is over; it names no key.
    assert re.search(r'^INFO: +127\.0\.0\.1:\d+ - "POST /v1/chat/completions HTTP/1\.1" 200 OK$', out, re.MULTILINE), (
        out
    )
    assert re.search(r'^INFO: +127\.0\.0\.1:\d+ - "GET /x/receipts/req_\w+ HTTP/1\.1" 200 OK$', out, re.MULTILINE), out
    assert out.count('"POST /v1/chat/completions HTTP/1.1"') == 2  # once each, not also uvicorn's own line
    assert CANARY not in out + err


def test_serve_without_access_log(simulated_provider: Any) -> None:
    port = free_port()
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}
    proc = _serve(["--port", str(port), "--no-access-log"], env)
    try:
        _wait_ready(port, proc)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert "GET /healthz" not in out + err
    assert "Uvicorn running" in err  # the server's own log is still there


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--default-policy", "nope"], "--default-policy nope: no policy named 'nope'"),
        (["--policy-dir", "/no/such/dir"], "/no/such/dir: policy directory does not exist"),
        (["--forward-client-key", "nowhere"], "no provider named 'nowhere'"),
        (["--max-body-bytes", "0"], "--max-body-bytes"),
    ],
)
def test_serve_refuses_bad_settings_with_one_line(args: list[str], needle: str) -> None:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}
    proc = subprocess.run(
        [sys.executable, "-m", cli.__name__, "serve", "--port", str(free_port()), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert needle in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_serve_starts_on_a_users_own_catalog(simulated_provider: Any, tmp_path: Path) -> None:
    """The shipped policies name models the user's catalog lacks: they are left out, saying why; the proxy starts,
    and routes inline policies over the user's models."""
    sim = simulated_provider("acme")
    catalog = tmp_path / "my-catalog.yaml"
    catalog.write_text(
        "schema: unhardcoded-catalog/v1\n"
        "models:\n"
        "  - {id: acme-small, provider: acme, price_input_per_mtok: 0.1, price_output_per_mtok: 0.2,\n"
        "     bench_intelligence: 0.5, supports_tools: true, context_window: 32000, regions: [eu]}\n"
    )
    providers = tmp_path / "providers.yaml"
    providers.write_text(json.dumps({"providers": [{"name": "acme", "base_url": sim.base_url, "api_key_env": "K"}]}))
    port = free_port()
    env = {
        **os.environ,
        "UNHARDCODED_PROVIDERS": str(providers),
        "K": CANARY,
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
    }
    proc = _serve(["--port", str(port), "--catalog", str(catalog)], env)
    try:
        _wait_ready(port, proc)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        inline = {"schema": "sigma-pol/v1", "name": "mine", "rank": {"by": "cost"}}
        answer = client.chat.completions.create(model="auto", messages=HELLO, extra_body={"policy": inline})
        assert answer.model == "acme-small"
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model="auto", messages=HELLO, extra_body={"policy": "support"})
        message = missing.value.body["message"]  # type: ignore[index]
        assert "policy 'support' is left out" in message and "unknown model" in message, message
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert "policy 'support' left out" in err and "policy 'triage' left out" in err, err
    assert CANARY not in out + err


def test_a_users_own_policy_directory_stays_strict(tmp_path: Path) -> None:
    """Only the shipped policies are forgiving: a policy the user wrote that does not fit stops the start."""
    (tmp_path / "p.yaml").write_text("schema: sigma-pol/v1\nname: p\nfallback: {models: [no-such-model]}\n")
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}
    proc = subprocess.run(
        [sys.executable, "-m", cli.__name__, "serve", "--port", str(free_port()), "--policy-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "no-such-model" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_serve_with_the_sdk_disabled_says_receipts_are_not_stored(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "OTEL_SDK_DISABLED": "true", "UNHARDCODED_STORE": str(tmp_path / "r.db")}
    proc = _serve(["--port", str(port)], env)
    try:
        _wait_ready(port, proc)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "OTEL_SDK_DISABLED is set: no span is recorded, so no receipt is written to the store" in err, err
