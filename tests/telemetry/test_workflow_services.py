"""A five-node workflow across two real processes talking HTTP ends up as one trace with the right parent links.

This process runs nodes ``intake`` and ``dispatch``; inside ``dispatch`` it
calls a second service (a subprocess running ``telemetry_fixtures.workflow_service``,
an ``http.server``) with :func:`inject_headers`; that service continues the run
with ``continue_from`` and runs ``retrieve``, ``draft`` and ``review``. Both
export over real OTLP/gRPC to one receiver on loopback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from otlp_receiver import OTLPReceiver
from telemetry_fixtures import BODY, Simulators, catalog, policy
from unhardcoded.receipts import Receipt, rebuild_receipts
from unhardcoded.router import Decision, Router
from unhardcoded.router.decision import WorkflowRef
from unhardcoded.semconv import attributes as A
from unhardcoded.telemetry import configure, inject_headers, workflow
from unhardcoded.testing.simulator import error

TESTS = Path(__file__).parent.parent


@pytest.fixture
def rx():
    with OTLPReceiver() as receiver:
        yield receiver


@pytest.fixture
def service(rx: OTLPReceiver):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, str(TESTS / "telemetry_fixtures.py"), "workflow-service", rx.grpc_endpoint],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=TESTS,
    )
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        pytest.fail(f"the workflow service did not start: {line!r} {proc.stderr.read()}")
    yield f"http://127.0.0.1:{int(line)}"
    proc.stdin.close()
    try:
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    with proc:  # closes the pipes
        stderr = proc.stderr.read()
    assert proc.returncode == 0, stderr


def test_a_five_node_workflow_across_two_processes_is_one_trace(rx: OTLPReceiver, service: str):
    setup = configure(
        service_name="workflow-caller", endpoint=rx.grpc_endpoint, protocol="grpc", metrics=False, set_global=False
    )
    cat = catalog()
    sims = Simulators({"sim-a": {"cheap-a": error(500)}})
    router = Router(cat, client=sims.client, tracer_provider=setup.tracer_provider)
    pol = policy(cat, fallback=["mid-b"])
    try:
        with workflow("triage", tracer_provider=setup.tracer_provider) as wf:
            with wf.node("intake"):
                intake = router.decide(pol, BODY)
            with wf.node("dispatch"):
                dispatch, _, _ = router.route(pol, BODY)
                response = httpx.post(
                    f"{service}/nodes",
                    content=b"{}",
                    headers=inject_headers({"content-type": "application/json"}),
                    timeout=30,
                )
    finally:
        sims.close()
    assert response.status_code == 200
    remote = [Decision.model_validate(d) for d in response.json()]
    setup.force_flush()
    decisions = [intake, dispatch, *remote]
    nodes = ["intake", "dispatch", "retrieve", "draft", "review"]
    assert [d.workflow for d in decisions] == [
        WorkflowRef(id=wf.id, name="triage", node=n, step=i) for i, n in enumerate(nodes)
    ]

    # workflow + 5 nodes + 5 decisions + 2 attempts (dispatch: 500 then fallback) + 1 attempt (draft)
    spans = rx.wait_for_spans(lambda got: len(got) >= 14)
    assert len(spans) == 14, spans
    assert {s.trace_id for s in spans} == {wf.trace_id}
    by_id = {s.span_id: s for s in spans}
    services = {s.name: s.service for s in spans if s.name.startswith("node ")}
    assert services == {
        "node intake": "workflow-caller",
        "node dispatch": "workflow-caller",
        "node retrieve": "workflow-service",
        "node draft": "workflow-service",
        "node review": "workflow-service",
    }
    [root] = [s for s in spans if s.name == "workflow triage"]
    assert root.parent_span_id is None
    node_spans = {s.attributes[A.UNHARDCODED_WORKFLOW_NODE]: s for s in spans if s.name.startswith("node ")}
    assert [node_spans[n].attributes[A.UNHARDCODED_WORKFLOW_STEP] for n in nodes] == [0, 1, 2, 3, 4]
    assert node_spans["intake"].parent_span_id == root.span_id
    assert node_spans["dispatch"].parent_span_id == root.span_id
    for n in ("retrieve", "draft", "review"):  # the other service's nodes hang off the node that called it
        assert node_spans[n].parent_span_id == node_spans["dispatch"].span_id
    for d, n in zip(decisions, nodes):
        span = by_id[d.span_id]
        assert span.name == "route support" and span.parent_span_id == node_spans[n].span_id
        assert span.attributes[A.UNHARDCODED_WORKFLOW_ID] == wf.id
        assert span.attributes[A.UNHARDCODED_WORKFLOW_NODE] == n
    for s in spans:
        if s.name.startswith("chat "):
            assert by_id[s.parent_span_id].name == "route support"
    # The receipts processor's view: one workflow receipt, five node receipts in order, nothing missing.
    rebuilt = rebuild_receipts(*[r.message for r in rx.traces])
    [run] = rebuilt.workflows
    assert run.workflow_id == wf.id and run.name == "triage" and run.trace_id == wf.trace_id and run.complete
    assert run.nodes == [Receipt.from_decision(d) for d in decisions]
    setup.shutdown()
