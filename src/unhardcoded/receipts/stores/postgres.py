"""Receipts and the spool in PostgreSQL, so several processors (behind a Collector's ``loadbalancing`` exporter,
routing by trace id) share one store. Same methods, same semantics as the SQLite store in :mod:`.sqlite`.

Needs ``psycopg`` (v3), an optional extra (``pip install 'unhardcoded[postgres]'``): imported when a store is opened.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from ..._wire import redact_url
from ..model import Receipt, same_receipt_text
from .protocol import (
    DEFAULT_QUERY,
    ROLLUP_KEYS,
    GroupKey,
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
    import psycopg

    from ...catalog.model import Catalog
    from ..rebuild import RebuiltDecision

    Connection = psycopg.Connection[Row]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
  request_id TEXT PRIMARY KEY,
  trace_id TEXT,
  ts_ms BIGINT NOT NULL,
  policy_name TEXT NOT NULL,
  policy_fingerprint TEXT NOT NULL,
  catalog_version TEXT NOT NULL,
  model TEXT,
  outcome TEXT NOT NULL,
  fallback BOOLEAN NOT NULL,
  cost_usd DOUBLE PRECISION,
  baseline_model TEXT,
  baseline_usd DOUBLE PRECISION,
  workflow_id TEXT,
  workflow_name TEXT,
  client TEXT,
  complete BOOLEAN NOT NULL,
  revision INTEGER NOT NULL,
  stored_at TEXT NOT NULL,
  body TEXT NOT NULL,
  span_id TEXT,
  rules TEXT,
  provider TEXT,
  latency_ms DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS receipts_by_trace ON receipts(trace_id);
CREATE INDEX IF NOT EXISTS receipts_by_time ON receipts(ts_ms);
CREATE INDEX IF NOT EXISTS receipts_by_policy ON receipts(policy_name, ts_ms);
CREATE INDEX IF NOT EXISTS receipts_by_fingerprint ON receipts(policy_fingerprint);
CREATE INDEX IF NOT EXISTS receipts_by_model ON receipts(model, ts_ms);
CREATE INDEX IF NOT EXISTS receipts_by_workflow ON receipts(workflow_id);
CREATE TABLE IF NOT EXISTS policies (fingerprint TEXT PRIMARY KEY, name TEXT, schema TEXT, body TEXT NOT NULL, first_seen TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS catalogs (version TEXT PRIMARY KEY, body TEXT NOT NULL, first_seen TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workflows (
  workflow_id TEXT PRIMARY KEY, name TEXT NOT NULL, trace_id TEXT, stored_at TEXT NOT NULL, finished_at TEXT
);
CREATE TABLE IF NOT EXISTS processor_spans (
  trace_id TEXT NOT NULL,
  span_id TEXT NOT NULL,
  group_key TEXT NOT NULL,
  owner TEXT NOT NULL,
  received_ms BIGINT NOT NULL,
  service TEXT,
  body BYTEA NOT NULL,
  seq BIGSERIAL,
  PRIMARY KEY (trace_id, span_id)
);
CREATE INDEX IF NOT EXISTS processor_spans_by_owner ON processor_spans(owner, seq);
CREATE TABLE IF NOT EXISTS processor_groups (
  trace_id TEXT NOT NULL,
  group_key TEXT NOT NULL,
  finished_ms BIGINT NOT NULL,
  PRIMARY KEY (trace_id, group_key)
);
CREATE INDEX IF NOT EXISTS processor_groups_by_finished ON processor_groups(finished_ms);
CREATE TABLE IF NOT EXISTS receipt_revisions (
  request_id TEXT NOT NULL, revision INTEGER NOT NULL, stored_at TEXT NOT NULL, body TEXT NOT NULL,
  PRIMARY KEY (request_id, revision)
);
CREATE TABLE IF NOT EXISTS receipt_conflicts (
  id BIGSERIAL PRIMARY KEY,
  request_id TEXT NOT NULL, trace_id TEXT NOT NULL, span_id TEXT NOT NULL, received_at TEXT NOT NULL, body TEXT NOT NULL,
  UNIQUE (request_id, trace_id, span_id)
);
"""
# As in the SQLite store: receipt_revisions holds the revisions a receipt moved past, the current one is its row in
# receipts; a conflict is kept once per decision, as it first came.

_LOCK_ID = 0x756E6863  # advisory lock around schema creation: instances starting together


def _connect(url: str) -> Connection:
    try:
        import psycopg
    except ImportError:
        raise StoreError(
            "a postgresql:// store needs psycopg: pip install 'unhardcoded[postgres]' (psycopg[binary])"
        ) from None
    try:
        conn = psycopg.connect(url, autocommit=True)
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to the PostgreSQL store: {str(exc).strip().splitlines()[0]}") from None
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        conn.execute(_SCHEMA)
        _add_workflow_finished_at(conn)
        _add_receipt_client(conn)
        _add_receipt_span_id(conn)
        _add_console_columns(conn)
    return conn


def _has_column(conn: Connection, table: str, column: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = %s AND column_name = %s",
            (table, column),
        ).fetchone()
        is not None
    )


def _add_receipt_span_id(conn: Connection) -> None:
    """Stores made before a receipt named its decision span get the column, filled in from the bodies (under the
    schema lock, so once)."""
    if not _has_column(conn, "receipts", "span_id"):
        conn.execute("ALTER TABLE receipts ADD COLUMN span_id TEXT")
        conn.execute("UPDATE receipts SET span_id = body::jsonb ->> 'span_id'")


def _add_console_columns(conn: Connection) -> None:
    """Store schema 4 (as the SQLite store's): the rules, provider and latency columns the console filters and
    charts by, filled in from the bodies of receipts stored before (under the schema lock, so once)."""
    if not _has_column(conn, "receipts", "rules"):
        conn.execute("ALTER TABLE receipts ADD COLUMN rules TEXT")
        conn.execute("ALTER TABLE receipts ADD COLUMN IF NOT EXISTS provider TEXT")
        conn.execute("ALTER TABLE receipts ADD COLUMN IF NOT EXISTS latency_ms DOUBLE PRECISION")
        conn.execute(
            "UPDATE receipts SET "
            "rules = (SELECT E'\\n' || string_agg(DISTINCT (j ->> 'rule') COLLATE \"C\", E'\\n' ORDER BY (j ->> 'rule') COLLATE \"C\") || E'\\n' "
            "FROM jsonb_array_elements(body::jsonb -> 'rejected') j), "
            "provider = body::jsonb -> 'attempts' -> -1 ->> 'provider', "
            "latency_ms = CASE WHEN outcome = 'dry_run' THEN NULL ELSE (body::jsonb ->> 'latency_ms')::double precision END"
        )
    conn.execute("CREATE INDEX IF NOT EXISTS receipts_by_outcome ON receipts(outcome, fallback, ts_ms) INCLUDE (rules)")
    conn.execute(
        "CREATE INDEX IF NOT EXISTS receipts_by_policy_outcome ON receipts(policy_name, fallback, outcome, ts_ms)"
    )


def _add_workflow_finished_at(conn: Connection) -> None:
    """Stores made before workflows recorded when their root was seen get the column; their workflows read as
    finished, as they did. Runs under the schema lock, so only the first instance to open such a store adds it."""
    if not _has_column(conn, "workflows", "finished_at"):
        conn.execute("ALTER TABLE workflows ADD COLUMN finished_at TEXT")
        conn.execute("UPDATE workflows SET finished_at = stored_at")


def _add_receipt_client(conn: Connection) -> None:
    """Stores made before receipts named their client key get the column (empty for the receipts they hold) and its
    index. Runs under the schema lock, as :func:`_add_workflow_finished_at` does."""
    conn.execute("ALTER TABLE receipts ADD COLUMN IF NOT EXISTS client TEXT")
    conn.execute("CREATE INDEX IF NOT EXISTS receipts_by_client ON receipts(client, ts_ms)")


class _Conn:
    """One connection, used under a lock, with errors turned into :class:`StoreError`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.location = redact_url(url)
        self._lock = threading.RLock()
        self._conn = _connect(url)  # imports psycopg, or says how to install it
        import psycopg

        self._error = psycopg.Error

    def run(self, fn: Callable[[Connection], T], write: bool = True) -> T:
        with self._lock:
            try:
                if self._conn.closed or self._conn.broken:
                    self._conn = _connect(self.url)
                if write:
                    with self._conn.transaction():
                        return fn(self._conn)
                return fn(self._conn)
            except self._error as exc:
                raise StoreError(f"{self.location}: {str(exc).strip().splitlines()[0]}") from None

    def close(self) -> None:
        with self._lock, contextlib.suppress(Exception):  # closing a dead connection
            self._conn.close()


class PostgresReceiptStore(SQLReceiptReads):
    """The :class:`~.protocol.ReceiptStore` protocol over PostgreSQL."""

    _param = "%s"
    _contains = "strpos({column}, {param}) > 0"

    @staticmethod
    def _flag(value: bool) -> object:
        return bool(value)

    def __init__(self, url: str) -> None:
        self._db = _Conn(url)
        self.location = self._db.location

    # -- writing -------------------------------------------------------------------------------

    @staticmethod
    def _put_policy(conn: Connection, body: str, name: str | None = None, schema: str | None = None) -> str:
        fingerprint, name, schema = policy_row(body, name, schema)
        conn.execute(
            "INSERT INTO policies(fingerprint, name, schema, body, first_seen) VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (fingerprint, name, schema, body, now_iso()),
        )
        return fingerprint

    @staticmethod
    def _put_receipt(conn: Connection, receipt: Receipt, stamp: str) -> tuple[int, bool, bool]:
        """Store one receipt by the store's rules: its stored revision, whether it changed, and whether it was kept
        aside as a conflict for the first time."""
        body = receipt.to_json_text()
        wf = receipt.workflow
        model = receipt.answered_by or (receipt.selected.model if receipt.selected else None)
        values = (
            receipt.trace_id,
            receipt.span_id,
            epoch_ms(receipt.timestamp),
            receipt.policy.name,
            receipt.policy.fingerprint,
            receipt.catalog_version,
            model,
            receipt.outcome,
            receipt.fallback.triggered,
            receipt.cost.usd,
            receipt.cost.baseline_model,
            receipt.cost.baseline_usd,
            wf.id if wf else None,
            wf.name if wf else None,
            receipt.client,
            receipt.complete,
            stamp,
            *console_values(receipt),
            body,
        )
        # First come: a new request id is inserted; two instances inserting it at once, one waits and finds the
        # other's row below.
        row = conn.execute(
            "INSERT INTO receipts (request_id, trace_id, span_id, ts_ms, policy_name, policy_fingerprint, catalog_version, "
            "model, outcome, fallback, cost_usd, baseline_model, baseline_usd, workflow_id, workflow_name, client, complete, "
            "stored_at, rules, provider, latency_ms, body, revision) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 1) "
            "ON CONFLICT (request_id) DO NOTHING RETURNING revision",
            (receipt.request_id, *values),
        ).fetchone()
        if row is None:
            # Locked until this transaction ends, so two instances agree on the next revision.
            old = conn.execute(
                "SELECT trace_id, span_id, revision, complete, stored_at, body FROM receipts WHERE request_id = %s FOR UPDATE",
                (receipt.request_id,),
            ).fetchone()
            assert old is not None  # the insert met it; receipts are never deleted
            old_trace, old_span, revision, old_complete, old_stamp, old_body = old
            same = (old_trace, old_span) == (receipt.trace_id, receipt.span_id)
            # The same receipt again, or a partial re-delivery of one already stored whole: not a newer revision.
            if same and (same_receipt_text(old_body, body) or (old_complete and not receipt.complete)):
                return int(revision), False, False
            if not same or old_complete:
                # Another decision for this request id, or other content for a decision stored whole (a complete
                # receipt is final): kept aside, the stored receipt stays as it first came.
                kept = conn.execute(
                    "INSERT INTO receipt_conflicts(request_id, trace_id, span_id, received_at, body) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id",
                    (receipt.request_id, receipt.trace_id or "", receipt.span_id or "", stamp, body),
                ).fetchone()
                return int(revision), False, kept is not None
            conn.execute(
                "INSERT INTO receipt_revisions(request_id, revision, stored_at, body) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (receipt.request_id, revision, old_stamp, old_body),
            )
            row = conn.execute(
                "UPDATE receipts SET trace_id = %s, span_id = %s, ts_ms = %s, policy_name = %s, policy_fingerprint = %s, "
                "catalog_version = %s, model = %s, outcome = %s, fallback = %s, cost_usd = %s, baseline_model = %s, "
                "baseline_usd = %s, workflow_id = %s, workflow_name = %s, client = %s, complete = %s, stored_at = %s, "
                "rules = %s, provider = %s, latency_ms = %s, body = %s, "
                "revision = revision + 1 WHERE request_id = %s RETURNING revision",
                (*values, receipt.request_id),
            ).fetchone()
            assert row is not None
        if wf is not None:
            conn.execute(
                "INSERT INTO workflows(workflow_id, name, trace_id, stored_at) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (wf.id, wf.name, receipt.trace_id, stamp),
            )
        return int(row[0]), True, False

    def put(self, receipt: Receipt, policy_body: str | None = None) -> int:
        def run(conn: Connection) -> int:
            if policy_body is not None:
                self._put_policy(conn, policy_body, receipt.policy.name, receipt.policy.schema_)
            return self._put_receipt(conn, receipt, now_iso())[0]

        return self._db.run(run)

    def put_many(self, items: Iterable[tuple[Receipt, str | None]]) -> int:
        return self.put_receipts(items).changed

    def put_receipts(self, items: Iterable[tuple[Receipt, str | None]]) -> Written:
        items = list(items)

        def run(conn: Connection) -> Written:
            stamp = now_iso()
            changed = conflicts = revised = 0
            seen: set[str] = set()
            for receipt, body in items:
                if body is not None and receipt.policy.fingerprint not in seen:
                    seen.add(receipt.policy.fingerprint)
                    self._put_policy(conn, body, receipt.policy.name, receipt.policy.schema_)
                revision, was_changed, was_conflict = self._put_receipt(conn, receipt, stamp)
                changed += was_changed
                conflicts += was_conflict
                revised += was_changed and revision > 1
            return Written(changed, conflicts, revised)

        return self._db.run(run) if items else Written()

    def put_rebuilt(self, decisions: Iterable[RebuiltDecision]) -> int:
        return self.put_many((d.receipt, d.policy_body) for d in decisions)

    def put_policy(self, body: str) -> str:
        return self._db.run(lambda conn: self._put_policy(conn, body))

    def put_catalog(self, catalog: Catalog) -> str:
        version, body = catalog.version, catalog.canonical
        self._db.run(
            lambda conn: conn.execute(
                "INSERT INTO catalogs(version, body, first_seen) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (version, body, now_iso()),
            )
        )
        return version

    def put_workflow(self, workflow_id: str, name: str, trace_id: str | None = None, finished: bool = False) -> None:
        now = now_iso()
        self._db.run(
            lambda conn: conn.execute(
                "INSERT INTO workflows(workflow_id, name, trace_id, stored_at, finished_at) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (workflow_id) DO UPDATE SET name = COALESCE(NULLIF(excluded.name, ''), workflows.name), "
                "trace_id = COALESCE(excluded.trace_id, workflows.trace_id), "
                "finished_at = COALESCE(workflows.finished_at, excluded.finished_at)",
                (workflow_id, name, trace_id, now, now if finished else None),
            )
        )

    # -- reading -------------------------------------------------------------------------------

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        return self._db.run(lambda conn: conn.execute(sql, params).fetchall(), write=False)

    def query(self, query: ReceiptQuery = DEFAULT_QUERY) -> list[Receipt]:
        where, params = self._where(query)
        sql = f"SELECT body FROM receipts{where} ORDER BY ts_ms DESC, request_id"
        if query.limit is not None:
            sql += " LIMIT %s"
            params.append(max(0, query.limit))
        if query.offset:
            sql += " OFFSET %s"
            params.append(max(0, query.offset))
        return [Receipt.model_validate_json(row[0]) for row in self._read(sql, params)]

    def rollup(self, by: RollupKey, since: datetime | str | None = None) -> list[RollupRow]:
        if by not in ROLLUP_COLUMN:
            raise StoreError(f"cannot roll up by {by!r}; expected one of {', '.join(ROLLUP_KEYS)}")
        column = ROLLUP_COLUMN[by]
        where, params = "WHERE outcome <> 'dry_run'", []
        if since is not None:
            where += " AND ts_ms >= %s"
            params.append(epoch_ms(since))
        priced = "baseline_usd IS NOT NULL AND cost_usd IS NOT NULL"
        rows = self._read(
            f"SELECT COALESCE({column}, '(none)') AS k, COUNT(*), SUM(fallback::int), SUM((outcome = 'failed')::int), "
            f"COALESCE(SUM(cost_usd), 0), COALESCE(SUM(baseline_usd), 0), "
            f"COALESCE(SUM(CASE WHEN {priced} THEN baseline_usd - cost_usd END), 0), "
            f"COALESCE(SUM(CASE WHEN {priced} THEN baseline_usd END), 0), SUM((outcome = 'over_budget')::int) "
            f"FROM receipts {where} GROUP BY 1 ORDER BY 5 DESC, 1",
            params,
        )
        return [
            RollupRow(
                key,
                int(n),
                int(fb or 0),
                int(failed or 0),
                float(cost),
                float(base),
                float(saved),
                (float(saved) / float(priced_base)) if priced_base and priced_base > 0 else None,
                over_budget=int(refused or 0),
            )
            for key, n, fb, failed, cost, base, saved, priced_base, refused in rows
        ]

    def close(self) -> None:
        self._db.close()

    def __repr__(self) -> str:
        return f"PostgresReceiptStore({self.location!r})"


def _stored(row: Row) -> StoredSpan:
    return StoredSpan(row[0], row[1], row[2], bytes(row[3]), row[4], row[5], row[6])


class PostgresSpool:
    """The spool (see :class:`~.protocol.Spool`) in the same PostgreSQL database."""

    def __init__(self, url: str) -> None:
        self._db = _Conn(url)
        self.location = self._db.location

    def append(
        self, spans: Sequence[SpoolSpan], owner: str, now_ms: int, lookup: Iterable[GroupKey] = ()
    ) -> dict[GroupKey, list[StoredSpan]]:
        wanted = set(lookup)

        def run(conn: Connection) -> dict[GroupKey, list[StoredSpan]]:
            found: dict[GroupKey, list[StoredSpan]] = {}
            with conn.cursor() as cur:
                if wanted:
                    rows = cur.execute(
                        f"SELECT {SPAN_COLUMNS} FROM {SPAN_JOIN} WHERE s.trace_id = ANY(%s)",
                        (sorted({t for t, _ in wanted}),),
                    ).fetchall()
                    for row in rows:
                        key = (row[0], row[2])
                        if key in wanted:
                            found.setdefault(key, []).append(_stored(row))
                    again = reopened(spans, found)
                    if again:
                        cur.executemany("DELETE FROM processor_groups WHERE trace_id = %s AND group_key = %s", again)
                cur.executemany(
                    "INSERT INTO processor_spans(trace_id, span_id, group_key, owner, received_ms, service, body) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [(s.trace_id, s.span_id, s.group, owner, now_ms, s.service, s.body) for s in spans],
                )
            return found

        return self._db.run(run)

    def bodies(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        wanted = set(keys)
        if not wanted:
            return {}
        rows = self._db.run(
            lambda conn: conn.execute(
                "SELECT trace_id, span_id, body FROM processor_spans WHERE trace_id = ANY(%s)",
                (sorted({t for t, _ in wanted}),),
            ).fetchall(),
            write=False,
        )
        return {(t, sid): bytes(body) for t, sid, body in rows if (t, sid) in wanted}

    def finish(
        self, groups: Iterable[GroupKey], now_ms: int, write_receipts: Callable[[], object] | None = None
    ) -> None:
        if write_receipts is not None:
            write_receipts()  # the store's own connection and transactions, committed before the marks
        rows = [(t, g, now_ms) for t, g in groups]
        if not rows:
            return

        def run(conn: Connection) -> None:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO processor_groups(trace_id, group_key, finished_ms) VALUES (%s, %s, %s) "
                    "ON CONFLICT (trace_id, group_key) DO UPDATE SET finished_ms = excluded.finished_ms",
                    rows,
                )

        self._db.run(run)

    def pending(self, owner: str) -> list[StoredSpan]:
        rows = self._db.run(
            lambda conn: conn.execute(
                f"SELECT {SPAN_COLUMNS} FROM {SPAN_JOIN} WHERE g.trace_id IS NULL AND s.owner = %s ORDER BY s.seq",
                (owner,),
            ).fetchall(),
            write=False,
        )
        return [_stored(r) for r in rows]

    def prune(self, finished_before_ms: int, limit: int = 10_000) -> int:
        def run(conn: Connection) -> int:
            groups = conn.execute(
                "DELETE FROM processor_groups WHERE ctid IN (SELECT ctid FROM processor_groups WHERE finished_ms < %s LIMIT %s) "
                "RETURNING trace_id, group_key",
                (finished_before_ms, limit),
            ).fetchall()
            if not groups:
                return 0
            return conn.execute(
                "DELETE FROM processor_spans s USING unnest(%s::text[], %s::text[]) AS f(trace_id, group_key) "
                "WHERE s.trace_id = f.trace_id AND s.group_key = f.group_key",
                ([g[0] for g in groups], [g[1] for g in groups]),
            ).rowcount

        return self._db.run(run)

    def counts(self) -> tuple[int, int]:
        row = self._db.run(
            lambda conn: conn.execute(
                f"SELECT COUNT(*) FILTER (WHERE g.trace_id IS NULL), COUNT(*) FILTER (WHERE g.trace_id IS NOT NULL) FROM {SPAN_JOIN}"
            ).fetchall()[0],  # an aggregate: always one row
            write=False,
        )
        return int(row[0]), int(row[1])

    def close(self) -> None:
        self._db.close()
