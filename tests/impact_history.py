"""A recorded history for the impact report's tests: demo requests routed by the real router over simulated
providers (``unhardcoded.demo.record_history``), on a catalog and policies of the tests' own, so the prices a test
computes by hand do not move when the built-in catalog's do.

``history`` (session-scoped) records :data:`N` decisions once; ``history_db`` gives each test its own copy of the
SQLite file. A test module imports the fixtures as ``from impact_history import history_fixture, history_db_fixture``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from unhardcoded.catalog import Catalog
from unhardcoded.demo import record_history
from unhardcoded.policy import Policy, validate_policy
from unhardcoded.receipts import Receipt, open_store
from unhardcoded.receipts.stores import ReceiptQuery

N = 2500
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
"""The history's receipts are dated over the 7 days before this."""

PRICES = {
    # id: (provider, input $/Mtok, output $/Mtok, intelligence, tools, regions)
    "gpt-5.5": ("openai", 1.25, 10.0, 0.78, True, ["us", "eu"]),
    "gpt-5.5-mini": ("openai", 0.25, 2.0, 0.62, True, ["us", "eu"]),
    "gpt-5.5-nano": ("openai", 0.05, 0.4, 0.38, True, ["us", "eu"]),
    "claude-sonnet-4-6": ("anthropic", 2.0, 10.0, 0.8, True, ["us", "eu"]),
    "gemini-3.5-flash": ("google", 0.15, 1.25, 0.54, True, ["us", "eu"]),
    "gemini-3.5-flash-lite": ("google", 0.1, 0.4, 0.41, True, ["us", "eu"]),
    "mistral-small-4": ("mistral", 0.1, 0.3, 0.51, False, ["eu"]),
    "deepseek-v4-flash": ("deepseek", 0.07, 0.28, 0.42, True, ["cn"]),
    "grok-4-fast": ("xai", 0.2, 1.5, 0.6, True, ["us"]),
}


def catalog_document(prices: dict[str, tuple] = PRICES) -> dict:
    return {
        "schema": "unhardcoded-catalog/v1",
        "models": [
            {
                "id": model,
                "provider": provider,
                "price_input_per_mtok": pin,
                "price_output_per_mtok": pout,
                "bench_intelligence": quality,
                "supports_tools": tools,
                "supports_vision": True,
                "context_window": 200000,
                "max_output_tokens": 32000,
                "regions": regions,
            }
            for model, (provider, pin, pout, quality, tools, regions) in prices.items()
        ],
    }


CATALOG = Catalog.from_document(catalog_document(), source="impact-test-catalog")


def support_document(ceiling: float = 10) -> dict:
    return {
        "schema": "sigma-pol/v1",
        "name": "support",
        "rules": [
            {"id": "tools", "field": "supports_tools", "op": "eq", "value": True},
            {"id": "quality-floor", "field": "bench_intelligence", "op": "gte", "value": 0.5},
            {"id": "price-ceiling", "field": "price_output_per_mtok", "op": "lte", "value": ceiling},
        ],
        "rank": {"by": "cost", "order": "asc", "then": [{"by": "bench_intelligence", "order": "desc"}]},
        "select": {"score_field": "bench_intelligence"},
        "fallback": {"models": ["claude-sonnet-4-6", "gpt-5.5"], "on": ["error", "timeout", "rate_limit"]},
        "baseline": "gpt-5.5",
    }


def triage_document(ceiling: float = 2) -> dict:
    return {
        "schema": "sigma-pol/v1",
        "name": "triage",
        "rules": [
            {"id": "quality-floor", "field": "bench_intelligence", "op": "gte", "value": 0.35},
            {"id": "price-ceiling", "field": "price_output_per_mtok", "op": "lte", "value": ceiling},
            {"id": "data-residency", "field": "regions", "op": "intersects", "value": ["eu", "us"]},
        ],
        "rank": {"by": "cost", "order": "asc"},
        "select": {"score_field": "bench_intelligence"},
        "fallback": {"models": ["gpt-5.5-mini", "gemini-3.5-flash"], "on": ["error", "timeout", "rate_limit"]},
        "baseline": "gpt-5.5",
    }


POLICIES: dict[str, Policy] = {
    "support": validate_policy(support_document(), CATALOG),
    "triage": validate_policy(triage_document(), CATALOG),
}


def usd(model: str, input_tokens: int, output_tokens: int, prices: dict[str, tuple] = PRICES) -> float:
    """By hand: the model's prices from the table above, at this usage."""
    _, pin, pout, *_ = prices[model]
    return (input_tokens * pin + output_tokens * pout) / 1_000_000


def answered_usage(r: Receipt) -> tuple[int, int]:
    last = r.attempts[-1]
    assert last.status == "ok" and last.input_tokens is not None and last.output_tokens is not None
    return last.input_tokens, last.output_tokens


@dataclass
class History:
    path: Path
    request_ids: list[str]

    def receipts(self) -> list[Receipt]:
        store = open_store(str(self.path), create=False)
        try:
            return store.query(ReceiptQuery(limit=None))
        finally:
            store.close()


@pytest.fixture(scope="session", name="history")
def history_fixture(tmp_path_factory: pytest.TempPathFactory) -> History:
    path = tmp_path_factory.mktemp("impact-history") / "receipts.db"
    store = open_store(str(path))
    try:
        ids = record_history(
            store, N, catalog=CATALOG, policies=POLICIES, now=NOW, seed=15, failing_model="gemini-3.5-flash"
        )
    finally:
        store.close()
    return History(path, ids)


@pytest.fixture(name="history_db")
def history_db_fixture(history: History, tmp_path: Path) -> Path:
    """A copy of the history's store for one test to change as it likes."""
    copy = tmp_path / "receipts.db"
    shutil.copyfile(history.path, copy)
    return copy
