"""Replaying recorded decisions in-process: what counts as the same decision, and what makes replay impossible."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fixtures import generate
from unhardcoded.catalog import Catalog
from unhardcoded.errors import UnhardcodedError
from unhardcoded.receipts import Receipt, open_store
from unhardcoded.receipts.render import render_replay
from unhardcoded.receipts.replay import ReplayError, parse_since, recorded_catalog, replay, replay_from_store

EXPECTED = json.loads((Path(__file__).parent.parent / "fixtures" / generate.EXPECTED).read_text(encoding="utf-8"))
HOPPED = Receipt.model_validate(EXPECTED["receipts"][0])
BODY = EXPECTED["policies"][HOPPED.policy.fingerprint]
BUILTIN = Catalog.builtin()


def _catalog(edit) -> Catalog:
    doc = BUILTIN.to_document()
    edit(doc)
    return Catalog.from_document(doc)


def test_the_same_catalog_gives_the_same_decision():
    result = replay(HOPPED, BODY, BUILTIN, BUILTIN)
    assert result.same and result.reproduces and not result.rejection_changes
    assert result.cost_then == result.cost_now
    assert "SAME decision today" in render_replay(result)


def test_a_model_that_now_fails_a_rule_changes_winner_candidates_and_rejections():
    def pricier(doc):
        next(m for m in doc["models"] if m["id"] == "grok-4-fast-non-reasoning")["price_output_per_mtok"] = 40

    result = replay(HOPPED, BODY, BUILTIN, _catalog(pricier))
    assert not result.same and result.winner_changed and result.candidates_changed
    assert [(c.model, c.then, c.now.rule, c.material) for c in result.rejection_changes] == [
        ("grok-4-fast-non-reasoning", None, "price-ceiling", True)
    ]


def test_a_rejected_model_leaving_the_catalog_does_not_change_the_route():
    result = replay(
        HOPPED, BODY, BUILTIN, _catalog(lambda d: d.update(models=[m for m in d["models"] if m["id"] != "grok-4-0709"]))
    )
    assert result.same
    assert [(c.model, c.material) for c in result.rejection_changes] == [("grok-4-0709", False)]
    assert "rejected  − grok-4-0709  no longer in the catalog" in render_replay(result)


def test_a_baseline_gone_from_todays_catalog_is_noted_not_fatal():
    result = replay(
        HOPPED, BODY, BUILTIN, _catalog(lambda d: d.update(models=[m for m in d["models"] if m["id"] != "gpt-5.5"]))
    )
    assert result.now.cost.baseline_usd is None
    assert any("baseline gpt-5.5 is not in the today's catalog" in n for n in result.notes)
    assert not result.winner_changed


def test_a_policy_body_that_does_not_hash_to_the_fingerprint_is_refused():
    with pytest.raises(ReplayError, match="the store was altered"):
        replay(HOPPED, BODY.replace('"max_hops":2', '"max_hops":1'), BUILTIN, BUILTIN)


def test_a_receipt_without_features_cannot_be_replayed():
    with pytest.raises(ReplayError, match="no request features"):
        replay(HOPPED.model_copy(update={"features": None}), BODY, BUILTIN, BUILTIN)


def test_replay_from_store_needs_the_policy_and_the_catalog(tmp_path, monkeypatch):
    monkeypatch.setenv("UNHARDCODED_CATALOG_DIR", str(tmp_path / "catalogs"))
    with open_store(str(tmp_path / "r.db")) as store:
        store.put(HOPPED)
        with pytest.raises(ReplayError, match="is not kept in"):
            replay_from_store(store, HOPPED.request_id, BUILTIN)
        store.put(HOPPED, policy_body=BODY)
        assert replay_from_store(store, HOPPED.request_id, BUILTIN).same
        with pytest.raises(ReplayError, match="no receipt 'req_x'"):
            replay_from_store(store, "req_x", BUILTIN)
        with pytest.raises(ReplayError, match="neither in the store"):
            recorded_catalog("0123456789abcdef", store)
        older = _catalog(lambda d: d["models"].pop())
        store.put_catalog(older)
        assert recorded_catalog(older.version, store).version == older.version


def test_since_takes_durations_and_iso_dates():
    now = datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("36h", now) == now - timedelta(hours=36)
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("2w", now) == now - timedelta(weeks=2)
    assert parse_since("90s", now) == now - timedelta(seconds=90)
    assert parse_since("2026-04-01", now) == datetime(2026, 4, 1, tzinfo=UTC)
    assert parse_since("2026-04-01T08:00:00+02:00", now) == datetime(2026, 4, 1, 6, tzinfo=UTC)
    for bad in ("yesterday", "7 days", "-3d", ""):
        with pytest.raises(UnhardcodedError, match="--since"):
            parse_since(bad, now)
