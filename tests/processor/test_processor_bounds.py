"""The processor under hostile load: memory bounded in bytes, tokens on every OTLP service, warnings when exposed.

A processor process is sent exports that each carry a distinct 10 MiB value
where a cache of decoded values would keep it (a service name, an attribute of
a span that is not ours, an event attribute, an attribute of a decision span):
its resident memory must stay within 100 MB of what it was after warm-up.
"""

from __future__ import annotations

import gzip
import time

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from adversarial._bounds_support import decision_span, export, huge, kv, rss_bytes, span
from processor_fixtures import ProcessorProcess, decisions_with_spans
from unhardcoded.semconv import attributes as A

PB = {"Content-Type": "application/x-protobuf"}
TEN_MIB = 10 * 1024 * 1024
MB = 1_000_000


def _hostile_exports(n: int) -> list[tuple[str, bytes]]:
    """``n`` exports, each with its own 10 MiB value, in turn where each cache would keep it."""
    out = []
    for i in range(n):
        value = huge(TEN_MIB, i)
        kind = i % 5
        if kind == 0:
            out.append(("service.name", export(span(), service=value)))
        elif kind == 1:
            out.append(("foreign span attribute", export(span(attributes={"http.url": value}))))
        elif kind == 2:
            event = Span.Event(time_unix_nano=1, name="log", attributes=[kv("message", value)])
            out.append(("foreign event attribute", export(span(events=[event]))))
        elif kind == 3:
            event = Span.Event(
                time_unix_nano=1,
                name="unhardcoded.rejection",
                attributes=[kv(A.UNHARDCODED_REJECTION_MODEL, "m"), kv(A.UNHARDCODED_REJECTION_MESSAGE, value)],
            )
            d = decision_span(f"req_huge_event_{i}")
            d.events.append(event)
            out.append(("decision event attribute", export(d)))
        else:
            out.append(
                (
                    "decision attribute",
                    export(decision_span(f"req_huge_attr_{i}", **{A.UNHARDCODED_POLICY_NAME: value})),
                )
            )
    return out


def _warm_up(p: ProcessorProcess) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    ds, spans = decisions_with_spans(60, seed=3)
    exporter = HttpExporter(endpoint=p.url + "/v1/traces")
    try:
        exporter.export(spans)
    finally:
        exporter.shutdown()
    assert p.wait_for(lambda: p.receipt(ds[-1].request_id), 20), p.tail()
    # Each kind of hostile export once at a small size: the code paths they take are loaded before the baseline.
    for _, body in _small_exports():
        assert httpx.post(p.url + "/v1/traces", content=body, headers=PB, timeout=30).status_code == 200


def _small_exports() -> list[tuple[str, bytes]]:
    event = Span.Event(time_unix_nano=1, name="log", attributes=[kv("message", "small")])
    d = decision_span("req_small_warm")
    d.events.append(event)
    return [("small", export(span(attributes={"http.url": "/"}), span(events=[event]), d))]


def test_memory_stays_flat_under_20_distinct_10_mib_values_over_http_and_grpc(tmp_path):
    p = ProcessorProcess(str(tmp_path / "receipts.db"), "--wait-window", "1", log=tmp_path / "processor.log").start()
    channel = grpc.insecure_channel(p.grpc_endpoint, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
    try:
        _warm_up(p)
        export_rpc = channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=None,
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString,
        )
        time.sleep(0.5)
        before = rss_bytes(p.proc.pid)
        answers = []
        for i, (what, body) in enumerate(_hostile_exports(20)):
            if i % 2:
                try:
                    export_rpc(body, timeout=60)
                    answers.append((what, "grpc", "OK"))
                except grpc.RpcError as exc:
                    # Over the message size limit is the one refusal allowed here.
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (what, exc.code(), exc.details())
                    answers.append((what, "grpc", exc.code().name))
            else:
                r = httpx.post(
                    p.url + "/v1/traces",
                    content=gzip.compress(body, 1),
                    headers={**PB, "Content-Encoding": "gzip"},
                    timeout=60,
                )
                assert r.status_code in (200, 413), (what, r.status_code, r.text[:200])
                answers.append((what, "http", r.status_code))
        assert p.wait_for(lambda: p.stats()["spans_pending"] == 0, 20), p.stats()
        time.sleep(1.0)  # a finishing round after the last export
        after = rss_bytes(p.proc.pid)
        assert after - before < 100 * MB, (before // MB, after // MB, answers)
        assert p.get("/healthz").status_code == 200
        assert p.get("/receipts?limit=1").status_code == 200
    finally:
        channel.close()
        p.stop()


# --------------------------------------------------------------------------- the ingest token on every service

TOKEN = "ingest-secret-token"
_GRPC_SERVICES = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    base = tmp_path_factory.mktemp("token")
    p = ProcessorProcess(
        str(base / "receipts.db"),
        "--ingest-token-env",
        "INGEST_TOKEN",
        env={"INGEST_TOKEN": TOKEN},
        log=base / "processor.log",
    ).start()
    yield p
    p.stop()


@pytest.mark.parametrize("signal", ["traces", "metrics", "logs"])
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Bearer " + TOKEN], ids=["none", "wrong", "right"])
def test_every_grpc_service_asks_for_the_ingest_token(guarded, signal, authorization):
    channel = grpc.insecure_channel(guarded.grpc_endpoint)
    try:
        rpc = channel.unary_unary(_GRPC_SERVICES[signal], request_serializer=None, response_deserializer=None)
        metadata = [("authorization", authorization)] if authorization else None
        body = export(span()) if signal == "traces" else b""
        if authorization == "Bearer " + TOKEN:
            rpc(body, metadata=metadata, timeout=10)
        else:
            with pytest.raises(grpc.RpcError) as info:
                rpc(body, metadata=metadata, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        channel.close()


@pytest.mark.parametrize("signal", ["traces", "metrics", "logs"])
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Bearer " + TOKEN], ids=["none", "wrong", "right"])
def test_every_http_signal_asks_for_the_ingest_token(guarded, signal, authorization):
    headers = {**PB, **({"Authorization": authorization} if authorization else {})}
    body = export(span()) if signal == "traces" else b""
    r = httpx.post(f"{guarded.url}/v1/{signal}", content=body, headers=headers, timeout=10)
    assert r.status_code == (200 if authorization == "Bearer " + TOKEN else 401)


def test_grpc_metrics_and_logs_take_garbage_without_an_internal_error(processor_without_token):
    """What is dropped unread cannot fail to decode: a body that is not protobuf is still taken."""
    channel = grpc.insecure_channel(processor_without_token.grpc_endpoint)
    try:
        for signal in ("metrics", "logs"):
            rpc = channel.unary_unary(_GRPC_SERVICES[signal], request_serializer=None, response_deserializer=None)
            rpc(b"\xff\xff\xff\xff garbage", timeout=10)
    finally:
        channel.close()


@pytest.fixture(scope="module")
def processor_without_token(tmp_path_factory):
    base = tmp_path_factory.mktemp("open")
    p = ProcessorProcess(str(base / "receipts.db"), log=base / "processor.log").start()
    yield p
    p.stop()


# --------------------------------------------------------------------------- beyond loopback without tokens


def _warnings(log: str) -> list[str]:
    return [line for line in log.splitlines() if " WARNING " in line]


def test_listening_beyond_loopback_without_tokens_warns_once_per_missing_token(tmp_path):
    p = ProcessorProcess(str(tmp_path / "receipts.db"), "--host", "0.0.0.0", log=tmp_path / "processor.log").start()
    try:
        warnings = _warnings(p.tail())
    finally:
        p.stop()
    ingest = [w for w in warnings if "--ingest-token-env" in w]
    query = [w for w in warnings if "--query-token-env" in w]
    assert len(ingest) == 1 and len(query) == 1, warnings
    assert all("0.0.0.0" in w for w in ingest + query)


def test_one_token_set_leaves_one_warning_and_loopback_none(tmp_path):
    p = ProcessorProcess(
        str(tmp_path / "receipts.db"),
        "--host",
        "0.0.0.0",
        "--ingest-token-env",
        "INGEST_TOKEN",
        env={"INGEST_TOKEN": TOKEN},
        log=tmp_path / "processor.log",
    ).start()
    try:
        exposed = _warnings(p.tail())
    finally:
        p.stop()
    assert [w for w in exposed if "--query-token-env" in w] and not [w for w in exposed if "--ingest-token-env" in w]
    local = ProcessorProcess(str(tmp_path / "local.db"), log=tmp_path / "local.log").start()
    try:
        assert not [w for w in _warnings(local.tail()) if "token" in w], local.tail()
    finally:
        local.stop()


# --------------------------------------------------------------------------- the engine's byte bounds, in process


@pytest.fixture
def engine_of(tmp_path):
    from unhardcoded.processor.metrics import ProcessorMetrics
    from unhardcoded.processor.service import ProcessorConfig, ProcessorEngine
    from unhardcoded.receipts import SQLiteReceiptStore
    from unhardcoded.receipts.stores import SQLiteSpool

    made = []

    def make(**config):
        store = SQLiteReceiptStore(tmp_path / "receipts.db")
        spool = SQLiteSpool(tmp_path / "receipts.db", timeout_s=0.3)
        engine = ProcessorEngine(store, spool, ProcessorConfig(**config), ProcessorMetrics())
        engine.start()
        made.append((engine, store, spool))
        return engine

    yield make
    for engine, store, spool in made:
        engine.stop()
        store.close()
        spool.close()


def test_pending_bytes_bound_finishes_the_oldest_receipts_early(engine_of):
    from fixtures import span_layout as L
    from unhardcoded.processor import otlp
    from unhardcoded.processor.assembly import SPAN_BYTES

    ds, spans = decisions_with_spans(6, seed=61, hops=1)
    decisions_only = [sp for sp in spans if A.UNHARDCODED_ATTEMPT_INDEX not in sp.attributes]
    body = L.otlp_bytes(decisions_only)
    costs = [SPAN_BYTES + len(s.body) for s in otlp.decode(body, "protobuf").spans]
    engine = engine_of(wait_window_s=60, max_pending_bytes=sum(costs[2:]))
    engine.submit_export(body, "protobuf", "http").result(10)
    assert engine.drain()
    stats = engine.stats()
    assert stats["evicted_groups"] == 2 and stats["spans_pending"] == 4, stats
    assert stats["pending_bytes"] == sum(costs[2:])
    written = [d.request_id for d in ds if engine.store.get(d.request_id) is not None]
    assert written == [d.request_id for d in ds[:2]]


def test_a_large_pending_span_keeps_only_its_ids_in_memory(engine_of):
    from unhardcoded.processor.assembly import SPAN_BYTES

    engine = engine_of(wait_window_s=60)
    # An answered decision waits for its attempt span: it stays pending, with a 1 MiB attribute of ours.
    big = decision_span(
        "req_big_pending",
        **{A.UNHARDCODED_DECISION_OUTCOME: "answered", A.UNHARDCODED_POLICY_NAME: huge(1024 * 1024, 1)},
    )
    engine.submit_export(export(big), "protobuf", "http").result(10)
    assert engine.drain()
    assert engine.stats()["spans_pending"] == 1
    assert engine.assembler.pending_bytes == SPAN_BYTES
    (group,) = engine.assembler.groups()
    (pending,) = group.spans.values()
    assert pending.attributes is None and pending.body == b""


def test_queue_bytes_bound_refuses_as_busy(engine_of, tmp_path):
    import sqlite3

    from unhardcoded.processor.service import Backpressure

    engine = engine_of(max_queue_bytes=1000)
    body = export(span(attributes={"pad": "x" * 700}))
    other = sqlite3.connect(tmp_path / "receipts.db", isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # the spool cannot write: the first export stays queued
        first = engine.submit_export(body, "protobuf", "http")
        with pytest.raises(Backpressure) as info:
            engine.submit_export(body, "protobuf", "http")
        assert info.value.busy and "bytes queued" in str(info.value)
        other.execute("ROLLBACK")
        first.exception(10)  # spooled, or refused as the store was locked: either way it left the queue
    finally:
        other.close()
    assert engine.drain()
    assert engine.stats()["queue_bytes"] == 0
    engine.submit_export(body, "protobuf", "http").result(10)


def test_memos_keep_no_large_value_and_stay_within_their_budget():
    from unhardcoded.receipts import memo
    from unhardcoded.receipts.spans import read_spans

    before = sum(memo.sizes().values())
    for i in range(5):
        read_spans(export(span(attributes={"http.url": huge(200_000, i)}), service=huge(100_000, i)))
    assert sum(memo.sizes().values()) == before  # too large to keep: read and let go
    memo.configure(total_bytes=200_000)
    try:
        for i in range(200):
            read_spans(export(span(attributes={"k": huge(2_000, i)}), service=f"svc-{i}"))
        assert all(m.size <= m.budget for m in memo.MEMOS)
        assert sum(memo.sizes().values()) <= 200_000
    finally:
        memo.configure(total_bytes=memo.DEFAULT_TOTAL_BYTES)


def test_bodies_being_read_are_bounded_across_connections(tmp_path):
    """A slow sender holding a large body in the front door: the next export over the budget is 429, not held."""
    import socket
    import threading

    import uvicorn

    from processor_fixtures import free_port
    from unhardcoded.processor.api import Settings, build_app
    from unhardcoded.processor.metrics import ProcessorMetrics
    from unhardcoded.processor.service import ProcessorConfig, ProcessorEngine
    from unhardcoded.receipts import SQLiteReceiptStore
    from unhardcoded.receipts.stores import SQLiteSpool

    store = SQLiteReceiptStore(tmp_path / "receipts.db")
    spool = SQLiteSpool(tmp_path / "receipts.db")
    engine = ProcessorEngine(store, spool, ProcessorConfig(), ProcessorMetrics())
    engine.start()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(engine, store, Settings(max_reading_bytes=100_000)),
            host="127.0.0.1",
            port=port,
            log_config=None,
            lifespan="off",
            access_log=False,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    slow = None
    try:
        assert wait_until(lambda: server.started)
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(
            b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            b"Content-Length: 90000\r\n\r\n" + b"\x00" * 10
        )
        assert wait_until(lambda: httpx.get(url + "/stats", timeout=5).json()["reading_bytes"] == 90_000)
        body = export(span(attributes={"pad": "x" * 20_000}))
        r = httpx.post(url + "/v1/traces", content=body, headers=PB, timeout=10)
        assert r.status_code == 429 and "Retry-After" in r.headers
        slow.close()
        slow = None
        assert wait_until(lambda: httpx.get(url + "/stats", timeout=5).json()["reading_bytes"] == 0)
        assert httpx.post(url + "/v1/traces", content=body, headers=PB, timeout=10).status_code == 200
        # Metrics and logs are read and let go, whatever their size under the body limit.
        assert httpx.post(url + "/v1/metrics", content=b"\x00" * 500_000, headers=PB, timeout=10).status_code == 200
    finally:
        if slow is not None:
            slow.close()
        server.should_exit = True
        thread.join(10)
        engine.stop()
        store.close()
        spool.close()


def wait_until(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--cache-bytes", "-1"], {}, "--cache-bytes -1"),
        (["--max-pending-bytes", "0"], {}, "--max-pending-bytes 0"),
        (["--max-queue-bytes", "0"], {}, "--max-queue-bytes 0"),
        ([], {"UNHARDCODED_CACHE_BYTES": "64MiB"}, "UNHARDCODED_CACHE_BYTES"),
        ([], {"UNHARDCODED_CACHE_ITEM_BYTES": "-5"}, "UNHARDCODED_CACHE_ITEM_BYTES"),
    ],
    ids=["cache-bytes", "pending-bytes", "queue-bytes", "cache-env", "item-env"],
)
def test_a_bad_byte_bound_is_exit_2_naming_it(tmp_path, args, env, named):
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "unhardcoded.cli", "processor", "--port", "0", "--no-grpc", *args],
        env={**os.environ, **env, "UNHARDCODED_STORE": str(tmp_path / "r.db")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert named in out.stderr and "Traceback" not in out.stderr
