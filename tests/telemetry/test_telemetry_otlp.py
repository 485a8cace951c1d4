"""Decision telemetry over real OTLP: the SDK's gRPC and HTTP exporters send to a receiver on loopback, which decodes it."""

from __future__ import annotations

import base64
import json
import socket
import time

import httpx
import pytest
from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from otlp_receiver import OTLPReceiver
from telemetry_fixtures import BODY, TOOLS_BODY, Simulators, catalog, policy
from unhardcoded.receipts import Receipt, rebuild_receipts
from unhardcoded.router import Router
from unhardcoded.semconv import attributes as A
from unhardcoded.semconv import gen_ai as G
from unhardcoded.semconv import metrics as M
from unhardcoded.semconv import spans as S
from unhardcoded.telemetry import configure, losses, reset_losses
from unhardcoded.telemetry.setup import TelemetryConfigError
from unhardcoded.testing import capture
from unhardcoded.testing.simulator import error, ok


@pytest.fixture
def rx():
    with OTLPReceiver() as receiver:
        yield receiver


@pytest.fixture
def sims():
    s = Simulators({"sim-a": {"cheap-a": error(500)}, "sim-b": {"mid-b": ok("z" * 40)}})
    yield s
    s.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_routed_decision_arrives_whole_over_otlp(rx: OTLPReceiver, sims: Simulators, protocol: str):
    endpoint = rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint
    setup = configure(service_name="router-svc", endpoint=endpoint, protocol=protocol, set_global=False)
    assert setup.traces_installed and setup.metrics_installed and setup.span_exporters == [f"otlp ({protocol})"]
    cat = catalog()
    router = Router(cat, client=sims.client, tracer_provider=setup.tracer_provider, meter_provider=setup.meter_provider)
    decision, _, err = router.route(policy(cat, fallback=["mid-b"]), TOOLS_BODY)
    assert err is None and decision.answered_by == "mid-b"
    assert setup.force_flush()
    spans = rx.wait_for_spans(lambda got: len(got) >= 3)
    assert {s.transport for s in spans} == {protocol}
    assert {s.service for s in spans} == {"router-svc"}
    [route] = [s for s in spans if s.name == "route support"]
    attempts = sorted(
        (s for s in spans if s.name.startswith("chat ")), key=lambda s: s.attributes[A.UNHARDCODED_ATTEMPT_INDEX]
    )
    assert route.span_id == decision.span_id and route.trace_id == decision.trace_id
    a = route.attributes
    assert a[A.UNHARDCODED_REQUEST_ID] == decision.request_id
    assert a[A.UNHARDCODED_POLICY_BODY] == decision.policy.canonical
    assert a[A.UNHARDCODED_POLICY_FINGERPRINT] == decision.policy.fingerprint
    assert a[A.UNHARDCODED_CANDIDATES] == decision.candidates
    assert a[A.UNHARDCODED_REJECTED] == [r.model for r in decision.rejected]
    assert a[A.UNHARDCODED_FALLBACK_HOPS] == 1 and a[A.UNHARDCODED_FALLBACK_TRIGGERED] is True
    assert a[A.UNHARDCODED_LATENCY_MS] == decision.latency_ms
    assert set(a) >= S.DECISION_SPAN_REQUIRED_ATTRIBUTES
    assert [name for name, _ in route.events] == [S.REJECTION_EVENT] * len(decision.rejected)
    assert [ev[A.UNHARDCODED_REJECTION_MODEL] for _, ev in route.events] == [r.model for r in decision.rejected]
    assert all(set(ev) >= S.REJECTION_EVENT_REQUIRED_ATTRIBUTES for _, ev in route.events)
    assert [s.name for s in attempts] == ["chat cheap-a", "chat mid-b"]
    assert all(s.parent_span_id == route.span_id for s in attempts)
    assert attempts[0].attributes[G.ERROR_TYPE] == "500" and attempts[0].status_code == 2
    assert attempts[1].attributes[A.UNHARDCODED_FALLBACK_REASON] == "error"
    assert route.dropped_attributes == route.dropped_events == 0
    # What went over the wire rebuilds to the decision's own receipt.
    rebuilt = rebuild_receipts(*[r.message for r in rx.traces])
    assert rebuilt.receipts == [Receipt.from_decision(decision)] and rebuilt.receipts[0].complete
    # Metrics came the same way.
    assert rx.wait_for(lambda r: any(p.name == M.UNHARDCODED_DECISIONS for p in r.points()))
    [count] = [p for p in rx.points() if p.name == M.UNHARDCODED_DECISIONS]
    assert count.value == 1 and count.service == "router-svc"
    assert count.attributes == {
        A.UNHARDCODED_POLICY_NAME: "support",
        A.UNHARDCODED_DECISION_OUTCOME: "answered",
        A.UNHARDCODED_SELECTED_MODEL: "cheap-a",
        A.UNHARDCODED_ANSWERED_MODEL: "mid-b",
    }
    [fallback] = [p for p in rx.points() if p.name == M.UNHARDCODED_FALLBACKS]
    assert fallback.value == 1 and fallback.attributes[A.UNHARDCODED_FALLBACK_REASON] == "error"
    [duration] = [p for p in rx.points() if p.name == M.UNHARDCODED_DECISION_DURATION]
    assert duration.count == 1
    setup.shutdown()


def test_the_standard_otel_variables_choose_endpoint_protocol_and_service(
    rx: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.http_endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    setup = configure(service_name="in-code", set_global=False)
    assert setup.span_exporters == ["otlp (http/protobuf)"] and setup.metric_exporters == []
    cat = catalog()
    decision = Router(cat, tracer_provider=setup.tracer_provider, meter_provider=setup.meter_provider).decide(
        policy(cat), BODY
    )
    setup.force_flush()
    [span] = rx.wait_for_spans(lambda got: len(got) >= 1)
    assert span.transport == "http/protobuf" and span.service == "from-env"
    assert span.attributes[A.UNHARDCODED_REQUEST_ID] == decision.request_id
    setup.shutdown()


def test_the_grpc_protocol_variable(rx: OTLPReceiver, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", rx.grpc_endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")  # the per-signal variable wins
    setup = configure(service_name="grpc-svc", metrics=False, set_global=False)
    cat = catalog()
    Router(cat, tracer_provider=setup.tracer_provider).decide(policy(cat), BODY)
    setup.force_flush()
    [span] = rx.wait_for_spans(lambda got: len(got) >= 1)
    assert span.transport == "grpc" and span.service == "grpc-svc"
    setup.shutdown()


def test_exporter_choices(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "console,otlp_proto_http")
    setup = configure(set_global=False, metric_export_interval_ms=3_600_000)
    assert setup.span_exporters == [] and setup.metric_exporters == ["console", "otlp (http/protobuf)"]
    setup.shutdown()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "no-such-exporter")
    with pytest.raises(TelemetryConfigError, match="no-such-exporter"):
        configure(set_global=False, metrics=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(TelemetryConfigError, match="http/json"):
        configure(set_global=False, metrics=False)
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    setup = configure(set_global=False)
    assert not setup.traces_installed and not setup.metrics_installed


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_an_exporter_pointed_at_a_closed_port_never_breaks_routing(
    protocol: str, sims: Simulators, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    reset_losses()
    setup = configure(
        endpoint=f"http://127.0.0.1:{free_port()}",
        protocol=protocol,
        set_global=False,
        metric_export_interval_ms=3_600_000,
    )
    cat = catalog()
    router = Router(cat, client=sims.client, tracer_provider=setup.tracer_provider, meter_provider=setup.meter_provider)
    started = time.perf_counter()
    decision, result, err = router.route(policy(cat, fallback=["mid-b"]), BODY)
    elapsed = time.perf_counter() - started
    assert err is None and result is not None and decision.answered_by == "mid-b"
    assert elapsed < 1.0  # the export happens off the request path
    assert router.decide(policy(cat), BODY).selected is not None
    setup.force_flush(timeout_millis=10_000)
    deadline = time.monotonic() + 15
    while losses().spans_not_exported < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert losses().spans_not_exported >= 4  # two decisions and two attempts
    setup.meter_provider.force_flush(10_000)
    assert losses().metric_exports_failed >= 1
    setup.shutdown()


def test_the_receiver_reads_otlp_json_too(rx: OTLPReceiver):
    tel = capture(service_name="json-svc")
    cat = catalog()
    decision = tel.router(cat).decide(policy(cat), TOOLS_BODY)
    doc = MessageToDict(encode_spans(tel.spans()))
    for rs in doc["resourceSpans"]:  # OTLP/JSON ids are hex, not proto3 JSON's base64
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if s.get(key):
                        s[key] = base64.b64decode(s[key]).hex()
    response = httpx.post(
        f"{rx.http_endpoint}/v1/traces", content=json.dumps(doc), headers={"content-type": "application/json"}
    )
    assert response.status_code == 200
    [span] = rx.spans()
    assert span.transport == "http/json" and span.span_id == decision.span_id
    assert len(span.events) == len(decision.rejected)
    assert rebuild_receipts(rx.traces[0].message).receipts == [Receipt.from_decision(decision)]
    tel.shutdown()
