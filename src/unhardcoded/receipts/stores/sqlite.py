"""Receipts and the processor's spool in one SQLite file (WAL), the default store.

The file lives at ``unhardcoded._paths.data_dir() / "receipts.db"`` unless
``UNHARDCODED_STORE`` (a path or ``sqlite:///path`` URL) or ``--store`` says
otherwise. Besides receipts it keeps every policy body by fingerprint and every
catalog by version, so a decision can be replayed months later.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Self, TypeVar

from ..model import Receipt, same_receipt_text
from .location import STORE_ENV
from .protocol import (
    DEFAULT_QUERY,
    ROLLUP_KEYS,
    GroupKey,
    HistoryQuery,
    HistoryRow,
    ReceiptQuery,
    RollupKey,
    RollupRow,
    SpoolSpan,
    StoredSpan,
    StoreError,
    Written,
    reopened,
)
from .sql import (
    ROLLUP_COLUMN,
    SPAN_COLUMNS,
    SPAN_JOIN,
    Row,
    SQLReceiptReads,
    console_values,
    epoch_ms,
    now_iso,
    policy_row,
)

if TYPE_CHECKING:
    from ...catalog.model import Catalog
    from ..rebuild import RebuiltDecision

STORE_KIND = "unhardcoded-receipts-store"
PAGE_SIZE = 16384
STORE_SCHEMA_VERSION = 4
"""Bumped with every change to the tables; :meth:`SQLiteReceiptStore._migrate` walks older files forward.

2: ``workflows.finished_at``, when the workflow's root span was seen and the workflow finished.
3: ``receipts.client``, the name of the client key a proxy with ``--keys`` took the request with;
   ``receipts.span_id`` (a receipt belongs to one decision), ``receipt_revisions`` (every revision a receipt was
   replaced by a later one of the same decision) and ``receipt_conflicts`` (receipts of other decisions for a stored
   request id, kept aside).
4: ``receipts.rules`` (the rules that rejected a model, for the console's rule filter), ``receipts.provider``
   (the last attempt's provider) and ``receipts.latency_ms``, filled in from the bodies of receipts stored before.
"""

T = TypeVar("T")


def immediate(db: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn(db)`` in one ``BEGIN IMMEDIATE`` transaction: committed, or rolled back if anything raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = fn(db)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return result


# --------------------------------------------------------------------------- the store

_RECORD_TABLES = """
CREATE TABLE IF NOT EXISTS receipt_revisions (
  request_id TEXT NOT NULL, revision INTEGER NOT NULL, stored_at TEXT NOT NULL, body TEXT NOT NULL,
  PRIMARY KEY (request_id, revision)
);
CREATE TABLE IF NOT EXISTS receipt_conflicts (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  request_id TEXT NOT NULL, trace_id TEXT NOT NULL, span_id TEXT NOT NULL, received_at TEXT NOT NULL, body TEXT NOT NULL,
  UNIQUE (request_id, trace_id, span_id)
);
"""
# receipt_revisions holds the revisions a receipt moved past; the current one is its row in receipts. A conflict is
# kept once per decision (trace and span id, '' when the receipt has none), as it first came.

_TABLES = (
    """
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
  client TEXT,
  complete INTEGER NOT NULL,
  revision INTEGER NOT NULL,
  stored_at TEXT NOT NULL,
  body TEXT NOT NULL,
  span_id TEXT,
  rules TEXT,
  provider TEXT,
  latency_ms REAL
);
CREATE INDEX IF NOT EXISTS receipts_by_trace ON receipts(trace_id);
CREATE INDEX IF NOT EXISTS receipts_by_time ON receipts(ts_ms);
CREATE INDEX IF NOT EXISTS receipts_by_policy ON receipts(policy_name, ts_ms);
CREATE INDEX IF NOT EXISTS receipts_by_fingerprint ON receipts(policy_fingerprint);
CREATE INDEX IF NOT EXISTS receipts_by_model ON receipts(model, ts_ms);
CREATE INDEX IF NOT EXISTS receipts_by_workflow ON receipts(workflow_id);
CREATE INDEX IF NOT EXISTS receipts_by_client ON receipts(client, ts_ms);
CREATE INDEX IF NOT EXISTS receipts_by_outcome ON receipts(outcome, fallback, ts_ms, rules);
CREATE INDEX IF NOT EXISTS receipts_by_policy_outcome ON receipts(policy_name, fallback, outcome, ts_ms);
CREATE TABLE IF NOT EXISTS policies (
  fingerprint TEXT PRIMARY KEY, name TEXT, schema TEXT, body TEXT NOT NULL, first_seen TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS catalogs (version TEXT PRIMARY KEY, body TEXT NOT NULL, first_seen TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workflows (
  workflow_id TEXT PRIMARY KEY, name TEXT NOT NULL, trace_id TEXT, stored_at TEXT NOT NULL, finished_at TEXT
);
"""
    + _RECORD_TABLES
)

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 1 -> 2: workflows record when their root was seen and they were finished. A store from before kept no such
    # thing and read every workflow as finished; its workflows stay so.
    1: ("ALTER TABLE workflows ADD COLUMN finished_at TEXT", "UPDATE workflows SET finished_at = stored_at"),
    # 2 -> 3: receipts name the client key they came with (receipts stored before had none) and their decision
    # span; a store from before kept only the last revision of each receipt.
    2: (
        "ALTER TABLE receipts ADD COLUMN client TEXT",
        "CREATE INDEX IF NOT EXISTS receipts_by_client ON receipts(client, ts_ms)",
        "ALTER TABLE receipts ADD COLUMN span_id TEXT",
        "UPDATE receipts SET span_id = json_extract(body, '$.span_id')",
        *(statement for statement in _RECORD_TABLES.split(";") if statement.strip()),
    ),
    # 3 -> 4: the console filters by rejection rule and charts provider and latency; receipts stored before get
    # the columns from their bodies, as console_values() writes them.
    3: (
        "ALTER TABLE receipts ADD COLUMN rules TEXT",
        "ALTER TABLE receipts ADD COLUMN provider TEXT",
        "ALTER TABLE receipts ADD COLUMN latency_ms REAL",
        (
            "UPDATE receipts SET "
            "rules = (SELECT char(10) || group_concat(rule, char(10)) || char(10) FROM "
            "(SELECT DISTINCT json_extract(value, '$.rule') AS rule FROM json_each(body, '$.rejected') ORDER BY rule)), "
            "provider = json_extract(body, '$.attempts[#-1].provider'), "
            "latency_ms = CASE WHEN outcome = 'dry_run' THEN NULL ELSE json_extract(body, '$.latency_ms') END"
        ),
        "CREATE INDEX IF NOT EXISTS receipts_by_outcome ON receipts(outcome, fallback, ts_ms, rules)",
        "CREATE INDEX IF NOT EXISTS receipts_by_policy_outcome ON receipts(policy_name, fallback, outcome, ts_ms)",
    ),
}


class SQLiteReceiptStore(SQLReceiptReads):
    """Receipts in one SQLite file (WAL), safe for threads of one process and for several processes."""

    def __init__(self, path: str | Path, *, create: bool = True, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self._lock = threading.RLock()
        if not self.path.exists():
            if not create:
                raise StoreError(
                    f"{self.path}: no receipt store here yet (no receipts recorded); set --store or {STORE_ENV}"
                )
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"{self.path}: cannot create the store's directory: {exc.strerror}") from None
        elif self.path.is_dir():
            raise StoreError(f"{self.path}: is a directory, not a receipt store file")
        try:
            self._db = sqlite3.connect(str(self.path), timeout=timeout_s, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the receipt store: {exc}") from None
        try:
            self._db.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
            self._open_waiting(timeout_s)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(
                f"{self.path}: not a usable receipt store ({exc}); move it aside or point {STORE_ENV} at another file"
            ) from None
        except StoreError:
            self._db.close()
            raise

    # -- opening, creating, migrating ------------------------------------------------------

    def _open_waiting(self, timeout_s: float) -> None:
        """:meth:`_open`, tried again while another process holds the file: two processes creating one store
        both switch it to WAL, and SQLite answers one of them "locked" at once, without its busy timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self._open()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(0.05)

    def _tables(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def _open(self) -> None:
        db = self._db
        tables = self._tables()  # the first read: a file that is not SQLite fails here
        if tables and "meta" not in tables:
            raise StoreError(
                f"{self.path}: a SQLite database, but not an unhardcoded receipt store (tables: {', '.join(sorted(tables)[:5])}); "
                f"point --store or {STORE_ENV} at another file"
            )
        if not tables:
            # Receipts (~4 KB) and spooled spans (1-3 KB) fit in a 16 KiB page; in 4 KiB pages each spills
            # into overflow pages, and every write costs twice the pages. Only a new, empty file takes it.
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        if not tables:
            self._create()
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("kind") != STORE_KIND:
            raise StoreError(
                f"{self.path}: has a meta table but is not an unhardcoded receipt store; point {STORE_ENV} at another file"
            )
        try:
            version = int(meta.get("schema_version", "0"))
        except ValueError:
            raise StoreError(f"{self.path}: unreadable store schema version {meta.get('schema_version')!r}") from None
        if version > STORE_SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: written by a newer unhardcoded (store schema {version}, this version reads up to "
                f"{STORE_SCHEMA_VERSION}); upgrade unhardcoded"
            )
        if version < STORE_SCHEMA_VERSION:
            self._migrate(version)

    def _create(self) -> None:
        def create(db: sqlite3.Connection) -> None:
            if "meta" not in self._tables():  # another process may have created it while we waited
                for statement in _TABLES.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.executemany(
                    "INSERT INTO meta(key, value) VALUES (?, ?)",
                    [("kind", STORE_KIND), ("schema_version", str(STORE_SCHEMA_VERSION)), ("created_at", now_iso())],
                )

        immediate(self._db, create)

    def _migrate(self, version: int) -> None:
        """Walk an older store forward one schema version at a time, all in one transaction."""
        if version not in _MIGRATIONS:
            raise StoreError(f"{self.path}: store schema {version} cannot be migrated to {STORE_SCHEMA_VERSION}")

        def migrate(db: sqlite3.Connection) -> None:
            # Another process may have walked it forward while we waited for the lock.
            version = int(dict(db.execute("SELECT key, value FROM meta").fetchall()).get("schema_version", "0"))
            while version < STORE_SCHEMA_VERSION:
                for statement in _MIGRATIONS[version]:
                    db.execute(statement)
                version += 1
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))

        try:
            immediate(self._db, migrate)
        except sqlite3.Error as exc:
            raise StoreError(
                f"{self.path}: cannot migrate the store from schema {version} to {STORE_SCHEMA_VERSION}: {exc}"
            ) from None

    # -- writing ---------------------------------------------------------------------------------

    def shared_connection(self) -> tuple[sqlite3.Connection, threading.RLock]:
        """The store's connection and the lock that guards it, for a writer of other tables in the same file (the
        receipts processor's spool): one page cache serves both, and the store's writes made inside a transaction
        of that writer's are part of it, committed (or rolled back) with it."""
        return self._db, self._lock

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            db = self._db
            if db.in_transaction:  # inside a transaction of a writer sharing the connection: one commit, its own
                try:
                    return fn(db)
                except sqlite3.Error as exc:
                    raise StoreError(f"{self.path}: write failed: {exc}") from None
            try:
                return immediate(db, fn)
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: write failed: {exc}") from None

    @staticmethod
    def _put_policy(db: sqlite3.Connection, body: str, name: str | None = None, schema: str | None = None) -> str:
        fingerprint, name, schema = policy_row(body, name, schema)
        db.execute(
            "INSERT OR IGNORE INTO policies(fingerprint, name, schema, body, first_seen) VALUES (?, ?, ?, ?, ?)",
            (fingerprint, name, schema, body, now_iso()),
        )
        return fingerprint

    @staticmethod
    def _put_receipts(
        db: sqlite3.Connection, receipts: Sequence[Receipt], stamp: str
    ) -> tuple[list[tuple[int, bool]], int]:
        """Store receipts by the store's rules (one read for all, batched writes): per receipt, its stored revision
        and whether it changed; and how many conflicts were kept aside for the first time."""
        bodies = [r.to_json_bytes() for r in receipts]  # bound as UTF-8 text by CAST below
        # Per request id: (body as read (text) or as written (bytes), revision, complete, trace id, span id, stored_at)
        stored: dict[str, tuple[str | bytes, int, int, str | None, str | None, str]] = {}
        ids = list({r.request_id for r in receipts})
        for k in range(0, len(ids), 500):
            chunk = ids[k : k + 500]
            for request_id, *old in db.execute(
                "SELECT request_id, body, revision, complete, trace_id, span_id, stored_at FROM receipts "
                f"WHERE request_id IN ({','.join('?' * len(chunk))})",
                chunk,
            ):
                stored[request_id] = tuple(old)
        out: list[tuple[int, bool]] = []
        rows, workflows, superseded, conflicts = [], [], [], []
        for receipt, body in zip(receipts, bodies):
            old = stored.get(receipt.request_id)
            if old is not None:
                old_body, revision, old_complete, old_trace, old_span, old_stamp = old
                # The same receipt again, or a partial re-delivery of one already stored whole: not a newer revision.
                same = (old_trace, old_span) == (receipt.trace_id, receipt.span_id)
                if same and (same_receipt_text(old_body, body) or (old_complete and not receipt.complete)):
                    out.append((revision, False))
                    continue
                if not same or old_complete:
                    # Another decision for this request id, or other content for a decision stored whole (a
                    # complete receipt is final): kept aside, the stored receipt stays as it first came.
                    conflicts.append((receipt.request_id, receipt.trace_id or "", receipt.span_id or "", stamp, body))
                    out.append((revision, False))
                    continue
                superseded.append((receipt.request_id, revision, old_stamp, old_body))
                revision += 1
            else:
                revision = 1
            stored[receipt.request_id] = (
                body,
                revision,
                int(receipt.complete),
                receipt.trace_id,
                receipt.span_id,
                stamp,
            )
            wf = receipt.workflow
            model = receipt.answered_by or (receipt.selected.model if receipt.selected else None)
            rows.append(
                (
                    receipt.request_id,
                    receipt.trace_id,
                    receipt.span_id,
                    epoch_ms(receipt.timestamp),
                    receipt.policy.name,
                    receipt.policy.fingerprint,
                    receipt.catalog_version,
                    model,
                    receipt.outcome,
                    int(receipt.fallback.triggered),
                    receipt.cost.usd,
                    receipt.cost.baseline_model,
                    receipt.cost.baseline_usd,
                    wf.id if wf else None,
                    wf.name if wf else None,
                    receipt.client,
                    int(receipt.complete),
                    revision,
                    stamp,
                    *console_values(receipt),
                    body,
                )
            )
            if wf is not None:
                workflows.append((wf.id, wf.name, receipt.trace_id, stamp))
            out.append((revision, True))
        if superseded:
            db.executemany(
                "INSERT OR IGNORE INTO receipt_revisions(request_id, revision, stored_at, body) "
                "VALUES (?, ?, ?, CAST(? AS TEXT))",
                superseded,
            )
        if rows:
            db.executemany(
                "INSERT OR REPLACE INTO receipts(request_id, trace_id, span_id, ts_ms, policy_name, policy_fingerprint, "
                "catalog_version, model, outcome, fallback, cost_usd, baseline_model, baseline_usd, workflow_id, "
                "workflow_name, client, complete, revision, stored_at, rules, provider, latency_ms, body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, CAST(? AS TEXT))",
                rows,
            )
        if workflows:
            db.executemany(
                "INSERT OR IGNORE INTO workflows(workflow_id, name, trace_id, stored_at) VALUES (?, ?, ?, ?)", workflows
            )
        kept = 0
        if conflicts:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO receipt_conflicts(request_id, trace_id, span_id, received_at, body) "
                "VALUES (?, ?, ?, ?, CAST(? AS TEXT))",
                conflicts,
            )
            kept = db.total_changes - before
        return out, kept

    def put(self, receipt: Receipt, policy_body: str | None = None) -> int:
        def run(db: sqlite3.Connection) -> int:
            if policy_body is not None:
                self._put_policy(db, policy_body, receipt.policy.name, receipt.policy.schema_)
            return self._put_receipts(db, [receipt], now_iso())[0][0][0]

        return self._write(run)

    def put_many(self, items: Iterable[tuple[Receipt, str | None]]) -> int:
        return self.put_receipts(items).changed

    def put_receipts(self, items: Iterable[tuple[Receipt, str | None]]) -> Written:
        items = list(items)

        def run(db: sqlite3.Connection) -> Written:
            for receipt, body in items:
                if body is not None:
                    self._put_policy(db, body, receipt.policy.name, receipt.policy.schema_)
            out, conflicts = self._put_receipts(db, [r for r, _ in items], now_iso())
            return Written(
                sum(changed for _, changed in out), conflicts, sum(changed and rev > 1 for rev, changed in out)
            )

        return self._write(run) if items else Written()

    def put_rebuilt(self, decisions: Iterable[RebuiltDecision]) -> int:
        """Upsert rebuilt decisions: receipts and the policy bodies they were decided under."""
        return self.put_many((d.receipt, d.policy_body) for d in decisions)

    def put_policy(self, body: str) -> str:
        return self._write(lambda db: self._put_policy(db, body))

    def put_catalog(self, catalog: Catalog) -> str:
        version, body = catalog.version, catalog.canonical
        self._write(
            lambda db: db.execute(
                "INSERT OR IGNORE INTO catalogs(version, body, first_seen) VALUES (?, ?, ?)", (version, body, now_iso())
            )
        )
        return version

    def put_workflow(self, workflow_id: str, name: str, trace_id: str | None = None, finished: bool = False) -> None:
        now = now_iso()
        self._write(
            lambda db: db.execute(
                "INSERT INTO workflows(workflow_id, name, trace_id, stored_at, finished_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(workflow_id) DO UPDATE SET name = COALESCE(NULLIF(excluded.name, ''), name), "
                "trace_id = COALESCE(excluded.trace_id, trace_id), finished_at = COALESCE(finished_at, excluded.finished_at)",
                (workflow_id, name, trace_id, now, now if finished else None),
            )
        )

    # -- reading ---------------------------------------------------------------------------------

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: read failed: {exc}") from None

    def query(self, query: ReceiptQuery = DEFAULT_QUERY) -> list[Receipt]:
        """Matching receipts, newest first, paged by ``limit`` / ``offset``."""
        where, params = self._where(query)
        sql = f"SELECT body FROM receipts{where} ORDER BY ts_ms DESC, request_id"
        if query.limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [max(0, query.limit), max(0, query.offset)]
        elif query.offset:
            sql += " LIMIT -1 OFFSET ?"
            params.append(max(0, query.offset))
        return [Receipt.model_validate_json(row[0]) for row in self._read(sql, params)]

    def history(self, query: HistoryQuery) -> list[HistoryRow]:
        """SQLite reads the few values a replay needs out of each body itself, so no receipt is parsed in Python."""
        where, params = self._history_where(query)
        return self._read(
            "SELECT ts_ms, request_id, policy_name, policy_fingerprint, catalog_version, outcome, "
            "json_extract(body, '$.selected.model'), json_extract(body, '$.answered_by'), "
            "json_extract(body, '$.features'), json_extract(body, '$.attempts[#-1]') "
            f"FROM receipts{where} ORDER BY ts_ms, request_id LIMIT ?",
            [*params, max(0, query.limit)],
        )

    def rollup(self, by: RollupKey, since: datetime | str | None = None) -> list[RollupRow]:
        """Per ``by`` key: decisions that reached a provider or found no candidate (dry runs are left out)."""
        if by not in ROLLUP_COLUMN:
            raise StoreError(f"cannot roll up by {by!r}; expected one of {', '.join(ROLLUP_KEYS)}")
        column = ROLLUP_COLUMN[by]
        where, params = "WHERE outcome != 'dry_run'", []
        if since is not None:
            where += " AND ts_ms >= ?"
            params.append(epoch_ms(since))
        priced = "baseline_usd IS NOT NULL AND cost_usd IS NOT NULL"
        rows = self._read(
            f"SELECT COALESCE({column}, '(none)'), COUNT(*), SUM(fallback), SUM(outcome = 'failed'), "
            f"TOTAL(cost_usd), TOTAL(baseline_usd), TOTAL(CASE WHEN {priced} THEN baseline_usd - cost_usd END), "
            f"TOTAL(CASE WHEN {priced} THEN baseline_usd END), SUM(outcome = 'over_budget') "
            f"FROM receipts {where} GROUP BY 1 ORDER BY 5 DESC, 1",
            params,
        )
        return [
            RollupRow(
                key,
                n,
                int(fb or 0),
                int(failed or 0),
                cost,
                base,
                saved,
                (saved / priced_base) if priced_base > 0 else None,
                priced_base,
                int(refused or 0),
            )
            for key, n, fb, failed, cost, base, saved, priced_base, refused in rows
        ]

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteReceiptStore({self.location!r})"


# --------------------------------------------------------------------------- the spool

_SPOOL_TABLES = """
CREATE TABLE IF NOT EXISTS processor_spans (
  trace_id TEXT NOT NULL,
  span_id TEXT NOT NULL,
  group_key TEXT NOT NULL,
  owner TEXT NOT NULL,
  received_ms INTEGER NOT NULL,
  service TEXT,
  body BLOB NOT NULL,
  PRIMARY KEY (trace_id, span_id)
);
CREATE TABLE IF NOT EXISTS processor_groups (
  trace_id TEXT NOT NULL,
  group_key TEXT NOT NULL,
  finished_ms INTEGER NOT NULL,
  PRIMARY KEY (trace_id, group_key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS processor_groups_by_finished ON processor_groups(finished_ms);
"""
# A finished receipt is a small row in processor_groups, not an update of its spans: rewriting
# kilobytes of span per receipt was the spool's largest cost.

_CHUNK = 500  # ids per IN (...) list: well under SQLite's variable limit
_CACHE_KIB = 16 * 1024


class SQLiteSpool:
    """The spool in the SQLite receipt store's file: on its own connection (WAL makes the two get along), or on the
    store's, given ``store``.

    Sharing the store's connection, one page cache serves both (two connections writing in turn each find the
    other's commit and drop their cache), and a receipt and the mark that its spans are finished are one
    transaction. The connection then runs at the spool's ``synchronous``, the store's own writes too.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        timeout_s: float = 30.0,
        synchronous: str = "NORMAL",
        store: SQLiteReceiptStore | None = None,
    ) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self._shared = store is not None
        self._lock: threading.Lock | threading.RLock
        try:
            if store is not None:
                self._db, self._lock = store.shared_connection()
            else:
                self._lock = threading.Lock()
                self._db = sqlite3.connect(
                    str(self.path), timeout=timeout_s, isolation_level=None, check_same_thread=False
                )
                self._db.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
                self._db.execute("PRAGMA journal_mode=WAL")
            with self._lock:
                # NORMAL in WAL mode survives a killed process (the WAL is written before COMMIT returns);
                # FULL also survives the machine losing power, at a cost per commit.
                self._db.execute(f"PRAGMA synchronous={synchronous}")
                # Spans waiting for the rest of their receipt are read back from the spool when it comes: pages
                # written a moment ago, read from the connection's cache (SQLite's default is 2 MiB, 128 pages
                # of 16 KiB) rather than from the file, one system call per page. 16 MiB: what the memory
                # budget spares (RSS with 100,000 spans pending: 244 MB at 2 MiB, 273 MB at 32 MiB).
                self._db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
                self._db.executescript(_SPOOL_TABLES)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the processor spool: {exc}") from None

    def _txn(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                return immediate(self._db, fn)
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: spool write failed: {exc}") from None

    def _select(self, db: sqlite3.Connection, traces: list[str]) -> list[Row]:
        rows: list[Row] = []
        for i in range(0, len(traces), _CHUNK):
            chunk = traces[i : i + _CHUNK]
            rows += db.execute(
                f"SELECT {SPAN_COLUMNS} FROM {SPAN_JOIN} WHERE s.trace_id IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
        return rows

    def append(
        self, spans: Sequence[SpoolSpan], owner: str, now_ms: int, lookup: Iterable[GroupKey] = ()
    ) -> dict[GroupKey, list[StoredSpan]]:
        wanted = set(lookup)

        def run(db: sqlite3.Connection) -> dict[GroupKey, list[StoredSpan]]:
            found: dict[GroupKey, list[StoredSpan]] = {}
            if wanted:
                for row in self._select(db, sorted({t for t, _ in wanted})):
                    key = (row[0], row[2])
                    if key in wanted:
                        found.setdefault(key, []).append(StoredSpan(*row))
                again = reopened(spans, found)
                if again:
                    db.executemany("DELETE FROM processor_groups WHERE trace_id = ? AND group_key = ?", again)
            db.executemany(
                "INSERT OR IGNORE INTO processor_spans(trace_id, span_id, group_key, owner, received_ms, service, body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(s.trace_id, s.span_id, s.group, owner, now_ms, s.service, s.body) for s in spans],
            )
            return found

        return self._txn(run)

    def bodies(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        """Serialized spans by (trace id, span id), for spans whose bytes were let go from memory."""
        wanted = set(keys)
        out: dict[tuple[str, str], bytes] = {}
        traces = sorted({t for t, _ in wanted})
        with self._lock:
            try:
                for i in range(0, len(traces), _CHUNK):
                    chunk = traces[i : i + _CHUNK]
                    for t, sid, body in self._db.execute(
                        f"SELECT trace_id, span_id, body FROM processor_spans WHERE trace_id IN ({','.join('?' * len(chunk))})",
                        chunk,
                    ):
                        if (t, sid) in wanted:
                            out[(t, sid)] = body
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: spool read failed: {exc}") from None
        return out

    def finish(
        self, groups: Iterable[GroupKey], now_ms: int, write_receipts: Callable[[], object] | None = None
    ) -> None:
        rows = [(t, g, now_ms) for t, g in groups]
        if write_receipts is not None and not self._shared:
            write_receipts()  # its own transactions, committed before the marks

        def run(db: sqlite3.Connection) -> None:
            if write_receipts is not None and self._shared:
                write_receipts()  # the store's writes join this transaction
            if rows:
                db.executemany(
                    "INSERT OR REPLACE INTO processor_groups(trace_id, group_key, finished_ms) VALUES (?, ?, ?)", rows
                )

        if rows or (write_receipts is not None and self._shared):
            self._txn(run)

    def pending(self, owner: str) -> list[StoredSpan]:
        with self._lock:
            try:
                rows = self._db.execute(
                    f"SELECT {SPAN_COLUMNS} FROM {SPAN_JOIN} WHERE g.trace_id IS NULL AND s.owner = ? ORDER BY s.received_ms, s.rowid",
                    (owner,),
                ).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: spool read failed: {exc}") from None
        return [StoredSpan(*r) for r in rows]

    def prune(self, finished_before_ms: int, limit: int = 10_000) -> int:
        def run(db: sqlite3.Connection) -> int:
            groups = db.execute(
                "SELECT trace_id, group_key FROM processor_groups WHERE finished_ms < ? LIMIT ?",
                (finished_before_ms, limit),
            ).fetchall()
            if not groups:
                return 0
            before = db.total_changes
            db.executemany("DELETE FROM processor_spans WHERE trace_id = ? AND group_key = ?", groups)
            spans = db.total_changes - before
            db.executemany("DELETE FROM processor_groups WHERE trace_id = ? AND group_key = ?", groups)
            return spans

        return self._txn(run)

    def counts(self) -> tuple[int, int]:
        with self._lock:
            pending = self._db.execute(f"SELECT COUNT(*) FROM {SPAN_JOIN} WHERE g.trace_id IS NULL").fetchone()[0]
            total = self._db.execute("SELECT COUNT(*) FROM processor_spans").fetchone()[0]
        return int(pending), int(total - pending)

    def close(self) -> None:
        if self._shared:
            return  # the store's connection: the store closes it
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
