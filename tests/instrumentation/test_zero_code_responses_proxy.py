"""Zero-code through the proxy's Responses API: an unchanged app calling ``responses.create()`` under
``opentelemetry-instrument`` with ``UNHARDCODED_POLICY`` set is routed by that policy, and its client span is the
parent of the proxy's server span, the decision span and the provider call.

Needs ``POST /v1/responses`` in the proxy (a Responses request to the simulated chat-only providers is translated).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apps.proxy_harness import catalog_simulators
from apps.zero_code import (
    CLIENT,
    assert_routed_in_one_trace,
    last_json_line,
    otel_env,
    require_zero_code_tools,
    run_app,
    serving_proxy,
)
from otlp_receiver import OTLPReceiver

TRIAGE_CHEAPEST = "llama-4-scout"  # served by "meta"; triage keeps data in the EU


def test_responses_create_is_routed_and_joins_the_proxy_trace(simulated_provider: Any, tmp_path: Path) -> None:
    require_zero_code_tools()
    sims = catalog_simulators(simulated_provider)
    with OTLPReceiver() as receiver, serving_proxy(receiver, tmp_path, sims) as base_url:
        env = otel_env(receiver, "client-app")
        env.update({"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "unused", "UNHARDCODED_POLICY": "triage"})
        out = last_json_line(run_app("api_app.py", env, "responses"))

        def complete(spans: list[Any]) -> bool:
            return any(s.service == "client-app" and s.kind == CLIENT for s in spans) and any(
                s.name == "route triage" for s in spans
            )

        spans = receiver.wait_for_spans(complete, timeout=20)

    assert out["responses"]["model"] == TRIAGE_CHEAPEST
    assert out["responses"]["text"].endswith(f"to {TRIAGE_CHEAPEST}.")
    assert_routed_in_one_trace(spans, sims["meta"], "triage", TRIAGE_CHEAPEST)
