"""Decision metrics through a real SDK MeterProvider and InMemoryMetricReader: names, units, values, attribute sets."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from telemetry_fixtures import (
    BODY,
    TOOLS_BODY,
    Simulators,
    big_catalog,
    big_policy,
    catalog,
    policy,
)
from unhardcoded.errors import NoCandidateError
from unhardcoded.semconv import attributes as A
from unhardcoded.semconv import metrics as M
from unhardcoded.testing import TelemetryCapture
from unhardcoded.testing.simulator import error, ok, timeout

LOW_CARDINALITY = {
    A.UNHARDCODED_POLICY_NAME,
    A.UNHARDCODED_DECISION_OUTCOME,
    A.UNHARDCODED_SELECTED_MODEL,
    A.UNHARDCODED_ANSWERED_MODEL,
    A.UNHARDCODED_REJECTION_RULE,
    A.UNHARDCODED_FALLBACK_REASON,
}


@pytest.fixture
def sims():
    s = Simulators(
        {
            "sim-a": {"cheap-a": error(500)},
            "sim-b": {"mid-b": timeout(5)},
            "sim-c": {"top-c": ok("z" * 40)},
        },
        timeout_s=0.5,
    )
    yield s
    s.close()


def sums_by(points: dict[frozenset[tuple[str, Any]], Any], key: str) -> dict[Any, float]:
    out: dict[Any, float] = defaultdict(float)
    for attrs, value in points.items():
        out[dict(attrs).get(key)] += value
    return dict(out)


def test_every_metric_has_its_registered_name_and_unit(tel: TelemetryCapture, sims: Simulators):
    cat = catalog()
    tel.router(cat, sims.client).route(policy(cat, fallback=["mid-b", "top-c"]), BODY)
    data = tel.reader.get_metrics_data()
    [scope] = data.resource_metrics[0].scope_metrics
    units = {m.name: m.unit for m in scope.metrics}
    assert units == {
        M.UNHARDCODED_DECISIONS: M.UNHARDCODED_DECISIONS_UNIT,
        M.UNHARDCODED_FALLBACKS: M.UNHARDCODED_FALLBACKS_UNIT,
        M.UNHARDCODED_REJECTIONS: M.UNHARDCODED_REJECTIONS_UNIT,
        M.UNHARDCODED_COST: "USD",
        M.UNHARDCODED_COST_BASELINE: "USD",
        M.UNHARDCODED_DECISION_DURATION: "s",
    }
    assert scope.scope.name == "unhardcoded"


def test_a_two_hop_route_counts_one_decision_two_fallbacks_and_its_cost(tel: TelemetryCapture, sims: Simulators):
    cat = catalog()
    decision, _, _ = tel.router(cat, sims.client).route(policy(cat, fallback=["mid-b", "top-c"]), BODY)
    assert tel.metric(M.UNHARDCODED_DECISIONS) == {
        frozenset(
            {
                (A.UNHARDCODED_POLICY_NAME, "support"),
                (A.UNHARDCODED_DECISION_OUTCOME, "answered"),
                (A.UNHARDCODED_SELECTED_MODEL, "cheap-a"),
                (A.UNHARDCODED_ANSWERED_MODEL, "top-c"),
            }
        ): 1,
    }
    assert tel.metric(M.UNHARDCODED_FALLBACKS) == {
        frozenset(
            {
                (A.UNHARDCODED_POLICY_NAME, "support"),
                (A.UNHARDCODED_FALLBACK_REASON, "error"),
                (A.UNHARDCODED_SELECTED_MODEL, "cheap-a"),
            }
        ): 1,
        frozenset(
            {
                (A.UNHARDCODED_POLICY_NAME, "support"),
                (A.UNHARDCODED_FALLBACK_REASON, "timeout"),
                (A.UNHARDCODED_SELECTED_MODEL, "cheap-a"),
            }
        ): 1,
    }
    by_model = frozenset({(A.UNHARDCODED_POLICY_NAME, "support"), (A.UNHARDCODED_ANSWERED_MODEL, "top-c")})
    assert tel.metric(M.UNHARDCODED_COST) == {by_model: pytest.approx(decision.cost.usd)}
    assert tel.metric(M.UNHARDCODED_COST_BASELINE) == {by_model: pytest.approx(decision.cost.baseline_usd)}
    [(count, total)] = tel.metric(M.UNHARDCODED_DECISION_DURATION).values()
    assert count == 1 and decision.latency_ms / 1000 <= total < decision.latency_ms / 1000 + 0.5


def test_rejections_are_counted_per_rule(tel: TelemetryCapture):
    cat = catalog()
    router = tel.router(cat)
    router.decide(policy(cat), BODY)
    router.decide(policy(cat), TOOLS_BODY)  # top-c also rejected, by request:tools
    rejections = {dict(k)[A.UNHARDCODED_REJECTION_RULE]: v for k, v in tel.metric(M.UNHARDCODED_REJECTIONS).items()}
    assert rejections == {"eu-region": 4, "quality-floor": 2, "price-ceiling": 2, "request:tools": 1}


def test_a_500_model_catalog_counts_every_rejection(tel: TelemetryCapture):
    cat = big_catalog(500)
    decision = tel.router(cat).decide(big_policy(cat), BODY)
    assert sum(tel.metric(M.UNHARDCODED_REJECTIONS).values()) == len(decision.rejected)


def test_dry_runs_failures_and_no_candidates_each_have_their_outcome(tel: TelemetryCapture):
    cat = catalog()
    s = Simulators({"sim-a": {"cheap-a": error(503)}})
    try:
        router = tel.router(cat, s.client)
        router.decide(policy(cat), BODY)
        router.route(policy(cat, fallback=[], on=["timeout"]), BODY)  # a 503 is an error, not a timeout: no hop
        with pytest.raises(NoCandidateError):
            router.route(
                policy(cat, rules=[{"id": "none", "field": "bench_intelligence", "op": "gt", "value": 1}]), BODY
            )
    finally:
        s.close()
    outcomes = sums_by(tel.metric(M.UNHARDCODED_DECISIONS), A.UNHARDCODED_DECISION_OUTCOME)
    assert outcomes == {"dry_run": 1, "failed": 1, "no_candidate": 1}
    assert tel.metric(M.UNHARDCODED_COST) == {}  # nothing answered, nothing paid
    durations = {
        dict(k)[A.UNHARDCODED_DECISION_OUTCOME]: v[0] for k, v in tel.metric(M.UNHARDCODED_DECISION_DURATION).items()
    }
    assert durations == {"dry_run": 1, "failed": 1, "no_candidate": 1}


def test_attribute_sets_stay_low_cardinality_and_fallback_rate_is_one_division(tel: TelemetryCapture, sims: Simulators):
    cat = catalog()
    router = tel.router(cat, sims.client)
    for _ in range(3):
        router.route(policy(cat, fallback=["mid-b", "top-c"]), BODY)  # 2 hops each
    for _ in range(5):
        router.decide(policy(cat, name="triage"), BODY)
    for name, attrs, _ in tel.metrics():
        assert set(attrs) <= LOW_CARDINALITY, (name, attrs)
        assert not any(str(v).startswith("req_") for v in attrs.values())
    # sum by (policy) (rate(fallbacks)) / sum by (policy) (rate(decisions))
    fallbacks = sums_by(tel.metric(M.UNHARDCODED_FALLBACKS), A.UNHARDCODED_POLICY_NAME)
    decisions = sums_by(tel.metric(M.UNHARDCODED_DECISIONS), A.UNHARDCODED_POLICY_NAME)
    assert {p: fallbacks.get(p, 0) / n for p, n in decisions.items()} == {"support": 2.0, "triage": 0.0}
    # Many requests, one series per attribute set: no request id ever makes a new one.
    assert len(tel.metric(M.UNHARDCODED_DECISIONS)) == 2
