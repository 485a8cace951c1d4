"""The routing engine: every op on every field type, implicit request rules, rejections, ranking, cost, the cascade plan."""

from __future__ import annotations

import re
from typing import Any

import pytest

from unhardcoded.catalog import Catalog
from unhardcoded.policy import Policy, validate_policy
from unhardcoded.router import Decision, PolicyCompiler, RequestFeatures, Router
from unhardcoded.router.decision import Cost
from unhardcoded.router.rules import passes, rejection_message

# Every field type, built-in and custom; model `d` sets only the required fields.
ENGINE_CATALOG = """
schema: unhardcoded-catalog/v1
fields:
  - {name: soc2, type: bool}
  - {name: tier, type: string}
  - {name: certs, type: "string[]"}
  - {name: carbon_g, type: number, unit: g/1M tokens}
  - {name: retention_days, type: integer, unit: days}
models:
  - {id: a, provider: pa, price_input_per_mtok: 1, price_output_per_mtok: 2, bench_intelligence: 0.8,
     supports_tools: true, supports_vision: true, context_window: 100000, max_output_tokens: 8000,
     regions: [eu, us], latency_p50_ms: 500, soc2: true, tier: gold, certs: [iso27001, hipaa], carbon_g: 1.5, retention_days: 0}
  - {id: b, provider: pb, price_input_per_mtok: 0.5, price_output_per_mtok: 1, bench_intelligence: 0.6,
     supports_tools: true, supports_vision: false, context_window: 16000, max_output_tokens: 4000,
     regions: [us], latency_p50_ms: 300, soc2: false, tier: silver, certs: [iso27001], carbon_g: 3.0, retention_days: 30}
  - {id: c, provider: pc, price_input_per_mtok: 0.1, price_output_per_mtok: 0.2, bench_intelligence: 0.42,
     supports_tools: false, supports_vision: false, context_window: 8000, max_output_tokens: 2000,
     regions: [cn], latency_p50_ms: 200, soc2: true, tier: bronze, certs: [], carbon_g: 0.5, retention_days: 90}
  - {id: d, provider: pd, price_input_per_mtok: 2, price_output_per_mtok: 8}
"""


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.from_text(ENGINE_CATALOG, source="engine.yaml")


def policy_of(catalog: Catalog | None = None, rules: list[dict[str, Any]] | None = None, **parts: Any) -> Policy:
    doc = {"schema": "sigma-pol/v1", "name": "t", "rules": rules or [], **parts}
    return validate_policy(doc, catalog)


def decide(catalog: Catalog, policy: Policy, features: RequestFeatures | None = None) -> Decision:
    return Router(catalog).decide(policy, features or RequestFeatures(input_tokens=100, output_tokens=100))


def rejection(decision: Decision, model: str):
    found = [r for r in decision.rejected if r.model == model]
    assert len(found) == 1, f"{model} rejected {len(found)} times"
    return found[0]


# -- every op on every field type -----------------------------------------------------------------

OP_CASES = [
    # number (built-in)
    ("bench_intelligence", "gte", 0.6, {"a", "b"}),
    ("bench_intelligence", "gt", 0.6, {"a"}),
    ("bench_intelligence", "lt", 0.6, {"c"}),
    ("bench_intelligence", "lte", 0.6, {"b", "c"}),
    ("bench_intelligence", "eq", 0.6, {"b"}),
    ("bench_intelligence", "ne", 0.6, {"a", "c"}),
    ("bench_intelligence", "in", [0.42, 0.8], {"a", "c"}),
    ("bench_intelligence", "not_in", [0.42], {"a", "b"}),
    # integer (built-in)
    ("context_window", "gte", 16000, {"a", "b"}),
    ("context_window", "lt", 16000, {"c"}),
    ("context_window", "eq", 8000, {"c"}),
    ("context_window", "in", [8000, 16000], {"b", "c"}),
    ("max_output_tokens", "lte", 4000.0, {"b", "c"}),
    # bool (built-in)
    ("supports_tools", "eq", True, {"a", "b"}),
    ("supports_tools", "ne", True, {"c"}),
    ("supports_vision", "eq", False, {"b", "c"}),
    ("supports_tools", "in", [False], {"c"}),
    ("supports_tools", "not_in", [False], {"a", "b"}),
    # string[] (built-in)
    ("regions", "contains", "eu", {"a"}),
    ("regions", "intersects", ["us", "cn"], {"a", "b", "c"}),
    ("regions", "intersects", ["eu", "cn"], {"a", "c"}),
    ("regions", "eq", ["us"], {"b"}),
    ("regions", "ne", ["us"], {"a", "c"}),
    # custom bool
    ("soc2", "eq", True, {"a", "c"}),
    ("soc2", "ne", True, {"b"}),
    # custom string
    ("tier", "eq", "gold", {"a"}),
    ("tier", "ne", "gold", {"b", "c"}),
    ("tier", "in", ["gold", "silver"], {"a", "b"}),
    ("tier", "not_in", ["gold"], {"b", "c"}),
    ("tier", "contains", "il", {"b"}),
    # custom string[]
    ("certs", "contains", "hipaa", {"a"}),
    ("certs", "intersects", ["iso27001"], {"a", "b"}),
    # custom number
    ("carbon_g", "lte", 1.5, {"a", "c"}),
    ("carbon_g", "gt", 1, {"a", "b"}),
    # custom integer
    ("retention_days", "lt", 30, {"a"}),
    ("retention_days", "gte", 30, {"b", "c"}),
    ("retention_days", "eq", 0, {"a"}),
]


@pytest.mark.parametrize(("field", "op", "value", "passing"), OP_CASES, ids=[f"{f}-{o}-{v}" for f, o, v, _ in OP_CASES])
def test_op_on_field_type(catalog: Catalog, field: str, op: str, value: Any, passing: set[str]):
    policy = policy_of(catalog, [{"id": "r", "field": field, "op": op, "value": value}])
    decision = decide(catalog, policy)
    assert set(decision.candidates) == passing
    assert {r.model for r in decision.rejected} == {"a", "b", "c", "d"} - passing
    for r in decision.rejected:
        assert (r.rule, r.field, r.op, r.threshold) == ("r", field, op, value)
        assert r.observed == catalog.model(r.model).get(field)


@pytest.mark.parametrize("op", ["eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "contains", "intersects"])
def test_a_model_missing_the_field_is_rejected_as_not_set(catalog: Catalog, op: str):
    field, value = {
        "eq": ("soc2", True),
        "ne": ("tier", "gold"),
        "lt": ("latency_p50_ms", 10_000),
        "lte": ("carbon_g", 100),
        "gt": ("bench_intelligence", 0),
        "gte": ("retention_days", 0),
        "in": ("tier", ["gold", "silver", "bronze"]),
        "not_in": ("supports_tools", [False]),
        "contains": ("certs", "zzz"),
        "intersects": ("regions", ["eu", "us", "cn"]),
    }[op]
    decision = decide(catalog, policy_of(catalog, [{"id": "needs-it", "field": field, "op": op, "value": value}]))
    r = rejection(decision, "d")
    assert (r.rule, r.field, r.op, r.threshold, r.observed) == ("needs-it", field, op, value, None)
    assert r.message == f"{field} not set in the catalog (needs it)"


def test_passes_never_holds_for_a_missing_value():
    assert passes("ne", None, "x") is False
    assert passes("not_in", None, ["x"]) is False
    assert passes("ne", "y", "x") is True


# -- rejection records --------------------------------------------------------------------------

MESSAGE_CASES = [
    ("quality-floor", "bench_intelligence", "gte", 0.5, "c", "below quality floor (0.42 < 0.5)"),
    ("tools", "supports_tools", "eq", True, "c", "no tools"),
    ("no-vision", "supports_vision", "eq", False, "a", "has vision"),
    ("price-ceiling", "price_output_per_mtok", "lte", 1.5, "a", "over price ceiling (2 > 1.5)"),
    ("fast", "latency_p50_ms", "lt", 300, "a", "not under fast (500 ≥ 300)"),
    ("smart", "bench_intelligence", "gt", 0.6, "b", "not above smart (0.6 ≤ 0.6)"),
    ("gold-only", "tier", "eq", "gold", "b", "tier is silver, gold only needs gold"),
    ("not-gold", "tier", "ne", "gold", "a", "tier is gold, excluded by not gold"),
    ("top-tiers", "tier", "in", ["gold", "silver"], "c", "tier bronze not in [gold, silver] (top tiers)"),
    ("no-gold", "tier", "not_in", ["gold"], "a", "tier gold excluded by no gold"),
    ("eu-region", "regions", "contains", "eu", "b", "regions [us] lacks eu (eu region)"),
    ("certified", "certs", "intersects", ["hipaa", "soc1"], "c", "certs [] has none of [hipaa, soc1] (certified)"),
]


@pytest.mark.parametrize(
    ("rid", "field", "op", "value", "model", "message"), MESSAGE_CASES, ids=[c[0] for c in MESSAGE_CASES]
)
def test_rejection_record_and_message(
    catalog: Catalog, rid: str, field: str, op: str, value: Any, model: str, message: str
):
    decision = decide(catalog, policy_of(catalog, [{"id": rid, "field": field, "op": op, "value": value}]))
    r = rejection(decision, model)
    assert r.model_dump() == {
        "model": model,
        "rule": rid,
        "field": field,
        "op": op,
        "threshold": value,
        "observed": catalog.model(model).get(field),
        "message": message,
    }


def test_the_first_failing_rule_in_policy_order_is_recorded(catalog: Catalog):
    tools = {"id": "tools", "field": "supports_tools", "op": "eq", "value": True}
    floor = {"id": "quality-floor", "field": "bench_intelligence", "op": "gte", "value": 0.5}
    # `c` fails both rules: whichever comes first in the policy is the one on the receipt.
    assert rejection(decide(catalog, policy_of(catalog, [tools, floor])), "c").rule == "tools"
    r = rejection(decide(catalog, policy_of(catalog, [floor, tools])), "c")
    assert (r.rule, r.message) == ("quality-floor", "below quality floor (0.42 < 0.5)")


def test_rejections_follow_catalog_order(catalog: Catalog):
    decision = decide(catalog, policy_of(catalog, [{"id": "r", "field": "tier", "op": "eq", "value": "nothing"}]))
    assert [r.model for r in decision.rejected] == ["a", "b", "c", "d"]


def test_support_policy_on_the_builtin_catalog_matches_the_design_card():
    policy = validate_policy(
        {
            "schema": "sigma-pol/v1",
            "name": "support",
            "rules": [
                {"id": "tools", "field": "supports_tools", "op": "eq", "value": True},
                {"id": "quality-floor", "field": "bench_intelligence", "op": "gte", "value": 0.5},
                {"id": "price-ceiling", "field": "price_output_per_mtok", "op": "lte", "value": 10},
            ],
            "rank": {"by": "cost", "then": [{"by": "bench_intelligence", "order": "desc"}]},
            "fallback": {"models": ["mistral-large-2512", "gpt-4.1"]},
            "baseline": "gpt-5.5",
        }
    )
    decision = Router().decide(policy, {"messages": [{"role": "user", "content": "hi"}]})
    assert decision.selected is not None
    assert decision.selected.model == "grok-4-fast-non-reasoning"
    assert decision.selected.score == 0.6
    assert decision.selected.reason == "tools ✓, over quality floor, price ceiling passed, cheapest survivor"
    by_model = {r.model: r for r in decision.rejected}
    assert by_model["deepseek-v4-flash"].message == "below quality floor (0.42 < 0.5)"
    assert (by_model["mistral-small-2603"].rule, by_model["mistral-small-2603"].message) == ("tools", "no tools")
    assert by_model["gpt-5.5-pro"].message == "over price ceiling (180 > 10)"
    assert by_model["claude-sonnet-4-6"].message == "over price ceiling (15 > 10)"
    assert decision.fallback_chain == ["mistral-large-2512", "gpt-4.1"]
    assert len(decision.candidates) + len(decision.rejected) == 35


# -- implicit request rules -----------------------------------------------------------------------


def test_tools_in_the_request_require_supports_tools(catalog: Catalog):
    decision = decide(catalog, policy_of(catalog), RequestFeatures(input_tokens=10, uses_tools=True))
    assert set(decision.candidates) == {"a", "b"}
    c = rejection(decision, "c")
    assert (c.rule, c.field, c.op, c.threshold, c.observed, c.message) == (
        "request:tools",
        "supports_tools",
        "eq",
        True,
        False,
        "no tools",
    )
    d = rejection(decision, "d")
    assert (d.rule, d.observed, d.message) == ("request:tools", None, "supports_tools not set in the catalog (tools)")
    assert set(decide(catalog, policy_of(catalog)).candidates) == {"a", "b", "c", "d"}


def test_images_in_the_request_require_supports_vision(catalog: Catalog):
    decision = decide(catalog, policy_of(catalog), RequestFeatures(input_tokens=800, has_images=True))
    assert decision.candidates == ["a"]
    b = rejection(decision, "b")
    assert (b.rule, b.field, b.op, b.threshold, b.observed, b.message) == (
        "request:vision",
        "supports_vision",
        "eq",
        True,
        False,
        "no vision",
    )


def test_the_prompt_must_fit_the_context_window(catalog: Catalog):
    decision = decide(catalog, policy_of(catalog), RequestFeatures(input_tokens=9000))
    c = rejection(decision, "c")
    assert (c.rule, c.field, c.op, c.threshold, c.observed, c.message) == (
        "request:context",
        "context_window",
        "gte",
        9000,
        8000,
        "below context (8000 < 9000)",
    )
    assert {"a", "b"} <= set(decision.candidates)
    # The answer must fit too: prompt plus max_tokens.
    decision = decide(
        catalog, policy_of(catalog), RequestFeatures(input_tokens=7000, output_tokens=1500, max_tokens=1500)
    )
    c = rejection(decision, "c")
    assert (c.rule, c.threshold, c.observed) == ("request:context", 8500, 8000)
    assert "c" in decide(catalog, policy_of(catalog), RequestFeatures(input_tokens=6000, max_tokens=1500)).candidates


def test_max_tokens_must_not_exceed_max_output_tokens(catalog: Catalog):
    decision = decide(
        catalog, policy_of(catalog), RequestFeatures(input_tokens=10, output_tokens=3000, max_tokens=3000)
    )
    c = rejection(decision, "c")
    assert (c.rule, c.field, c.op, c.threshold, c.observed, c.message) == (
        "request:max-tokens",
        "max_output_tokens",
        "gte",
        3000,
        2000,
        "below max tokens (2000 < 3000)",
    )
    assert {"a", "b"} <= set(decision.candidates)
    assert "c" in decide(catalog, policy_of(catalog), RequestFeatures(input_tokens=10, max_tokens=2000)).candidates


def test_policy_rules_come_before_request_rules(catalog: Catalog):
    policy = policy_of(catalog, [{"id": "quality-floor", "field": "bench_intelligence", "op": "gte", "value": 0.5}])
    decision = decide(catalog, policy, RequestFeatures(input_tokens=10, uses_tools=True))
    assert rejection(decision, "c").rule == "quality-floor"


def test_request_rules_come_from_a_real_request_body(catalog: Catalog):
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                ],
            }
        ],
        "tools": [{"type": "function", "function": {"name": "f"}}],
    }
    decision = Router(catalog).decide(policy_of(catalog), body)
    assert decision.candidates == ["a"]
    assert rejection(decision, "b").rule == "request:vision"
    assert rejection(decision, "c").rule == "request:tools"


# -- ranking, tie-breaks and the winner's reason --------------------------------------------------

TIE_CATALOG = """
schema: unhardcoded-catalog/v1
models:
  - {id: zeta, provider: p, price_input_per_mtok: 1, price_output_per_mtok: 1, bench_intelligence: 0.7, latency_p50_ms: 300}
  - {id: mid, provider: p, price_input_per_mtok: 1, price_output_per_mtok: 1, bench_intelligence: 0.5, latency_p50_ms: 100}
  - {id: alpha, provider: p, price_input_per_mtok: 1, price_output_per_mtok: 1, bench_intelligence: 0.7, latency_p50_ms: 200}
  - {id: nolat, provider: p, price_input_per_mtok: 3, price_output_per_mtok: 3, bench_intelligence: 0.9}
"""


@pytest.fixture(scope="module")
def tie_catalog() -> Catalog:
    return Catalog.from_text(TIE_CATALOG)


def test_equal_cost_is_broken_by_rank_then_and_then_by_model_id(tie_catalog: Catalog):
    three = [{"id": "cheap", "field": "price_input_per_mtok", "op": "lt", "value": 2}]
    by_bench_desc = policy_of(
        tie_catalog, three, rank={"by": "cost", "then": [{"by": "bench_intelligence", "order": "desc"}]}
    )
    assert decide(tie_catalog, by_bench_desc).candidates == ["alpha", "zeta", "mid"]
    by_bench_asc = policy_of(
        tie_catalog, three, rank={"by": "cost", "then": [{"by": "bench_intelligence", "order": "asc"}]}
    )
    assert decide(tie_catalog, by_bench_asc).candidates == ["mid", "alpha", "zeta"]
    cost_only = policy_of(tie_catalog, three)
    decision = decide(tie_catalog, cost_only)
    assert decision.candidates == ["alpha", "mid", "zeta"]
    assert decision.selected is not None and decision.selected.reason == "cheap passed, cheapest survivor"


def test_rank_by_a_numeric_field_ascending_and_descending(tie_catalog: Catalog):
    asc = decide(tie_catalog, policy_of(tie_catalog, rank={"by": "latency_p50_ms", "order": "asc"}))
    # `nolat` has no latency: a missing value sorts last either way.
    assert asc.candidates == ["mid", "alpha", "zeta", "nolat"]
    assert asc.selected is not None and asc.selected.reason == "lowest latency p50 ms"
    desc = decide(tie_catalog, policy_of(tie_catalog, rank={"by": "latency_p50_ms", "order": "desc"}))
    assert desc.candidates == ["zeta", "alpha", "mid", "nolat"]
    assert desc.selected is not None and desc.selected.reason == "highest latency p50 ms"
    smartest = decide(tie_catalog, policy_of(tie_catalog, rank={"by": "bench_intelligence", "order": "desc"}))
    assert smartest.candidates == ["nolat", "alpha", "zeta", "mid"]
    assert smartest.selected is not None and smartest.selected.reason == "highest bench intelligence"


def test_cost_descending_and_a_cost_tie_breaker_after_a_field(tie_catalog: Catalog):
    priciest = decide(tie_catalog, policy_of(tie_catalog, rank={"by": "cost", "order": "desc"}))
    assert priciest.candidates[0] == "nolat"
    assert priciest.selected is not None and priciest.selected.reason == "most expensive survivor"
    # bench desc first; the two at 0.7 tie, and cost (equal) then the id decides.
    mixed = decide(
        tie_catalog,
        policy_of(tie_catalog, rank={"by": "bench_intelligence", "order": "desc", "then": [{"by": "cost"}]}),
    )
    assert mixed.candidates == ["nolat", "alpha", "zeta", "mid"]


def test_only_survivor_reason_and_score(tie_catalog: Catalog):
    decision = decide(
        tie_catalog, policy_of(tie_catalog, [{"id": "best", "field": "bench_intelligence", "op": "gte", "value": 0.9}])
    )
    assert decision.selected is not None
    assert (decision.selected.model, decision.selected.score, decision.selected.reason) == (
        "nolat",
        0.9,
        "over best, only survivor",
    )
    no_score = decide(tie_catalog, policy_of(tie_catalog, select={"score_field": None}))
    assert no_score.selected is not None and no_score.selected.score is None
    by_latency = decide(tie_catalog, policy_of(tie_catalog, select={"score_field": "latency_p50_ms"}))
    assert by_latency.selected is not None and (by_latency.selected.model, by_latency.selected.score) == (
        "alpha",
        200.0,
    )


def test_cost_ranking_uses_the_request_shape():
    catalog = Catalog.from_text("""
schema: unhardcoded-catalog/v1
models:
  - {id: reads-cheap, provider: p, price_input_per_mtok: 0.1, price_output_per_mtok: 10}
  - {id: writes-cheap, provider: p, price_input_per_mtok: 5, price_output_per_mtok: 0.5}
""")
    policy = policy_of(catalog)
    long_prompt = decide(catalog, policy, RequestFeatures(input_tokens=10_000, output_tokens=10))
    long_answer = decide(catalog, policy, RequestFeatures(input_tokens=10, output_tokens=10_000))
    assert long_prompt.candidates == ["reads-cheap", "writes-cheap"]
    assert long_answer.candidates == ["writes-cheap", "reads-cheap"]


# -- cost and baseline arithmetic -----------------------------------------------------------------


def test_cost_and_savings_are_exact():
    policy = validate_policy(
        {
            "schema": "sigma-pol/v1",
            "name": "support",
            "rules": [
                {"id": "tools", "field": "supports_tools", "op": "eq", "value": True},
                {"id": "quality-floor", "field": "bench_intelligence", "op": "gte", "value": 0.5},
            ],
            "baseline": "gpt-5.5",
        }
    )
    decision = Router().decide(policy, RequestFeatures(input_tokens=1000, output_tokens=500))
    assert decision.selected is not None and decision.selected.model == "grok-4-fast-non-reasoning"
    usd = (1000 * 0.2 + 500 * 0.5) / 1_000_000
    baseline = (1000 * 5.0 + 500 * 30.0) / 1_000_000
    assert decision.cost.usd == pytest.approx(0.00045, rel=1e-12) == usd
    assert decision.cost.baseline_model == "gpt-5.5"
    assert decision.cost.baseline_usd == pytest.approx(0.02, rel=1e-12) == pytest.approx(baseline, rel=1e-15)
    assert decision.cost.savings_ratio == pytest.approx(0.9775, rel=1e-12)
    assert decision.cost.savings_ratio == pytest.approx(1 - usd / baseline, rel=1e-14)


def test_default_output_tokens_price_a_request_without_max_tokens():
    policy = validate_policy(
        {
            "schema": "sigma-pol/v1",
            "name": "t",
            "rules": [{"id": "pick", "field": "id", "op": "eq", "value": "gpt-5.4-nano"}],
            "baseline": "gpt-5.5",
        }
    )
    body = {"messages": [{"role": "user", "content": "x" * 396}]}  # 4 + 99 = 103 input tokens
    decision = Router().decide(policy, body)
    assert decision.features.input_tokens == 103
    assert decision.features.output_tokens == 512
    assert decision.cost.usd == pytest.approx((103 * 0.2 + 512 * 1.25) / 1e6, rel=1e-12)
    assert decision.cost.baseline_usd == pytest.approx((103 * 5.0 + 512 * 30.0) / 1e6, rel=1e-12)


def test_a_cheaper_baseline_gives_a_negative_saving_and_no_baseline_gives_none():
    rules = [{"id": "pick", "field": "id", "op": "eq", "value": "gpt-5.5"}]
    features = RequestFeatures(input_tokens=2000, output_tokens=100)
    worse = Router().decide(
        validate_policy({"schema": "sigma-pol/v1", "name": "t", "rules": rules, "baseline": "gpt-5.4-mini"}), features
    )
    usd = (2000 * 5.0 + 100 * 30.0) / 1e6
    base = (2000 * 0.75 + 100 * 4.5) / 1e6
    assert worse.cost.savings_ratio == pytest.approx(1 - usd / base, rel=1e-12)
    assert worse.cost.savings_ratio < 0
    alone = Router().decide(validate_policy({"schema": "sigma-pol/v1", "name": "t", "rules": rules}), features)
    assert alone.cost.usd == pytest.approx(usd, rel=1e-12)
    assert alone.cost.baseline_model is None and alone.cost.baseline_usd is None and alone.cost.savings_ratio is None


def test_a_free_baseline_has_no_savings_ratio():
    catalog = Catalog.from_text("""
schema: unhardcoded-catalog/v1
models:
  - {id: paid, provider: p, price_input_per_mtok: 1, price_output_per_mtok: 1}
  - {id: free, provider: p, price_input_per_mtok: 0, price_output_per_mtok: 0}
""")
    policy = policy_of(catalog, [{"id": "paid", "field": "id", "op": "eq", "value": "paid"}], baseline="free")
    decision = decide(catalog, policy, RequestFeatures(input_tokens=1000, output_tokens=1000))
    assert decision.cost.model_dump() == {
        "usd": 0.002,
        "baseline_model": "free",
        "baseline_usd": 0.0,
        "savings_ratio": None,
    }


# -- the fallback chain ---------------------------------------------------------------------------

SUPPORT_RULES = [
    {"id": "tools", "field": "supports_tools", "op": "eq", "value": True},
    {"id": "quality-floor", "field": "bench_intelligence", "op": "gte", "value": 0.5},
    {"id": "price-ceiling", "field": "price_output_per_mtok", "op": "lte", "value": 10},
]


def support_with_fallback(models: list[str], max_hops: int = 2) -> Policy:
    return validate_policy(
        {
            "schema": "sigma-pol/v1",
            "name": "support",
            "rules": SUPPORT_RULES,
            "fallback": {"models": models, "max_hops": max_hops},
        }
    )


def test_a_fallback_model_that_fails_a_rule_is_skipped_and_recorded():
    decision = Router().decide(
        support_with_fallback(["deepseek-v4-flash", "gpt-4.1", "o4-mini"]), RequestFeatures(input_tokens=100)
    )
    assert decision.fallback_chain == ["gpt-4.1", "o4-mini"]
    skipped = rejection(decision, "deepseek-v4-flash")
    assert (skipped.rule, skipped.message) == ("quality-floor", "below quality floor (0.42 < 0.5)")


def test_a_fallback_model_that_fails_a_request_rule_is_skipped():
    features = RequestFeatures(input_tokens=900, has_images=True)
    decision = Router().decide(support_with_fallback(["mistral-large-2512", "gpt-4.1"]), features)
    assert decision.fallback_chain == ["gpt-4.1"]
    assert rejection(decision, "mistral-large-2512").rule == "request:vision"


def test_the_selected_model_is_not_repeated_in_the_chain():
    decision = Router().decide(
        support_with_fallback(["grok-4-fast-non-reasoning", "gpt-4.1"]), RequestFeatures(input_tokens=100)
    )
    assert decision.selected is not None and decision.selected.model == "grok-4-fast-non-reasoning"
    assert decision.fallback_chain == ["gpt-4.1"]


def test_max_hops_truncates_the_chain():
    models = ["mistral-large-2512", "gpt-4.1", "o4-mini"]
    features = RequestFeatures(input_tokens=100)
    assert Router().decide(support_with_fallback(models, 3), features).fallback_chain == models
    assert Router().decide(support_with_fallback(models, 1), features).fallback_chain == ["mistral-large-2512"]
    assert Router().decide(support_with_fallback(models, 0), features).fallback_chain == []
    # Skipped models do not use up hops.
    assert (
        Router().decide(support_with_fallback(["deepseek-v4-flash", *models], 2), features).fallback_chain == models[:2]
    )


def test_no_candidate_decision(catalog: Catalog):
    policy = policy_of(
        catalog,
        [{"id": "impossible", "field": "bench_intelligence", "op": "gt", "value": 1}],
        fallback={"models": ["a"]},
        baseline="a",
    )
    decision = decide(catalog, policy)
    assert decision.outcome == "no_candidate"
    assert decision.selected is None
    assert decision.candidates == [] and decision.fallback_chain == []
    assert [r.model for r in decision.rejected] == ["a", "b", "c", "d"]
    assert decision.cost == Cost()


# -- the decision and the compile cache -----------------------------------------------------------


def test_dry_run_decision_fields(catalog: Catalog):
    policy = policy_of(catalog)
    features = RequestFeatures(input_tokens=10)
    decision = Router(catalog).decide(policy, features, request_id="req_fixed")
    assert decision.request_id == "req_fixed"
    assert decision.outcome == "dry_run"
    assert decision.catalog_version == catalog.version
    assert decision.features == features
    assert decision.fingerprint == policy.fingerprint
    assert decision.attempts == [] and decision.hops == [] and decision.answered_by is None
    assert decision.fallback_triggered is False
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", decision.timestamp)
    other = Router(catalog).decide(policy, features)
    assert re.fullmatch(r"req_[0-9a-f]{16}", other.request_id)
    assert other.request_id != Router(catalog).decide(policy, features).request_id


def test_compiled_policies_are_cached_per_fingerprint_and_catalog_version(catalog: Catalog, tie_catalog: Catalog):
    compiler = PolicyCompiler(max_entries=2)
    policy = policy_of()
    first = compiler.compile(policy, catalog)
    assert compiler.compile(policy_of(), catalog) is first  # an equal policy, another object
    assert compiler.compile(policy, Catalog.from_text(ENGINE_CATALOG)) is first  # an equal catalog
    other = compiler.compile(policy, tie_catalog)
    assert other is not first
    compiler.compile(policy_of(name="other"), catalog)
    assert compiler.compile(policy, catalog) is not first  # least recently used went first


def test_rejection_message_words():
    assert (
        rejection_message("quality-floor", "bench_intelligence", "gte", 0.5, 0.42) == "below quality floor (0.42 < 0.5)"
    )
    assert rejection_message("request:tools", "supports_tools", "eq", True, False) == "no tools"
    assert (
        rejection_message("request:tools", "supports_tools", "eq", True, None)
        == "supports_tools not set in the catalog (tools)"
    )
