"""A small real OTLP receiver on loopback: gRPC TraceService/MetricsService and HTTP /v1/traces, /v1/metrics.

The SDK's OTLP exporters send to it over the wire; it decodes what arrives
(protobuf, or OTLP/JSON with hex ids) into the opentelemetry-proto request
messages and keeps them, noting the transport each came by.

>>> with OTLPReceiver() as rx:                      # doctest: +SKIP
...     exporter = OTLPSpanExporter(endpoint=rx.grpc_endpoint)
...     ...
...     rx.wait_for_spans(lambda spans: len(spans) >= 3)
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
import zlib
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class Received:
    """One export request as it arrived."""

    transport: str  # "grpc", "http/protobuf" or "http/json"
    message: Any  # ExportTraceServiceRequest or ExportMetricsServiceRequest
    headers: dict[str, str]


@dataclass(frozen=True)
class MetricPoint:
    """One data point, flattened: metric name, unit, attributes, and its value (sum/gauge) or count/sum (histogram)."""

    service: str | None
    name: str
    unit: str
    attributes: dict[str, Any]
    value: float | None
    count: int | None
    sum: float | None
    temporality: int | None


def _any_value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


def attributes_of(kvs: Any) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in kvs}


_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def _hex_ids_to_base64(doc: Any) -> Any:
    """OTLP/JSON writes trace and span ids as hex; proto3 JSON (json_format) expects base64."""
    if isinstance(doc, dict):
        out = {}
        for key, value in doc.items():
            if (
                key in _ID_KEYS
                and isinstance(value, str)
                and value
                and all(c in "0123456789abcdefABCDEF" for c in value)
            ):
                out[key] = base64.b64encode(bytes.fromhex(value)).decode()
            else:
                out[key] = _hex_ids_to_base64(value)
        return out
    if isinstance(doc, list):
        return [_hex_ids_to_base64(v) for v in doc]
    return doc


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OTLPReceiver) -> None:
        self.receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:
        self.receiver._keep("traces", Received("grpc", request, {k: v for k, v in context.invocation_metadata()}))
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OTLPReceiver) -> None:
        self.receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:
        self.receiver._keep("metrics", Received("grpc", request, {k: v for k, v in context.invocation_metadata()}))
        return metrics_service_pb2.ExportMetricsServiceResponse()


_HTTP_SIGNALS = {
    "/v1/traces": ("traces", trace_service_pb2.ExportTraceServiceRequest, trace_service_pb2.ExportTraceServiceResponse),
    "/v1/metrics": (
        "metrics",
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
    ),
}


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        signal = _HTTP_SIGNALS.get(self.path.split("?", 1)[0])
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if signal is None:
            self._answer(404, "text/plain", b"unknown OTLP path")
            return
        kind, request_cls, response_cls = signal
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if content_type == "application/json":
                message = json_format.ParseDict(_hex_ids_to_base64(json.loads(body)), request_cls())
                transport, reply, reply_type = "http/json", b"{}", "application/json"
            else:
                message = request_cls.FromString(body)
                transport, reply, reply_type = (
                    "http/protobuf",
                    response_cls().SerializeToString(),
                    "application/x-protobuf",
                )
        except Exception as exc:  # noqa: BLE001 - a bad payload is the sender's problem: say so
            self.server.receiver.errors.append(f"{self.path}: {exc!r}")
            self._answer(400, "text/plain", str(exc).encode())
            return
        self.server.receiver._keep(kind, Received(transport, message, {k.lower(): v for k, v in self.headers.items()}))
        self._answer(200, reply_type, reply)

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, receiver: OTLPReceiver) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.receiver = receiver


class OTLPReceiver:
    """OTLP over gRPC and HTTP on 127.0.0.1 (ephemeral ports); keeps every export request it decodes."""

    def __init__(self) -> None:
        self.traces: list[Received] = []
        self.metrics: list[Received] = []
        self.errors: list[str] = []
        self._changed = threading.Condition()
        self._grpc: grpc.Server | None = None
        self._http: _HTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self.grpc_port = 0
        self.http_port = 0

    # ---- lifecycle

    def start(self) -> OTLPReceiver:
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self._grpc)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsService(self), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()
        self._http = _HTTPServer(self)
        self.http_port = self._http.server_address[1]
        self._http_thread = threading.Thread(target=self._http.serve_forever, name="otlp-receiver-http", daemon=True)
        self._http_thread.start()
        return self

    def close(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> OTLPReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        """The base URL; exporters append ``/v1/traces`` and ``/v1/metrics``."""
        return f"http://127.0.0.1:{self.http_port}"

    # ---- what arrived

    def _keep(self, kind: str, received: Received) -> None:
        with self._changed:
            (self.traces if kind == "traces" else self.metrics).append(received)
            self._changed.notify_all()

    def clear(self) -> None:
        with self._changed:
            self.traces.clear()
            self.metrics.clear()

    def spans(self) -> list[Any]:
        """Every span received so far, as ``opentelemetry.proto.trace.v1.Span`` messages, with ``.service`` noted."""
        with self._changed:
            received = list(self.traces)
        out = []
        for r in received:
            for rs in r.message.resource_spans:
                service = attributes_of(rs.resource.attributes).get("service.name")
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        out.append(ReceivedSpan(span, service, r.transport))
        return out

    def points(self) -> list[MetricPoint]:
        """Every metric data point received so far."""
        with self._changed:
            received = list(self.metrics)
        out = []
        for r in received:
            for rm in r.message.resource_metrics:
                service = attributes_of(rm.resource.attributes).get("service.name")
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        which = m.WhichOneof("data")
                        data = getattr(m, which)
                        for p in data.data_points:
                            value = None
                            if hasattr(p, "as_double") and p.WhichOneof("value") is not None:
                                value = getattr(p, p.WhichOneof("value"))
                            out.append(
                                MetricPoint(
                                    service,
                                    m.name,
                                    m.unit,
                                    attributes_of(p.attributes),
                                    value,
                                    getattr(p, "count", None) if which == "histogram" else None,
                                    getattr(p, "sum", None) if which == "histogram" else None,
                                    getattr(data, "aggregation_temporality", None),
                                )
                            )
        return out

    def wait_for(self, ready: Callable[[OTLPReceiver], bool], timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if ready(self):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.1))

    def wait_for_spans(self, ready: Callable[[list[Any]], bool], timeout: float = 15.0) -> list[Any]:
        """Wait until ``ready(spans)`` holds; returns the spans (also when it timed out: the test's assert says why)."""
        self.wait_for(lambda rx: ready(rx.spans()), timeout)
        return self.spans()


class ReceivedSpan:
    """An OTLP ``Span`` message with the service that sent it, its transport, and decoded attributes and events."""

    def __init__(self, span: Any, service: str | None, transport: str) -> None:
        self.pb = span
        self.service = service
        self.transport = transport
        self.name = span.name
        self.kind = span.kind
        self.trace_id = span.trace_id.hex()
        self.span_id = span.span_id.hex()
        self.parent_span_id = span.parent_span_id.hex() or None
        self.attributes = attributes_of(span.attributes)
        self.events = [(e.name, attributes_of(e.attributes)) for e in span.events]
        self.status_code = span.status.code
        self.dropped_attributes = span.dropped_attributes_count
        self.dropped_events = span.dropped_events_count

    def __repr__(self) -> str:
        return f"ReceivedSpan({self.name!r}, {self.service}, trace={self.trace_id[:8]}, span={self.span_id}, parent={self.parent_span_id})"
