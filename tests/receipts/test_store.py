"""The SQLite receipt store, on real files: upserts and revisions, queries, policies and catalogs, concurrency, bad files."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fixtures import generate
from unhardcoded.catalog import Catalog
from unhardcoded.receipts import Receipt, ReceiptQuery, ReceiptStore, StoreError, open_store
from unhardcoded.receipts.stores import STORE_SCHEMA_VERSION, default_store_path, sqlite_path, store_url

FIXTURE = json.loads((Path(__file__).parent.parent / "fixtures" / generate.EXPECTED).read_text(encoding="utf-8"))
HOPPED, DIRECT = (Receipt.model_validate(r) for r in FIXTURE["receipts"])
POLICIES = FIXTURE["policies"]


def variant(base: Receipt, n: int, **changes) -> Receipt:
    """``base`` as another request: its own id and a timestamp ``n`` minutes later."""
    ts = datetime(2026, 3, 14, 9, 0, tzinfo=UTC).timestamp() + n * 60
    stamp = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return base.model_copy(update={"request_id": f"req_{n:016x}", "timestamp": stamp, **changes})


@pytest.fixture
def store(tmp_path):
    s = open_store(str(tmp_path / "receipts.db"))
    yield s
    s.close()


def test_a_stored_receipt_comes_back_equal(store):
    assert store.put(HOPPED) == 1
    got = store.get(HOPPED.request_id)
    assert got is not None and got.receipt == HOPPED and got.revision == 1
    assert store.get("req_nope") is None


def test_the_stored_body_is_the_receipts_json_text(store):
    """Bodies are bound as UTF-8 bytes; they are stored (and read back) as the text model_dump_json writes."""
    store.put(HOPPED)
    odd = variant(DIRECT, 1, selected=DIRECT.selected.model_copy(update={"reason": 'tools ✓, "quoted" \u2028 \x01'}))
    store.put_many([(odd, None), (odd, None)])  # twice in one batch: the second is the same receipt, not a revision
    db = sqlite3.connect(store.location)
    rows = dict(db.execute("SELECT request_id, body FROM receipts WHERE typeof(body) = 'text'").fetchall())
    db.close()
    assert rows == {
        HOPPED.request_id: HOPPED.model_dump_json(by_alias=True),
        odd.request_id: odd.model_dump_json(by_alias=True),
    }
    assert store.get(odd.request_id).revision == 1 and store.get(odd.request_id).receipt == odd


def test_the_store_satisfies_the_protocol(store):
    assert isinstance(store, ReceiptStore)


def test_writes_are_idempotent_and_a_complete_receipt_is_final(store):
    assert store.put(HOPPED) == 1
    assert store.put(HOPPED) == 1
    assert store.put_many([(HOPPED, None), (HOPPED, None)]) == 0
    later = HOPPED.model_copy(update={"latency_ms": HOPPED.latency_ms + 1})
    assert store.put(later) == 1  # other content for a decision stored whole: kept aside, not a revision
    assert store.get(HOPPED.request_id).receipt == HOPPED
    assert [c.receipt for c in store.conflicts(HOPPED.request_id)] == [later]
    assert store.count() == 1


def test_a_partial_redelivery_does_not_replace_a_complete_receipt(store):
    partial = HOPPED.model_copy(update={"attempts": HOPPED.attempts[:1], "complete": False})
    assert store.put(partial) == 1
    assert store.put(HOPPED) == 2  # the whole decision replaces the partial one
    assert store.put(partial) == 2  # and a late partial copy does not undo it
    assert store.get(HOPPED.request_id).receipt == HOPPED
    assert [(r.revision, r.receipt) for r in store.revisions(HOPPED.request_id)] == [(1, partial), (2, HOPPED)]
    assert store.count_conflicts() == 0


def test_policies_are_kept_by_fingerprint_and_catalogs_by_version(store):
    fingerprint, body = next(iter(POLICIES.items()))
    assert store.put(HOPPED, policy_body=body) == 1
    assert store.policy(fingerprint) == body
    assert store.put_policy(body) == fingerprint
    assert store.policy("1-2") is None
    catalog = Catalog.builtin()
    assert store.put_catalog(catalog) == catalog.version
    assert store.put_catalog(catalog) == catalog.version
    assert Catalog.from_text(store.catalog(catalog.version)).version == catalog.version
    assert store.catalog("0" * 16) is None


def test_queries_by_every_key(store):
    receipts = [variant(HOPPED if i % 2 else DIRECT, i) for i in range(20)]
    store.put_many((r, None) for r in receipts)
    assert store.count() == 20
    assert [r.request_id for r in store.query(ReceiptQuery(request_id="req_0000000000000003"))] == [
        "req_0000000000000003"
    ]
    assert store.count(ReceiptQuery(trace_id=HOPPED.trace_id)) == 20
    assert store.count(ReceiptQuery(policy="support")) == 10
    assert store.count(ReceiptQuery(policy=DIRECT.policy.fingerprint)) == 10
    assert store.count(ReceiptQuery(model="mistral-large-2512")) == 10
    assert store.count(ReceiptQuery(model="claude-opus-4-7")) == 10
    assert store.count(ReceiptQuery(fallback=True)) == 10
    assert store.count(ReceiptQuery(fallback=False)) == 10
    assert store.count(ReceiptQuery(workflow_id=generate.WORKFLOW_ID)) == 20
    assert store.count(ReceiptQuery(complete=False)) == 0
    assert store.count(ReceiptQuery(since="2026-03-14T09:05:00Z")) == 15
    assert store.count(ReceiptQuery(since="2026-03-14T09:05:00Z", until=datetime(2026, 3, 14, 9, 10, tzinfo=UTC))) == 5


def test_queries_page_newest_first(store):
    store.put_many((variant(DIRECT, i), None) for i in range(25))
    pages = [store.query(ReceiptQuery(limit=10, offset=o)) for o in (0, 10, 20)]
    assert [len(p) for p in pages] == [10, 10, 5]
    ids = [r.request_id for p in pages for r in p]
    assert ids == [f"req_{i:016x}" for i in range(24, -1, -1)]
    assert len(store.query(ReceiptQuery(limit=None))) == 25


def test_a_workflow_receipt_is_assembled_from_its_nodes(store):
    store.put_many([(HOPPED, None), (DIRECT, None)])
    w = store.workflow(generate.WORKFLOW_ID)
    assert w is not None and w.nodes == [HOPPED, DIRECT]
    assert w.complete is False and w.still_open  # its root was never seen: the run may still be going
    store.put_workflow(generate.WORKFLOW_ID, generate.WORKFLOW_NAME, HOPPED.trace_id, finished=True)
    w = store.workflow(generate.WORKFLOW_ID)
    assert w.model_dump(mode="json", by_alias=True) == FIXTURE["workflows"][0]
    assert w.complete and not w.still_open
    assert store.workflow("wf_nope") is None


def test_rollups_by_policy_model_and_workflow(store):
    store.put_many((variant(HOPPED if i % 2 else DIRECT, i), None) for i in range(10))
    dry = variant(DIRECT, 99, outcome="dry_run")
    store.put(dry)
    by_policy = {r.key: r for r in store.rollup("policy")}
    assert set(by_policy) == {"support", "eu-answers"}
    support = by_policy["support"]
    assert support.decisions == 5 and support.fallbacks == 5 and support.fallback_rate == 1.0
    assert support.cost_usd == pytest.approx(5 * HOPPED.cost.usd)
    assert support.baseline_usd == pytest.approx(5 * HOPPED.cost.baseline_usd)
    assert support.savings_usd == pytest.approx(5 * (HOPPED.cost.baseline_usd - HOPPED.cost.usd))
    assert support.savings_ratio == pytest.approx(HOPPED.cost.savings_ratio)
    assert by_policy["eu-answers"].decisions == 5  # the dry run is not a decision that cost anything
    assert {r.key for r in store.rollup("model")} == {"mistral-large-2512", "claude-opus-4-7"}
    assert [(r.key, r.decisions) for r in store.rollup("workflow")] == [(generate.WORKFLOW_NAME, 10)]
    assert (
        store.rollup("policy", since="2026-03-14T09:05:00Z")[0].decisions
        + store.rollup("policy", since="2026-03-14T09:05:00Z")[1].decisions
        == 5
    )
    with pytest.raises(StoreError, match="expected one of policy, workflow, model"):
        store.rollup("color")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the file


def test_the_file_is_wal_and_records_its_schema_version(store):
    store.put(HOPPED)
    db = sqlite3.connect(store.location)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    meta = dict(db.execute("SELECT key, value FROM meta"))
    assert meta["kind"] == "unhardcoded-receipts-store"
    assert meta["schema_version"] == str(STORE_SCHEMA_VERSION)
    db.close()


def test_reopening_keeps_everything(tmp_path):
    path = tmp_path / "deep" / "dir" / "receipts.db"
    with open_store(str(path)) as s:
        s.put(HOPPED, policy_body=POLICIES[HOPPED.policy.fingerprint])
        s.put_catalog(Catalog.builtin())
    with open_store(f"sqlite:///{path}", create=False) as s:
        assert s.get(HOPPED.request_id).receipt == HOPPED
        assert s.policy(HOPPED.policy.fingerprint) is not None
        assert s.catalog(Catalog.builtin().version) is not None


# The tables of store schema 1, as the store created them: a real old file is made from these.
_V1_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS receipts (
  request_id TEXT PRIMARY KEY,
  trace_id TEXT,
  ts_ms INTEGER NOT NULL,
  policy_name TEXT NOT NULL,
  policy_fingerprint TEXT NOT NULL,
  catalog_version TEXT NOT NULL,
  model TEXT,
  outcome TEXT NOT NULL,
  fallback INTEGER NOT NULL,
  cost_usd REAL,
  baseline_model TEXT,
  baseline_usd REAL,
  workflow_id TEXT,
  workflow_name TEXT,
  complete INTEGER NOT NULL,
  revision INTEGER NOT NULL,
  stored_at TEXT NOT NULL,
  body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS receipts_by_trace ON receipts(trace_id);
CREATE INDEX IF NOT EXISTS receipts_by_time ON receipts(ts_ms);
CREATE INDEX IF NOT EXISTS receipts_by_policy ON receipts(policy_name, ts_ms);
CREATE INDEX IF NOT EXISTS receipts_by_fingerprint ON receipts(policy_fingerprint);
CREATE INDEX IF NOT EXISTS receipts_by_model ON receipts(model, ts_ms);
CREATE INDEX IF NOT EXISTS receipts_by_workflow ON receipts(workflow_id);
CREATE TABLE IF NOT EXISTS policies (
  fingerprint TEXT PRIMARY KEY, name TEXT, schema TEXT, body TEXT NOT NULL, first_seen TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS catalogs (version TEXT PRIMARY KEY, body TEXT NOT NULL, first_seen TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workflows (
  workflow_id TEXT PRIMARY KEY, name TEXT NOT NULL, trace_id TEXT, stored_at TEXT NOT NULL
);
"""


def _v1_store(path: Path, receipts: list[Receipt], workflows: list[tuple[str, str, str | None]]) -> None:
    """A store file as unhardcoded wrote it at store schema 1: its tables, its meta rows, receipts and workflows."""
    db = sqlite3.connect(path)
    db.executescript(_V1_TABLES)
    db.executemany(
        "INSERT INTO meta(key, value) VALUES (?, ?)",
        [("kind", "unhardcoded-receipts-store"), ("schema_version", "1"), ("created_at", "2026-03-14T09:00:00.000Z")],
    )
    for r in receipts:
        model = r.answered_by or (r.selected.model if r.selected else None)
        ts = int(datetime.fromisoformat(r.timestamp.replace("Z", "+00:00")).timestamp() * 1000)
        db.execute(
            "INSERT INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, '2026-03-14T09:00:00.000Z', ?)",
            (
                r.request_id,
                r.trace_id,
                ts,
                r.policy.name,
                r.policy.fingerprint,
                r.catalog_version,
                model,
                r.outcome,
                int(r.fallback.triggered),
                r.cost.usd,
                r.cost.baseline_model,
                r.cost.baseline_usd,
                r.workflow.id if r.workflow else None,
                r.workflow.name if r.workflow else None,
                int(r.complete),
                r.to_json_text(),
            ),
        )
    db.executemany("INSERT INTO workflows VALUES (?, ?, ?, '2026-03-14T09:00:00.000Z')", workflows)
    db.commit()
    db.close()


def test_a_schema_1_store_is_migrated_and_reads_as_before(tmp_path):
    path = tmp_path / "receipts.db"
    _v1_store(path, [HOPPED, DIRECT], [(generate.WORKFLOW_ID, generate.WORKFLOW_NAME, HOPPED.trace_id)])
    with open_store(str(path), create=False) as s:  # opening migrates it, even when only reading
        assert s.get(HOPPED.request_id).receipt == HOPPED and s.get(DIRECT.request_id).receipt == DIRECT
        assert s.get(HOPPED.request_id).revision == 1
        # At schema 1 a workflow was complete when its nodes were; it still is.
        assert s.workflow(generate.WORKFLOW_ID).model_dump(mode="json", by_alias=True) == FIXTURE["workflows"][0]
        s.put(
            DIRECT.model_copy(
                update={
                    "request_id": "req_after",
                    "workflow": DIRECT.workflow.model_copy(update={"id": "wf_after"}),
                    "client": "support-bot",
                }
            )
        )
        assert s.workflow("wf_after").still_open  # written after the migration: open until its root is seen
        # The client column is filled for receipts written after the migration; those from before roll up as (none).
        assert {(r.key, r.decisions) for r in s.rollup("client")} == {("(none)", 2), ("support-bot", 1)}
    db = sqlite3.connect(path)
    assert dict(db.execute("SELECT key, value FROM meta"))["schema_version"] == str(STORE_SCHEMA_VERSION) == "4"
    assert "finished_at" in {row[1] for row in db.execute("PRAGMA table_info(workflows)")}
    assert "client" in {row[1] for row in db.execute("PRAGMA table_info(receipts)")}
    # Receipts from before name their decision span, read from their bodies: the store knows whose they are.
    assert dict(db.execute("SELECT request_id, span_id FROM receipts")) == {
        HOPPED.request_id: HOPPED.span_id,
        DIRECT.request_id: DIRECT.span_id,
        "req_after": DIRECT.span_id,
    }
    db.close()
    with open_store(str(path)) as s:  # reopened: nothing migrated twice, every receipt and workflow as it was
        assert s.count() == 3
        assert s.workflow(generate.WORKFLOW_ID).complete
        assert s.workflow("wf_after").still_open
        assert {r.request_id for r in s.query(ReceiptQuery(workflow_id=generate.WORKFLOW_ID))} == {
            HOPPED.request_id,
            DIRECT.request_id,
        }
        # A receipt migrated from before keeps first-come: another decision for its request id is kept aside.
        assert s.put(HOPPED.model_copy(update={"span_id": "f" * 16, "outcome": "dry_run"})) == 1
        assert s.get(HOPPED.request_id).receipt == HOPPED and s.count_conflicts(HOPPED.request_id) == 1
        assert [r.revision for r in s.revisions(HOPPED.request_id)] == [1]


def test_a_corrupt_file_is_a_clear_error_naming_it(tmp_path):
    path = tmp_path / "receipts.db"
    path.write_bytes(b"this is not a database, it is a grocery list\n" * 200)
    with pytest.raises(StoreError, match=f"{path}: not a usable receipt store"):
        open_store(str(path))


def test_a_foreign_sqlite_file_is_a_clear_error_naming_it(tmp_path):
    path = tmp_path / "app.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=f"{path}: a SQLite database, but not an unhardcoded receipt store"):
        open_store(str(path))


def test_a_store_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "receipts.db"
    open_store(str(path)).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer unhardcoded"):
        open_store(str(path))


def test_a_missing_store_is_not_created_when_only_reading(tmp_path):
    path = tmp_path / "nothing-here.db"
    with pytest.raises(StoreError, match="no receipt store here yet"):
        open_store(str(path), create=False)
    assert not path.exists()


def test_a_directory_is_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="is a directory"):
        open_store(str(tmp_path))


def test_store_locations(tmp_path, monkeypatch):
    monkeypatch.delenv("UNHARDCODED_STORE", raising=False)
    monkeypatch.setenv("UNHARDCODED_HOME", str(tmp_path / "home"))
    assert default_store_path() == tmp_path / "home" / "receipts.db"
    assert store_url() == str(tmp_path / "home" / "receipts.db")
    monkeypatch.setenv("UNHARDCODED_STORE", "sqlite:///srv/receipts.db")
    assert store_url() == "sqlite:///srv/receipts.db"
    assert store_url("x.db") == "x.db"
    assert sqlite_path("sqlite:///srv/r.db") == Path("/srv/r.db")
    assert sqlite_path("sqlite:////srv/r.db") == Path("/srv/r.db")
    assert sqlite_path("rel/r.db") == Path("rel/r.db")
    for bad, message in (
        ("mysql://h/db", "unsupported scheme"),
        ("sqlite://host/x.db", "no host"),
        ("sqlite:///", "no file path"),
    ):
        with pytest.raises(StoreError, match=message):
            sqlite_path(bad)
    with pytest.raises(StoreError, match="PostgreSQL") as caught:  # the processor's store: nothing listens on port 1
        open_store("postgresql://user:s3cret@127.0.0.1:1/receipts")
    assert "s3cret" not in str(caught.value)


# --------------------------------------------------------------------------- concurrency


def test_concurrent_writers_in_threads(tmp_path):
    path = str(tmp_path / "receipts.db")
    shared = open_store(path)
    errors: list[BaseException] = []

    def write(worker: int, own_connection: bool) -> None:
        s = open_store(path) if own_connection else shared
        try:
            for i in range(40):
                s.put(variant(HOPPED, worker * 1000 + i))
                s.put(variant(HOPPED, i))  # every worker also writes the same 40: duplicates upsert
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            if own_connection:
                s.close()

    threads = [threading.Thread(target=write, args=(w, w % 2 == 0)) for w in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert shared.count() == 8 * 40 + 40
    assert {shared.get(f"req_{i:016x}").revision for i in range(40)} == {1}
    shared.close()


WRITER = textwrap.dedent("""
    import json, sys
    from datetime import datetime, timedelta, timezone
    from unhardcoded.receipts import Receipt, open_store
    base = Receipt.model_validate(json.loads(open(sys.argv[2]).read())["receipts"][0])
    worker = int(sys.argv[3])
    store = open_store(sys.argv[1])
    start = datetime(2026, 3, 14, tzinfo=timezone.utc)
    for i in range(150):
        for n in (worker * 10000 + i, i):
            ts = (start + timedelta(seconds=n)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            store.put(base.model_copy(update={"request_id": f"req_{n:016x}", "timestamp": ts}))
    store.close()
""")


def test_concurrent_writers_in_two_processes(tmp_path):
    path = tmp_path / "receipts.db"  # not created yet: both processes race to create it
    fixture = Path(__file__).parent.parent / "fixtures" / generate.EXPECTED
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(fixture), str(w)], stderr=subprocess.PIPE, text=True
        )
        for w in (1, 2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with open_store(str(path), create=False) as s:
        assert s.count() == 2 * 150 + 150
        assert s.get(f"req_{3:016x}").revision == 1


def test_a_schema_3_store_gets_the_console_columns_from_its_bodies(tmp_path):
    from unhardcoded.receipts.stores.sql import console_values

    path = tmp_path / "receipts.db"
    dry = variant(DIRECT, 3, outcome="dry_run", attempts=[], answered_by=None)
    receipts = [HOPPED, DIRECT, dry]
    with open_store(str(path)) as s:
        s.put_many((r, None) for r in receipts)
    db = sqlite3.connect(path)  # back to schema 3 as it was: no console columns
    db.execute("DROP INDEX receipts_by_outcome")
    for column in ("rules", "provider", "latency_ms"):
        db.execute(f"ALTER TABLE receipts DROP COLUMN {column}")
    db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with open_store(str(path), create=False) as s:
        for rule in ("region", "quality-floor", "price-ceiling", "tools", "region-"):
            assert s.count(ReceiptQuery(rule=rule)) == sum(any(j.rule == rule for j in r.rejected) for r in receipts)
        assert s.count(ReceiptQuery(outcome="dry_run")) == 1
    db = sqlite3.connect(path)
    rows = {r[0]: r[1:] for r in db.execute("SELECT request_id, rules, provider, latency_ms FROM receipts")}
    assert rows == {r.request_id: console_values(r) for r in receipts}
    assert dict(db.execute("SELECT key, value FROM meta"))["schema_version"] == "4"
    db.close()
