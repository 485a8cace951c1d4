"""Zero-code, beyond chat.completions.create: an unchanged app under ``opentelemetry-instrument`` with
``UNHARDCODED_POLICY`` set sends the policy on ``parse()``, Responses, embeddings and Anthropic Messages calls, and
its client spans are the parents of what the router does for them.
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
from unhardcoded.semconv import attributes as A
from unhardcoded.semconv import gen_ai as G
from unhardcoded.testing.simulator import ok

from .api_server import ANSWER, ANSWERED, APIServer

TRIAGE_CHEAPEST = "llama-4-scout"  # served by "meta"; triage keeps data in the EU


def test_parse_is_routed_under_the_environment_policy_and_joins_the_proxy_trace(
    simulated_provider: Any, tmp_path: Path
) -> None:
    require_zero_code_tools()
    sims = catalog_simulators(simulated_provider)
    sims["meta"].set_behavior(TRIAGE_CHEAPEST, ok(ANSWER))
    with OTLPReceiver() as receiver, serving_proxy(receiver, tmp_path, sims) as base_url:
        env = otel_env(receiver, "client-app")
        env.update({"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "unused", "UNHARDCODED_POLICY": "triage"})
        out = last_json_line(run_app("api_app.py", env, "parse"))

        def complete(spans: list[Any]) -> bool:
            return any(s.service == "client-app" and s.kind == CLIENT for s in spans) and any(
                s.name == "route triage" for s in spans
            )

        spans = receiver.wait_for_spans(complete, timeout=20)

    assert out["parse"] == {"model": TRIAGE_CHEAPEST, "parsed": {"answer": "hello"}}
    assert_routed_in_one_trace(spans, sims["meta"], "triage", TRIAGE_CHEAPEST)


def test_responses_embeddings_and_messages_send_the_policy_and_carry_the_trace(tmp_path: Path) -> None:
    require_zero_code_tools()
    with OTLPReceiver() as receiver, APIServer() as server:
        env = otel_env(receiver, "client-app")
        env.update(
            {
                "OPENAI_BASE_URL": f"{server.base_url}/v1",
                "OPENAI_API_KEY": "unused",
                "ANTHROPIC_BASE_URL": server.base_url,  # the anthropic client appends /v1/messages itself
                "ANTHROPIC_API_KEY": "unused",
                "UNHARDCODED_POLICY": "triage",
            }
        )
        out = last_json_line(run_app("api_app.py", env, "responses", "embeddings", "messages"))
        spans = receiver.wait_for_spans(lambda got: sum(1 for s in got if s.kind == CLIENT) >= 3, timeout=20)
        seen = list(server.seen)

    assert out["responses"]["text"] == ANSWER and out["messages"]["text"] == ANSWER
    assert out["embeddings"]["dimensions"] == 3
    clients = {s.name: s for s in spans if s.service == "client-app" and s.kind == CLIENT}
    # The anthropic client traces itself under opentelemetry-instrument (its span is named by it): that span is the
    # client span, carrying the decision, and ours does not double it.
    names = ("chat auto", "embeddings text-embedding-3-small", "anthropic.messages.create")
    assert sorted(clients) == sorted(names), clients
    assert sum(1 for s in spans if s.service == "client-app" and s.kind == CLIENT) == 3
    assert [s.path for s in seen] == ["/v1/responses", "/v1/embeddings", "/v1/messages"]
    for request, name in zip(seen, names):
        span = clients[name]
        assert request.headers["x-unhardcoded-policy"] == "triage"
        _, trace_id, parent, _ = request.headers["traceparent"].split("-")
        assert (trace_id, parent) == (span.trace_id, span.span_id)
        assert span.attributes[A.UNHARDCODED_POLICY_NAME] == "triage"
        assert span.attributes[A.UNHARDCODED_ANSWERED_MODEL] == ANSWERED
    assert clients["embeddings text-embedding-3-small"].attributes[G.GEN_AI_OPERATION_NAME] == "embeddings"
