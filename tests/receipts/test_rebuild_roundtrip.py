"""The round trip: for generated decisions, the receipt rebuilt from the emitted spans equals Receipt.from_decision.

Spans are laid out by the hand emitter in ``fixtures.span_layout`` (the
contract, docs/span-layout.md, written out), exported through the real SDK and
the real OTLP encoders, and read back in every wire shape.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures import span_layout as L
from fixtures.decisions import decisions, workflows
from unhardcoded.receipts import Receipt, WorkflowReceipt, rebuild_receipts

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _json(receipt: Receipt) -> str:
    return json.dumps(receipt.to_json_dict(), sort_keys=True)


@SETTINGS
@given(decisions(), st.sampled_from(sorted(L.WIRE_SHAPES)))
def test_a_receipt_rebuilt_from_spans_equals_the_decision(decision, shape):
    tp, exporter = L.provider()
    L.emit_decision(tp.get_tracer("unhardcoded"), decision)
    rebuilt = rebuild_receipts(L.WIRE_SHAPES[shape](exporter.get_finished_spans()))
    expected = Receipt.from_decision(decision)
    assert rebuilt.receipts == [expected]
    assert _json(rebuilt.receipts[0]) == _json(expected)  # same JSON too: 412 and 412.0 are not the same text
    assert rebuilt.decisions[0].policy_body == decision.policy.canonical
    assert rebuilt.decisions[0].features == decision.features


@SETTINGS
@given(decisions(called=True))
def test_fallbacks_and_failures_round_trip_through_protobuf(decision):
    tp, exporter = L.provider()
    L.emit_decision(tp.get_tracer("unhardcoded"), decision)
    rebuilt = rebuild_receipts(L.otlp_bytes(exporter.get_finished_spans()))
    receipt = rebuilt.receipts[0]
    assert receipt == Receipt.from_decision(decision)
    assert receipt.complete
    if decision.outcome in ("answered", "failed"):
        assert len(receipt.attempts) == len(decision.hops) + 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workflows(), st.sampled_from(["sdk", "otlp-proto-bytes", "otlp-json", "jaeger", "tempo-v2"]), st.integers(0, 99))
def test_workflow_receipts_round_trip_in_any_span_order(run, shape, seed):
    workflow_id, name, ds = run
    tp, exporter = L.provider()
    L.emit_workflow(tp.get_tracer("unhardcoded"), workflow_id, name, ds)
    spans = L.shuffled(exporter.get_finished_spans(), seed)
    rebuilt = rebuild_receipts(L.WIRE_SHAPES[shape](spans))
    receipts = [Receipt.from_decision(d) for d in ds]
    assert rebuilt.workflows == [WorkflowReceipt.from_receipts(workflow_id, name, receipts, trace_id=ds[0].trace_id)]
    assert [n.workflow.step for n in rebuilt.workflows[0].nodes] == list(range(len(ds)))
    assert rebuilt.workflows[0].complete


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workflows(), st.sampled_from(["otlp-proto-bytes", "jaeger", "tempo-v2"]))
def test_a_workflow_rebuilt_without_its_root_span_is_open(run, shape):
    workflow_id, name, ds = run
    tp, exporter = L.provider()
    L.emit_workflow(tp.get_tracer("unhardcoded"), workflow_id, name, ds)
    rootless = [
        s for s in exporter.get_finished_spans() if s.parent is not None
    ]  # the run is still going, or its root was lost
    (w,) = rebuild_receipts(L.WIRE_SHAPES[shape](rootless)).workflows
    receipts = [Receipt.from_decision(d) for d in ds]
    assert w == WorkflowReceipt.from_receipts(workflow_id, name, receipts, finished=False)
    assert w.complete is False and w.still_open and w.nodes == sorted(receipts, key=lambda r: r.workflow.step)
