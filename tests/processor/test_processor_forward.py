"""The forwarder fails the way the Collector's OTLP exporters do, and counts every span it does not deliver.

Next hops here are real servers on loopback: OTLP/HTTP and OTLP/gRPC servers
that answer as a Collector under trouble would (throttled with Retry-After or
RetryInfo, unavailable, refusing, partially accepting), and ports where nothing
listens. The end-to-end path through the real Collector is tests/e2e/test_forwarding.py.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from otlp_receiver import OTLPReceiver
from processor_fixtures import ProcessorProcess, decisions_with_spans
from unhardcoded.processor.forward import Forwarder, RetryPolicy, count_spans
from unhardcoded.processor.metrics import ProcessorMetrics
from unhardcoded.semconv import attributes as A
from unhardcoded.semconv import metrics as M

FAST = RetryPolicy(initial_interval_s=0.05, max_interval_s=0.2, max_elapsed_s=20)


def payload(n: int = 4, seed: int = 3) -> tuple[bytes, int]:
    _, spans = decisions_with_spans(n, seed=seed, prefix="fwd")
    return encode_spans(spans).SerializeToString(), len(spans)


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, predicate: Any, timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# --------------------------------------------------------------------------- next hops that answer as told


class ScriptedHTTPNextHop:
    """OTLP/HTTP on loopback answering each POST with the next scripted (status, headers, body); then 200."""

    def __init__(self, *answers: tuple[int, dict[str, str], bytes]) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[float, bytes]] = []
        hop = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hop.requests.append((time.monotonic(), body))
                status, headers, reply = hop.answers.pop(0) if hop.answers else (200, {}, b"")
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ScriptedGRPCNextHop:
    """OTLP/gRPC on loopback failing each Export with the next scripted (code, RetryInfo delay or None); then OK."""

    def __init__(self, *answers: tuple[grpc.StatusCode, float | None]) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[float, bytes]] = []

        def export(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.requests.append((time.monotonic(), request))
            if self.answers:
                code, delay = self.answers.pop(0)
                if delay is not None:
                    info = error_details_pb2.RetryInfo()
                    info.retry_delay.FromNanoseconds(int(delay * 1e9))
                    status = status_pb2.Status(code=code.value[0], message="slow down")
                    status.details.add().Pack(info)
                    context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
                context.abort(code, "scripted")
            return trace_service_pb2.ExportTraceServiceResponse().SerializeToString()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "opentelemetry.proto.collector.trace.v1.TraceService",
                    {
                        "Export": grpc.unary_unary_rpc_method_handler(
                            export, request_deserializer=None, response_serializer=None
                        )
                    },
                ),
            )
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.target = f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.stop(None)


# --------------------------------------------------------------------------- in process: what is retried and what is not


def test_spans_are_counted_from_the_wire_format() -> None:
    body, n = payload(7)
    assert count_spans(body) == n
    assert count_spans(trace_service_pb2.ExportTraceServiceRequest().SerializeToString()) == 0


@pytest.mark.parametrize(
    "status, retried",
    [
        (429, True),
        (502, True),
        (503, True),
        (504, True),
        (400, False),
        (401, False),
        (404, False),
        (413, False),
        (500, False),
    ],
)
def test_http_answers_are_retried_as_the_collector_retries_them(status: int, retried: bool) -> None:
    hop = ScriptedHTTPNextHop((status, {}, b""))
    metrics = ProcessorMetrics()
    forwarder = Forwarder(hop.url, "http", metrics, retry=FAST)
    body, n = payload()
    try:
        forwarder.send(body)
        wait_until("the export settled", lambda: metrics.stats.forwarded + metrics.stats.forward_dropped == n)
    finally:
        forwarder.stop()
        hop.close()
    if retried:
        assert [b for _, b in hop.requests] == [body, body]
        assert (metrics.stats.forwarded, metrics.stats.forward_dropped, metrics.stats.forward_retries) == (n, 0, 1)
    else:
        assert [b for _, b in hop.requests] == [body]
        assert (metrics.stats.forwarded, metrics.stats.forward_dropped, metrics.stats.forward_retries) == (0, n, 0)


def test_retry_after_is_honoured() -> None:
    hop = ScriptedHTTPNextHop((429, {"Retry-After": "1"}, b""), (503, {"Retry-After": "1"}, b""))
    metrics = ProcessorMetrics()
    forwarder = Forwarder(hop.url, "http", metrics, retry=FAST)
    body, n = payload()
    try:
        forwarder.send(body)
        wait_until("delivered", lambda: metrics.stats.forwarded == n)
    finally:
        forwarder.stop()
        hop.close()
    times = [t for t, _ in hop.requests]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.9 and times[2] - times[1] >= 0.9, "sent again before Retry-After said"


def test_a_partial_success_counts_the_refused_spans_as_dropped() -> None:
    answer = trace_service_pb2.ExportTraceServiceResponse()
    answer.partial_success.rejected_spans = 2
    answer.partial_success.error_message = "two spans too big"
    hop = ScriptedHTTPNextHop((200, {}, answer.SerializeToString()))
    metrics = ProcessorMetrics()
    forwarder = Forwarder(hop.url, "http", metrics, retry=FAST)
    body, n = payload()
    try:
        forwarder.send(body)
        wait_until("settled", lambda: metrics.stats.forwarded + metrics.stats.forward_dropped == n)
    finally:
        forwarder.stop()
        hop.close()
    assert (metrics.stats.forwarded, metrics.stats.forward_dropped, len(hop.requests)) == (n - 2, 2, 1)


@pytest.mark.parametrize(
    "code, delay, retried",
    [
        (grpc.StatusCode.UNAVAILABLE, None, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, None, True),
        (grpc.StatusCode.ABORTED, None, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 0.3, True),  # with RetryInfo: the server says when
        (grpc.StatusCode.RESOURCE_EXHAUSTED, None, False),  # without it: a limit that will not pass
        (grpc.StatusCode.INVALID_ARGUMENT, None, False),
        (grpc.StatusCode.UNAUTHENTICATED, None, False),
        (grpc.StatusCode.UNIMPLEMENTED, None, False),
    ],
)
def test_grpc_codes_are_retried_as_the_collector_retries_them(
    code: grpc.StatusCode, delay: float | None, retried: bool
) -> None:
    hop = ScriptedGRPCNextHop((code, delay))
    metrics = ProcessorMetrics()
    forwarder = Forwarder(hop.target, "grpc", metrics, retry=FAST)
    body, n = payload()
    try:
        forwarder.send(body)
        wait_until("settled", lambda: metrics.stats.forwarded + metrics.stats.forward_dropped == n)
    finally:
        forwarder.stop()
        hop.close()
    assert all(b == body for _, b in hop.requests)
    if retried:
        assert (len(hop.requests), metrics.stats.forwarded, metrics.stats.forward_dropped) == (2, n, 0)
        if delay is not None:
            assert hop.requests[1][0] - hop.requests[0][0] >= delay * 0.9, "sent again before RetryInfo said"
    else:
        assert (len(hop.requests), metrics.stats.forwarded, metrics.stats.forward_dropped) == (1, 0, n)


def test_an_export_keeps_its_place_while_the_next_hop_is_down_and_goes_when_it_is_back() -> None:
    port = dead_port()
    metrics = ProcessorMetrics()
    forwarder = Forwarder(f"http://127.0.0.1:{port}", "http", metrics, retry=FAST)
    bodies = [payload(3, seed=s) for s in (1, 2, 3)]
    rx = None
    try:
        for body, _ in bodies:
            forwarder.send(body)
        wait_until("retries", lambda: metrics.stats.forward_retries >= 3)
        assert metrics.stats.forward_queue_exports == 3
        assert metrics.stats.forward_queue_bytes == sum(len(b) for b, _ in bodies)
        # The next hop comes up where the forwarder was pointed.
        rx = _receiver_on(port)
        total = sum(n for _, n in bodies)
        wait_until("delivered", lambda: metrics.stats.forwarded == total)
        assert [r.message.SerializeToString() for r in rx.traces] == [b for b, _ in bodies], "in order, unchanged"
        assert (
            metrics.stats.forward_dropped,
            metrics.stats.forward_queue_exports,
            metrics.stats.forward_queue_bytes,
        ) == (0, 0, 0)
    finally:
        forwarder.stop()
        if rx is not None:
            rx.shutdown()
            rx.server_close()


def _receiver_on(port: int) -> Any:
    """An OTLP/HTTP receiver on a given port (OTLPReceiver picks its own), keeping each export as it came."""
    from otlp_receiver import Received

    received: list[Any] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append(Received("http/protobuf", trace_service_pb2.ExportTraceServiceRequest.FromString(body), {}))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.traces = received  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_stopping_tries_what_is_queued_once_and_counts_the_rest() -> None:
    metrics = ProcessorMetrics()
    forwarder = Forwarder(f"127.0.0.1:{dead_port()}", "grpc", metrics, retry=FAST)
    bodies = [payload(3, seed=s) for s in (4, 5)]
    for body, _ in bodies:
        forwarder.send(body)
    wait_until("retrying", lambda: metrics.stats.forward_retries >= 1)
    forwarder.stop(timeout_s=2)
    total = sum(n for _, n in bodies)
    assert (metrics.stats.forwarded, metrics.stats.forward_dropped) == (0, total)
    forwarder.send(bodies[0][0])
    assert metrics.stats.forward_dropped == total + bodies[0][1], "an export after the stop is counted, not kept"


# --------------------------------------------------------------------------- the command: receipts first, drops counted and exported


def _metric(rx: OTLPReceiver, name: str, key: str | None = None) -> dict[Any, float]:
    """The latest value of each series of a metric, by the value of attribute ``key``."""
    out: dict[Any, float] = {}
    for p in rx.points():
        if p.name == name:
            out[p.attributes.get(key) if key else None] = p.value
    return out


def _processor(tmp_path: Any, rx: OTLPReceiver, *args: str) -> ProcessorProcess:
    env = {
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": rx.grpc_endpoint,
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
    }
    return ProcessorProcess(
        str(tmp_path / "receipts.db"), "--wait-window", "0.5", *args, env=env, log=tmp_path / "processor.log"
    ).start()


def _export(p: ProcessorProcess, seed: int) -> tuple[list[Any], int]:
    ds, spans = decisions_with_spans(5, seed=seed, prefix="cmd")
    r = httpx.post(
        p.url + "/v1/traces",
        content=encode_spans(spans).SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return ds, len(spans)


def test_a_full_forward_queue_drops_copies_never_receipts(tmp_path: Any) -> None:
    with OTLPReceiver() as rx:
        p = _processor(
            tmp_path,
            rx,
            "--forward",
            f"http://127.0.0.1:{dead_port()}",
            "--forward-queue-bytes",
            "1",
            "--forward-retry-max-elapsed",
            "0",
            "--forward-retry-initial-interval",
            "0.1",
            "--forward-retry-max-interval",
            "0.2",
        )
        try:
            sent = [_export(p, seed) for seed in (11, 12, 13)]
            for ds, _ in sent:
                for d in ds:
                    assert p.wait_for(lambda: p.receipt(d.request_id)), f"no receipt for {d.request_id}: {p.tail()}"
            queued, dropped = sent[0][1], sent[1][1] + sent[2][1]
            stats = p.stats()
            assert (stats["forward_dropped"], stats["forward_queue_exports"], stats["forwarded"]) == (dropped, 1, 0)
            assert p.wait_for(
                lambda: (
                    _metric(rx, M.UNHARDCODED_PROCESSOR_FORWARD_DROPPED, A.UNHARDCODED_PROCESSOR_FORWARD_DROP_REASON)
                    == {"queue_full": dropped}
                )
            ), _metric(rx, M.UNHARDCODED_PROCESSOR_FORWARD_DROPPED, A.UNHARDCODED_PROCESSOR_FORWARD_DROP_REASON)
            assert p.wait_for(lambda: _metric(rx, M.UNHARDCODED_PROCESSOR_FORWARD_QUEUE_SIZE).get(None, 0) > 0)
        finally:
            code = p.stop()
        assert code == 0, p.tail()
        # The one still waiting when the processor stopped is counted too, in the last export of its metrics.
        assert _metric(rx, M.UNHARDCODED_PROCESSOR_FORWARD_DROPPED, A.UNHARDCODED_PROCESSOR_FORWARD_DROP_REASON) == {
            "queue_full": dropped,
            "shutdown": queued,
        }


def test_a_next_hop_down_longer_than_the_retry_limit_costs_the_copy(tmp_path: Any) -> None:
    with OTLPReceiver() as rx:
        p = _processor(
            tmp_path,
            rx,
            "--forward",
            f"127.0.0.1:{dead_port()}",
            "--forward-protocol",
            "grpc",
            "--forward-retry-max-elapsed",
            "1",
            "--forward-retry-initial-interval",
            "0.2",
            "--forward-retry-max-interval",
            "0.4",
        )
        try:
            ds, n = _export(p, 21)
            for d in ds:
                assert p.wait_for(lambda: p.receipt(d.request_id)), p.tail()
            assert p.wait_for(lambda: p.stats()["forward_dropped"] == n, timeout_s=20), p.stats()
            assert p.wait_for(
                lambda: (
                    _metric(rx, M.UNHARDCODED_PROCESSOR_FORWARD_DROPPED, A.UNHARDCODED_PROCESSOR_FORWARD_DROP_REASON)
                    == {"retries_exhausted": n}
                )
            )
            assert p.stats()["forward_retries"] >= 1
        finally:
            assert p.stop() == 0, p.tail()
