"""Cost as billed: a provider answer with cached tokens, reasoning tokens and a long context gives a receipt whose
cost equals genai_prices.calc_price for that usage, and a baseline priced on the same usage."""

from __future__ import annotations

from collections.abc import Iterator

import genai_prices
import pytest
from genai_prices import Usage as GUsage

from fixtures import span_layout as L
from unhardcoded.catalog import Catalog
from unhardcoded.policy import validate_policy
from unhardcoded.receipts import Receipt, rebuild_receipts
from unhardcoded.receipts.render import render_receipt
from unhardcoded.router import Router
from unhardcoded.router.providers import ProviderClient, ProviderConfig, ProvidersConfig
from unhardcoded.semconv import gen_ai as G
from unhardcoded.testing.simulator import SimulatedProvider, error, ok

CATALOG = Catalog.builtin()
POLICY = validate_policy(
    {
        "schema": "sigma-pol/v1",
        "name": "long-context",
        "rules": [{"id": "pick", "field": "id", "op": "in", "value": ["gpt-5.5", "gpt-4.1"]}],
        "rank": {"by": "bench_intelligence", "order": "desc"},
        "fallback": {"models": ["gpt-4.1"], "on": ["error"]},
        "baseline": "claude-opus-4-7",
    },
    CATALOG,
)
# Above gpt-5.5's 272k-token tier, with cached input and reasoning tokens.
USAGE = {"prompt_tokens": 300_000, "completion_tokens": 4_000, "cached_tokens": 120_000, "reasoning_tokens": 1_500}
G_USAGE = GUsage(input_tokens=300_000, cache_read_tokens=120_000, output_tokens=4_000, output_reasoning_tokens=1_500)
BODY = {"messages": [{"role": "user", "content": "Summarise the attached contract."}], "max_tokens": 4096}


@pytest.fixture
def sim() -> Iterator[SimulatedProvider]:
    with SimulatedProvider("sim", {"gpt-5.5": ok(**USAGE)}) as s:
        yield s


@pytest.fixture
def client(sim: SimulatedProvider) -> Iterator[ProviderClient]:
    c = ProviderClient(ProvidersConfig(providers=[ProviderConfig(name="openai", base_url=sim.base_url, timeout_s=5)]))
    yield c
    c.close()


def calc(model: str, provider: str) -> genai_prices.types.PriceCalculation:
    return genai_prices.calc_price(G_USAGE, model, provider_id=provider)


def test_the_receipt_cost_is_calc_price_of_the_reported_usage_and_the_baseline_is_priced_on_it(client):
    tp, exporter = L.provider()
    decision, result, failure = Router(CATALOG, client, tracer_provider=tp).route(POLICY, BODY)
    assert failure is None and decision.answered_by == "gpt-5.5"
    billed = calc("gpt-5.5", "openai")
    baseline = calc("claude-opus-4-7", "anthropic")
    assert decision.cost.usd == pytest.approx(float(billed.total_price), rel=1e-12, abs=1e-15)
    assert decision.cost.baseline_model == "claude-opus-4-7"
    assert decision.cost.baseline_usd == pytest.approx(float(baseline.total_price), rel=1e-12)
    assert decision.cost.savings_ratio == pytest.approx(1 - float(billed.total_price / baseline.total_price), rel=1e-9)
    b = decision.billing
    assert b is not None and b.breakdown is not None and b.prices is not None
    # The parts: 180k uncached and 120k cached input, both at the tier above 272k, and 4k output.
    assert b.breakdown.input == pytest.approx(180_000 * 10.0 / 1e6, rel=1e-12)
    assert b.breakdown.cached_input == pytest.approx(120_000 * 1.0 / 1e6, rel=1e-12)
    assert b.breakdown.output == pytest.approx(float(billed.output_price), rel=1e-12)
    assert b.breakdown.other == 0.0
    assert b.breakdown.input + b.breakdown.cached_input == pytest.approx(float(billed.input_price), rel=1e-12)
    # The estimate made at decision time, from the request's estimated tokens, stays beside the actual.
    f = decision.features
    assert b.estimate_usd == pytest.approx((f.input_tokens * 5.0 + f.output_tokens * 30.0) / 1e6, rel=1e-12)
    [usage] = b.attempts
    assert (usage.index, usage.cached_input_tokens, usage.reasoning_tokens) == (0, 120_000, 1_500)
    assert usage.cost_usd == pytest.approx(float(billed.total_price), rel=1e-12)
    assert (b.prices.source, b.prices.data_version) == ("genai-prices", f"genai-prices {genai_prices.__version__}")

    # The spans say the same: the attempt span carries gen_ai.usage.cost, and the rebuilt receipt is the receipt.
    spans = exporter.get_finished_spans()
    [attempt] = [s for s in spans if s.name.startswith("chat ")]
    assert attempt.attributes[G.GEN_AI_USAGE_COST] == usage.cost_usd
    assert attempt.attributes[G.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 120_000
    [rebuilt] = rebuild_receipts(L.otlp_bytes(spans)).receipts
    assert rebuilt == Receipt.from_decision(decision)
    card = render_receipt(rebuilt)
    assert "billed    input $1.80 · cached $0.12 · output $0.18 · other $0 · estimated $" in card


def test_a_failed_attempt_that_reported_no_usage_is_not_billed_and_the_answer_is(sim, client):
    sim.set_behavior("gpt-5.5", error(503))
    sim.set_behavior("gpt-4.1", ok(**USAGE))
    decision, _, failure = Router(CATALOG, client).route(POLICY, BODY)
    assert failure is None and decision.answered_by == "gpt-4.1" and len(decision.attempts) == 2
    billed = calc("gpt-4.1", "openai")
    assert decision.cost.usd == pytest.approx(float(billed.total_price), rel=1e-12)
    assert decision.cost.baseline_usd == pytest.approx(float(calc("claude-opus-4-7", "anthropic").total_price))
    assert decision.billing is not None and [u.index for u in decision.billing.attempts] == [1]
