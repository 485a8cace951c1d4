"""Workflows in one process: a run and its nodes as spans, every decision in one trace, carried in context."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry.trace import SpanKind, StatusCode

import unhardcoded
from telemetry_fixtures import (
    BODY,
    Simulators,
    catalog,
    parent_of,
    policy,
    span_id_of,
    trace_id_of,
)
from unhardcoded.receipts import Receipt, rebuild_receipts
from unhardcoded.router.decision import WorkflowRef
from unhardcoded.semconv import attributes as A
from unhardcoded.semconv import spans as S
from unhardcoded.telemetry import continue_from, current_workflow, extract_context, inject_headers, workflow
from unhardcoded.testing import TelemetryCapture, capture
from unhardcoded.testing.simulator import error

NODES = ["intake", "classify", "retrieve", "draft", "review"]


@pytest.fixture
def sims():
    s = Simulators({"sim-a": {"cheap-a": error(500)}})
    yield s
    s.close()


def test_a_five_node_workflow_is_one_trace_with_the_right_parents(tel: TelemetryCapture, sims: Simulators):
    cat = catalog()
    router = tel.router(cat, sims.client)
    pol = policy(cat, fallback=["mid-b"])
    decisions = []
    with unhardcoded.workflow("triage", tracer_provider=tel.tracer_provider) as wf:
        for i, name in enumerate(NODES):
            with wf.node(name):
                if i % 2:
                    decisions.append(router.route(pol, BODY)[0])  # cheap-a fails, mid-b answers
                else:
                    decisions.append(router.decide(pol, BODY))
    spans = tel.spans()
    assert len({trace_id_of(s) for s in spans}) == 1
    assert wf.trace_id == trace_id_of(spans[0])
    [root] = tel.spans("workflow triage")
    assert root.parent is None and root.kind is SpanKind.INTERNAL
    assert dict(root.attributes) == {A.UNHARDCODED_WORKFLOW_ID: wf.id, A.UNHARDCODED_WORKFLOW_NAME: "triage"}
    nodes = {s.attributes[A.UNHARDCODED_WORKFLOW_NODE]: s for s in spans if s.name.startswith("node ")}
    assert list(nodes) == NODES
    for step, name in enumerate(NODES):
        node = nodes[name]
        assert node.name == S.NODE_SPAN_NAME.format(name=name)
        assert parent_of(node) == span_id_of(root)
        assert dict(node.attributes) == {
            A.UNHARDCODED_WORKFLOW_ID: wf.id,
            A.UNHARDCODED_WORKFLOW_NAME: "triage",
            A.UNHARDCODED_WORKFLOW_NODE: name,
            A.UNHARDCODED_WORKFLOW_STEP: step,
        }
    decision_spans = tel.decisions()
    assert len(decision_spans) == 5
    for step, (name, decision) in enumerate(zip(NODES, decisions)):
        assert decision.workflow == WorkflowRef(id=wf.id, name="triage", node=name, step=step)
        [span] = [s for s in decision_spans if s.attributes[A.UNHARDCODED_REQUEST_ID] == decision.request_id]
        assert parent_of(span) == span_id_of(nodes[name])
        assert span.attributes[A.UNHARDCODED_WORKFLOW_ID] == wf.id
        assert span.attributes[A.UNHARDCODED_WORKFLOW_NODE] == name
        assert span.attributes[A.UNHARDCODED_WORKFLOW_STEP] == step
    for attempt in tel.attempts():
        assert parent_of(attempt) in {span_id_of(s) for s in decision_spans}
    rebuilt = rebuild_receipts(spans)
    [run] = rebuilt.workflows
    assert run.workflow_id == wf.id and run.name == "triage" and run.complete and run.trace_id == wf.trace_id
    assert run.nodes == [Receipt.from_decision(d) for d in decisions]
    assert run.totals.decisions == 5 and run.totals.fallbacks == 2


def test_outside_a_workflow_a_decision_has_none(tel: TelemetryCapture):
    cat = catalog()
    decision = tel.router(cat).decide(policy(cat), BODY)
    assert decision.workflow is None and current_workflow() is None
    assert A.UNHARDCODED_WORKFLOW_ID not in tel.decisions()[0].attributes


def test_an_explicit_workflow_argument_wins(tel: TelemetryCapture):
    cat = catalog()
    mine = WorkflowRef(id="wf_mine", name="mine", node="n", step=7)
    with workflow("triage", tracer_provider=tel.tracer_provider) as wf, wf.node("classify"):
        decision = tel.router(cat).decide(policy(cat), BODY, workflow=mine)
    assert decision.workflow == mine
    assert tel.decisions()[0].attributes[A.UNHARDCODED_WORKFLOW_STEP] == 7


def test_decorators_sync(tel: TelemetryCapture):
    cat = catalog()
    router = tel.router(cat)
    pol = policy(cat)

    @unhardcoded.workflow.node("classify")
    def classify() -> Any:
        return router.decide(pol, BODY)

    @unhardcoded.workflow.node("answer")
    def answer() -> Any:
        return router.decide(pol, BODY)

    @unhardcoded.workflow("triage", tracer_provider=tel.tracer_provider)
    def handle() -> list[Any]:
        return [classify(), answer()]

    first, second = handle(), handle()
    assert classify.__name__ == "classify" and handle.__name__ == "handle"
    assert [d.workflow.node for d in first] == ["classify", "answer"] and [d.workflow.step for d in first] == [0, 1]
    assert first[0].workflow.id == first[1].workflow.id != second[0].workflow.id  # a new run per call
    assert len({d.trace_id for d in first}) == 1 and first[0].trace_id != second[0].trace_id
    assert len(tel.spans("workflow triage")) == 2 and len(tel.spans("node classify")) == 2
    # Called outside any run, a node is only its function.
    assert classify().workflow is None


def test_decorators_async_with_concurrent_nodes(tel: TelemetryCapture):
    cat = catalog()
    router = tel.router(cat)
    pol = policy(cat)

    async def node_body(delay: float) -> Any:
        await asyncio.sleep(delay)
        return router.decide(pol, BODY)

    @workflow.node("fan-a")
    async def fan_a() -> Any:
        return await node_body(0.02)

    @workflow.node("fan-b")
    async def fan_b() -> Any:
        return await node_body(0.0)

    @workflow("fanout", tracer_provider=tel.tracer_provider)
    async def run() -> list[Any]:
        return list(await asyncio.gather(fan_a(), fan_b(), fan_a()))

    decisions = asyncio.run(run())
    assert [d.workflow.node for d in decisions] == ["fan-a", "fan-b", "fan-a"]
    assert sorted(d.workflow.step for d in decisions) == [0, 1, 2]
    nodes = {span_id_of(s): s for s in tel.spans() if s.name.startswith("node ")}
    for d in decisions:
        [span] = [s for s in tel.decisions() if s.attributes[A.UNHARDCODED_REQUEST_ID] == d.request_id]
        node = nodes[parent_of(span)]
        assert node.attributes[A.UNHARDCODED_WORKFLOW_NODE] == d.workflow.node
        assert node.attributes[A.UNHARDCODED_WORKFLOW_STEP] == d.workflow.step


def test_async_with_and_a_bound_node_decorator(tel: TelemetryCapture):
    cat = catalog()
    router = tel.router(cat)

    async def main() -> Any:
        async with workflow("triage", tracer_provider=tel.tracer_provider) as wf:

            @wf.node("classify")
            async def classify() -> Any:
                return router.decide(policy(cat), BODY)

            async with wf.node("intake"):
                pass
            return wf, await classify()

    wf, decision = asyncio.run(main())
    assert decision.workflow == WorkflowRef(id=wf.id, name="triage", node="classify", step=1)


def test_a_thread_started_with_the_context_stays_in_the_node(tel: TelemetryCapture):
    cat = catalog()
    router = tel.router(cat)
    out: list[Any] = []
    with workflow("triage", tracer_provider=tel.tracer_provider) as wf, wf.node("classify"):
        ctx = contextvars.copy_context()
        t = threading.Thread(target=lambda: out.append(ctx.run(router.decide, policy(cat), BODY)))
        t.start()
        t.join()
    assert out[0].workflow == WorkflowRef(id=wf.id, name="triage", node="classify", step=0)


def test_an_exception_marks_the_node_and_the_run_and_propagates(tel: TelemetryCapture):
    with pytest.raises(ValueError, match="boom"), workflow("triage", tracer_provider=tel.tracer_provider) as wf:
        with wf.node("classify"):
            raise ValueError("boom")
    node, root = tel.spans()
    for span in (node, root):
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"] == "ValueError"
    assert current_workflow() is None and trace.get_current_span() is trace.INVALID_SPAN


def test_a_run_is_entered_once():
    wf = workflow("triage", tracer_provider=trace.NoOpTracerProvider())
    with wf:
        pass
    with pytest.raises(RuntimeError, match="already started"), wf:
        pass
    node = wf.node("x")
    with node:
        pass
    with pytest.raises(RuntimeError, match="already entered"), node:
        pass
    with pytest.raises(ValueError):
        workflow("")


def test_without_an_sdk_decisions_still_know_their_workflow():
    noop = trace.NoOpTracerProvider()
    cat = catalog()
    router = unhardcoded.Router(cat, tracer_provider=noop)
    with workflow("triage", tracer_provider=noop) as wf, wf.node("classify"):
        decision = router.decide(policy(cat), BODY)
        headers = inject_headers()
    assert decision.workflow == WorkflowRef(id=wf.id, name="triage", node="classify", step=0)
    assert decision.trace_id is None and wf.trace_id is None
    assert "traceparent" not in headers and wf.id in headers["baggage"]


# --------------------------------------------------------------------------- headers


def test_inject_then_extract_carries_the_span_and_the_workflow(tel: TelemetryCapture):
    with workflow("triage", tracer_provider=tel.tracer_provider) as wf:
        with wf.node("intake"):
            pass
        with wf.node("dispatch"):
            headers = inject_headers({"content-type": "application/json"})
            current = trace.get_current_span().get_span_context()
    assert headers["content-type"] == "application/json"
    assert headers["traceparent"].split("-")[1:3] == [format(current.trace_id, "032x"), format(current.span_id, "016x")]
    # Header names are case-insensitive on the way in.
    ctx = extract_context({k.title(): v for k, v in headers.items()})
    remote = trace.get_current_span(ctx).get_span_context()
    assert remote.is_remote and (remote.trace_id, remote.span_id) == (current.trace_id, current.span_id)
    assert baggage.get_baggage(A.UNHARDCODED_WORKFLOW_ID, ctx) == wf.id
    assert baggage.get_baggage(A.UNHARDCODED_WORKFLOW_NAME, ctx) == "triage"
    assert baggage.get_baggage(A.UNHARDCODED_WORKFLOW_STEP, ctx) == "2"  # two nodes started so far


def test_continue_from_makes_nodes_of_the_callers_run(tel: TelemetryCapture):
    other = capture(service_name="other")
    cat = catalog()
    with workflow("triage", tracer_provider=tel.tracer_provider) as wf, wf.node("intake"), wf.node("dispatch"):
        headers = inject_headers()
        dispatch = trace.get_current_span().get_span_context()
    assert current_workflow() is None
    router = other.router(cat)
    with continue_from(headers, tracer_provider=other.tracer_provider) as continued:
        assert continued is not None and continued.id == wf.id and continued.name == "triage"
        plain = router.decide(policy(cat), BODY)  # in the run, in no node
        with workflow.node("retrieve"):
            in_node = router.decide(policy(cat), BODY)
    assert current_workflow() is None
    assert plain.workflow == WorkflowRef(id=wf.id, name="triage")
    assert in_node.workflow == WorkflowRef(id=wf.id, name="triage", node="retrieve", step=2)
    [node] = other.spans("node retrieve")
    assert trace_id_of(node) == wf.trace_id and parent_of(node) == format(dispatch.span_id, "016x")
    assert all(trace_id_of(s) == wf.trace_id for s in other.spans())
    other.shutdown()


def test_extract_context_attached_by_hand_is_enough_for_decisions(tel: TelemetryCapture):
    from opentelemetry import context

    with workflow("triage", tracer_provider=tel.tracer_provider) as wf, wf.node("dispatch"):
        headers = inject_headers()
    cat = catalog()
    token = context.attach(extract_context(headers))
    try:
        decision = tel.router(cat).decide(policy(cat), BODY)
    finally:
        context.detach(token)
    assert decision.workflow == WorkflowRef(id=wf.id, name="triage")
    assert decision.trace_id == wf.trace_id


def test_headers_without_a_workflow_continue_only_the_trace(tel: TelemetryCapture):
    cat = catalog()
    with trace.use_span(tel.tracer_provider.get_tracer("t").start_span("client"), end_on_exit=True):
        headers = inject_headers()
    with workflow("outer", tracer_provider=tel.tracer_provider), continue_from(headers) as continued:
        assert continued is None and current_workflow() is None
        decision = tel.router(cat).decide(policy(cat), BODY)
    assert decision.workflow is None and decision.trace_id == headers["traceparent"].split("-")[1]


def test_bad_headers_never_raise():
    assert inject_headers(None) == {}
    ctx = extract_context({"traceparent": "garbage", "baggage": "%%%"})
    assert not trace.get_current_span(ctx).get_span_context().is_valid
    with continue_from([("traceparent", "00-zz")]) as run:
        assert run is None
