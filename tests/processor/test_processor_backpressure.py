"""Backpressure and security at the front doors, with the processor served in-process so the store can be made to fail.

The store is a real SQLite file; another connection holding its write lock is
what makes the spool unavailable. Exporters must be told to come back later
(429 / 503 with Retry-After; RESOURCE_EXHAUSTED / UNAVAILABLE with RetryInfo),
and the real SDK exporter must get its export in once the lock is gone.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time

import grpc
import httpx
import pytest
import uvicorn
from google.rpc import error_details_pb2
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from fixtures import span_layout as L
from processor_fixtures import decisions_with_spans, free_port
from unhardcoded.processor.api import Settings, build_app
from unhardcoded.processor.grpc_server import start_grpc_server
from unhardcoded.processor.metrics import ProcessorMetrics
from unhardcoded.processor.service import ProcessorConfig, ProcessorEngine
from unhardcoded.receipts import Receipt, SQLiteReceiptStore
from unhardcoded.receipts.stores import SQLiteSpool

PB = {"Content-Type": "application/x-protobuf"}


class Served:
    def __init__(self, tmp_path, settings: Settings | None = None, **config) -> None:
        settings = settings if settings is not None else Settings()
        self.db = tmp_path / "receipts.db"
        self.store = SQLiteReceiptStore(self.db)
        self.spool = SQLiteSpool(self.db, timeout_s=0.3)
        cfg = ProcessorConfig(wait_window_s=0.5, retry_after_s=1.0, **config)
        self.processor = ProcessorEngine(self.store, self.spool, cfg, ProcessorMetrics())
        self.processor.start()
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(
                build_app(self.processor, self.store, settings),
                host="127.0.0.1",
                port=self.port,
                log_config=None,
                lifespan="off",
                access_log=False,
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.grpc, self.grpc_port = start_grpc_server(self.processor, "127.0.0.1", 0, token=settings.ingest_token)
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.port}"

    @contextlib.contextmanager
    def locked(self):
        """The store's write lock held by someone else."""
        other = sqlite3.connect(self.db, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.grpc.stop(0)
        self.processor.stop()
        self.store.close()
        self.spool.close()


@pytest.fixture
def served(tmp_path):
    s = Served(tmp_path)
    yield s
    s.close()


def test_a_failing_store_gets_503_with_retry_after_and_the_exporter_gets_through_later(served):
    ds, spans = decisions_with_spans(3, seed=41)
    with served.locked():
        r = httpx.post(served.url + "/v1/traces", content=L.otlp_bytes(spans), headers=PB, timeout=10)
        assert r.status_code == 503
        assert r.headers["Retry-After"] == "1"
        from google.rpc import status_pb2

        status = status_pb2.Status.FromString(r.content)
        assert status.code == 14
        info = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(info) and info.retry_delay.seconds == 1
        result: list = []
        exporter = HttpExporter(endpoint=served.url + "/v1/traces", timeout=15)
        t = threading.Thread(target=lambda: result.append(exporter.export(spans)))
        t.start()
        time.sleep(1.5)  # the exporter meets 503s and backs off, as told
    t.join(20)
    assert result == [SpanExportResult.SUCCESS]
    assert served.processor.drain()
    for d in ds:
        assert served.store.get(d.request_id).receipt == Receipt.from_decision(d)
    assert served.processor.stats()["payloads_rejected"] >= 1


def test_grpc_backpressure_carries_retry_info(served):
    _, spans = decisions_with_spans(1, seed=42)
    channel = grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}")
    call = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
    with served.locked(), pytest.raises(grpc.RpcError) as info:
        call(L.otlp_bytes(spans), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    trailing = dict(info.value.trailing_metadata())
    retry = error_details_pb2.RetryInfo.FromString(trailing["google.rpc.retryinfo-bin"])
    assert retry.retry_delay.seconds == 1
    from google.rpc import status_pb2

    assert (
        status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
        .details[0]
        .Is(error_details_pb2.RetryInfo.DESCRIPTOR)
    )
    channel.close()


def test_too_much_queued_gets_429(tmp_path):
    s = Served(tmp_path, max_queue_spans=5)
    try:
        _, spans = decisions_with_spans(2, seed=43)
        codes: list[int] = []
        with s.locked():
            first = threading.Thread(
                target=lambda: codes.append(
                    httpx.post(s.url + "/v1/traces", content=L.otlp_bytes(spans), headers=PB, timeout=10).status_code
                )
            )
            first.start()
            time.sleep(0.05)  # the first export is in the queue, its spool write waiting on the lock
            r = httpx.post(s.url + "/v1/traces", content=L.otlp_bytes(spans), headers=PB, timeout=10)
            first.join(10)
        assert r.status_code in (429, 503)
        assert "Retry-After" in r.headers
        assert 429 in codes + [r.status_code] or codes == [503]
    finally:
        s.close()


def test_a_backlog_comes_in_without_bytes_views_and_makes_the_same_receipts(tmp_path):
    from unhardcoded.processor import otlp

    s = Served(tmp_path, view_batch_spans=-1)  # as if a backlog were taken in one batch: every export loses its view
    try:
        ds, spans = decisions_with_spans(4, seed=45, hops=1)
        exports = [otlp.decode(L.otlp_bytes(spans[:5]), "protobuf"), otlp.decode(L.otlp_bytes(spans[5:]), "protobuf")]
        assert all(sp.view is not None for e in exports for sp in e.spans)
        for ack in [s.processor.submit(e.spans) for e in exports]:
            ack.result(10)
        # Taken without their views and attributes before they were spooled (a span left waiting would keep these).
        assert all(sp.view is None and sp.attributes is None for e in exports for sp in e.spans)
        assert s.processor.drain()
        assert [s.store.get(d.request_id).receipt for d in ds] == [Receipt.from_decision(d) for d in ds]
        # The same over the wire: the worker decodes the bodies, and takes them without views past the bound.
        ds, spans = decisions_with_spans(4, seed=46, hops=1)
        for part in (spans[:5], spans[5:]):
            assert (
                httpx.post(s.url + "/v1/traces", content=L.otlp_bytes(part), headers=PB, timeout=10).status_code == 200
            )
        assert s.processor.drain()
        assert [s.store.get(d.request_id).receipt for d in ds] == [Receipt.from_decision(d) for d in ds]
    finally:
        s.close()


def test_the_worker_decodes_counts_and_empties_the_queue(served):
    """Bodies are decoded by the worker: what it read is counted per transport, garbage is refused by the front
    door that took it, and the queue (counted in spans estimated from the bodies' sizes) goes back to zero."""
    ds, spans = decisions_with_spans(3, seed=47, hops=1)
    assert (
        httpx.post(served.url + "/v1/traces", content=L.otlp_bytes(spans[:4]), headers=PB, timeout=10).status_code
        == 200
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}")
    call = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
    call(L.otlp_bytes(spans[4:]), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        call(b"\xff\xff\xff\xff", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not an OTLP" in info.value.details()
    channel.close()
    r = httpx.post(
        served.url + "/v1/traces", content=b"{not json", headers={"Content-Type": "application/json"}, timeout=10
    )
    assert r.status_code == 400 and "not JSON" in r.json()["message"]
    assert httpx.post(served.url + "/v1/traces", content=b"", headers=PB, timeout=10).status_code == 200
    assert served.processor.drain()
    stats = served.processor.stats()
    assert stats["exports"] == 3 and stats["spans_received"] == len(spans) and stats["payloads_rejected"] == 2
    assert stats["queue_depth"] == 0
    assert [served.store.get(d.request_id).receipt for d in ds] == [Receipt.from_decision(d) for d in ds]


def test_memory_bound_finishes_the_oldest_receipts_incomplete_and_counts_them(tmp_path):
    s = Served(tmp_path, max_pending_spans=4)
    try:
        s.processor.config.wait_window_s = 60  # only the memory bound can finish them
        ds, spans = decisions_with_spans(6, seed=44, hops=1)
        from unhardcoded.semconv import attributes as A

        decisions_only = [sp for sp in spans if A.UNHARDCODED_ATTEMPT_INDEX not in sp.attributes]
        assert httpx.post(s.url + "/v1/traces", content=L.otlp_bytes(decisions_only), headers=PB).status_code == 200
        assert s.processor.drain()
        stats = s.processor.stats()
        assert stats["receipts_incomplete"] == 2 and stats["evicted_groups"] == 2
        kept = [d for d in ds if s.store.get(d.request_id) is not None]
        assert [d.request_id for d in kept] == [d.request_id for d in ds[:2]]
        assert all(not s.store.get(d.request_id).receipt.complete for d in kept)
        # Their attempts arrive after all: the receipts are finished whole, as revision 2.
        attempts = [
            sp
            for sp in spans
            if sp.attributes.get(A.UNHARDCODED_REQUEST_ID) == ds[0].request_id and sp not in decisions_only
        ]
        assert httpx.post(s.url + "/v1/traces", content=L.otlp_bytes(attempts), headers=PB).status_code == 200
        assert s.processor.drain()
        got = s.store.get(ds[0].request_id)
        assert got.revision == 2 and got.receipt == Receipt.from_decision(ds[0])
    finally:
        s.close()


def test_tokens_guard_ingest_and_queries_separately(tmp_path):
    s = Served(tmp_path, Settings(ingest_token="in-secret", query_token="q-secret"))
    try:
        ds, spans = decisions_with_spans(1, seed=45, hops=0)
        body = L.otlp_bytes(spans)
        assert httpx.post(s.url + "/v1/traces", content=body, headers=PB).status_code == 401
        assert (
            httpx.post(
                s.url + "/v1/traces", content=body, headers={**PB, "Authorization": "Bearer q-secret"}
            ).status_code
            == 401
        )
        assert (
            httpx.post(
                s.url + "/v1/traces", content=body, headers={**PB, "Authorization": "Bearer in-secret"}
            ).status_code
            == 200
        )
        assert s.processor.drain()
        rid = ds[0].request_id
        assert httpx.get(f"{s.url}/receipts/{rid}").status_code == 401
        assert httpx.get(f"{s.url}/r/{rid}", headers={"Authorization": "Bearer in-secret"}).status_code == 401
        assert httpx.get(f"{s.url}/receipts/{rid}", headers={"Authorization": "Bearer q-secret"}).status_code == 200
        assert httpx.get(f"{s.url}/healthz").status_code == 200
        channel = grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}")
        call = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        with pytest.raises(grpc.RpcError) as info:
            call(body, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        call(body, timeout=5, metadata=(("authorization", "Bearer in-secret"),))
        channel.close()
    finally:
        s.close()


def test_a_body_over_the_limit_is_413(tmp_path):
    s = Served(tmp_path, Settings(max_body_bytes=1000))
    try:
        _, spans = decisions_with_spans(3, seed=46)
        assert httpx.post(s.url + "/v1/traces", content=L.otlp_bytes(spans), headers=PB).status_code == 413

        def chunks():  # no Content-Length: the limit is enforced while reading
            yield L.otlp_bytes(spans)

        assert httpx.post(s.url + "/v1/traces", content=chunks(), headers=PB).status_code == 413
    finally:
        s.close()


def test_the_access_log_names_routes_not_ids_or_tokens(tmp_path, caplog):
    s = Served(tmp_path, Settings(query_token="q-secret"))
    try:
        import logging

        caplog.set_level(logging.INFO)
        httpx.get(f"{s.url}/receipts/req_secret_id?policy=x", headers={"Authorization": "Bearer q-secret"})
        httpx.get(f"{s.url}/r/req_secret_id")
        time.sleep(0.2)  # the line is written once the answer is sent
        lines = [
            r.getMessage() for r in caplog.records if r.name.startswith("unhardcoded") and r.name.endswith(".access")
        ]
        assert any('"GET /receipts/{request_id}" 404' in line for line in lines), lines
        assert any('"GET /r/{request_id}" 401' in line for line in lines), lines
        assert not any("req_secret_id" in line or "q-secret" in line for line in lines)
    finally:
        s.close()
