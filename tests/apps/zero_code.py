"""Zero-code runs: ``unhardcoded serve`` and ``opentelemetry-instrument python APP`` as subprocesses, both exporting
OTLP/HTTP to one receiver on loopback, so a test can check that an unchanged app's spans join the proxy's trace."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.trace import SpanKind

from apps.proxy_harness import free_port
from unhardcoded import cli
from unhardcoded.semconv import attributes as A

APPS = Path(__file__).parent
SERVER, CLIENT = SpanKind.SERVER.value + 1, SpanKind.CLIENT.value + 1  # OTLP numbers kinds from 1 (INTERNAL)


def require_zero_code_tools(instrument: str = "opentelemetry-instrument") -> None:
    """Fail, saying what is missing, when ``opentelemetry-instrument`` cannot run an app with an SDK."""
    assert shutil.which(instrument), f"{instrument} is not on PATH (opentelemetry-instrumentation)"
    assert importlib.util.find_spec("opentelemetry.distro"), (
        "opentelemetry-distro is not installed: without it opentelemetry-instrument configures no SDK"
    )


def otel_env(receiver: Any, service: str) -> dict[str, str]:
    """This process's environment without its OTEL_ settings, exporting traces of ``service`` to ``receiver``."""
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


@contextmanager
def serving_proxy(receiver: Any, tmp_path: Path, sims: dict[str, Any]) -> Iterator[str]:
    """``unhardcoded serve`` in front of ``sims``, tracing to ``receiver``; yields its openai base URL (``…/v1``)."""
    providers = tmp_path / "providers.json"
    providers.write_text(
        json.dumps({"providers": [{"name": n, "base_url": s.base_url, "timeout_s": 5} for n, s in sims.items()]})
    )
    port = free_port()
    env = otel_env(receiver, "unhardcoded-proxy")
    env.update({"UNHARDCODED_PROVIDERS": str(providers), "UNHARDCODED_STORE": str(tmp_path / "r.db")})
    proxy = subprocess.Popen(
        [sys.executable, "-m", cli.__name__, "serve", "--port", str(port), "--no-access-log"],
        env=env,
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
            if proxy.poll() is not None or time.monotonic() > deadline:
                proxy.kill()
                _, err = proxy.communicate(timeout=20)
                raise AssertionError(f"the proxy did not start: {err[-2000:]}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        if proxy.poll() is None:
            proxy.terminate()
            proxy.communicate(timeout=20)


def run_app(
    app: str,
    env: dict[str, str],
    *args: str,
    instrument: str = "opentelemetry-instrument",
    python: str = sys.executable,
) -> subprocess.CompletedProcess[str]:
    """``opentelemetry-instrument python tests/apps/APP ARGS``; fails with the app's stderr unless it exits 0."""
    run = subprocess.run(
        [instrument, python, str(APPS / app), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    return run


def last_json_line(run: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(run.stdout.strip().splitlines()[-1])


def assert_routed_in_one_trace(spans: list[Any], provider: Any, policy: str, model: str) -> None:
    """The app's client span, the proxy's SERVER span and its decision span are one trace, parent to child, the
    client span carrying the decision (``policy``, answered by ``model``), and the one call to ``provider`` (a
    simulator) carried that trace on."""
    [client] = [s for s in spans if s.service == "client-app" and s.kind == CLIENT]
    assert client.name == "chat auto"
    assert client.attributes[A.UNHARDCODED_POLICY_NAME] == policy
    assert client.attributes[A.UNHARDCODED_ANSWERED_MODEL] == model
    trace = [s for s in spans if s.trace_id == client.trace_id]
    [server] = [s for s in trace if s.kind == SERVER]
    assert server.service == "unhardcoded-proxy" and server.parent_span_id == client.span_id
    [decision] = [s for s in trace if s.name == f"route {policy}"]
    assert decision.parent_span_id == server.span_id
    assert decision.attributes[A.UNHARDCODED_REQUEST_ID] == client.attributes[A.UNHARDCODED_REQUEST_ID]
    [sent] = provider.requests
    assert sent.headers["traceparent"].split("-")[1] == client.trace_id
