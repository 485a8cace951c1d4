"""Decision spans from the real Router into a real SDK: every attribute, event and span, per docs/span-layout.md.

Fresh TracerProvider + InMemorySpanExporter per test (never the global
provider); providers are simulated on loopback over real HTTP. Each scenario
also checks the contract end to end: the receipt rebuilt from the spans equals
``Receipt.from_decision``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor
from opentelemetry.trace import SpanKind, StatusCode

from telemetry_fixtures import (
    BODY,
    TOOLS_BODY,
    Simulators,
    big_catalog,
    big_policy,
    catalog,
    parent_of,
    policy,
    span_id_of,
    trace_id_of,
)
from unhardcoded.errors import NoCandidateError
from unhardcoded.receipts import Receipt, rebuild_receipts
from unhardcoded.router.decision import Decision, Rejection
from unhardcoded.semconv import attributes as A
from unhardcoded.semconv import gen_ai as G
from unhardcoded.semconv import spans as S
from unhardcoded.telemetry import REJECTION_EVENT_LIMIT, RouterTelemetry, losses, reset_losses
from unhardcoded.testing import TelemetryCapture, capture
from unhardcoded.testing.simulator import error, ok, timeout


@pytest.fixture
def sims_for(request: pytest.FixtureRequest):
    started: list[Simulators] = []

    def start(behaviors: dict[str, dict[str, Any]] | None = None, timeout_s: float = 5.0) -> Simulators:
        s = Simulators(behaviors, timeout_s)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


def rebuilt_equals(tel: TelemetryCapture, decision: Decision) -> Receipt:
    rebuilt = rebuild_receipts(tel.spans())
    assert len(rebuilt.receipts) == 1
    receipt = rebuilt.receipts[0]
    assert receipt == Receipt.from_decision(decision)
    assert receipt.complete
    assert rebuilt.decisions[0].policy_body == decision.policy.canonical
    return receipt


def event_attributes(r: Rejection) -> dict[str, str]:
    return {
        A.UNHARDCODED_REJECTION_MODEL: r.model,
        A.UNHARDCODED_REJECTION_RULE: r.rule,
        A.UNHARDCODED_REJECTION_FIELD: r.field,
        A.UNHARDCODED_REJECTION_OP: r.op,
        A.UNHARDCODED_REJECTION_THRESHOLD: json.dumps(r.threshold),
        A.UNHARDCODED_REJECTION_OBSERVED: json.dumps(r.observed),
        A.UNHARDCODED_REJECTION_MESSAGE: r.message,
    }


# --------------------------------------------------------------------------- a plain decision


def test_a_plain_dry_run_is_one_internal_span_with_every_attribute(tel: TelemetryCapture):
    cat = catalog()
    pol = policy(cat, rules=[], fallback=["mid-b"])  # no rules: nothing rejected
    decision = tel.router(cat).decide(pol, BODY, request_id="req_plain")
    [span] = tel.spans()
    assert span.name == "route support" == S.DECISION_SPAN_NAME.format(policy="support")
    assert span.kind is SpanKind.INTERNAL
    assert span.parent is None
    assert span.status.status_code is StatusCode.UNSET
    assert list(span.events) == []
    assert dict(span.attributes) == {
        A.UNHARDCODED_REQUEST_ID: "req_plain",
        A.UNHARDCODED_POLICY_NAME: "support",
        A.UNHARDCODED_POLICY_FINGERPRINT: pol.fingerprint,
        A.UNHARDCODED_POLICY_SCHEMA: "sigma-pol/v1",
        A.UNHARDCODED_POLICY_BODY: pol.canonical,
        A.UNHARDCODED_CATALOG_VERSION: cat.version,
        A.UNHARDCODED_REQUEST_FEATURES: decision.features.canonical(),
        A.UNHARDCODED_DECISION_OUTCOME: "dry_run",
        A.UNHARDCODED_CANDIDATES: ("dim", "cheap-a", "us-b", "mid-b", "top-c", "base", "pricey"),
        A.UNHARDCODED_CANDIDATES_COUNT: 7,
        A.UNHARDCODED_REJECTED: (),
        A.UNHARDCODED_REJECTED_COUNT: 0,
        A.UNHARDCODED_SELECTED_MODEL: "dim",
        A.UNHARDCODED_SELECTED_SCORE: 0.3,
        A.UNHARDCODED_SELECTED_REASON: decision.selected.reason,
        A.UNHARDCODED_FALLBACK_CHAIN: ("mid-b",),
        A.UNHARDCODED_FALLBACK_TRIGGERED: False,
        A.UNHARDCODED_FALLBACK_HOPS: 0,
        A.UNHARDCODED_COST_USD: decision.cost.usd,
        A.UNHARDCODED_COST_BASELINE_MODEL: "base",
        A.UNHARDCODED_COST_BASELINE_USD: decision.cost.baseline_usd,
        A.UNHARDCODED_COST_SAVINGS_RATIO: decision.cost.savings_ratio,
        A.UNHARDCODED_LATENCY_MS: 0.0,
    }
    assert set(span.attributes) >= S.DECISION_SPAN_REQUIRED_ATTRIBUTES
    assert decision.trace_id == trace_id_of(span) and decision.span_id == span_id_of(span)
    assert span.start_time // 1_000_000 % 1000 == int(decision.timestamp[-4:-1])
    rebuilt_equals(tel, decision)


def test_the_decision_timestamp_is_the_span_start_in_milliseconds(tel: TelemetryCapture):
    from unhardcoded.receipts.rebuild import iso_ms

    cat = catalog()
    for _ in range(20):
        decision = tel.router(cat).decide(policy(cat), BODY)
        span = tel.decisions()[-1]
        assert decision.timestamp == iso_ms(span.start_time)
        assert decision.timestamp.endswith("Z") and len(decision.timestamp) == len("2026-01-01T00:00:00.000Z")


# --------------------------------------------------------------------------- rejections


def test_each_rejected_model_is_one_event_in_rejected_order(tel: TelemetryCapture):
    cat = catalog()
    pol = policy(cat)
    decision = tel.router(cat).decide(pol, TOOLS_BODY)  # tools in the request: top-c is rejected by request:tools
    [span] = tel.spans()
    assert [r.model for r in decision.rejected] == ["top-c", "us-b", "dim", "pricey", "base"]
    assert span.attributes[A.UNHARDCODED_REJECTED] == ("top-c", "us-b", "dim", "pricey", "base")
    assert span.attributes[A.UNHARDCODED_REJECTED_COUNT] == 5
    assert [e.name for e in span.events] == [S.REJECTION_EVENT] * 5
    assert [dict(e.attributes) for e in span.events] == [event_attributes(r) for r in decision.rejected]
    by_model = {e.attributes[A.UNHARDCODED_REJECTION_MODEL]: dict(e.attributes) for e in span.events}
    assert by_model["dim"][A.UNHARDCODED_REJECTION_RULE] == "quality-floor"
    assert by_model["dim"][A.UNHARDCODED_REJECTION_THRESHOLD] == "0.5"
    assert by_model["dim"][A.UNHARDCODED_REJECTION_OBSERVED] == "0.3"
    assert by_model["us-b"][A.UNHARDCODED_REJECTION_THRESHOLD] == '"eu"'
    assert by_model["us-b"][A.UNHARDCODED_REJECTION_OBSERVED] == '["us"]'
    assert by_model["top-c"][A.UNHARDCODED_REJECTION_RULE] == "request:tools"
    assert by_model["top-c"][A.UNHARDCODED_REJECTION_OBSERVED] == "false"
    for event in span.events:
        assert set(event.attributes) >= S.REJECTION_EVENT_REQUIRED_ATTRIBUTES
    assert A.UNHARDCODED_REJECTIONS_JSON not in span.attributes
    assert A.UNHARDCODED_TELEMETRY_DROPPED not in span.attributes
    rebuilt_equals(tel, decision)


def test_no_candidate_is_an_error_span_and_route_raises(tel: TelemetryCapture, sims_for):
    cat = catalog()
    pol = policy(cat, rules=[{"id": "impossible", "field": "bench_intelligence", "op": "gt", "value": 0.99}])
    decision = tel.router(cat).decide(pol, BODY)
    assert decision.outcome == "no_candidate"
    sims = sims_for()
    with pytest.raises(NoCandidateError):
        tel.router(cat, sims.client).route(pol, BODY)
    dry, routed = tel.decisions()
    for span in (dry, routed):
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes[G.ERROR_TYPE] == "no_candidate"
        assert span.attributes[A.UNHARDCODED_DECISION_OUTCOME] == "no_candidate"
        assert span.attributes[A.UNHARDCODED_CANDIDATES] == ()
        assert A.UNHARDCODED_SELECTED_MODEL not in span.attributes
        assert len(span.events) == 7
    assert not tel.attempts()
    assert all(not s.requests for s in sims.sims.values())


# --------------------------------------------------------------------------- calls and fallbacks


def test_an_answered_route_has_one_client_attempt_span_under_the_decision(tel: TelemetryCapture, sims_for):
    cat = catalog()
    sims = sims_for({"sim-a": {"cheap-a": ok("z" * 40, response_model="cheap-a-2026-01")}})
    decision, result, err = tel.router(cat, sims.client).route(policy(cat, fallback=["mid-b"]), BODY)
    assert err is None and decision.answered_by == "cheap-a"
    [decision_span] = tel.decisions()
    [attempt] = tel.attempts()
    assert attempt.name == "chat cheap-a" and attempt.kind is SpanKind.CLIENT
    assert parent_of(attempt) == span_id_of(decision_span) and trace_id_of(attempt) == trace_id_of(decision_span)
    assert dict(attempt.attributes) == {
        G.GEN_AI_OPERATION_NAME: "chat",
        G.GEN_AI_PROVIDER_NAME: "sim-a",
        G.GEN_AI_REQUEST_MODEL: "cheap-a",
        G.GEN_AI_RESPONSE_MODEL: "cheap-a-2026-01",
        G.GEN_AI_USAGE_INPUT_TOKENS: 100,
        G.GEN_AI_USAGE_OUTPUT_TOKENS: 10,
        A.UNHARDCODED_REQUEST_ID: decision.request_id,
        A.UNHARDCODED_ATTEMPT_INDEX: 0,
        A.UNHARDCODED_ATTEMPT_ROLE: "selected",
        A.UNHARDCODED_ATTEMPT_STATUS: "ok",
        A.UNHARDCODED_ATTEMPT_DURATION_MS: decision.attempts[0].duration_ms,
        # The call as billed: the reported usage at the model's catalog prices.
        G.GEN_AI_USAGE_COST: decision.cost.usd,
        A.UNHARDCODED_ATTEMPT_START_MS: decision.attempts[0].start_ms,
    }
    assert set(attempt.attributes) >= S.ATTEMPT_SPAN_REQUIRED_ATTRIBUTES
    assert attempt.status.status_code is StatusCode.UNSET
    a = decision_span.attributes
    assert a[A.UNHARDCODED_DECISION_OUTCOME] == "answered" and a[A.UNHARDCODED_ANSWERED_MODEL] == "cheap-a"
    assert a[A.UNHARDCODED_LATENCY_MS] == decision.latency_ms > 0
    assert a[A.UNHARDCODED_COST_USD] == decision.cost.usd
    # The provider got the attempt span's traceparent: its own span would be a child of the attempt.
    [request] = sims["sim-a"].requests
    version, trace_id, parent_id, flags = request.headers["traceparent"].split("-")
    assert (trace_id, parent_id) == (trace_id_of(attempt), span_id_of(attempt)) and int(flags, 16) & 1  # sampled
    rebuilt_equals(tel, decision)


def test_a_two_hop_fallback_500_then_timeout_then_ok(tel: TelemetryCapture, sims_for):
    cat = catalog()
    sims = sims_for(
        {
            "sim-a": {"cheap-a": error(500)},
            "sim-b": {"mid-b": timeout(5)},
            "sim-c": {"top-c": ok("z" * 40)},
        },
        timeout_s=0.5,
    )
    decision, result, err = tel.router(cat, sims.client).route(policy(cat, fallback=["mid-b", "top-c"]), BODY)
    assert err is None and decision.answered_by == "top-c"
    assert [(h.from_, h.to, h.reason) for h in decision.hops] == [
        ("cheap-a", "mid-b", "error"),
        ("mid-b", "top-c", "timeout"),
    ]
    [decision_span] = tel.decisions()
    attempts = tel.attempts()
    assert [s.name for s in attempts] == ["chat cheap-a", "chat mid-b", "chat top-c"]
    assert all(parent_of(s) == span_id_of(decision_span) for s in attempts)
    assert all(s.kind is SpanKind.CLIENT for s in attempts)
    first, second, third = (s.attributes for s in attempts)
    assert first[A.UNHARDCODED_ATTEMPT_ROLE] == "selected" and A.UNHARDCODED_FALLBACK_REASON not in first
    assert first[G.ERROR_TYPE] == "500" and first[A.UNHARDCODED_ATTEMPT_STATUS] == "error"
    assert G.GEN_AI_RESPONSE_MODEL not in first
    assert second[A.UNHARDCODED_ATTEMPT_ROLE] == "fallback" and second[A.UNHARDCODED_FALLBACK_REASON] == "error"
    assert second[G.ERROR_TYPE] == "timeout" and second[A.UNHARDCODED_ATTEMPT_INDEX] == 1
    assert third[A.UNHARDCODED_FALLBACK_REASON] == "timeout" and third[A.UNHARDCODED_ATTEMPT_STATUS] == "ok"
    assert G.ERROR_TYPE not in third and third[G.GEN_AI_RESPONSE_MODEL] == "top-c"
    assert [s.status.status_code for s in attempts] == [StatusCode.ERROR, StatusCode.ERROR, StatusCode.UNSET]
    a = decision_span.attributes
    assert a[A.UNHARDCODED_FALLBACK_TRIGGERED] is True and a[A.UNHARDCODED_FALLBACK_HOPS] == 2
    assert a[A.UNHARDCODED_FALLBACK_CHAIN] == ("mid-b", "top-c")
    assert a[A.UNHARDCODED_ANSWERED_MODEL] == "top-c" and a[A.UNHARDCODED_SELECTED_MODEL] == "cheap-a"
    assert decision_span.status.status_code is StatusCode.UNSET and G.ERROR_TYPE not in a
    # Attempt spans nest in time inside the decision span.
    assert all(decision_span.start_time <= s.start_time <= s.end_time <= decision_span.end_time for s in attempts)
    rebuilt_equals(tel, decision)


def test_all_attempts_failing_is_an_error_decision(tel: TelemetryCapture, sims_for):
    cat = catalog()
    sims = sims_for({"sim-a": {"cheap-a": error(503)}, "sim-b": {"mid-b": error(502)}, "sim-c": {"top-c": error(500)}})
    decision, result, err = tel.router(cat, sims.client).route(policy(cat, fallback=["mid-b", "top-c"]), BODY)
    assert result is None and err is not None and decision.outcome == "failed"
    [decision_span] = tel.decisions()
    attempts = tel.attempts()
    assert [s.attributes[G.ERROR_TYPE] for s in attempts] == ["503", "502", "500"]
    assert all(s.status.status_code is StatusCode.ERROR for s in attempts)
    a = decision_span.attributes
    assert decision_span.status.status_code is StatusCode.ERROR
    assert a[G.ERROR_TYPE] == "failed" and a[A.UNHARDCODED_DECISION_OUTCOME] == "failed"
    assert A.UNHARDCODED_ANSWERED_MODEL not in a
    assert a[A.UNHARDCODED_FALLBACK_HOPS] == 2
    rebuilt_equals(tel, decision)


def test_aroute_emits_the_same_spans(tel: TelemetryCapture, sims_for):
    cat = catalog()
    sims = sims_for({"sim-a": {"cheap-a": error(500)}, "sim-b": {"mid-b": ok()}})

    async def run():
        try:
            return await tel.router(cat, sims.client).aroute(policy(cat, fallback=["mid-b"]), BODY)
        finally:
            await sims.client.aclose()  # its connections live on this loop, which ends here

    decision, result, err = asyncio.run(run())
    assert decision.answered_by == "mid-b"
    [decision_span] = tel.decisions()
    attempts = tel.attempts()
    assert [s.name for s in attempts] == ["chat cheap-a", "chat mid-b"]
    assert all(parent_of(s) == span_id_of(decision_span) for s in attempts)
    assert sims["sim-b"].requests[0].headers["traceparent"].split("-")[2] == span_id_of(attempts[1])
    rebuilt_equals(tel, decision)


def test_an_attempt_span_is_current_during_the_provider_call(tel: TelemetryCapture, sims_for):
    """An instrumented HTTP client would start its span as a child of the attempt."""
    from opentelemetry import trace

    from unhardcoded.router.cascade import AttemptObserver

    seen: list[Any] = []

    class Peek(AttemptObserver):
        def headers(self, token: Any) -> dict[str, str]:
            seen.append(trace.get_current_span())
            return {}

    cat = catalog()
    sims = sims_for()
    decision, _, _ = tel.router(cat, sims.client, observer=Peek()).route(policy(cat), BODY)
    [decision_span] = tel.decisions()
    [attempt] = tel.attempts()
    assert seen and seen[0].get_span_context().span_id == attempt.context.span_id
    assert parent_of(attempt) == span_id_of(decision_span)
    assert trace.get_current_span() is trace.INVALID_SPAN  # restored after the route


def test_a_user_observer_still_sees_every_attempt(tel: TelemetryCapture, sims_for):
    from unhardcoded.router.cascade import AttemptObserver

    class Recorder(AttemptObserver):
        def __init__(self) -> None:
            self.calls: list[str] = []

        def start(self, decision: Any, planned: Any) -> Any:
            self.calls.append(f"start {planned.model}")
            return planned.model

        def headers(self, token: Any) -> dict[str, str]:
            return {"x-mine": token}

        def answered(self, token: Any, result: Any) -> None:
            self.calls.append(f"answered {token}")

        def end(self, token: Any, attempt: Any, error: BaseException | None) -> None:
            self.calls.append(f"end {token} {attempt.status}")

    cat = catalog()
    sims = sims_for({"sim-a": {"cheap-a": error(500)}})
    recorder = Recorder()
    tel.router(cat, sims.client, observer=recorder).route(policy(cat, fallback=["mid-b"]), BODY)
    assert recorder.calls == ["start cheap-a", "end cheap-a error", "start mid-b", "answered mid-b", "end mid-b ok"]
    assert sims["sim-b"].requests[0].headers["x-mine"] == "mid-b"
    assert "traceparent" in sims["sim-b"].requests[0].headers


# --------------------------------------------------------------------------- a 500-model catalog and the SDK limits


def test_a_500_model_catalog_is_not_cut_silently(tel: TelemetryCapture):
    cat = big_catalog(500)
    pol = big_policy(cat)
    decision = tel.router(cat).decide(pol, BODY)
    assert len(decision.rejected) > 400 and decision.candidates
    [span] = tel.spans()
    assert span.dropped_attributes == 0 and span.dropped_events == 0
    assert len(span.attributes) < 64  # far below the SDK's 128
    assert len(span.events) == REJECTION_EVENT_LIMIT == 64
    assert [e.attributes[A.UNHARDCODED_REJECTION_MODEL] for e in span.events] == [
        r.model for r in decision.rejected[:64]
    ]
    rest = decision.rejected[64:]
    assert span.attributes[A.UNHARDCODED_REJECTIONS_SUMMARIZED] == len(rest)
    summarized = json.loads(span.attributes[A.UNHARDCODED_REJECTIONS_JSON])
    assert summarized == [r.model_dump(mode="json") for r in rest]
    assert span.attributes[A.UNHARDCODED_REJECTED_COUNT] == len(decision.rejected)
    assert len(span.attributes[A.UNHARDCODED_REJECTED]) == len(decision.rejected)
    assert A.UNHARDCODED_TELEMETRY_DROPPED not in span.attributes
    rebuilt_equals(tel, decision)


def test_a_500_model_catalog_with_request_rules_too(tel: TelemetryCapture):
    cat = big_catalog(500)
    pol = big_policy(cat)
    body = {**BODY, "max_tokens": 50_000, "messages": [{"role": "user", "content": "x" * 40_000}]}
    decision = tel.router(cat).decide(pol, body)
    assert any(r.rule.startswith("request:") for r in decision.rejected)
    rebuilt_equals(tel, decision)


def test_an_event_limit_below_64_is_reported_and_the_receipt_is_incomplete():
    reset_losses()
    tel = capture(span_limits=SpanLimits(max_events=10))
    cat = catalog()
    decision = tel.router(cat).decide(policy(cat), TOOLS_BODY)  # 5 rejections
    decision2 = tel.router(big_catalog(100)).decide(big_policy(big_catalog(100)), BODY)
    first, second = tel.spans()
    assert len(first.events) == 5 and A.UNHARDCODED_TELEMETRY_DROPPED not in first.attributes
    assert second.dropped_events > 0
    assert second.attributes[A.UNHARDCODED_TELEMETRY_DROPPED] == second.dropped_events
    assert losses().dropped_events == second.dropped_events
    rebuilt = {r.request_id: r for r in rebuild_receipts(tel.spans()).receipts}
    assert rebuilt[decision.request_id].complete
    assert not rebuilt[decision2.request_id].complete
    tel.shutdown()


def test_an_attribute_length_limit_is_reported_and_the_receipt_is_incomplete():
    reset_losses()
    tel = capture(span_limits=SpanLimits(max_attribute_length=40))
    cat = catalog()
    decision = tel.router(cat).decide(policy(cat), BODY)
    [span] = tel.spans()
    assert len(span.attributes[A.UNHARDCODED_POLICY_BODY]) == 40
    dropped = span.attributes[A.UNHARDCODED_TELEMETRY_DROPPED]
    assert dropped >= 3  # body, features, reason (and long rejection messages)
    assert losses().truncated == dropped
    [receipt] = rebuild_receipts(tel.spans()).receipts
    assert receipt.request_id == decision.request_id and not receipt.complete
    tel.shutdown()


def test_an_attribute_count_limit_is_reported():
    tel = capture(span_limits=SpanLimits(max_span_attributes=20))
    cat = catalog()
    tel.router(cat).decide(policy(cat), BODY)
    [span] = tel.spans()
    assert span.dropped_attributes > 0
    [receipt] = rebuild_receipts(tel.spans()).receipts
    assert not receipt.complete
    tel.shutdown()


# --------------------------------------------------------------------------- telemetry never breaks a request


def test_a_value_json_cannot_hold_is_counted_as_dropped(tel: TelemetryCapture):
    reset_losses()
    cat = catalog()
    pol = policy(cat)
    telemetry = RouterTelemetry(tel.tracer_provider, tel.meter_provider)
    compiled = tel.router(cat).compile(pol)
    decision = compiled.decide(tel.router(cat).decide(pol, BODY).features)
    odd = Rejection(model="odd", rule="r", field="f", op="eq", threshold={1, 2}, observed=b"\xff", message="odd")
    decision.rejected = [*decision.rejected, odd]
    with telemetry.decision(compiled) as scope:
        scope.finish(decision)
    span = tel.decisions()[-1]
    assert span.attributes[A.UNHARDCODED_TELEMETRY_DROPPED] == 2
    assert losses().unencodable == 2
    event = span.events[-1].attributes
    assert event[A.UNHARDCODED_REJECTION_MODEL] == "odd"
    assert json.loads(event[A.UNHARDCODED_REJECTION_THRESHOLD]) == repr({1, 2})
    [receipt] = [r for r in rebuild_receipts([span]).receipts]
    assert not receipt.complete


class Exploding(SpanProcessor):
    def on_start(self, span: Any, parent_context: Any = None) -> None:
        raise RuntimeError("processor on_start")

    def on_end(self, span: Any) -> None:
        raise RuntimeError("processor on_end")


def test_a_span_processor_that_raises_does_not_break_routing(sims_for):
    reset_losses()
    tel = capture()
    tel.tracer_provider.add_span_processor(Exploding())
    cat = catalog()
    sims = sims_for({"sim-a": {"cheap-a": error(500)}})
    router = tel.router(cat, sims.client)
    decision = router.decide(policy(cat), BODY)
    assert decision.selected is not None
    decision, result, err = router.route(policy(cat, fallback=["mid-b"]), BODY)
    assert err is None and decision.answered_by == "mid-b"
    assert losses().errors > 0
    tel.shutdown()


def test_a_failing_meter_does_not_break_routing(tel: TelemetryCapture):
    reset_losses()
    cat = catalog()
    router = tel.router(cat)

    class Broken:
        def add(self, *a: Any, **k: Any) -> None:
            raise ValueError("meter down")

        record = add

    router.telemetry.metrics.decisions = Broken()  # type: ignore[assignment]
    decision = router.decide(policy(cat), BODY)
    assert decision.selected is not None
    assert losses().errors == 1
    assert len(tel.decisions()) == 1


def test_an_exception_inside_the_cascade_ends_every_span_as_an_error(tel: TelemetryCapture, sims_for):
    from unhardcoded.router.cascade import AttemptObserver

    class Interrupt(AttemptObserver):
        def headers(self, token: Any) -> dict[str, str]:
            raise KeyboardInterrupt

    cat = catalog()
    sims = sims_for()
    with pytest.raises(KeyboardInterrupt):
        tel.router(cat, sims.client, observer=Interrupt()).route(policy(cat), BODY)
    [decision_span] = tel.decisions()
    [attempt] = tel.attempts()
    assert decision_span.status.status_code is StatusCode.ERROR
    assert decision_span.attributes[G.ERROR_TYPE] == "KeyboardInterrupt"
    assert decision_span.attributes[A.UNHARDCODED_DECISION_OUTCOME] == "failed"
    assert attempt.end_time is not None and attempt.status.status_code is StatusCode.ERROR
    from opentelemetry import trace

    assert trace.get_current_span() is trace.INVALID_SPAN


def test_a_sampled_out_decision_records_nothing_and_keeps_no_ids():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    from unhardcoded.router import Router

    tp = TracerProvider(sampler=ALWAYS_OFF)
    cat = catalog()
    decision = Router(cat, tracer_provider=tp).decide(policy(cat), BODY)
    assert decision.trace_id is None and decision.span_id is None and decision.selected is not None


def test_with_a_tracer_and_no_meter_the_span_still_times_the_decision(sims_for, tel: TelemetryCapture):
    from unhardcoded.router import Router

    cat = catalog()
    sims = sims_for()
    router = Router(cat, client=sims.client, tracer_provider=tel.tracer_provider)  # the meter is the global no-op
    router.decide(policy(cat), BODY)
    decision, _, _ = router.route(policy(cat), BODY)
    dry, routed = tel.spans("route support")
    assert 0 <= dry.end_time - dry.start_time < 1e9
    assert decision.latency_ms * 1e6 <= routed.end_time - routed.start_time < 5e9
