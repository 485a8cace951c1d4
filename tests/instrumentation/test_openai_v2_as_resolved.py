"""With opentelemetry-instrumentation-openai-v2 installed as pip resolves it today (in an environment of its own,
``resolved_venv.py``), an app under ``opentelemetry-instrument`` is still instrumented by unhardcoded: the policy
goes out, the decision comes back onto a client span, and if openai-v2 does not load one log line says why and
which versions load together. Only ``openai`` is installed there, so this also shows that one client is enough.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from apps.zero_code import CLIENT, last_json_line, otel_env, run_app
from otlp_receiver import OTLPReceiver
from unhardcoded.instrumentation import OPENAI_V2_PINS
from unhardcoded.semconv import attributes as A

from .api_server import ANSWERED, APIServer
from .resolved_venv import resolved_venv


def _openai_v2_loads(venv: Path) -> bool:
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import opentelemetry.instrumentation.openai_v2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return probe.returncode == 0


def test_ours_works_beside_openai_v2_as_pip_resolves_it(tmp_path: Path) -> None:
    venv = resolved_venv()  # raises, with pip's output, when it cannot be built: the test fails saying why
    loads = _openai_v2_loads(venv)
    with OTLPReceiver() as receiver, APIServer() as server:
        env = otel_env(receiver, "client-app")
        env.pop("PYTHONPATH", None)  # the app sees only what is installed in that environment
        env.update(
            {"OPENAI_BASE_URL": f"{server.base_url}/v1", "OPENAI_API_KEY": "unused", "UNHARDCODED_POLICY": "triage"}
        )
        run = run_app(
            "api_app.py",
            env,
            "chat",
            "parse",
            instrument=str(venv / "bin" / "opentelemetry-instrument"),
            python=str(venv / "bin" / "python"),
        )
        spans = receiver.wait_for_spans(lambda got: sum(1 for s in got if s.kind == CLIENT) >= 2, timeout=20)
        seen = list(server.seen)

    out = last_json_line(run)
    assert out["parse"]["parsed"] == {"answer": "hello"}
    said = [line for line in run.stderr.splitlines() if "opentelemetry-instrumentation-openai-v2" in line]
    if loads:
        assert said == [], run.stderr
    else:
        assert len(said) == 1, run.stderr
        assert "does not load" in said[0] and OPENAI_V2_PINS in said[0]
    clients = [s for s in spans if s.service == "client-app" and s.kind == CLIENT]
    assert [s.name for s in clients] == ["chat auto", "chat auto"], clients
    assert [s.path for s in seen] == ["/v1/chat/completions", "/v1/chat/completions"]
    for request, span in zip(seen, clients):
        assert request.headers["x-unhardcoded-policy"] == "triage"
        assert request.headers["traceparent"].split("-")[2] == span.span_id
        assert span.attributes[A.UNHARDCODED_POLICY_NAME] == "triage"
        assert span.attributes[A.UNHARDCODED_ANSWERED_MODEL] == ANSWERED
