"""The cascade against simulated providers on loopback (real HTTP): hops, attempts, waits, cost, and the API key kept secret."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from unhardcoded.catalog import Catalog
from unhardcoded.errors import NoCandidateError
from unhardcoded.policy import Policy, validate_policy
from unhardcoded.receipts.model import Receipt
from unhardcoded.receipts.rebuild import rebuild_receipts
from unhardcoded.receipts.render import render_receipt
from unhardcoded.router import Decision, ProviderCallError, ProviderClient, ProvidersConfig, Router, load_providers
from unhardcoded.router.cascade import MAX_RETRY_AFTER_WAIT_S, AttemptObserver
from unhardcoded.testing.simulator import SimulatedProvider, error, ok, rate_limit, raw, timeout

# Providers are simulator names. `us-b` fails the eu rule; `base` (the baseline) is never a candidate.
CASCADE_CATALOG = """
schema: unhardcoded-catalog/v1
models:
  - {id: cheap-a, provider: sim-a, price_input_per_mtok: 0.1, price_output_per_mtok: 0.2, bench_intelligence: 0.6, regions: [eu]}
  - {id: mid-b, provider: sim-b, price_input_per_mtok: 1, price_output_per_mtok: 2, bench_intelligence: 0.7, regions: [eu]}
  - {id: mid-a, provider: sim-a, price_input_per_mtok: 1.5, price_output_per_mtok: 3, bench_intelligence: 0.7, regions: [eu]}
  - {id: top-c, provider: sim-c, price_input_per_mtok: 2, price_output_per_mtok: 4, bench_intelligence: 0.9, regions: [eu]}
  - {id: us-b, provider: sim-b, price_input_per_mtok: 0.5, price_output_per_mtok: 1, bench_intelligence: 0.8, regions: [us]}
  - {id: base, provider: sim-c, price_input_per_mtok: 3, price_output_per_mtok: 15, bench_intelligence: 0.95, regions: [us]}
  - {id: nowhere, provider: sim-z, price_input_per_mtok: 0.5, price_output_per_mtok: 1, bench_intelligence: 0.7, regions: [eu]}
"""
PRICES = {"cheap-a": (0.1, 0.2), "mid-b": (1, 2), "mid-a": (1.5, 3), "top-c": (2, 4), "base": (3, 15)}

PROMPT = "y" * 400  # the simulator counts 100 prompt tokens; the router estimates 104
ANSWER = "z" * 40  # 10 completion tokens
BODY: dict[str, Any] = {"messages": [{"role": "user", "content": PROMPT}], "policy": "support"}


def usd(model: str, tokens_in: int, tokens_out: int) -> float:
    pin, pout = PRICES[model]
    return (tokens_in * pin + tokens_out * pout) / 1_000_000


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    path = tmp_path / "catalog.yaml"
    path.write_text(CASCADE_CATALOG, encoding="utf-8")
    return Catalog.from_file(path)


def cascade_policy(catalog: Catalog, models: list[str], *, on: list[str] | None = None, max_hops: int = 2) -> Policy:
    fallback: dict[str, Any] = {"models": models, "max_hops": max_hops}
    if on is not None:
        fallback["on"] = on
    return validate_policy(
        {
            "schema": "sigma-pol/v1",
            "name": "cascade",
            "rules": [{"id": "eu-region", "field": "regions", "op": "contains", "value": "eu"}],
            "fallback": fallback,
            "baseline": "base",
        },
        catalog,
    )


@pytest.fixture
def sims() -> Iterator[Callable[..., SimulatedProvider]]:
    started: list[SimulatedProvider] = []

    def start(name: str, behaviors: dict[str, Any] | None = None, **kwargs: Any) -> SimulatedProvider:
        sim = SimulatedProvider(name, behaviors, **kwargs).start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.close()


def client_for(*simulators: SimulatedProvider, timeouts: dict[str, float] | None = None) -> ProviderClient:
    timeouts = timeouts or {}
    return ProviderClient(
        ProvidersConfig(providers=[s.provider_config(timeout_s=timeouts.get(s.name, 5.0)) for s in simulators])
    )


def attempts_of(decision: Decision) -> list[tuple[Any, ...]]:
    return [
        (a.index, a.model, a.provider, a.role, a.status, a.error_type, a.input_tokens, a.output_tokens)
        for a in decision.attempts
    ]


def waited_ms(decision: Decision) -> float:
    """Time the cascade spent between attempts (Retry-After waits), robust to a slow machine."""
    return decision.latency_ms - sum(a.duration_ms for a in decision.attempts)


def hops_of(decision: Decision) -> list[tuple[str, str, str]]:
    return [(h.from_, h.to, h.reason) for h in decision.hops]


def models_asked(sim: SimulatedProvider) -> list[str | None]:
    return [r.model for r in sim.requests]


# -- the cascade --------------------------------------------------------------------------------


def test_first_choice_answers(catalog: Catalog, sims):
    a, b, c = sims("sim-a", default=ok(ANSWER)), sims("sim-b"), sims("sim-c")
    with client_for(a, b, c) as client:
        decision, result, err = Router(catalog, client=client).route(cascade_policy(catalog, ["mid-b", "top-c"]), BODY)
    assert err is None
    assert decision.outcome == "answered"
    assert decision.answered_by == "cheap-a"
    assert decision.selected is not None and decision.selected.model == "cheap-a"
    assert decision.fallback_chain == ["mid-b", "top-c"]
    assert decision.hops == [] and decision.fallback_triggered is False
    assert attempts_of(decision) == [(0, "cheap-a", "sim-a", "selected", "ok", None, 100, 10)]
    assert 0 < decision.attempts[0].duration_ms <= decision.latency_ms
    assert result is not None and result.body["choices"][0]["message"]["content"] == ANSWER
    assert (result.input_tokens, result.output_tokens) == (100, 10)
    assert models_asked(a) == ["cheap-a"] and b.requests == [] and c.requests == []
    sent = a.requests[0].body
    assert sent["model"] == "cheap-a" and sent["messages"] == BODY["messages"] and "policy" not in sent


def test_actual_cost_comes_from_the_returned_usage(catalog: Catalog, sims):
    a = sims("sim-a", default=ok(ANSWER))
    with client_for(a, sims("sim-b"), sims("sim-c")) as client:
        decision, _, _ = Router(catalog, client=client).route(cascade_policy(catalog, ["mid-b"]), BODY)
    # The estimate (104 in, 512 out) is not what is billed: the provider's usage (100 in, 10 out) is.
    assert (decision.features.input_tokens, decision.features.output_tokens) == (104, 512)
    assert decision.cost.usd == pytest.approx(usd("cheap-a", 100, 10), rel=1e-12)
    assert decision.cost.usd == pytest.approx(1.2e-5, rel=1e-12)
    assert decision.cost.baseline_model == "base"
    assert (
        decision.cost.baseline_usd == pytest.approx(usd("base", 100, 10), rel=1e-12) == pytest.approx(4.5e-4, rel=1e-12)
    )
    assert decision.cost.savings_ratio == pytest.approx(1 - 1.2e-5 / 4.5e-4, rel=1e-12)


def test_without_usage_the_estimate_prices_the_answer(catalog: Catalog, sims):
    no_usage = json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "model": "cheap-a",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        }
    )
    a = sims("sim-a", default=raw(200, no_usage))
    with client_for(a, sims("sim-b"), sims("sim-c")) as client:
        decision, _, err = Router(catalog, client=client).route(cascade_policy(catalog, []), BODY)
    assert err is None and decision.answered_by == "cheap-a"
    assert attempts_of(decision) == [(0, "cheap-a", "sim-a", "selected", "ok", None, None, None)]
    assert decision.cost.usd == pytest.approx(usd("cheap-a", 104, 512), rel=1e-12)
    assert decision.cost.baseline_usd == pytest.approx(usd("base", 104, 512), rel=1e-12)


def test_a_500_falls_back_to_the_next_model(catalog: Catalog, sims):
    a, b, c = sims("sim-a", default=error(500)), sims("sim-b", default=ok(ANSWER)), sims("sim-c")
    with client_for(a, b, c) as client:
        decision, result, err = Router(catalog, client=client).route(cascade_policy(catalog, ["mid-b", "top-c"]), BODY)
    assert err is None and result is not None
    assert decision.outcome == "answered" and decision.answered_by == "mid-b"
    assert hops_of(decision) == [("cheap-a", "mid-b", "error")]
    assert decision.fallback_triggered is True
    assert attempts_of(decision) == [
        (0, "cheap-a", "sim-a", "selected", "error", "500", None, None),
        (1, "mid-b", "sim-b", "fallback", "ok", None, 100, 10),
    ]
    # The answering model is the one priced.
    assert decision.cost.usd == pytest.approx(usd("mid-b", 100, 10), rel=1e-12)
    assert models_asked(a) == ["cheap-a"] and models_asked(b) == ["mid-b"] and c.requests == []


def test_timeout_then_rate_limit_then_ok_hops_as_the_policy_says(catalog: Catalog, sims):
    a = sims("sim-a", default=timeout(sleep_s=3))
    b = sims("sim-b", default=rate_limit(retry_after_s=5))  # another provider follows: no wait
    c = sims("sim-c", default=ok(ANSWER))
    started = time.perf_counter()
    with client_for(a, b, c, timeouts={"sim-a": 0.3}) as client:
        decision, result, err = Router(catalog, client=client).route(cascade_policy(catalog, ["mid-b", "top-c"]), BODY)
    elapsed = time.perf_counter() - started
    assert err is None and result is not None
    assert hops_of(decision) == [("cheap-a", "mid-b", "timeout"), ("mid-b", "top-c", "rate_limit")]
    assert attempts_of(decision) == [
        (0, "cheap-a", "sim-a", "selected", "error", "timeout", None, None),
        (1, "mid-b", "sim-b", "fallback", "error", "429", None, None),
        (2, "top-c", "sim-c", "fallback", "ok", None, 100, 10),
    ]
    assert 280 <= decision.attempts[0].duration_ms < 2000
    assert decision.attempts[1].duration_ms < 1000
    assert decision.answered_by == "top-c" and decision.outcome == "answered"
    assert 0 <= waited_ms(decision) < 1000  # sim-b's Retry-After: 5 is not honoured before a hop to sim-c
    assert elapsed < 10
    assert decision.cost.usd == pytest.approx(usd("top-c", 100, 10), rel=1e-12)


def test_fallback_on_timeout_only_does_not_hop_on_a_500(catalog: Catalog, sims):
    a, b = sims("sim-a", default=error(500)), sims("sim-b", default=ok())
    with client_for(a, b, sims("sim-c")) as client:
        decision, result, err = Router(catalog, client=client).route(
            cascade_policy(catalog, ["mid-b"], on=["timeout"]), BODY
        )
    assert result is None
    assert isinstance(err, ProviderCallError)
    assert (err.kind, err.error_type, err.status_code, err.model) == ("error", "500", 500, "cheap-a")
    assert decision.outcome == "failed" and decision.answered_by is None
    assert decision.fallback_chain == ["mid-b"]
    assert decision.hops == []
    assert attempts_of(decision) == [(0, "cheap-a", "sim-a", "selected", "error", "500", None, None)]
    assert b.requests == []
    assert decision.cost.model_dump() == {
        "usd": 0.0,
        "baseline_model": "base",
        "baseline_usd": 0.0,
        "savings_ratio": None,
    }


def test_fallback_on_timeout_only_hops_on_a_timeout(catalog: Catalog, sims):
    a, b = sims("sim-a", default=timeout(sleep_s=3)), sims("sim-b", default=ok())
    with client_for(a, b, sims("sim-c"), timeouts={"sim-a": 0.2}) as client:
        decision, _, err = Router(catalog, client=client).route(
            cascade_policy(catalog, ["mid-b"], on=["timeout"]), BODY
        )
    assert err is None and decision.answered_by == "mid-b"
    assert hops_of(decision) == [("cheap-a", "mid-b", "timeout")]


def test_a_rate_limit_is_not_an_error_trigger(catalog: Catalog, sims):
    a, b = sims("sim-a", default=rate_limit(retry_after_s=None)), sims("sim-b", default=ok())
    with client_for(a, b, sims("sim-c")) as client:
        decision, _, err = Router(catalog, client=client).route(
            cascade_policy(catalog, ["mid-b"], on=["error", "timeout"]), BODY
        )
    assert isinstance(err, ProviderCallError) and err.kind == "rate_limit"
    assert decision.outcome == "failed" and decision.hops == [] and b.requests == []


def test_max_hops_is_respected(catalog: Catalog, sims):
    a, b, c = sims("sim-a", default=error(500)), sims("sim-b", default=error(500)), sims("sim-c", default=ok())
    with client_for(a, b, c) as client:
        decision, _, err = Router(catalog, client=client).route(
            cascade_policy(catalog, ["mid-b", "mid-a", "top-c"], max_hops=1), BODY
        )
    assert decision.fallback_chain == ["mid-b"]
    assert [at.model for at in decision.attempts] == ["cheap-a", "mid-b"]
    assert hops_of(decision) == [("cheap-a", "mid-b", "error")]
    assert decision.outcome == "failed"
    assert isinstance(err, ProviderCallError) and err.model == "mid-b"
    assert c.requests == [] and models_asked(a) == ["cheap-a"]


def test_all_fail(catalog: Catalog, sims):
    a, b, c = (sims(n, default=error(503)) for n in ("sim-a", "sim-b", "sim-c"))
    with client_for(a, b, c) as client:
        decision, result, err = Router(catalog, client=client).route(cascade_policy(catalog, ["mid-b", "top-c"]), BODY)
    assert result is None
    assert decision.outcome == "failed" and decision.answered_by is None
    assert attempts_of(decision) == [
        (0, "cheap-a", "sim-a", "selected", "error", "503", None, None),
        (1, "mid-b", "sim-b", "fallback", "error", "503", None, None),
        (2, "top-c", "sim-c", "fallback", "error", "503", None, None),
    ]
    assert hops_of(decision) == [("cheap-a", "mid-b", "error"), ("mid-b", "top-c", "error")]
    assert isinstance(err, ProviderCallError) and (err.model, err.provider, err.error_type) == ("top-c", "sim-c", "503")


def test_a_fallback_that_fails_a_rule_is_never_called(catalog: Catalog, sims):
    a, b = sims("sim-a", default=error(500)), sims("sim-b", default=ok())
    with client_for(a, b, sims("sim-c")) as client:
        decision, _, err = Router(catalog, client=client).route(cascade_policy(catalog, ["us-b", "mid-b"]), BODY)
    assert err is None
    assert decision.fallback_chain == ["mid-b"]
    assert "us-b" not in decision.candidates
    [skipped] = [r for r in decision.rejected if r.model == "us-b"]
    assert (skipped.rule, skipped.message) == ("eu-region", "regions [us] lacks eu (eu region)")
    assert models_asked(b) == ["mid-b"]


def test_an_unconfigured_provider_is_an_error_that_hops(catalog: Catalog, sims):
    b = sims("sim-b", default=ok())
    policy = validate_policy(
        {
            "schema": "sigma-pol/v1",
            "name": "t",
            "rules": [{"id": "pick", "field": "id", "op": "in", "value": ["nowhere", "mid-b"]}],
            "fallback": {"models": ["mid-b"]},
        },
        catalog,
    )
    with client_for(b) as client:
        decision, _, err = Router(catalog, client=client).route(policy, BODY)
    assert err is None and decision.answered_by == "mid-b"
    assert attempts_of(decision)[0] == (0, "nowhere", "sim-z", "selected", "error", "unknown_provider", None, None)
    assert hops_of(decision) == [("nowhere", "mid-b", "error")]


def test_no_candidate_raises_before_any_call(catalog: Catalog, sims):
    a = sims("sim-a")
    policy = validate_policy(
        {
            "schema": "sigma-pol/v1",
            "name": "none",
            "rules": [{"id": "r", "field": "bench_intelligence", "op": "gt", "value": 1}],
        },
        catalog,
    )
    with client_for(a) as client, pytest.raises(NoCandidateError) as info:
        Router(catalog, client=client).route(policy, BODY, request_id="req_none")
    assert str(info.value) == f"no model in catalog {catalog.version} passes policy 'none'"
    assert a.requests == []
    decision = info.value.decision  # the decision itself, for whoever reports the refusal
    assert decision is not None and decision.request_id == "req_none" and decision.outcome == "no_candidate"
    assert decision.selected is None and decision.attempts == []
    assert sorted(r.model for r in decision.rejected) == sorted(m.id for m in catalog.models)
    assert {r.rule for r in decision.rejected} == {"r"}


def traced() -> tuple[Any, Any, Any, Any]:
    from unhardcoded.testing import capture

    tel = capture()
    return tel.tracer_provider, tel.meter_provider, tel.exporter, tel.reader


def decisions_counted(reader: Any) -> int:
    data = reader.get_metrics_data()
    return sum(
        point.value
        for rm in (data.resource_metrics if data else ())
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == "unhardcoded.decisions"
        for point in metric.data.data_points
    )


def test_route_can_leave_recording_the_decision_to_later(catalog: Catalog, sims):
    a = sims("sim-a", default=error(500))
    b = sims("sim-b", default=ok(ANSWER))
    tracer_provider, meter_provider, exporter, reader = traced()
    router = Router(catalog, tracer_provider=tracer_provider, meter_provider=meter_provider)
    later: list[Callable[[], None]] = []

    async def run():
        async with client_for(a, b) as client:
            router.client = client
            return await router.aroute(cascade_policy(catalog, ["mid-b"]), BODY, later=later)

    decision, result, err = asyncio.run(run())
    assert err is None and decision.answered_by == "mid-b"
    # What cannot wait is done: the decision knows its span, and the span no longer is the current one.
    assert decision.trace_id and decision.span_id
    from opentelemetry import trace

    assert trace.get_current_span() is trace.INVALID_SPAN
    assert exporter.get_finished_spans() == () and decisions_counted(reader) == 0 and len(later) == 2

    later[0]()  # the spans, then the metrics
    assert decisions_counted(reader) == 0
    later[1]()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    span = spans["route cascade"]
    assert format(span.context.span_id, "016x") == decision.span_id
    assert (
        span.attributes["unhardcoded.answered.model"] == "mid-b" and span.attributes["unhardcoded.fallback.hops"] == 1
    )
    assert (span.end_time - span.start_time) / 1e6 == pytest.approx(decision.latency_ms, abs=5)
    assert decisions_counted(reader) == 1
    attempts = [spans["chat cheap-a"], spans["chat mid-b"]]  # each ended when its call did, not when recorded
    assert attempts[0].end_time <= attempts[1].start_time and attempts[1].end_time <= span.end_time
    assert attempts[1].attributes["unhardcoded.attempt.status"] == "ok"
    [rebuilt] = rebuild_receipts(list(spans.values())).receipts  # the spans say all the decision says
    assert rebuilt == Receipt.from_decision(decision) and rebuilt.complete


def test_a_routed_decision_leaves_no_reference_cycle_behind(catalog: Catalog, sims):
    import gc

    a = sims("sim-a", default=ok(ANSWER))
    tracer_provider, meter_provider, _, _ = traced()
    with client_for(a) as client:
        router = Router(catalog, client, tracer_provider=tracer_provider, meter_provider=meter_provider)
        router.route(cascade_policy(catalog, ["mid-b"]), BODY)  # compiled, laid out, connections open
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            router.route(cascade_policy(catalog, ["mid-b"]), BODY)
            gc.collect()
            left = {type(o).__name__ for o in gc.garbage}
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    # Freed as soon as the route returned, not by a collection later.
    assert not left & {"Decision", "DecisionScope", "AttemptSpans", "Attempt"}, left


# -- Retry-After --------------------------------------------------------------------------------


def test_retry_after_on_the_same_provider_waits_before_the_hop(catalog: Catalog, sims):
    a = sims("sim-a", {"cheap-a": rate_limit(retry_after_s=0.6), "mid-a": ok()})
    started = time.perf_counter()
    with client_for(a, sims("sim-b"), sims("sim-c")) as client:
        decision, _, err = Router(catalog, client=client).route(cascade_policy(catalog, ["mid-a"]), BODY)
    elapsed = time.perf_counter() - started
    assert err is None and decision.answered_by == "mid-a"
    assert hops_of(decision) == [("cheap-a", "mid-a", "rate_limit")]
    assert elapsed >= 0.55
    assert 550 <= waited_ms(decision) < MAX_RETRY_AFTER_WAIT_S * 1000  # the wait is between attempts


def test_retry_after_is_bounded(catalog: Catalog, sims):
    a = sims("sim-a", {"cheap-a": rate_limit(retry_after_s=30), "mid-a": ok()})
    started = time.perf_counter()
    with client_for(a, sims("sim-b"), sims("sim-c")) as client:
        decision, _, err = Router(catalog, client=client).route(cascade_policy(catalog, ["mid-a"]), BODY)
    elapsed = time.perf_counter() - started
    assert err is None and decision.answered_by == "mid-a"
    assert MAX_RETRY_AFTER_WAIT_S - 0.05 <= elapsed < 10
    assert MAX_RETRY_AFTER_WAIT_S * 1000 - 50 <= waited_ms(decision) < MAX_RETRY_AFTER_WAIT_S * 1000 + 500
    assert MAX_RETRY_AFTER_WAIT_S <= 2.0


def test_retry_after_from_another_provider_does_not_wait(catalog: Catalog, sims):
    a, b = sims("sim-a", default=rate_limit(retry_after_s=5)), sims("sim-b", default=ok())
    with client_for(a, b, sims("sim-c")) as client:
        decision, _, err = Router(catalog, client=client).route(cascade_policy(catalog, ["mid-b"]), BODY)
    assert 0 <= waited_ms(decision) < 1000
    assert err is None and decision.answered_by == "mid-b"
    assert hops_of(decision) == [("cheap-a", "mid-b", "rate_limit")]


# -- async --------------------------------------------------------------------------------------


def test_aroute_falls_back_the_same_way(catalog: Catalog, sims):
    a = sims("sim-a", default=timeout(sleep_s=3))
    b = sims("sim-b", default=error(500))
    c = sims("sim-c", default=ok(ANSWER))
    policy = cascade_policy(catalog, ["mid-b", "top-c"])

    async def run():
        async with client_for(a, b, c, timeouts={"sim-a": 0.3}) as client:
            return await Router(catalog, client=client).aroute(policy, BODY)

    decision, result, err = asyncio.run(run())
    assert err is None and result is not None
    assert result.body["choices"][0]["message"]["content"] == ANSWER
    assert hops_of(decision) == [("cheap-a", "mid-b", "timeout"), ("mid-b", "top-c", "error")]
    assert attempts_of(decision) == [
        (0, "cheap-a", "sim-a", "selected", "error", "timeout", None, None),
        (1, "mid-b", "sim-b", "fallback", "error", "500", None, None),
        (2, "top-c", "sim-c", "fallback", "ok", None, 100, 10),
    ]
    assert decision.attempts[0].duration_ms >= 280
    assert decision.cost.usd == pytest.approx(usd("top-c", 100, 10), rel=1e-12)


def test_aroute_respects_fallback_on_and_retry_after(catalog: Catalog, sims):
    a = sims("sim-a", {"cheap-a": rate_limit(retry_after_s=0.5), "mid-a": error(500)})
    policy = cascade_policy(catalog, ["mid-a", "top-c"], on=["rate_limit"])

    async def run():
        async with client_for(a, sims("sim-b"), sims("sim-c")) as client:
            started = time.perf_counter()
            out = await Router(catalog, client=client).aroute(policy, BODY)
            return out, time.perf_counter() - started

    (decision, result, err), elapsed = asyncio.run(run())
    # 429 hops (after waiting on the same provider); the 500 is not a trigger here, so the cascade stops.
    assert result is None and isinstance(err, ProviderCallError) and err.error_type == "500"
    assert hops_of(decision) == [("cheap-a", "mid-a", "rate_limit")]
    assert [at.model for at in decision.attempts] == ["cheap-a", "mid-a"]
    assert decision.outcome == "failed"
    assert elapsed >= 0.45 and 450 <= waited_ms(decision) < 2000


# -- the API key never leaks --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def leak_checks(key: str, texts: list[str]) -> None:
    random_part = key.removeprefix("sk-canary-")
    windows = {random_part[i : i + 8] for i in range(len(random_part) - 7)}
    for text in texts:
        assert key not in text
        leaked = [w for w in windows if w in text]
        assert not leaked, f"part of the key leaked: {leaked[:3]} in {text[:200]!r}"


SCENARIOS: dict[str, tuple[Any, Any]] = {
    # name: (behavior of cheap-a on sim-a, behavior of mid-b on sim-b)
    "success-echoing-the-key": (ok(echo_authorization=True), ok()),
    "error-echoing-the-header": (error(500, echo_authorization=True), error(502, echo_authorization=True)),
    "error-then-echoing-success": (error(500, echo_authorization=True), ok(echo_authorization=True)),
    "timeout-then-rate-limit": (timeout(sleep_s=3), rate_limit(retry_after_s=0)),
    "bad-request-echo": (error(400, echo_authorization=True), error(401, echo_authorization=True)),
    "invalid-response": (raw(200, "not json at all"), raw(200, json.dumps({"object": "chat.completion"}))),
}


def canary_key() -> str:
    return "sk-canary-" + secrets.token_hex(16)


def canary_setup(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sims,
    a_behavior: Any,
    b_behavior: Any,
    *,
    key: str | None = None,
    b_key: str | None = None,
) -> tuple[str, SimulatedProvider, SimulatedProvider, ProviderClient]:
    key = key or canary_key()
    env = "UNHARDCODED_TEST_KEY_" + secrets.token_hex(4).upper()
    monkeypatch.setenv(env, key)
    a = sims("sim-a", default=a_behavior, expected_api_key=key)
    b = sims("sim-b", default=b_behavior, expected_api_key=b_key or key)
    providers = tmp_path / "providers.yaml"
    providers.write_text(
        "providers:\n"
        f"  - {{name: sim-a, base_url: '{a.base_url}', api_key_env: {env}, timeout_s: 0.3}}\n"
        f"  - {{name: sim-b, base_url: '{b.base_url}', api_key_env: {env}, timeout_s: 2}}\n"
        f"  - {{name: sim-c, base_url: 'http://127.0.0.1:{free_port()}/v1', api_key_env: {env}, timeout_s: 2}}\n",
        encoding="utf-8",
    )
    return key, a, b, ProviderClient(load_providers(providers))


class ErrorRecorder(AttemptObserver):
    """Keeps every attempt's exception: the router returns only the last one."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def end(self, token: Any, attempt: Any, error: BaseException | None) -> None:
        if error is not None:
            self.errors.append(error)


def everything_said(
    decision: Decision,
    result: Any,
    err: BaseException | None,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    recorder: ErrorRecorder | None = None,
) -> list[str]:
    receipt = Receipt.from_decision(decision)
    for e in recorder.errors if recorder else []:
        assert isinstance(e, ProviderCallError)
    texts = [
        *(t for e in (recorder.errors if recorder else []) for t in (str(e), repr(e), repr(e.args))),
        str(decision),
        repr(decision),
        decision.model_dump_json(),
        receipt.model_dump_json(),
        repr(receipt),
        json.dumps(receipt.to_json_dict()),
        render_receipt(receipt),
    ]
    if result is not None:
        texts += [json.dumps(result.body), repr(result)]
    if err is not None:
        texts += [str(err), repr(err), repr(err.args)]
    for record in caplog.records:
        texts += [record.getMessage(), repr(record.args), record.exc_text or "", repr(record.__dict__)]
    out, errout = capsys.readouterr()
    return [*texts, out, errout]


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "unhardcoded", "hpack", "asyncio"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_api_key_never_leaks(
    scenario: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sims,
    catalog: Catalog,
    debug_logs: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
):
    key, a, b, client = canary_setup(tmp_path, monkeypatch, sims, *SCENARIOS[scenario])
    recorder = ErrorRecorder()
    with client:
        decision, result, err = Router(catalog, client=client, observer=recorder).route(
            cascade_policy(catalog, ["mid-b"]), BODY
        )
    # The key did go out, in the Authorization header and nowhere else.
    assert a.requests and a.requests[0].headers["authorization"] == f"Bearer {key}"
    assert key not in json.dumps(a.requests[0].body)
    assert len(decision.attempts) >= 1
    assert any(r.name.startswith("httpx") or r.name.startswith("httpcore") for r in debug_logs.records)
    assert len(recorder.errors) == sum(at.status == "error" for at in decision.attempts)
    leak_checks(key, everything_said(decision, result, err, debug_logs, capsys, recorder))


def test_the_api_key_never_leaks_when_the_provider_rejects_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sims,
    catalog: Catalog,
    debug_logs: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
):
    # sim-b expects another key (401); top-c's provider is a closed port (connect error).
    key, _, b, client = canary_setup(
        tmp_path, monkeypatch, sims, error(503, echo_authorization=True), ok(), b_key="sk-other"
    )
    recorder = ErrorRecorder()
    with client:
        decision, result, err = Router(catalog, client=client, observer=recorder).route(
            cascade_policy(catalog, ["mid-b", "top-c"]), BODY
        )
    assert [at.error_type for at in decision.attempts] == ["503", "401", "connect_error"]
    assert decision.outcome == "failed" and len(recorder.errors) == 3
    leak_checks(key, everything_said(decision, result, err, debug_logs, capsys, recorder))


def test_the_api_key_never_leaks_from_aroute(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sims,
    catalog: Catalog,
    debug_logs: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
):
    key, _, _, client = canary_setup(
        tmp_path, monkeypatch, sims, error(500, echo_authorization=True), ok(echo_authorization=True)
    )
    recorder = ErrorRecorder()

    async def run():
        async with client:
            return await Router(catalog, client=client, observer=recorder).aroute(
                cascade_policy(catalog, ["mid-b"]), BODY
            )

    decision, result, err = asyncio.run(run())
    assert decision.answered_by == "mid-b" and len(recorder.errors) == 1
    assert result is not None and "[REDACTED]" in result.body["choices"][0]["message"]["content"]
    leak_checks(key, everything_said(decision, result, err, debug_logs, capsys, recorder))


def test_a_key_cut_by_the_error_detail_limit_does_not_leak_in_part(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sims,
    catalog: Catalog,
    debug_logs: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
):
    key = canary_key()
    body = json.dumps({"error": {"message": "x" * 270 + " key=" + key}})
    _, _, _, client = canary_setup(tmp_path, monkeypatch, sims, raw(500, body), ok(), key=key)
    with client:
        decision, result, err = Router(catalog, client=client).route(cascade_policy(catalog, []), BODY)
    assert isinstance(err, ProviderCallError) and err.error_type == "500"
    leak_checks(key, everything_said(decision, result, err, debug_logs, capsys))


# -- one cascade, two forms; the router's own observer interface ---------------------------------


class FailingEnd(AttemptObserver):
    """An application observer that breaks when told an attempt ended."""

    def end(self, token: Any, attempt: Any, error: BaseException | None) -> None:
        raise RuntimeError("observer down")


def test_the_streamed_cascade_runs_in_its_generated_sync_form(catalog: Catalog, sims):
    from unhardcoded.router.cascade import StreamCascade
    from unhardcoded.router.features import features_from_request
    from unhardcoded.telemetry import losses, reset_losses

    a, b = sims("sim-a", default=error(500)), sims("sim-b", default=ok(ANSWER))
    body = {**BODY, "stream": True}
    reset_losses()
    with client_for(a, b) as client:
        router = Router(catalog, client=client)
        compiled = router.compile(cascade_policy(catalog, ["mid-b"]))
        features = features_from_request(body)
        with StreamCascade(router.telemetry, compiled, features, body, client, FailingEnd(), request_id="r-1") as run:
            assert run.open() and run.model == "mid-b"
            text = "".join((c["choices"][0]["delta"].get("content") or "") for c in run.chunks() if c.get("choices"))
    assert text == ANSWER
    decision = run.decision
    assert decision.request_id == "r-1" and decision.outcome == "answered" and decision.answered_by == "mid-b"
    assert hops_of(decision) == [("cheap-a", "mid-b", "error")]
    assert [(at.model, at.status, at.error_type) for at in decision.attempts] == [
        ("cheap-a", "error", "500"),
        ("mid-b", "ok", None),
    ]
    # The observer's failures did not stop the stream; they were counted as telemetry losses.
    assert losses().errors == 2


def test_a_router_with_no_telemetry_routes_and_records_nothing(catalog: Catalog, sims):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from unhardcoded.router.observe import NO_TELEMETRY

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    a, b = sims("sim-a", default=error(500)), sims("sim-b", default=ok(ANSWER))
    with client_for(a, b) as client:
        router = Router(catalog, client=client, tracer_provider=provider, telemetry=NO_TELEMETRY)
        decision, result, err = router.route(cascade_policy(catalog, ["mid-b"]), BODY)
        nothing_passes = validate_policy(
            {
                "schema": "sigma-pol/v1",
                "name": "none",
                "rules": [{"id": "r", "field": "bench_intelligence", "op": "gt", "value": 1}],
            },
            catalog,
        )
        with pytest.raises(NoCandidateError) as info:
            router.route(nothing_passes, BODY)
    assert err is None and result is not None and decision.answered_by == "mid-b"
    assert info.value.decision is not None and info.value.decision.outcome == "no_candidate"
    assert decision.trace_id is None and exporter.get_finished_spans() == ()
    # The same router with its default telemetry records the decision and both attempts.
    with client_for(a, b) as client:
        Router(catalog, client=client, tracer_provider=provider).route(cascade_policy(catalog, ["mid-b"]), BODY)
    assert sorted(s.name for s in exporter.get_finished_spans()) == ["chat cheap-a", "chat mid-b", "route cascade"]
