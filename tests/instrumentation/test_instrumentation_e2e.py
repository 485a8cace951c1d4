"""Zero-code: `opentelemetry-instrument python app.py` against `unhardcoded serve`, both exporting OTLP to one receiver.

The app's client span, the proxy's server span, the decision span and the
attempt spans form one trace per request, and the provider is called with the
attempt span as parent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apps.proxy_harness import FIRST_FALLBACK, SELECTED, catalog_simulators
from apps.zero_code import CLIENT, SERVER, last_json_line, otel_env, require_zero_code_tools, run_app, serving_proxy
from otlp_receiver import OTLPReceiver
from unhardcoded.semconv import attributes as A
from unhardcoded.testing.simulator import error


def test_one_trace_from_the_app_through_the_proxy_to_the_provider(simulated_provider: Any, tmp_path: Path) -> None:
    require_zero_code_tools()
    sims = catalog_simulators(simulated_provider)
    sims["xai"].set_behavior(SELECTED, error(503))
    with OTLPReceiver() as receiver, serving_proxy(receiver, tmp_path, sims) as base_url:
        app_env = otel_env(receiver, "client-app")
        app_env.update({"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "unused", "UNHARDCODED_POLICY": "support"})
        out = last_json_line(run_app("client_app.py", app_env))
        assert out["model"] == FIRST_FALLBACK and out["streamed"].endswith(f"to {FIRST_FALLBACK}.")

        def complete(spans: list[Any]) -> bool:
            return (
                sum(1 for s in spans if s.service == "client-app" and s.kind == CLIENT) >= 2
                and sum(1 for s in spans if s.name == "route support") >= 2
                and sum(1 for s in spans if s.kind == SERVER) >= 2
            )

        spans = receiver.wait_for_spans(complete, timeout=20)

    assert complete(spans), [(s.name, s.service, s.kind, s.parent_span_id) for s in spans]
    by_id = {s.span_id: s for s in spans}
    clients = [s for s in spans if s.service == "client-app" and s.kind == CLIENT]
    assert len(clients) == 2
    xai_calls = iter(sims["xai"].requests)
    mistral_calls = iter(sims["mistral"].requests)
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
        for attempt, sent in zip(attempts, (next(xai_calls), next(mistral_calls))):
            _, trace_id, parent, _ = sent.headers["traceparent"].split("-")
            assert trace_id == client.trace_id and parent == attempt.span_id
        assert all(s.parent_span_id is None or s.parent_span_id in by_id for s in trace if s is not client)
