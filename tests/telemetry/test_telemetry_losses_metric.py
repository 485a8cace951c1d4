"""What telemetry loses reaches a metrics backend as ``unhardcoded.telemetry.losses``, by kind, over real OTLP.

Each case runs in a fresh interpreter (a global meter provider is set once per
process): spans go to a port nobody listens on, metrics to a real OTLP receiver
on loopback.
"""

from __future__ import annotations

import socket

import pytest

from otlp_receiver import OTLPReceiver
from telemetry.test_telemetry_setup import run_python
from unhardcoded.semconv import attributes as A
from unhardcoded.semconv import metrics as M


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_spans_an_exporter_could_not_send_are_exported_as_a_loss_metric(protocol: str) -> None:
    with OTLPReceiver() as rx:
        metrics_endpoint = rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint + "/v1/metrics"
        out = run_python(
            """
            import json
            import unhardcoded
            from telemetry_fixtures import BODY, catalog, policy

            setup = unhardcoded.configure(service_name="lossy")
            cat = catalog()
            for _ in range(20):
                unhardcoded.Router(cat).decide(policy(cat), BODY)
            setup.shutdown()
            print(json.dumps({"lost": unhardcoded.losses().spans_not_exported}))
        """,
            env={
                "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{_dead_port()}"
                + ("/v1/traces" if protocol != "grpc" else ""),
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": metrics_endpoint,
                "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
            },
        )
        assert out["lost"] == 20
        points = [p for p in rx.points() if p.name == M.UNHARDCODED_TELEMETRY_LOSSES]
        assert points, sorted({p.name for p in rx.points()})
        last = {p.attributes[A.UNHARDCODED_TELEMETRY_LOSS_KIND]: p for p in points}
        assert last["spans_not_exported"].value == 20
        assert last["spans_not_exported"].unit == M.UNHARDCODED_TELEMETRY_LOSSES_UNIT
        assert set(last) == {"spans_not_exported"}, "only kinds that lost something are reported"


def test_no_meter_provider_no_metric_and_the_count_still_reads() -> None:
    out = run_python("""
        import json
        from unhardcoded.telemetry.losses import count_loss, losses, reset_losses

        count_loss("truncated", 3)
        count_loss("errors")
        seen = losses()
        print(json.dumps({"truncated": seen.truncated, "errors": seen.errors, "reset": reset_losses().total,
                          "after": losses().total}))
    """)
    assert out == {"truncated": 3, "errors": 1, "reset": 4, "after": 0}
