"""The global OpenTelemetry set-up, each case in a fresh Python process (global providers can be set once per process).

No SDK at all: routing works and records nothing. ``configure()`` installs
providers when the application has none, and leaves an application's own alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from otlp_receiver import OTLPReceiver
from unhardcoded.semconv import attributes as A

TESTS = Path(__file__).parent.parent


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 60) -> Any:
    """Run ``code`` in a fresh interpreter (tests/ importable); it prints one JSON document last."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(TESTS), full_env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=TESTS,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_with_no_sdk_routing_works_and_records_nothing():
    out = run_python("""
        import json, time
        from opentelemetry import trace, metrics
        from telemetry_fixtures import BODY, Simulators, catalog, policy
        from unhardcoded import Router
        from unhardcoded.telemetry import losses
        from unhardcoded.testing.simulator import error

        cat = catalog()
        sims = Simulators({"sim-a": {"cheap-a": error(500)}})
        router = Router(cat, client=sims.client)
        dry = router.decide(policy(cat), BODY)
        decision, result, err = router.route(policy(cat, fallback=["mid-b"]), BODY)
        provider_headers = sims["sim-b"].requests[0].headers
        no_sdk = type(trace.get_tracer_provider()).__name__

        # An SDK installed later is picked up by the same Router: proof the spans above were not made and lost.
        from unhardcoded.testing import capture
        sdk = capture()
        trace.set_tracer_provider(sdk.tracer_provider)
        later = router.decide(policy(cat), BODY)
        sims.close()
        print(json.dumps({
            "provider": no_sdk, "dry": [dry.selected.model, dry.trace_id, dry.timestamp],
            "routed": [decision.answered_by, decision.outcome, decision.trace_id, len(decision.attempts)],
            "traceparent": "traceparent" in provider_headers, "losses": losses().total,
            "later": [later.trace_id is not None, [s.name for s in sdk.spans()]],
        }))
    """)
    assert out["provider"] == "ProxyTracerProvider"
    assert out["dry"][0] == "cheap-a" and out["dry"][1] is None and out["dry"][2].endswith("Z")
    assert out["routed"] == ["mid-b", "answered", None, 2]
    assert out["traceparent"] is False  # no trace to continue
    assert out["losses"] == 0
    assert out["later"] == [True, ["route support"]]


def test_configure_installs_global_providers_when_the_app_has_none():
    with OTLPReceiver() as rx:
        out = run_python(
            """
            import json
            from opentelemetry import trace, metrics
            import unhardcoded
            from telemetry_fixtures import BODY, catalog, policy

            setup = unhardcoded.configure(service_name="svc-global")
            installed = [setup.traces_installed, setup.metrics_installed,
                         trace.get_tracer_provider() is setup.tracer_provider,
                         metrics.get_meter_provider() is setup.meter_provider]
            cat = catalog()
            decision = unhardcoded.Router(cat).decide(policy(cat), BODY)
            setup.shutdown()
            print(json.dumps({"installed": installed, "request_id": decision.request_id}))
        """,
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": rx.grpc_endpoint},
        )
        assert out["installed"] == [True, True, True, True]
        [span] = rx.wait_for_spans(lambda got: len(got) >= 1)
        assert span.service == "svc-global" and span.transport == "grpc"
        assert span.attributes[A.UNHARDCODED_REQUEST_ID] == out["request_id"]
        assert rx.wait_for(lambda r: bool(r.points()))


def test_configure_leaves_an_apps_own_providers_alone():
    out = run_python("""
        import json
        from opentelemetry import trace, metrics
        import unhardcoded
        from unhardcoded.testing import capture
        from telemetry_fixtures import BODY, catalog, policy

        sdk = capture()
        tp, mp = sdk.tracer_provider, sdk.meter_provider
        trace.set_tracer_provider(tp); metrics.set_meter_provider(mp)
        setup = unhardcoded.configure(service_name="ignored", endpoint="http://127.0.0.1:9")
        cat = catalog()
        unhardcoded.Router(cat).decide(policy(cat), BODY)
        print(json.dumps({
            "installed": [setup.traces_installed, setup.metrics_installed],
            "same": [trace.get_tracer_provider() is tp, metrics.get_meter_provider() is mp,
                     setup.tracer_provider is tp, setup.meter_provider is mp],
            "spans": [s.name for s in sdk.spans()],
        }))
    """)
    assert out == {"installed": [False, False], "same": [True, True, True, True], "spans": ["route support"]}


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_collector_that_is_down_at_exit_does_not_hang_or_fail_the_app(protocol: str):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = run_python(
        """
        import json, time
        import unhardcoded
        from telemetry_fixtures import BODY, catalog, policy

        setup = unhardcoded.configure(service_name="down")
        cat = catalog()
        started = time.perf_counter()
        decisions = [unhardcoded.Router(cat).decide(policy(cat), BODY) for _ in range(50)]
        elapsed = time.perf_counter() - started
        setup.shutdown()
        print(json.dumps({"ok": all(d.selected for d in decisions), "elapsed": elapsed,
                          "lost": unhardcoded.losses().spans_not_exported}))
    """,
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
        },
    )
    assert out["ok"] and out["elapsed"] < 2.0
    assert out["lost"] == 50
