"""The processor as a client sees it: real OTLP exporters and hand-built payloads against `unhardcoded processor`.

Every receipt the processor writes must equal ``Receipt.from_decision`` of the
decision that emitted the spans, however the spans arrive: over OTLP/HTTP
(protobuf, JSON, gzip) or OTLP/gRPC, shuffled, duplicated, split across
exports, late, or mixed with other services' spans.
"""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind

from fixtures import span_layout as L
from processor_fixtures import ProcessorProcess, decisions_with_spans, workflow_with_spans
from unhardcoded.receipts import Receipt, WorkflowReceipt
from unhardcoded.semconv import attributes as A

PB = {"Content-Type": "application/x-protobuf"}


@pytest.fixture
def processor(tmp_path):
    p = ProcessorProcess(str(tmp_path / "receipts.db"), "--wait-window", "1", log=tmp_path / "processor.log").start()
    yield p
    p.stop()


@pytest.fixture
def patient_processor(tmp_path):
    """A wait window longer than any test: a receipt is written only when all its spans are in."""
    p = ProcessorProcess(str(tmp_path / "receipts.db"), "--wait-window", "60", log=tmp_path / "processor.log").start()
    yield p
    p.stop()


def stored(p: ProcessorProcess, request_id: str, timeout_s: float = 15.0, revision: int | None = None) -> dict | None:
    def ready():
        doc = p.receipt(request_id)
        if doc is None or (revision is not None and doc["revision"] < revision):
            return None
        return doc

    return p.wait_for(ready, timeout_s)


def expected(d) -> dict:
    return Receipt.from_decision(d).to_json_dict()


def post(p: ProcessorProcess, body: bytes, headers: dict | None = None) -> httpx.Response:
    return httpx.post(p.url + "/v1/traces", content=body, headers=headers or PB, timeout=10)


def test_the_sdk_http_exporter_gets_receipts_equal_to_the_decisions(processor):
    ds, spans = decisions_with_spans(12, seed=1)
    exporter = HttpExporter(endpoint=processor.url + "/v1/traces")
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    exporter.shutdown()
    for d in ds:
        doc = stored(processor, d.request_id)
        assert doc is not None, processor.tail()
        assert doc["receipt"] == expected(d)
        assert doc["revision"] == 1
        assert doc["links"]["page"] == f"/r/{d.request_id}"


def test_the_sdk_grpc_exporter_gets_receipts_equal_to_the_decisions(processor):
    ds, spans = decisions_with_spans(12, seed=2)
    exporter = GrpcExporter(endpoint=processor.grpc_endpoint, insecure=True)
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    exporter.shutdown()
    for d in ds:
        doc = stored(processor, d.request_id)
        assert doc is not None, processor.tail()
        assert doc["receipt"] == expected(d)


def test_gzip_and_json_exports_are_read(processor):
    ds, spans = decisions_with_spans(6, seed=3)
    gz = HttpExporter(
        endpoint=processor.url + "/v1/traces",
        compression=__import__("opentelemetry.exporter.otlp.proto.http", fromlist=["Compression"]).Compression.Gzip,
    )
    assert gz.export(spans[: len(spans) // 2]) == SpanExportResult.SUCCESS
    r = httpx.post(
        processor.url + "/v1/traces",
        content=gzip.compress(L.otlp_json(spans[len(spans) // 2 :]).encode()),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {}  # no partial_success: everything was taken
    for d in ds:
        assert stored(processor, d.request_id)["receipt"] == expected(d)


def test_shuffled_duplicated_and_split_batches_make_one_receipt_each(patient_processor):
    processor = patient_processor
    ds, spans = decisions_with_spans(20, seed=4, hops=2)
    rng = random.Random(9)
    shuffled = spans + rng.sample(spans, len(spans) // 2)  # half of them sent twice, as an exporter's retry would
    rng.shuffle(shuffled)
    for i in range(0, len(shuffled), 7):  # small exports that split decisions from their attempts
        r = post(processor, L.otlp_bytes(shuffled[i : i + 7]))
        assert r.status_code == 200
        assert not ExportTraceServiceResponse.FromString(r.content).HasField("partial_success")
    for d in ds:
        doc = stored(processor, d.request_id)
        assert doc["receipt"] == expected(d)
        assert doc["receipt"]["complete"] is True
        assert len(doc["receipt"]["attempts"]) == len(d.attempts) >= 2
        assert doc["revision"] == 1
    page = processor.get("/receipts", params={"limit": 1000}).json()
    assert sorted(i["receipt"]["request_id"] for i in page["items"]) == sorted(d.request_id for d in ds)


def test_traces_from_several_services_and_foreign_spans(processor):
    tp_a, exp_a = L.provider("checkout")
    tp_b, exp_b = L.provider("agents")
    ds_a, _ = decisions_with_spans(0)
    import random as _r

    from processor_fixtures import make_decision

    rng = _r.Random(11)
    tracer_a, tracer_b = tp_a.get_tracer("unhardcoded"), tp_b.get_tracer("unhardcoded")
    ds = []
    with tracer_a.start_as_current_span("POST /checkout", kind=SpanKind.SERVER):
        d = make_decision(rng, "req_multi_a", hops=1)
        L.emit_decision(tracer_a, d)
        ds.append(d)
        L.foreign_span(tracer_a)
    d = make_decision(rng, "req_multi_b", hops=0)
    L.emit_decision(tracer_b, d)
    ds.append(d)
    L.foreign_span(tracer_b)
    body = L.otlp_bytes(list(exp_a.get_finished_spans()) + list(exp_b.get_finished_spans()))
    assert post(processor, body).status_code == 200
    for d in ds:
        assert stored(processor, d.request_id)["receipt"] == expected(d)
    assert processor.stats()["spans_ignored"] >= 3


def test_a_late_attempt_span_updates_the_stored_receipt_and_its_revision(processor):
    (d,), spans = decisions_with_spans(1, seed=6, hops=1)
    decision_span = [s for s in spans if A.UNHARDCODED_ATTEMPT_INDEX not in s.attributes]
    attempt_spans = [s for s in spans if A.UNHARDCODED_ATTEMPT_INDEX in s.attributes]
    assert len(attempt_spans) == 2
    assert post(processor, L.otlp_bytes(decision_span + attempt_spans[:1])).status_code == 200
    first = stored(processor, d.request_id)  # written incomplete once the 1 s wait window is over
    assert first["receipt"]["complete"] is False and first["revision"] == 1
    assert len(first["receipt"]["attempts"]) == 1
    assert post(processor, L.otlp_bytes(attempt_spans[1:])).status_code == 200
    second = stored(processor, d.request_id, revision=2)
    assert second is not None, processor.tail()
    assert second["receipt"] == expected(d) and second["receipt"]["complete"] is True
    # The same late span again (an exporter retrying) changes nothing.
    assert post(processor, L.otlp_bytes(attempt_spans[1:])).status_code == 200
    processor.wait_for(lambda: processor.stats()["spans_duplicate"] >= 1, 5)
    assert processor.receipt(d.request_id)["revision"] == 2


def test_a_decision_span_arriving_after_its_attempts_waited_alone(processor):
    (d,), spans = decisions_with_spans(1, seed=7, hops=1)
    decision_span = [s for s in spans if A.UNHARDCODED_ATTEMPT_INDEX not in s.attributes]
    attempt_spans = [s for s in spans if A.UNHARDCODED_ATTEMPT_INDEX in s.attributes]
    assert post(processor, L.otlp_bytes(attempt_spans)).status_code == 200
    processor.wait_for(lambda: processor.stats()["spans_orphaned"] >= 2, 10)  # the wait window ran out: counted, kept
    assert processor.receipt(d.request_id) is None
    assert post(processor, L.otlp_bytes(decision_span)).status_code == 200
    doc = stored(processor, d.request_id)
    assert doc["receipt"] == expected(d)


def test_a_workflow_becomes_one_workflow_receipt(processor):
    ds, spans = workflow_with_spans("wf_9a1", "refund-flow", ["classify", "draft", "review"])
    random.Random(2).shuffle(spans)
    assert post(processor, L.otlp_bytes(spans[:4])).status_code == 200
    assert post(processor, L.otlp_bytes(spans[4:])).status_code == 200
    for d in ds:
        assert stored(processor, d.request_id) is not None
    doc = processor.wait_for(
        lambda: (w := workflow_doc(processor, "wf_9a1")) is not None and w["workflow"]["complete"] and w
    )
    assert doc, processor.tail()
    want = WorkflowReceipt.from_receipts(
        "wf_9a1", "refund-flow", [Receipt.from_decision(d) for d in ds], trace_id=ds[0].trace_id
    )
    assert doc["workflow"] == want.model_dump(mode="json", by_alias=True)
    assert doc["links"]["page"] == "/w/wf_9a1"


# --------------------------------------------------------------------------- when a workflow is finished


def workflow_doc(p: ProcessorProcess, workflow_id: str) -> dict | None:
    r = p.get(f"/workflows/{workflow_id}")
    return r.json() if r.status_code == 200 else None


def completed(p: ProcessorProcess, workflow_id: str, timeout_s: float = 15.0) -> dict | None:
    """The workflow receipt once it reads complete."""

    def ready():
        doc = workflow_doc(p, workflow_id)
        return doc["workflow"] if doc is not None and doc["workflow"]["complete"] else None

    return p.wait_for(ready, timeout_s)


def settled(p: ProcessorProcess, timeout_s: float = 15.0) -> bool:
    """Nothing pending in the processor: every receipt it could write (or give up waiting for) is written."""
    return bool(p.wait_for(lambda: p.stats()["pending_receipts"] == 0, timeout_s))


def split_workflow(spans: list) -> tuple[list, dict[str, list], list]:
    """A workflow's spans as (root, {request id: its decision and attempt spans}, node spans)."""
    root, nodes, by_request = [], [], {}
    for s in spans:
        a = s.attributes
        if A.UNHARDCODED_REQUEST_ID in a:
            by_request.setdefault(a[A.UNHARDCODED_REQUEST_ID], []).append(s)
        elif A.UNHARDCODED_WORKFLOW_NODE in a:
            nodes.append(s)
        else:
            root.append(s)
    assert len(root) == 1
    return root, by_request, nodes


def attempts_of(spans: list) -> list:
    return [s for s in spans if A.UNHARDCODED_ATTEMPT_INDEX in s.attributes]


def whole(workflow_id: str, name: str, ds) -> dict:
    return WorkflowReceipt.from_receipts(
        workflow_id, name, [Receipt.from_decision(d) for d in ds], trace_id=ds[0].trace_id
    ).model_dump(mode="json", by_alias=True)


def test_a_root_that_arrives_first_waits_for_the_nodes_of_its_trace(patient_processor):
    p = patient_processor
    ds, spans = workflow_with_spans("wf_root_first", "refund-flow", ["classify", "draft", "review"], seed=21)
    root, by_request, node_spans = split_workflow(spans)
    held = next(d for d in reversed(ds) if d.attempts)
    held_attempts = attempts_of(by_request[held.request_id])
    # The root, and the decision span of one node whose attempt spans are still on their way.
    first = root + [s for s in by_request[held.request_id] if s not in held_attempts]
    assert post(p, L.otlp_bytes(first)).status_code == 200
    others = [d for d in ds if d is not held]
    assert post(p, L.otlp_bytes([s for d in others for s in by_request[d.request_id]] + node_spans)).status_code == 200
    for d in others:
        assert stored(p, d.request_id) is not None, p.tail()
    doc = workflow_doc(p, "wf_root_first")["workflow"]
    assert doc["complete"] is False and [n["request_id"] for n in doc["nodes"]] == [d.request_id for d in others]
    assert all(n["complete"] for n in doc["nodes"])
    assert "OPEN: not finished" in p.get("/w/wf_root_first").text
    assert p.receipt(held.request_id) is None
    assert post(p, L.otlp_bytes(held_attempts)).status_code == 200
    doc = completed(p, "wf_root_first")
    assert doc == whole("wf_root_first", "refund-flow", ds), p.tail()
    page = p.get("/w/wf_root_first").text
    assert "OPEN" not in page and "INCOMPLETE" not in page


def test_nodes_first_then_the_root(patient_processor, tmp_path):
    p = patient_processor
    ds, spans = workflow_with_spans("wf_nodes_first", "refund-flow", ["classify", "draft"], seed=22)
    root, by_request, node_spans = split_workflow(spans)
    assert post(p, L.otlp_bytes([s for v in by_request.values() for s in v] + node_spans)).status_code == 200
    for d in ds:
        assert stored(p, d.request_id) is not None, p.tail()
    doc = workflow_doc(p, "wf_nodes_first")
    assert doc["workflow"] == {**whole("wf_nodes_first", "refund-flow", ds), "complete": False}
    assert "OPEN: not finished" in p.get(doc["links"]["page"]).text
    card = cli_receipt(p, "wf_nodes_first")
    assert "node      classify" in card and "note      OPEN: not finished" in card
    assert post(p, L.otlp_bytes(root)).status_code == 200
    assert completed(p, "wf_nodes_first") == whole("wf_nodes_first", "refund-flow", ds), p.tail()
    card = cli_receipt(p, "wf_nodes_first")
    assert "node      draft" in card and "note      " not in card


def test_a_root_with_no_node_pending_is_finished_at_once_and_later_nodes_join_it(patient_processor):
    p = patient_processor
    ds, spans = workflow_with_spans("wf_alone", "refund-flow", ["classify", "draft"], seed=23)
    root, by_request, node_spans = split_workflow(spans)
    assert post(p, L.otlp_bytes(root)).status_code == 200
    doc = completed(p, "wf_alone")  # nothing of its trace was pending: finished with the nodes written so far, none
    assert doc is not None and doc["nodes"] == [] and doc["trace_id"] == ds[0].trace_id, p.tail()
    assert post(p, L.otlp_bytes([s for v in by_request.values() for s in v] + node_spans)).status_code == 200
    for d in ds:
        assert stored(p, d.request_id) is not None
    assert workflow_doc(p, "wf_alone")["workflow"] == whole("wf_alone", "refund-flow", ds)


def test_a_node_that_never_comes_whole_finishes_the_workflow_at_the_wait_window(processor):
    ds, spans = workflow_with_spans("wf_missing_node", "refund-flow", ["classify", "draft", "review"], seed=24)
    root, by_request, node_spans = split_workflow(spans)
    held = next(d for d in ds if d.attempts)
    held_attempts = attempts_of(by_request[held.request_id])
    sent = [s for v in by_request.values() for s in v if s not in held_attempts] + node_spans + root
    assert post(processor, L.otlp_bytes(sent)).status_code == 200
    assert stored(processor, held.request_id) is not None and settled(processor), processor.tail()
    doc = workflow_doc(processor, "wf_missing_node")["workflow"]
    assert doc["complete"] is False and len(doc["nodes"]) == len(ds)
    assert [n["request_id"] for n in doc["nodes"] if not n["complete"]] == [held.request_id]
    page = processor.get("/w/wf_missing_node").text
    assert "INCOMPLETE: some node telemetry was not received" in page and "OPEN" not in page
    # The node's attempts come after all: its receipt is rewritten, and the workflow, finished at the window, is whole.
    assert post(processor, L.otlp_bytes(held_attempts)).status_code == 200
    assert stored(processor, held.request_id, revision=2) is not None
    assert completed(processor, "wf_missing_node") == whole("wf_missing_node", "refund-flow", ds)


def test_a_workflow_whose_root_never_arrives_is_not_complete(processor):
    ds, spans = workflow_with_spans("wf_no_root", "refund-flow", ["classify", "draft"], seed=25)
    _, by_request, node_spans = split_workflow(spans)
    assert post(processor, L.otlp_bytes([s for v in by_request.values() for s in v] + node_spans)).status_code == 200
    for d in ds:
        assert stored(processor, d.request_id)["receipt"]["complete"] is True
    assert settled(processor)
    doc = workflow_doc(processor, "wf_no_root")["workflow"]
    assert doc == {**whole("wf_no_root", "refund-flow", ds), "complete": False}
    assert "OPEN: not finished" in processor.get("/w/wf_no_root").text


def cli_receipt(p: ProcessorProcess, workflow_id: str) -> str:
    """`unhardcoded receipt WORKFLOW_ID` on the processor's store, as it runs."""
    done = subprocess.run(
        [sys.executable, "-m", "unhardcoded.cli", "receipt", workflow_id, "--store", p.store],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_spans_with_invalid_ids_are_refused_as_partial_success(processor):
    ds, spans = decisions_with_spans(2, seed=8, hops=0)
    doc = L.otlp_json_dict(spans)
    bad = json.loads(json.dumps(doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]))
    bad["traceId"] = "00000000000000000000000000000000"
    bad2 = dict(bad, traceId="abc", spanId="zz")
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"] += [bad, bad2]
    r = httpx.post(processor.url + "/v1/traces", json=doc, timeout=10)
    assert r.status_code == 200
    partial = r.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "2"  # proto3 JSON writes int64 as a string
    assert "invalid trace or span id" in partial["errorMessage"]
    for d in ds:
        assert stored(processor, d.request_id)["receipt"] == expected(d)


@pytest.mark.parametrize(
    "body, headers, status",
    [
        (b"\xff\xff\xff\xff", PB, 400),
        (b"{not json", {"Content-Type": "application/json"}, 400),
        (b'{"resourceSpans": 7}', {"Content-Type": "application/json"}, 400),
        (b"hello", {"Content-Type": "text/plain"}, 415),
        (b"\x1f\x8b\x08\x00garbage", {**PB, "Content-Encoding": "gzip"}, 400),
        (b"abc", {**PB, "Content-Encoding": "br"}, 415),
    ],
)
def test_malformed_payloads_get_a_client_error_in_the_request_encoding(processor, body, headers, status):
    r = post(processor, body, headers)
    assert r.status_code == status
    if status == 400 and "json" in headers["Content-Type"]:
        assert r.json()["code"] == 3 and r.json()["message"]
    elif status == 400:
        from google.rpc import status_pb2

        assert status_pb2.Status.FromString(r.content).code == 3
    assert processor.get("/healthz").status_code == 200


def test_the_grpc_receiver_refuses_garbage_as_invalid_argument(processor):
    import grpc

    channel = grpc.insecure_channel(processor.grpc_endpoint)
    call = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
    with pytest.raises(grpc.RpcError) as info:
        call(b"\xff\xff\xff\xff", timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()


def test_metrics_and_logs_exports_get_an_empty_success(processor):
    for path in ("/v1/metrics", "/v1/logs"):
        assert httpx.post(processor.url + path, content=b"", headers=PB, timeout=5).status_code == 200
        r = httpx.post(processor.url + path, content=b"{}", headers={"Content-Type": "application/json"}, timeout=5)
        assert r.status_code == 200 and r.json() == {}
