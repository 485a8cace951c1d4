"""`unhardcoded processor --forward`: spans reach a real OpenTelemetry Collector unchanged, also across an outage.

The chain is all real and on loopback: exports (OTLP/HTTP protobuf and JSON,
OTLP/gRPC) -> the `unhardcoded processor` command -> the Collector built by
scripts/install-infra.sh (an OTLP receiver, an OTLP exporter) -> an OTLP
receiver in this process that keeps what arrives. The Collector is not running
when the first exports come in: the processor must acknowledge them and store
their receipts anyway, keep their copies, and deliver every span once the
Collector is up, exactly once, with ids, attributes, events, links and resource
as they were sent. The processor's own metrics go to the same receiver.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind

from otlp_receiver import OTLPReceiver
from processor_fixtures import decisions_with_spans
from unhardcoded.semconv import attributes as A
from unhardcoded.semconv import metrics as M

from .infra import Process, binary, free_port, url_ok, wait_for

pytestmark = pytest.mark.e2e

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


# --------------------------------------------------------------------------- what is sent


def foreign_spans() -> list[Any]:
    """Spans of another service the processor makes no receipt of, but must forward all the same."""
    exporter = InMemorySpanExporter()
    tp = TracerProvider(
        resource=Resource.create(
            {"service.name": "shop-frontend", "deployment.environment.name": "e2e", "host.cpu.count": 8}
        )
    )
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = tp.get_tracer("shop.http", "1.2.3", schema_url="https://opentelemetry.io/schemas/1.27.0")
    with tracer.start_as_current_span(
        "GET /cart", kind=SpanKind.SERVER, attributes={"http.request.method": "GET", "http.response.status_code": 200}
    ) as root:
        root.add_event("cache.miss", {"cache.key": "cart:42", "retries": 2, "ratio": 0.5, "tags": ["a", "b"]})
        with tracer.start_as_current_span(
            "SELECT carts", kind=SpanKind.CLIENT, links=[Link(root.get_span_context(), {"link.kind": "follows"})]
        ) as child:
            child.set_attribute("db.system.name", "postgresql")
            child.set_attribute("db.rows", [1, 2, 3])
    return list(exporter.get_finished_spans())


def with_a_bad_span(message: Any) -> Any:
    """The export as an SDK would send it, plus one span whose ids are zero: refused, so never forwarded."""
    bad = message.resource_spans[0].scope_spans[0].spans.add()
    bad.name = "no ids"
    bad.trace_id = bytes(16)
    bad.span_id = bytes(8)
    return message


def _hex_ids(doc: Any) -> Any:
    """proto3 JSON writes ids in base64; OTLP/JSON wants them in hex."""
    if isinstance(doc, dict):
        return {
            k: (
                base64.b64decode(v).hex()
                if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str)
                else _hex_ids(v)
            )
            for k, v in doc.items()
        }
    if isinstance(doc, list):
        return [_hex_ids(v) for v in doc]
    return doc


def span_records(message: Any) -> dict[tuple[str, str], bytes]:
    """Each span with everything it is exported with (resource, scope, schema urls), serialized deterministically."""
    out: dict[tuple[str, str], bytes] = {}
    for rs in message.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                key = (span.trace_id.hex(), span.span_id.hex())
                out[key] = b"|".join(
                    [
                        rs.resource.SerializeToString(deterministic=True),
                        rs.schema_url.encode(),
                        ss.scope.SerializeToString(deterministic=True),
                        ss.schema_url.encode(),
                        span.SerializeToString(deterministic=True),
                    ]
                )
    return out


def arrived(rx: OTLPReceiver) -> list[tuple[tuple[str, str], bytes]]:
    """Every span the final receiver got, duplicates kept, as (key, record)."""
    out = []
    for received in list(rx.traces):
        out.extend(span_records(received.message).items())
    return out


# --------------------------------------------------------------------------- the real Collector and processor


def start_collector(tmp: Path, grpc_port: int, http_port: int, sink_grpc: str) -> Process:
    """The built Collector: OTLP in on the given ports, OTLP/gRPC out to ``sink_grpc``."""
    health = free_port()
    config = tmp / "otelcol-next-hop.yaml"
    config.write_text(
        json.dumps(
            {
                "extensions": {"health_check": {"endpoint": f"127.0.0.1:{health}"}},
                "receivers": {
                    "otlp": {
                        "protocols": {
                            "grpc": {"endpoint": f"127.0.0.1:{grpc_port}"},
                            "http": {"endpoint": f"127.0.0.1:{http_port}"},
                        }
                    }
                },
                "exporters": {"otlp_grpc": {"endpoint": sink_grpc, "tls": {"insecure": True}}},
                "service": {
                    "extensions": ["health_check"],
                    "telemetry": {"metrics": {"level": "none"}},
                    "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp_grpc"]}},
                },
            }
        )
    )
    p = Process("otelcol", [binary("otelcol-unhardcoded"), "--config", str(config)], tmp / "otelcol.log")
    try:
        p.wait_ready(url_ok(f"http://127.0.0.1:{health}/"))
    except BaseException:
        p.stop()
        raise
    return p


def start_processor(tmp: Path, forward: str, protocol: str, metrics_to: str) -> tuple[Process, str, str]:
    http, grpc_port = free_port(), free_port()
    cmd = [
        sys.executable,
        "-m",
        "unhardcoded.cli",
        "processor",
        "--port",
        str(http),
        "--grpc-port",
        str(grpc_port),
        "--store",
        str(tmp / "processor.db"),
        "--wait-window",
        "1",
        "--no-access-log",
        "--forward",
        forward,
        "--forward-protocol",
        protocol,
        "--forward-retry-initial-interval",
        "0.2",
        "--forward-retry-max-interval",
        "1",
    ]
    env = {k: "" for k in os.environ if k.startswith("OTEL_")}
    env.update(
        {
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": metrics_to,
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc",
            "OTEL_METRIC_EXPORT_INTERVAL": "300",
        }
    )
    p = Process("processor", cmd, tmp / "processor.log", env)
    try:
        p.wait_ready(url_ok(f"http://127.0.0.1:{http}/healthz"))
    except BaseException:
        p.stop()
        raise
    return p, f"http://127.0.0.1:{http}", f"127.0.0.1:{grpc_port}"


def export(kind: str, message: Any, http_url: str, grpc_target: str) -> None:
    """One export to the processor by ``kind`` (http/protobuf, http/json, grpc); fails unless acknowledged whole."""
    if kind == "grpc":
        with grpc.insecure_channel(grpc_target) as channel:
            raw = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)(
                message.SerializeToString(), timeout=10
            )
        answer = trace_service_pb2.ExportTraceServiceResponse.FromString(raw)
    elif kind == "http/json":
        body = json.dumps(_hex_ids(json_format.MessageToDict(message, use_integers_for_enums=True)))
        r = httpx.post(http_url + "/v1/traces", content=body, headers={"Content-Type": "application/json"}, timeout=10)
        assert r.status_code == 200, r.text
        answer = json_format.Parse(r.text or "{}", trace_service_pb2.ExportTraceServiceResponse())
    else:
        r = httpx.post(
            http_url + "/v1/traces",
            content=message.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        answer = trace_service_pb2.ExportTraceServiceResponse.FromString(r.content)
    bad = sum(1 for rs in message.resource_spans for ss in rs.scope_spans for s in ss.spans if not any(s.trace_id))
    assert answer.partial_success.rejected_spans == bad


def last_points(rx: OTLPReceiver, name: str, key: str | None = None) -> dict[Any, float]:
    """The latest value of a cumulative metric per value of attribute ``key``."""
    out: dict[Any, float] = {}
    for p in rx.points():
        if p.name == name and p.service == "unhardcoded-processor":
            out[p.attributes.get(key) if key else None] = p.value
    return out


# --------------------------------------------------------------------------- the test


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_spans_reach_the_collector_unchanged_across_an_outage(tmp_path: Path, protocol: str) -> None:
    binary("otelcol-unhardcoded")  # fails now, naming how to build it, rather than after the outage half
    with OTLPReceiver() as sink:
        collector_grpc, collector_http = free_port(), free_port()
        next_hop = f"http://127.0.0.1:{collector_http}" if protocol == "http" else f"127.0.0.1:{collector_grpc}"
        processor, http_url, grpc_target = start_processor(tmp_path, next_hop, protocol, sink.grpc_endpoint)
        collector = None
        try:
            # While the Collector is down: every export is acknowledged and its receipts are stored.
            before, spans_before = decisions_with_spans(12, seed=41, prefix=f"fwd-{protocol}-a")
            first = [
                encode_spans(spans_before[:10]),
                with_a_bad_span(encode_spans(spans_before[10:] + foreign_spans())),
            ]
            export("http/protobuf", first[0], http_url, grpc_target)
            export("grpc", first[1], http_url, grpc_target)
            for d in before:
                wait_for(
                    f"receipt {d.request_id} while the next hop is down",
                    lambda: httpx.get(f"{http_url}/receipts/{d.request_id}", timeout=5).status_code == 200,
                    timeout=20,
                )
            stats = wait_for(
                "the forwarder retrying",
                lambda: (s := httpx.get(http_url + "/stats", timeout=5).json())["forward_retries"] >= 2 and s,
            )
            assert stats["forwarded"] == 0 and stats["forward_dropped"] == 0
            assert stats["forward_queue_exports"] == 2 and stats["forward_queue_bytes"] > 0
            assert not sink.traces

            # The Collector comes up on the address the processor was told: the held copies go through.
            collector = start_collector(tmp_path, collector_grpc, collector_http, f"127.0.0.1:{sink.grpc_port}")
            after, spans_after = decisions_with_spans(6, seed=42, prefix=f"fwd-{protocol}-b")
            second = [encode_spans(spans_after)]
            export("http/json", second[0], http_url, grpc_target)

            sent: dict[tuple[str, str], bytes] = {}
            for message in first + second:
                records = span_records(message)
                sent.update({k: v for k, v in records.items() if k[0] != "0" * 32})
            wait_for(
                "every forwarded span at the Collector's next hop",
                lambda: {k for k, _ in arrived(sink)} >= set(sent),
                timeout=60,
            )

            got = arrived(sink)
            keys = [k for k, _ in got]
            assert len(keys) == len(set(keys)) == len(sent), "each span forwarded exactly once, the refused one never"
            changed = [k for k, record in got if record != sent[k]]
            assert not changed, f"{len(changed)} spans arrived changed, e.g. {changed[:3]}"
            services = {
                r
                for r in (
                    dict((kv.key, kv.value.string_value) for kv in rs.resource.attributes).get("service.name")
                    for received in sink.traces
                    for rs in received.message.resource_spans
                )
            }
            assert services == {"checkout", "shop-frontend"}

            for d in after:
                wait_for(
                    f"receipt {d.request_id}",
                    lambda: httpx.get(f"{http_url}/receipts/{d.request_id}", timeout=5).status_code == 200,
                    timeout=20,
                )
            stats = wait_for(
                "the forward queue empty",
                lambda: (s := httpx.get(http_url + "/stats", timeout=5).json())["forward_queue_exports"] == 0 and s,
            )
            assert stats["forwarded"] == len(sent) and stats["forward_dropped"] == 0
            assert stats["forward_queue_bytes"] == 0

            # The processor's own metrics, by their registry names, at the same receiver.
            wait_for(
                "forward.sent reported",
                lambda: last_points(sink, M.UNHARDCODED_PROCESSOR_FORWARD_SENT).get(None) == len(sent),
            )
            received = last_points(sink, M.UNHARDCODED_PROCESSOR_SPANS_RECEIVED, A.UNHARDCODED_PROCESSOR_TRANSPORT)
            assert received == {
                "http": len(spans_before[:10]) + len(spans_after),
                "grpc": len(spans_before[10:]) + 2 + 1,
            }
            assert last_points(sink, M.UNHARDCODED_PROCESSOR_SPANS_REJECTED, A.UNHARDCODED_PROCESSOR_TRANSPORT) == {
                "grpc": 1
            }
            assert (
                last_points(sink, M.UNHARDCODED_PROCESSOR_FORWARD_DROPPED, A.UNHARDCODED_PROCESSOR_FORWARD_DROP_REASON)
                == {}
            )
            finished = last_points(
                sink, M.UNHARDCODED_PROCESSOR_RECEIPTS_FINISHED, A.UNHARDCODED_PROCESSOR_RECEIPT_COMPLETE
            )
            assert finished == {True: len(before) + len(after)}
        finally:
            processor.stop()
            if collector is not None:
                collector.stop()
        assert processor.proc.returncode == 0, processor.log_tail()
