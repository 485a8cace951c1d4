"""`unhardcoded catalog show|validate|diff|update`, the update fetched from a loopback server standing in for the
genai-prices feed, and replay against the catalog version a receipt names after an update."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import genai_prices
import pytest

from unhardcoded.catalog import Catalog, CatalogArchive
from unhardcoded.catalog.model import builtin_document
from unhardcoded.cli import main
from unhardcoded.policy import load_policy_file
from unhardcoded.policy.builtin import builtin_policy_dir
from unhardcoded.receipts import Receipt
from unhardcoded.receipts.stores import open_store
from unhardcoded.router import Router

_RATES = {
    "input": "input_mtok",
    "cached_input": "cache_read_mtok",
    "cache_write": "cache_write_mtok",
    "output": "output_mtok",
    "reasoning": "output_reasoning_mtok",
}


def feed(changes: dict[str, dict[str, float]] | None = None) -> bytes:
    """Price data in the genai-prices feed format for every built-in reference, from the shipped schedules, with
    ``changes`` ({model id: {rate: price}}) applied to each model's first price set."""
    shipped = json.loads(resources.files("unhardcoded.catalog").joinpath("builtin_prices.json").read_text())
    providers: dict[str, list[dict[str, Any]]] = {}
    for m in builtin_document(False)["models"]:
        if m.get("price") != "genai-prices":
            continue
        provider, _, model = m["price_model"].partition("/")
        entries = []
        for i, shipped_entry in enumerate(shipped["models"][m["id"]]):
            entry = {**shipped_entry, **(changes or {}).get(m["id"], {})} if i == 0 else shipped_entry
            prices: dict[str, Any] = {}
            for ours, theirs in _RATES.items():
                rate = entry.get(ours)
                if isinstance(rate, dict):
                    rate = {"base": rate["base"], "tiers": [{"start": s, "price": p} for s, p in rate["tiers"]]}
                if rate is not None:
                    prices[theirs] = rate
            when = entry.get("when")
            constraint = None
            if when and "from_date" in when:
                constraint = {"start_date": when["from_date"]}
            elif when:
                constraint = {"start_time": when["from_time"] + "Z", "end_time": when["to_time"] + "Z"}
            entries.append({"constraint": constraint, "prices": prices} if constraint else {"prices": prices})
        providers.setdefault(provider, []).append(
            {"id": model, "match": {"equals": model}, "prices": entries if len(entries) > 1 else entries[0]["prices"]}
        )
    raw = [
        {"id": p, "name": p, "api_pattern": f"api\\.{p}\\.example", "models": models} for p, models in providers.items()
    ]
    return json.dumps(raw).encode()


class Feed:
    """A loopback HTTP server answering every GET with ``body``; counts the requests."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/data.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def pricier_feed() -> Iterator[Feed]:
    f = Feed(feed({"gpt-4.1": {"input": 2.2}, "claude-haiku-4-5": {"cached_input": 0.08}}))
    try:
        yield f
    finally:
        f.close()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    code = main(list(args))
    out = capsys.readouterr().out
    return code, (json.loads(out) if "--json" in args and code == 0 else out)


def test_show_says_which_catalog_and_where_prices_come_from(capsys):
    code, out = cli(capsys, "catalog", "show")
    assert code == 0
    lines = out.splitlines()
    builtin = Catalog.builtin()
    assert lines[0] == f"catalog {builtin.version} · {len(builtin)} models · built-in"
    assert lines[1] == f"prices  genai-prices {genai_prices.__version__} · snapshot 2026-12-06"
    assert any(line.startswith("gpt-4.1 ") and line.endswith("genai-prices openai/gpt-4.1") for line in lines)
    assert any(line.startswith("llama-4-scout ") and line.endswith("catalog") for line in lines)
    code, doc = cli(capsys, "catalog", "show", "--json")
    assert (doc["version"], doc["source"], doc["prices"]["data_version"]) == (
        builtin.version,
        "built-in",
        f"genai-prices {genai_prices.__version__}",
    )


def test_validate_a_good_and_a_bad_file(capsys, tmp_path: Path):
    code, doc = cli(capsys, "catalog", "validate", "examples/catalog.yaml", "--json")
    assert code == 0 and doc["valid"] is True and doc["priced_by_genai_prices"] == doc["models"] == 8
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "schema: unhardcoded-catalog/v1\nmodels:\n"
        "  - {id: m, provider: mistral, price: genai-prices, price_model: mistral/mistral-medium-3}\n"
    )
    assert main(["catalog", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "models[m].price_model" in err and "no model 'mistral-medium-3'" in err


def test_update_from_the_live_feed_archives_a_new_default_and_diff_lists_exactly_what_changed(
    capsys, pricier_feed: Feed
):
    before = Catalog.builtin()
    code, report = cli(capsys, "catalog", "update", "--url", pricier_feed.url, "--json")
    assert code == 0 and pricier_feed.requests == 1
    assert report["live"] is True and report["fallback_reason"] is None
    assert report["prices"]["data_version"].startswith("genai-prices data sha256:")
    new = report["version"]
    assert new != before.version
    # The new version is the default catalog now, and `show` says so.
    code, shown = cli(capsys, "catalog", "show", "--json")
    assert shown["version"] == new and shown["source"].startswith(f"archived update {new}")
    code, d = cli(capsys, "catalog", "diff", "builtin", new, "--json")
    assert d["added"] == [] and d["removed"] == []
    assert [(c["model"], c["field"], c["old"], c["new"]) for c in d["changed"] if c["field"] != "prices"] == [
        ("gpt-4.1", "price_input_per_mtok", 2.0, 2.2),
        ("claude-haiku-4-5", "price_cached_input_per_mtok", 0.1, 0.08),
    ]
    assert sorted((c["model"], c["field"]) for c in d["changed"]) == [
        ("claude-haiku-4-5", "price_cached_input_per_mtok"),
        ("claude-haiku-4-5", "prices"),
        ("gpt-4.1", "price_input_per_mtok"),
        ("gpt-4.1", "prices"),
    ]
    assert d["prices"]["old"]["data_version"] == f"genai-prices {genai_prices.__version__}"
    # Two archived versions compare the same way, by version.
    archive = CatalogArchive()
    assert set(archive.versions()) >= {new}
    archive.save(before)
    code, d2 = cli(capsys, "catalog", "diff", before.version, new, "--json")
    assert d2["changed"] == d["changed"]
    code, text = cli(capsys, "catalog", "diff", before.version, new)
    assert "changed  gpt-4.1.price_input_per_mtok: 2 → 2.2" in text


def test_update_without_the_feed_uses_the_installed_snapshot(capsys):
    dead = Feed(b"")
    url = dead.url
    dead.close()  # nothing listens there now: connection refused
    code, report = cli(capsys, "catalog", "update", "--url", url, "--json")
    assert code == 0 and report["live"] is False and "not reachable" in report["fallback_reason"]
    assert report["prices"]["data_version"] == f"genai-prices {genai_prices.__version__}"
    code, offline = cli(capsys, "catalog", "update", "--offline", "--json")
    assert offline["version"] == report["version"] and offline["fallback_reason"] is None


def test_a_receipt_replays_against_the_catalog_version_it_names_after_an_update(capsys, pricier_feed: Feed):
    policy = load_policy_file(builtin_policy_dir() / "support.yaml")
    body = {"messages": [{"role": "user", "content": "Where is my order?"}]}
    before = Router().decide(policy, body, request_id="req_before_update")
    store_url = str(Path(CatalogArchive().directory).parent / "receipts.db")
    with open_store(store_url) as store:
        store.put(Receipt.from_decision(before), policy_body=policy.canonical)
        store.put_catalog(Catalog.builtin())
    assert cli(capsys, "catalog", "update", "--url", pricier_feed.url)[0] == 0
    updated = CatalogArchive().load(CatalogArchive().updated()["version"])  # type: ignore[index]
    after = Router(updated).decide(policy, body, request_id="req_after_update")
    with open_store(store_url) as store:
        store.put(Receipt.from_decision(after), policy_body=policy.canonical)
    code, out = cli(capsys, "replay", "req_before_update", "--store", store_url)
    assert code == 0, out
    assert f"catalog   recorded {Catalog.builtin().version} → today {updated.version}" in out
    code, out = cli(capsys, "replay", "req_after_update", "--store", store_url)
    assert code == 0, out
    assert f"catalog   recorded {updated.version} unchanged" in out
