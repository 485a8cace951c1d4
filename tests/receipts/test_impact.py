"""The impact report over a recorded history of demo decisions, checked against counts and costs computed by hand.

The history (``impact_history``) is 2,500 requests of the demo's workflow nodes routed by the real router over
simulated providers, stored in a real SQLite file; the expected figures are worked out here from the stored
receipts and the test catalog's price table, without the engine.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from impact_history import (  # noqa: F401  (fixtures: history, history_db)
    CATALOG,
    NOW,
    POLICIES,
    PRICES,
    answered_usage,
    catalog_document,
    history_db_fixture,
    history_fixture,
    support_document,
    triage_document,
    usd,
)
from processor_fixtures import PostgresCluster
from unhardcoded.catalog import Catalog, CatalogArchive
from unhardcoded.policy import validate_policy
from unhardcoded.receipts import Receipt, open_store
from unhardcoded.receipts.impact import (
    ImpactError,
    impact_request,
    measure_impact,
    newest_recorded_policy,
    resolve_catalog,
    resolve_policy,
)
from unhardcoded.receipts.render import render_impact
from unhardcoded.receipts.stores import HistoryQuery, ReceiptQuery
from unhardcoded.receipts.stores.sql import SQLReceiptReads
from unhardcoded.router.engine import CompiledPolicy
from unhardcoded.router.features import RequestFeatures

SINCE = NOW - timedelta(days=8)
APPROX = {"rel": 1e-12, "abs": 1e-15}


@pytest.fixture
def store(history_db):
    s = open_store(str(history_db), create=False)
    yield s
    s.close()


def by_policy(receipts: list[Receipt], name: str) -> list[Receipt]:
    return [r for r in receipts if r.policy.name == name]


def test_the_history_is_what_the_hand_computations_assume(history):
    receipts = history.receipts()
    assert len(receipts) == 2500
    picked = Counter((r.policy.name, r.selected.model, r.answered_by) for r in receipts)
    # support: the cheapest passing model is gemini-3.5-flash; its simulated outages fall back to claude-sonnet-4-6.
    # triage: gpt-5.5-nano or mistral-small-4, whichever is cheaper for the request's tokens.
    assert set(picked) == {
        ("support", "gemini-3.5-flash", "gemini-3.5-flash"),
        ("support", "gemini-3.5-flash", "claude-sonnet-4-6"),
        ("triage", "gpt-5.5-nano", "gpt-5.5-nano"),
        ("triage", "mistral-small-4", "mistral-small-4"),
    }
    assert all(picked[k] >= 20 for k in picked), picked
    assert all(r.outcome == "answered" and r.features is not None for r in receipts)
    # What the router recorded is what the price table gives: the report's "before" for an unchanged catalog.
    for r in receipts[:200]:
        assert r.cost.usd == pytest.approx(usd(r.answered_by, *answered_usage(r)), **APPROX)


def test_the_same_policies_and_catalog_change_nothing(store, history):
    report = measure_impact(store, CATALOG, SINCE, until=NOW)
    receipts = history.receipts()
    assert (report.in_window, report.decisions, report.kept, report.changed, report.no_candidate) == (
        2500,
        2500,
        2500,
        0,
        0,
    )
    assert report.differ == 0 and report.changes == [] and report.skipped == 0
    spent = sum(r.cost.usd for r in receipts)
    assert report.cost.priced == 2500
    assert report.cost.before_usd == pytest.approx(spent, **APPROX)
    assert report.cost.after_usd == pytest.approx(spent, **APPROX)
    assert {r.model: (r.before_decisions, r.after_decisions) for r in report.by_model} == dict(
        (m, (n, n)) for m, n in Counter(r.answered_by for r in receipts).items()
    )


def test_a_tightened_triage_price_ceiling_moves_every_nano_decision_to_mistral_small(store, history):
    """Output price ceiling 2 → 0.35: of the triage candidates only mistral-small-4 (0.3) is left (deepseek-v4-flash,
    0.28, stays out on data residency), so every triage decision goes to it, priced at the usage each answer
    reported."""
    tight = validate_policy(triage_document(ceiling=0.35), CATALOG)
    report = measure_impact(store, CATALOG, SINCE, until=NOW, policy=tight)

    triage = by_policy(history.receipts(), "triage")
    was_nano = [r for r in triage if r.selected.model == "gpt-5.5-nano"]
    was_small = [r for r in triage if r.selected.model == "mistral-small-4"]
    assert len(was_nano) + len(was_small) == len(triage)
    before = sum(usd(r.answered_by, *answered_usage(r)) for r in triage)
    after = sum(usd("mistral-small-4", *answered_usage(r)) for r in triage)
    nano_before = sum(usd("gpt-5.5-nano", *answered_usage(r)) for r in was_nano)
    nano_after = sum(usd("mistral-small-4", *answered_usage(r)) for r in was_nano)

    assert report.policy is not None and report.policy.fingerprint == tight.fingerprint
    assert report.in_window == 2500
    assert (report.decisions, report.kept, report.changed, report.no_candidate, report.differ) == (
        len(triage),
        len(was_small),
        len(was_nano),
        0,
        len(was_nano),
    )
    assert report.cost.priced == len(triage)
    assert report.cost.before_usd == pytest.approx(before, **APPROX)
    assert report.cost.after_usd == pytest.approx(after, **APPROX)
    assert report.cost.delta_usd == pytest.approx(after - before, **APPROX)
    assert report.cost.delta_ratio == pytest.approx((after - before) / before, **APPROX)

    [row] = report.by_policy
    assert (row.policy, row.decisions, row.kept, row.changed, row.priced) == (
        "triage",
        len(triage),
        len(was_small),
        len(was_nano),
        len(triage),
    )
    models = {r.model: r for r in report.by_model}
    assert set(models) == {"gpt-5.5-nano", "mistral-small-4"}
    assert (models["gpt-5.5-nano"].before_decisions, models["gpt-5.5-nano"].after_decisions) == (len(was_nano), 0)
    assert models["gpt-5.5-nano"].before_usd == pytest.approx(nano_before, **APPROX)
    assert models["gpt-5.5-nano"].after_usd == 0
    assert (models["mistral-small-4"].before_decisions, models["mistral-small-4"].after_decisions) == (
        len(was_small),
        len(triage),
    )
    assert models["mistral-small-4"].after_usd == pytest.approx(after, **APPROX)

    [change] = report.changes
    assert (change.policy, change.from_, change.to, change.rule, change.decisions, change.priced) == (
        "triage",
        "gpt-5.5-nano",
        "mistral-small-4",
        "price-ceiling",
        len(was_nano),
        len(was_nano),
    )
    assert change.reason == "over price ceiling (0.4 > 0.35)"
    assert change.before_usd == pytest.approx(nano_before, **APPROX)
    assert change.after_usd == pytest.approx(nano_after, **APPROX)
    assert len(change.examples) == 3 and set(change.examples) <= {r.request_id for r in was_nano}
    assert report.notes == ["only decisions recorded under a policy named triage are decided again"]

    text = render_impact(report)
    assert f"{len(was_nano)}  triage  gpt-5.5-nano → mistral-small-4  price-ceiling: over price ceiling" in text


def test_a_support_ceiling_no_model_passes_leaves_every_support_decision_with_no_candidate(store, history):
    """Ceiling 10 → 1: every model with tools over the quality floor costs more; the cost those decisions had
    (fallbacks to claude-sonnet-4-6 included) is reported apart, not as a saving."""
    report = measure_impact(
        store, CATALOG, SINCE, until=NOW, policy=validate_policy(support_document(ceiling=1), CATALOG)
    )
    support = by_policy(history.receipts(), "support")
    fell_back = [r for r in support if r.answered_by == "claude-sonnet-4-6"]
    assert fell_back
    assert (report.decisions, report.kept, report.changed, report.no_candidate, report.differ) == (
        len(support),
        0,
        0,
        len(support),
        len(support),
    )
    assert report.cost.priced == 0 and report.cost.before_usd == 0 and report.cost.delta_ratio is None
    assert report.no_candidate_before_usd == pytest.approx(
        sum(usd(r.answered_by, *answered_usage(r)) for r in support), **APPROX
    )
    [change] = report.changes
    assert (change.from_, change.to, change.rule, change.decisions, change.priced) == (
        "gemini-3.5-flash",
        None,
        "price-ceiling",
        len(support),
        0,
    )
    assert "no candidate" in render_impact(report)


def test_a_new_catalog_prices_before_on_the_recorded_catalog_and_after_on_the_new_one(store, history):
    """gpt-5.5-nano gets dearer (0.2 / 0.5): mistral-small-4 is now cheaper for every triage request. No rule
    rejects nano: it is outranked. Support decisions keep their model and their cost."""
    prices = dict(PRICES, **{"gpt-5.5-nano": ("openai", 0.2, 0.5, 0.38, True, ["us", "eu"])})
    dearer = Catalog.from_document(catalog_document(prices), source="dearer")
    report = measure_impact(store, dearer, SINCE, until=NOW)

    receipts = history.receipts()
    triage, support = by_policy(receipts, "triage"), by_policy(receipts, "support")
    was_nano = [r for r in triage if r.selected.model == "gpt-5.5-nano"]
    assert (report.decisions, report.kept, report.changed, report.differ) == (
        2500,
        2500 - len(was_nano),
        len(was_nano),
        len(was_nano),
    )
    before = sum(usd(r.answered_by, *answered_usage(r)) for r in receipts)  # the recorded catalog's prices
    after = sum(usd(r.answered_by, *answered_usage(r)) for r in support) + sum(
        usd("mistral-small-4", *answered_usage(r), prices) for r in triage
    )
    assert report.cost.before_usd == pytest.approx(before, **APPROX)
    assert report.cost.after_usd == pytest.approx(after, **APPROX)
    [change] = report.changes
    assert (change.from_, change.to, change.rule) == ("gpt-5.5-nano", "mistral-small-4", None)
    assert change.reason == "gpt-5.5-nano still passes; mistral-small-4 ranks first"
    rows = {r.policy: r for r in report.by_policy}
    assert rows["support"].before_usd == rows["support"].after_usd
    assert rows["support"].kept == len(support)


def test_the_window_and_the_pages(store, history):
    receipts = history.receipts()
    since, until = NOW - timedelta(days=2), NOW - timedelta(days=1)
    inside = [r for r in receipts if since.isoformat()[:23] <= r.timestamp[:23] < until.isoformat()[:23]]
    report = measure_impact(store, CATALOG, since, until=until)
    assert 0 < report.decisions == report.in_window == len(inside) < 2500
    assert report.cost.before_usd == pytest.approx(sum(r.cost.usd for r in inside), **APPROX)
    # Small pages give the same report: no receipt read twice or left out between pages.
    paged = measure_impact(store, CATALOG, since, until=until, page=7)
    assert paged.model_dump(exclude={"since", "until"}) == report.model_dump(exclude={"since", "until"})
    assert measure_impact(store, CATALOG, NOW, until=NOW + timedelta(days=1)).decisions == 0


def test_receipts_sharing_a_millisecond_are_each_read_once_across_pages(tmp_path):
    store = open_store(str(tmp_path / "r.db"))
    policy = POLICIES["triage"]
    compiled = CompiledPolicy(policy, CATALOG)
    receipts = []
    for i in range(9):
        d = compiled.decide(RequestFeatures(input_tokens=100 + i, output_tokens=20), request_id=f"req_same_{i}")
        d.timestamp = "2026-05-30T00:00:00.000Z"
        receipts.append((Receipt.from_decision(d), policy.canonical))
    store.put_many(receipts)
    rows = []
    query = HistoryQuery(since=SINCE, until=NOW, limit=2)
    while page := store.history(query):
        rows += page
        query = HistoryQuery(since=SINCE, until=NOW, after=(page[-1][0], page[-1][1]), limit=2)
    assert [r[1] for r in rows] == [f"req_same_{i}" for i in range(9)]
    store.close()


def test_what_cannot_be_decided_again_is_counted_by_reason(store, history):
    receipts = history.receipts()
    dry = receipts[0].model_copy(update={"request_id": "req_dry_run", "outcome": "dry_run", "attempts": []})
    blind = receipts[1].model_copy(update={"request_id": "req_no_features", "features": None})
    orphan = receipts[2].model_copy(
        update={"request_id": "req_policy_gone", "policy": receipts[2].policy.model_copy(update={"fingerprint": "1-2"})}
    )
    store.put_many([(dry, None), (blind, None), (orphan, None)])
    report = measure_impact(store, CATALOG, SINCE, until=NOW)
    assert report.in_window == 2503 and report.decisions == 2500 and report.skipped == 3
    assert report.skipped_reasons == {
        "dry run (no provider called)": 1,
        "no request features recorded": 1,
        "policy not kept in the store": 1,
    }
    assert "skipped   3 (1 dry run (no provider called); 1 no request features recorded; 1 policy not kept" in (
        render_impact(report)
    )


def test_a_recorded_catalog_that_is_kept_nowhere_prices_before_on_the_new_catalog(store, history, tmp_path):
    receipt = history.receipts()[0]
    lost = receipt.model_copy(update={"request_id": "req_lost_catalog", "catalog_version": "00000000deadbeef"})
    store.put(lost)
    report = measure_impact(store, CATALOG, SINCE, until=NOW, archive=CatalogArchive(tmp_path))
    assert report.decisions == 2501
    assert any(
        "catalog 00000000deadbeef, which is neither in the store nor in the catalog archive" in n for n in report.notes
    )


def test_a_client_measures_its_own_decisions_only(store, history):
    receipts = history.receipts()
    mine = [r.model_copy(update={"request_id": f"req_ops_{i}", "client": "ops"}) for i, r in enumerate(receipts[:5])]
    store.put_many([(r, None) for r in mine])
    report = measure_impact(store, CATALOG, SINCE, until=NOW, client="ops")
    assert (report.in_window, report.decisions) == (5, 5)


def test_impact_requests_name_the_field_that_is_wrong(store):
    for body, field, words in [
        ([], None, "must be a JSON object"),
        ({}, "since", "since: required"),
        ({"since": "yesterday"}, "since", "since: 'yesterday' is not a duration"),
        ({"since": "7d", "colour": 1}, "colour", "colour: unknown field"),
        ({"since": "7d", "policy": 3}, "policy", "policy: must be a policy object"),
        ({"since": "7d", "catalog": [1]}, "catalog", "catalog: must be a catalog object"),
    ]:
        with pytest.raises(ImpactError) as err:
            impact_request(body)
        assert err.value.field == field and words in str(err.value), (body, str(err.value))

    with pytest.raises(ImpactError) as err:
        resolve_catalog({"schema": "unhardcoded-catalog/v1", "models": [{"id": "x"}]}, store, CATALOG)
    assert err.value.field == "catalog" and "models[0].provider: field required" in str(err.value)
    with pytest.raises(ImpactError) as err:
        resolve_catalog("0123456789abcdef", store, CATALOG)
    assert err.value.field == "catalog" and "0123456789abcdef" in str(err.value)
    assert resolve_catalog(CATALOG.version, store, Catalog.builtin()).version == CATALOG.version  # kept by the store

    bad = dict(triage_document(), rules=[{"id": "r", "field": "colour", "op": "eq", "value": 1}])
    with pytest.raises(ImpactError) as err:
        resolve_policy(bad, CATALOG, lambda name: None)
    assert err.value.field == "policy" and "policy: rules[0].field: unknown field 'colour'" in str(err.value)
    with pytest.raises(ImpactError) as err:
        resolve_policy("nope", CATALOG, lambda name: None)
    assert err.value.field == "policy"
    recorded = newest_recorded_policy(store, "triage")
    assert recorded is not None and recorded.fingerprint == POLICIES["triage"].fingerprint


def test_a_decision_that_fell_back_falls_back_again_within_the_new_cascade(store, history):
    """The winner stays gemini-3.5-flash; its simulated outages fell back to claude-sonnet-4-6. With anthropic ruled
    out, the cascade's first model is gpt-5.5: those decisions are priced on it. With an output ceiling under 10,
    no cascade is left: they would fail, and are not priced."""
    support = by_policy(history.receipts(), "support")
    fell_back = [r for r in support if r.answered_by == "claude-sonnet-4-6"]
    direct = [r for r in support if r.answered_by == "gemini-3.5-flash"]
    assert fell_back and len(fell_back) + len(direct) == len(support)

    no_anthropic = support_document()
    no_anthropic["rules"].append({"id": "no-anthropic", "field": "provider", "op": "ne", "value": "anthropic"})
    report = measure_impact(store, CATALOG, SINCE, until=NOW, policy=validate_policy(no_anthropic, CATALOG))
    assert (report.decisions, report.kept, report.differ, report.cost.priced) == (
        len(support),
        len(support),
        0,
        len(support),
    )
    spent_direct = sum(usd("gemini-3.5-flash", *answered_usage(r)) for r in direct)
    assert report.cost.before_usd == pytest.approx(
        spent_direct + sum(usd("claude-sonnet-4-6", *answered_usage(r)) for r in fell_back), **APPROX
    )
    assert report.cost.after_usd == pytest.approx(
        spent_direct + sum(usd("gpt-5.5", *answered_usage(r)) for r in fell_back), **APPROX
    )
    models = {r.model: r for r in report.by_model}
    assert (models["claude-sonnet-4-6"].before_decisions, models["claude-sonnet-4-6"].after_decisions) == (
        len(fell_back),
        0,
    )
    assert (models["gpt-5.5"].before_decisions, models["gpt-5.5"].after_decisions) == (0, len(fell_back))
    assert f"{len(fell_back)} decisions fell back to a model the new cascade no longer holds" in report.notes[0]

    stranded = measure_impact(
        store, CATALOG, SINCE, until=NOW, policy=validate_policy(support_document(ceiling=9), CATALOG)
    )
    assert (stranded.kept, stranded.differ, stranded.cost.priced) == (len(support), 0, len(direct))
    assert stranded.cost.before_usd == pytest.approx(spent_direct, **APPROX) == stranded.cost.after_usd
    assert f"{len(fell_back)} decisions fell back, and the new policy leaves them no cascade" in stranded.notes[0]


def test_sqlite_reads_a_replays_values_as_the_shared_sql_reads_them(store):
    """SQLite extracts the values with json_extract; the shared read (PostgreSQL's) parses bodies in Python."""
    query = HistoryQuery(since=SINCE, until=NOW, limit=400)
    assert store.history(query) == SQLReceiptReads.history(store, query)


def test_a_postgresql_store_gives_the_same_report(store, tmp_path):
    """The same 600 receipts in a PostgreSQL store and a SQLite one: the same report, page after page."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("psycopg is not installed: pip install 'psycopg[binary]' (scripts/install-test-deps.sh does)")
    base = Path(tempfile.mkdtemp(prefix="unhardcoded-pg-"))  # where the postgres user can reach, unlike tmp_path
    try:
        cluster = PostgresCluster(base)
    except RuntimeError as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(str(exc))
    chosen = store.query(ReceiptQuery(limit=600))
    pg = lite = None
    try:
        pg, lite = open_store(cluster.new_database()), open_store(str(tmp_path / "lite.db"))
        for s in (pg, lite):
            s.put_catalog(CATALOG)
            for p in POLICIES.values():
                s.put_policy(p.canonical)
            s.put_many((r, None) for r in chosen)
        tight = validate_policy(triage_document(ceiling=0.35), CATALOG)
        for policy in (None, tight):
            on_pg = measure_impact(pg, CATALOG, SINCE, until=NOW, policy=policy, page=50)
            on_lite = measure_impact(lite, CATALOG, SINCE, until=NOW, policy=policy, page=50)
            assert on_pg.in_window == 600 and on_pg.decisions > 0
            assert on_pg.changed > 0 if policy is not None else on_pg.kept == 600
            assert on_pg == on_lite
    finally:
        for s in (pg, lite):
            if s is not None:
                s.close()
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_the_report_prices_cached_and_reasoning_tokens_as_the_bill_does() -> None:
    """Usage with cached input is priced at the cached rate (the catalog's pricing function, genai-prices' rules),
    not as if every input token were full price."""
    from unhardcoded.catalog.pricing import Usage, cost
    from unhardcoded.receipts.impact import _cost_at

    catalog = Catalog.builtin()
    attempt = {"input_tokens": 10_000, "output_tokens": 500, "cached_input_tokens": 8_000, "reasoning_tokens": 300}
    priced = _cost_at(catalog, "gpt-5.5", attempt)
    assert priced == cost(catalog.schedule("gpt-5.5"), Usage(10_000, 500, 8_000, 0, 300)).total
    assert priced < _cost_at(catalog, "gpt-5.5", {"input_tokens": 10_000, "output_tokens": 500})
