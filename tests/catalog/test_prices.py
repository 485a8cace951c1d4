"""Prices from genai-prices: the built-in tables equal genai_prices.calc_price, model by model."""

from __future__ import annotations

import datetime as dt
import json
import random
import sys
from pathlib import Path

import genai_prices
import pytest
from genai_prices import Usage as GUsage

from unhardcoded.catalog import Catalog
from unhardcoded.catalog.genai import PriceData
from unhardcoded.catalog.model import PRICE_GENAI, builtin_document
from unhardcoded.catalog.pricing import Usage, cost
from unhardcoded.errors import CatalogError

ROOT = Path(__file__).resolve().parents[2]

# Request times that cross every dated price and daily window the mapped models have.
WHEN = [
    dt.datetime(2026, 1, 15, 2, 30, tzinfo=dt.UTC),
    dt.datetime(2026, 8, 20, 12, 0, tzinfo=dt.UTC),
    dt.datetime(2026, 12, 6, 2, 0, tzinfo=dt.UTC),
    dt.datetime(2026, 12, 6, 17, 45, tzinfo=dt.UTC),
]


def usages() -> list[Usage]:
    rng = random.Random(15)
    out = [
        Usage(input_tokens=1000, output_tokens=200),
        Usage(input_tokens=300_000, output_tokens=5000, cached_input_tokens=120_000, reasoning_tokens=3000),
        Usage(input_tokens=250_000, output_tokens=900, cached_input_tokens=10_000, cache_write_tokens=40_000),
        Usage(input_tokens=0, output_tokens=0),
    ]
    for _ in range(20):
        inp = rng.randrange(0, 1_200_000)
        cached = rng.randrange(0, inp + 1)
        written = rng.randrange(0, inp - cached + 1)
        out_t = rng.randrange(0, 60_000)
        out.append(Usage(inp, out_t, cached, written, rng.randrange(0, out_t + 1)))
    return out


def gusage(u: Usage) -> GUsage:
    return GUsage(
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cache_read_tokens=u.cached_input_tokens,
        cache_write_tokens=u.cache_write_tokens,
        output_reasoning_tokens=u.reasoning_tokens,
    )


def same(a: float, b: float) -> bool:
    """Equal to a billionth of a cent: the tables are floats, genai-prices computes in Decimal."""
    return abs(a - b) <= 1e-11 + 1e-12 * abs(b)


def calc_price(u: GUsage, ref: str, when: dt.datetime):
    """genai_prices.calc_price for the exact provider/model (its lookup matches loosely: ``pixtral-large`` is
    matched by no ref but longer ones), else the same calculation on the exact model."""
    provider_id, _, model_id = ref.partition("/")
    snap = genai_prices.data_snapshot.get_snapshot()
    provider = next(p for p in snap.providers if p.id == provider_id)
    model = next(m for m in provider.models if m.id == model_id)
    try:
        found = snap.find_provider_model(model_id, None, provider_id, None)[1]
    except LookupError:
        found = None
    if found is model:
        return genai_prices.calc_price(u, model_id, provider_id=provider_id, genai_request_timestamp=when)
    return model.calc_price(u, provider, genai_request_timestamp=when)


def mapped() -> list[tuple[str, str]]:
    return [(m["id"], m["price_model"]) for m in builtin_document(False)["models"] if m.get("price") == PRICE_GENAI]


def test_the_shipped_tables_are_the_installed_snapshot_rebuilt():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import build_prices
    finally:
        sys.path.pop(0)
    shipped = json.loads((ROOT / "src/unhardcoded/catalog/builtin_prices.json").read_text())
    assert shipped["data_version"] == f"genai-prices {genai_prices.__version__}"
    assert build_prices.build(shipped["snapshot_date"]) == shipped


@pytest.mark.parametrize(("model_id", "ref"), mapped())
def test_every_mapped_builtin_model_costs_what_genai_prices_computes(model_id: str, ref: str):
    catalog = Catalog.builtin()
    schedule = catalog.schedule(model_id)
    for when in WHEN:
        for u in usages():
            ours = cost(schedule, u, when)
            theirs = calc_price(gusage(u), ref, when)
            assert same(ours.total, float(theirs.total_price)), (model_id, u, when, ours, theirs.total_price)
            assert same(ours.output, float(theirs.output_price)), (model_id, u, when)


def test_headline_prices_are_the_set_in_force_on_the_snapshot_date():
    catalog = Catalog.builtin()
    assert catalog.prices is not None and catalog.prices.snapshot_date
    noon = dt.datetime.combine(dt.date.fromisoformat(catalog.prices.snapshot_date), dt.time(12), dt.UTC)
    for model_id, ref in mapped():
        m = catalog.model(model_id)
        # 1,000 tokens in and out: the base tier of every rate.
        small = calc_price(GUsage(input_tokens=1000, output_tokens=1000), ref, noon)
        assert same((m.get("price_input_per_mtok") + m.get("price_output_per_mtok")) / 1000, float(small.total_price))


def test_a_reference_genai_prices_does_not_know_exactly_is_an_error_naming_the_model():
    doc = builtin_document(False)
    doc["models"] = [
        {"id": "m", "provider": "mistral", "price": "genai-prices", "price_model": "mistral/mistral-medium-3"}
    ]
    with pytest.raises(CatalogError, match=r"models\[m\]\.price_model.*no model 'mistral-medium-3' under 'mistral'"):
        Catalog.from_document(doc)


def test_a_user_catalog_takes_prices_by_reference_and_overrides_any_field():
    text = """
schema: unhardcoded-catalog/v1
models:
  - {id: gpt-4.1, provider: openai, price: genai-prices, price_model: openai/gpt-4.1, bench_intelligence: 0.6}
  - {id: cheap, provider: openai, price: genai-prices, price_model: openai/gpt-4.1, price_output_per_mtok: 4}
  - {id: own, provider: local, price_input_per_mtok: 1, price_output_per_mtok: 2, price_per_request: 0.01}
"""
    c = Catalog.from_text(text, price_data=PriceData.installed())
    assert c.model("gpt-4.1").values["price_input_per_mtok"] == 2.0
    assert c.model("cheap").values["price_output_per_mtok"] == 4
    assert c.model("cheap").values["price_overrides"] == ["price_output_per_mtok"]
    u = Usage(input_tokens=1_000_000, output_tokens=1_000_000, cached_input_tokens=500_000)
    assert cost(c.schedule("cheap"), u).total == pytest.approx(1.0 + 0.25 + 4.0)
    assert cost(c.schedule("own"), Usage(1_000_000, 0)).total == pytest.approx(1.01)
    assert c.prices is not None and c.prices.data_version == f"genai-prices {genai_prices.__version__}"
    # The archived form (prices resolved into the document) loads to the same catalog and version.
    again = Catalog.from_text(c.canonical)
    assert again.version == c.version and again.schedule("cheap") == c.schedule("cheap")


def test_the_version_covers_resolved_prices():
    doc = builtin_document()
    base = Catalog.from_document(doc)
    doc["prices"]["models"]["gpt-4.1"][0]["cached_input"] = 0.4
    changed = Catalog.from_document(doc)
    assert changed.version != base.version


def test_kind_is_chat_or_embedding():
    catalog = Catalog.builtin()
    kinds = {m.id: m.values.get("kind", "chat") for m in catalog.models}
    assert kinds["text-embedding-3-small"] == "embedding" and kinds["gpt-5.5"] == "chat"
    assert cost(catalog.schedule("text-embedding-3-small"), Usage(1_000_000, 0)).total == pytest.approx(0.02)
    doc = builtin_document()
    doc["models"][0]["kind"] = "rerank"
    with pytest.raises(CatalogError, match=r"models\[0\]\.kind: must be one of chat, embedding, got 'rerank'"):
        Catalog.from_document(doc)
