"""The round trip through the real emitter: Router with a TracerProvider, providers simulated on loopback.

For generated policies, requests and provider behaviours (answers, errors,
rate limits, timeouts: so fallbacks and failures), the receipt rebuilt from the
spans the Router emitted equals ``Receipt.from_decision(decision)``, in every
wire shape, and through the in-process ReceiptSpanProcessor. Workflows too.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures import span_layout as L
from fixtures.decisions import CATALOG, clients, features, policies
from unhardcoded.errors import NoCandidateError
from unhardcoded.receipts import Receipt, ReceiptSpanProcessor, WorkflowReceipt, open_store, rebuild_receipts
from unhardcoded.router import Router
from unhardcoded.router.providers import ProviderClient, ProviderConfig, ProvidersConfig
from unhardcoded.telemetry import workflow
from unhardcoded.testing.simulator import SimulatedProvider, error, ok, rate_limit, timeout

PROVIDERS = sorted({m.provider for m in CATALOG.models})
SLOW = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def sim():
    """One simulator on loopback answering for every provider of the built-in catalog."""
    with SimulatedProvider("sim") as s:
        yield s


@pytest.fixture(scope="module")
def client(sim):
    config = ProvidersConfig(
        providers=[ProviderConfig(name=p, base_url=sim.base_url, timeout_s=0.4) for p in PROVIDERS]
    )
    c = ProviderClient(config)
    yield c
    c.close()


def _rebuilt_everywhere(spans: Any) -> list[Receipt]:
    """The receipt rebuilt from each wire shape; they must all agree."""
    out = []
    for shape, convert in L.WIRE_SHAPES.items():
        rebuilt = rebuild_receipts(convert(spans))
        assert rebuilt.malformed == 0 and rebuilt.orphans == 0, shape
        assert len(rebuilt.receipts) == 1, shape
        out.append(rebuilt.receipts[0])
    return out


def _same(a: Receipt, b: Receipt) -> bool:
    return json.dumps(a.to_json_dict(), sort_keys=True) == json.dumps(b.to_json_dict(), sort_keys=True) and a == b


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), features, st.binary(min_size=6, max_size=6), clients)
def test_dry_run_decisions_round_trip(policy, request_features, rid, client_name):
    tp, exporter = L.provider()
    router = Router(CATALOG, tracer_provider=tp)
    decision = router.decide(policy, request_features, request_id="req_" + rid.hex(), client_name=client_name)
    expected = Receipt.from_decision(decision)
    for receipt in _rebuilt_everywhere(exporter.get_finished_spans()):
        assert _same(receipt, expected)
        assert receipt.complete


BEHAVIOURS = st.sampled_from(["ok", "ok", "500", "503", "429", "timeout"])


def _behaviour(kind: str) -> Any:
    return {
        "ok": ok(),
        "500": error(500),
        "503": error(503),
        "429": rate_limit(retry_after_s=None),
        "timeout": timeout(2.0),
    }[kind]


def _body(request_features: Any, tools: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "Where is my refund? " * 8}], "max_tokens": 200}
    if tools:
        body["tools"] = [{"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}]
    return body


@SLOW
@given(policies(), st.lists(BEHAVIOURS, min_size=4, max_size=4), st.booleans(), st.binary(min_size=6, max_size=6))
def test_routed_decisions_with_fallbacks_and_failures_round_trip(sim, client, policy, behaviours, tools, rid):
    tp, exporter = L.provider()
    router = Router(CATALOG, client, tracer_provider=tp)
    plan_probe = router.decide(policy, _body(None, tools))
    if plan_probe.selected is None:
        return
    plan = [plan_probe.selected.model, *plan_probe.fallback_chain]
    for model, kind in zip(plan, behaviours):
        sim.set_behavior(model, _behaviour(kind))
    exporter.clear()
    try:
        decision, _, _ = router.route(policy, _body(None, tools), request_id="req_" + rid.hex())
    finally:
        for model in plan:
            sim.set_behavior(model, ok())
    assert decision.outcome in ("answered", "failed")
    expected = Receipt.from_decision(decision)
    for receipt in _rebuilt_everywhere(exporter.get_finished_spans()):
        assert _same(receipt, expected)
        assert receipt.complete
        assert len(receipt.attempts) == len(decision.hops) + 1


def test_a_fallback_then_an_answer_and_a_total_failure(sim, client):
    from fixtures.generate import SUPPORT
    from unhardcoded.policy import validate_policy

    policy = validate_policy(SUPPORT, CATALOG)
    tp, exporter = L.provider()
    router = Router(CATALOG, client, tracer_provider=tp)
    body = _body(None, True)
    selected = router.decide(policy, body).selected.model
    exporter.clear()
    sim.set_behavior(selected, error(503))
    try:
        hopped, _, _ = router.route(policy, body, request_id="req_hopped")
        sim.set_behavior("mistral-large-2512", rate_limit(retry_after_s=None))
        sim.set_behavior("gpt-4.1", error(500))
        failed, _, _ = router.route(policy, body, request_id="req_failed")
    finally:
        for model in (selected, "mistral-large-2512", "gpt-4.1"):
            sim.set_behavior(model, ok())
    assert hopped.outcome == "answered" and len(hopped.hops) == 1
    assert failed.outcome == "failed" and [h.reason for h in failed.hops] == ["error", "rate_limit"]
    rebuilt = rebuild_receipts(L.otlp_bytes(exporter.get_finished_spans()))
    assert rebuilt.receipts == sorted(
        [Receipt.from_decision(hopped), Receipt.from_decision(failed)], key=lambda r: (r.timestamp, r.request_id)
    )
    assert rebuilt.receipt("req_failed").fallback.triggered
    assert rebuilt.policies() == {policy.fingerprint: policy.canonical}


def test_no_candidate_round_trips(client):
    from unhardcoded.policy import validate_policy

    policy = validate_policy(
        {
            "schema": "sigma-pol/v1",
            "name": "impossible",
            "rules": [{"id": "region", "field": "regions", "op": "contains", "value": "mars"}],
        },
        CATALOG,
    )
    tp, exporter = L.provider()
    router = Router(CATALOG, client, tracer_provider=tp)
    with pytest.raises(NoCandidateError):
        router.route(policy, _body(None, False), request_id="req_none")
    rebuilt = rebuild_receipts(L.otlp_json(exporter.get_finished_spans()))
    receipt = rebuilt.receipt("req_none")
    assert receipt is not None and receipt.outcome == "no_candidate" and receipt.selected is None
    assert len(receipt.rejected) == len(CATALOG) and receipt.complete


def test_a_workflow_round_trips_and_the_processor_agrees(sim, client, tmp_path):
    from fixtures.generate import EU_ONLY, SUPPORT
    from unhardcoded.policy import validate_policy

    support, eu = validate_policy(SUPPORT, CATALOG), validate_policy(EU_ONLY, CATALOG)
    store = open_store(str(tmp_path / "r.db"))
    processor = ReceiptSpanProcessor(store, catalogs=[CATALOG])
    tp, exporter = L.provider()
    tp.add_span_processor(processor)
    router = Router(CATALOG, client, tracer_provider=tp)
    body = _body(None, True)
    first = router.decide(support, body).selected.model
    sim.set_behavior(first, error(503))
    try:
        with workflow("refund-flow", tracer_provider=tp) as wf:
            with wf.node("classify"):
                a, _, _ = router.route(support, body, request_id="req_wf_a")
            with wf.node("answer"):
                b, _, _ = router.route(eu, _body(None, False), request_id="req_wf_b")
    finally:
        sim.set_behavior(first, ok())
    assert a.workflow is not None and a.workflow.id == wf.id and len(a.hops) == 1
    expected = WorkflowReceipt.from_receipts(
        wf.id, "refund-flow", [Receipt.from_decision(a), Receipt.from_decision(b)], trace_id=wf.trace_id
    )
    spans = exporter.get_finished_spans()
    for shape in ("sdk", "otlp-proto-bytes", "otlp-json", "jaeger", "tempo", "tempo-v2", "jaeger-v3"):
        rebuilt = rebuild_receipts(L.WIRE_SHAPES[shape](L.shuffled(spans)))
        assert rebuilt.workflows == [expected], shape
    processor.force_flush()
    assert store.get("req_wf_a").receipt == Receipt.from_decision(a)
    assert store.workflow(wf.id).nodes == expected.nodes
    assert store.policy(support.fingerprint) == support.canonical
    tp.shutdown()
    store.close()
