"""Zero-code: `opentelemetry-instrument python app.py` against `unhardcoded serve`, both exporting OTLP to one receiver.

The app's client span, the proxy's server span, the decision span and the
attempt spans form one trace per request, and the provider is called with the
attempt span as parent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.trace import SpanKind

from apps.proxy_harness import FIRST_FALLBACK, SELECTED, catalog_simulators, free_port

try:
    from otlp_receiver import OTLPReceiver
except ImportError:  # the shared receiver is not there: a minimal OTLP/HTTP one of our own
    OTLPReceiver = None  # type: ignore[assignment,misc]
from unhardcoded import cli
from unhardcoded.semconv import attributes as A
from unhardcoded.testing.simulator import error

APP = Path(__file__).parent.parent / "apps" / "client_app.py"


class _Span:
    def __init__(self, pb: Any, service: str | None) -> None:
        self.pb, self.service, self.name, self.kind = pb, service, pb.name, pb.kind
        self.trace_id, self.span_id = pb.trace_id.hex(), pb.span_id.hex()
        self.parent_span_id = pb.parent_span_id.hex() or None
        self.attributes = {kv.key: _value(kv.value) for kv in pb.attributes}

    def __repr__(self) -> str:
        return f"_Span({self.name!r}, {self.service}, parent={self.parent_span_id})"


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, which) if which else None


class MiniReceiver:
    """OTLP/HTTP protobuf traces on loopback: decodes each ExportTraceServiceRequest and keeps its spans."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        received: list[_Span] = []
        self._spans = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    import gzip

                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                for rs in request.resource_spans:
                    service = next(
                        (kv.value.string_value for kv in rs.resource.attributes if kv.key == "service.name"), None
                    )
                    received.extend(_Span(span, service) for ss in rs.scope_spans for span in ss.spans)
                payload = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> MiniReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def wait_for_spans(self, ready: Any, timeout: float = 15.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while not ready(list(self._spans)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self._spans)


Receiver = OTLPReceiver if OTLPReceiver is not None else MiniReceiver
SERVER, CLIENT = SpanKind.SERVER.value + 1, SpanKind.CLIENT.value + 1  # OTLP numbers kinds from 1 (INTERNAL)


def _otel_env(receiver: Any, service: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        {
            "OTEL_SERVICE_NAME": service,
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
    )
    return env


def test_one_trace_from_the_app_through_the_proxy_to_the_provider(simulated_provider: Any, tmp_path: Path) -> None:
    assert shutil.which("opentelemetry-instrument"), (
        "opentelemetry-instrument is not on PATH (opentelemetry-instrumentation)"
    )
    assert importlib.util.find_spec("opentelemetry.distro"), (
        "opentelemetry-distro is not installed: without it opentelemetry-instrument configures no SDK"
    )
    sims = catalog_simulators(simulated_provider)
    sims["xai"].set_behavior(SELECTED, error(503))
    providers = tmp_path / "providers.json"
    providers.write_text(
        json.dumps({"providers": [{"name": n, "base_url": s.base_url, "timeout_s": 5} for n, s in sims.items()]})
    )
    port = free_port()
    with Receiver() as receiver:
        proxy_env = _otel_env(receiver, "unhardcoded-proxy")
        proxy_env.update({"UNHARDCODED_PROVIDERS": str(providers), "UNHARDCODED_STORE": str(tmp_path / "r.db")})
        proxy = subprocess.Popen(
            [sys.executable, "-m", cli.__name__, "serve", "--port", str(port), "--no-access-log"],
            env=proxy_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proxy.poll() is None and time.monotonic() < deadline, "proxy did not start"
                time.sleep(0.05)

            app_env = _otel_env(receiver, "client-app")
            app_env.update(
                {
                    "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
                    "OPENAI_API_KEY": "unused",
                    "UNHARDCODED_POLICY": "support",
                }
            )
            run = subprocess.run(
                ["opentelemetry-instrument", sys.executable, str(APP)],
                env=app_env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert run.returncode == 0, run.stderr
            out = json.loads(run.stdout.strip().splitlines()[-1])
            assert out["model"] == FIRST_FALLBACK and out["streamed"].endswith(f"to {FIRST_FALLBACK}.")

            def complete(spans: list[Any]) -> bool:
                return (
                    sum(1 for s in spans if s.service == "client-app" and s.kind == CLIENT) >= 2
                    and sum(1 for s in spans if s.name == "route support") >= 2
                    and sum(1 for s in spans if s.kind == SERVER) >= 2
                )

            spans = receiver.wait_for_spans(complete, timeout=20)
        finally:
            proxy.terminate()
            proxy.communicate(timeout=20)

    assert complete(spans), [(s.name, s.service, s.kind, s.parent_span_id) for s in spans]
    by_id = {s.span_id: s for s in spans}
    clients = [s for s in spans if s.service == "client-app" and s.kind == CLIENT]
    assert len(clients) == 2
    google_calls = iter(sims["xai"].requests)
    anthropic_calls = iter(sims["mistral"].requests)
    for client in clients:
        # The caller's own span knows which model answered, why, and that it fell back.
        assert client.attributes[A.UNHARDCODED_POLICY_NAME] == "support"
        assert client.attributes[A.UNHARDCODED_ANSWERED_MODEL] == FIRST_FALLBACK
        assert client.attributes[A.UNHARDCODED_SELECTED_MODEL] == SELECTED
        assert client.attributes[A.UNHARDCODED_FALLBACK_TRIGGERED] is True
        trace = [s for s in spans if s.trace_id == client.trace_id]
        [server] = [s for s in trace if s.kind == SERVER]
        assert server.service == "unhardcoded-proxy" and server.parent_span_id == client.span_id
        [decision] = [s for s in trace if s.name == "route support"]
        assert decision.parent_span_id == server.span_id
        assert decision.attributes[A.UNHARDCODED_REQUEST_ID] == client.attributes[A.UNHARDCODED_REQUEST_ID]
        attempts = sorted(
            (s for s in trace if s.service == "unhardcoded-proxy" and s.kind == CLIENT),
            key=lambda s: s.pb.start_time_unix_nano,
        )
        assert [a.name for a in attempts] == [f"chat {SELECTED}", f"chat {FIRST_FALLBACK}"]
        assert all(a.parent_span_id == decision.span_id for a in attempts)
        for attempt, sent in zip(attempts, (next(google_calls), next(anthropic_calls))):
            _, trace_id, parent, _ = sent.headers["traceparent"].split("-")
            assert trace_id == client.trace_id and parent == attempt.span_id
        assert all(s.parent_span_id is None or s.parent_span_id in by_id for s in trace if s is not client)
