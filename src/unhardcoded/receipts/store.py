"""Where receipts are kept: a small store protocol and its SQLite implementation, the default.

The SQLite store lives at ``unhardcoded._paths.data_dir() / "receipts.db"``
unless ``UNHARDCODED_STORE`` (a path or ``sqlite:///path`` URL) or ``--store``
says otherwise. Besides receipts it keeps every policy body by fingerprint and
every catalog by version, so a decision can be replayed months later.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Protocol, Sequence, TypeVar, runtime_checkable
from urllib.parse import unquote, urlsplit

from .._paths import data_dir
from ..errors import UnhardcodedError
from ..policy.model import fingerprint_of
from .model import Receipt, WorkflowReceipt, same_receipt_text

if TYPE_CHECKING:
    from ..catalog.model import Catalog
    from .rebuild import RebuiltDecision

STORE_ENV = "UNHARDCODED_STORE"
STORE_FILE = "receipts.db"
STORE_KIND = "unhardcoded-receipts-store"
PAGE_SIZE = 16384
STORE_SCHEMA_VERSION = 2
"""Bumped with every change to the tables; :meth:`SQLiteReceiptStore._migrate` walks older files forward.

2: ``workflows.finished_at``, when the workflow's root span was seen and the workflow finished.
"""

RollupKey = Literal["policy", "workflow", "model"]
ROLLUP_KEYS: tuple[str, ...] = ("policy", "workflow", "model")


T = TypeVar("T")


class StoreError(UnhardcodedError):
    """The receipt store cannot be opened or used; the message names the file."""


@dataclass(frozen=True)
class ReceiptQuery:
    """Which receipts to list. Every field narrows; ``None`` means any."""

    request_id: str | None = None
    trace_id: str | None = None
    policy: str | None = None
    """A policy name or fingerprint."""
    model: str | None = None
    """The model that answered, or the selected one when nothing answered."""
    fallback: bool | None = None
    workflow_id: str | None = None
    since: datetime | str | None = None
    """Inclusive; a datetime or an ISO 8601 timestamp."""
    until: datetime | str | None = None
    """Exclusive."""
    complete: bool | None = None
    limit: int | None = 100
    offset: int = 0


@dataclass(frozen=True)
class StoredReceipt:
    receipt: Receipt
    revision: int
    stored_at: str


@dataclass(frozen=True)
class RollupRow:
    """Decisions, fallbacks and money for one policy, workflow or model."""

    key: str
    decisions: int
    fallbacks: int
    failed: int
    cost_usd: float
    baseline_usd: float
    savings_usd: float
    savings_ratio: float | None
    priced_baseline_usd: float = 0.0
    """Baseline cost of the decisions priced on both sides: the denominator of ``savings_ratio``."""

    @property
    def fallback_rate(self) -> float:
        return self.fallbacks / self.decisions if self.decisions else 0.0

    def to_json_dict(self) -> dict[str, object]:
        return {
            "key": self.key,
            "decisions": self.decisions,
            "fallbacks": self.fallbacks,
            "fallback_rate": self.fallback_rate,
            "failed": self.failed,
            "cost_usd": self.cost_usd,
            "baseline_usd": self.baseline_usd,
            "savings_usd": self.savings_usd,
            "savings_ratio": self.savings_ratio,
            "priced_baseline_usd": self.priced_baseline_usd,
        }


@runtime_checkable
class ReceiptStore(Protocol):
    """What every store (SQLite here; PostgreSQL later) offers. Writes are idempotent upserts by request id."""

    location: str

    def put(self, receipt: Receipt, policy_body: str | None = None) -> int:
        """Upsert one receipt (and its policy body); returns its revision."""
        ...

    def put_many(self, items: Iterable[tuple[Receipt, str | None]]) -> int:
        """Upsert receipts with their policy bodies in one transaction; returns how many changed."""
        ...

    def put_rebuilt(self, decisions: Iterable["RebuiltDecision"]) -> int:
        """Upsert rebuilt decisions with their policy bodies; returns how many changed."""
        ...

    def put_policy(self, body: str) -> str:
        """Keep a canonical policy body; returns its fingerprint."""
        ...

    def put_catalog(self, catalog: "Catalog") -> str:
        """Keep a catalog's canonical JSON; returns its version."""
        ...

    def put_workflow(self, workflow_id: str, name: str, trace_id: str | None = None, finished: bool = False) -> None:
        """Record a workflow; ``finished``: its root span was seen and the nodes that had arrived are written.

        A node receipt records its workflow too, unfinished. Once finished a workflow stays finished; node
        receipts that come later still join it.
        """
        ...

    def get(self, request_id: str) -> StoredReceipt | None: ...

    def query(self, query: ReceiptQuery = ReceiptQuery()) -> list[Receipt]: ...

    def count(self, query: ReceiptQuery = ReceiptQuery()) -> int: ...

    def workflow(self, workflow_id: str) -> WorkflowReceipt | None: ...

    def policy(self, fingerprint: str) -> str | None: ...

    def catalog(self, version: str) -> str | None: ...

    def rollup(self, by: RollupKey, since: datetime | str | None = None) -> list[RollupRow]: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- locations


def default_store_path() -> Path:
    return data_dir() / STORE_FILE


def store_url(url: str | None = None) -> str:
    """``url``, else ``$UNHARDCODED_STORE``, else the per-user default path."""
    return url or os.environ.get(STORE_ENV) or str(default_store_path())


def sqlite_path(url: str) -> Path:
    """The file a store URL names: a plain path, or ``sqlite:///path`` (``sqlite:////abs`` also works)."""
    if "://" not in url:
        return Path(url).expanduser()
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise StoreError(f"store {url!r}: unsupported scheme {parts.scheme!r}; use a file path or sqlite:///path")
    if parts.netloc:
        raise StoreError(f"store {url!r}: a sqlite URL has no host; write sqlite:///path/to/receipts.db")
    path = unquote(parts.path)
    if not path or path == "/":
        raise StoreError(f"store {url!r}: no file path; write sqlite:///path/to/receipts.db")
    # sqlite:///tmp/r.db and sqlite:////tmp/r.db both mean /tmp/r.db.
    return Path("/" + path.lstrip("/")).expanduser()


def open_store(url: str | None = None, *, create: bool = True) -> ReceiptStore:
    """Open the store ``url`` names (see :func:`store_url`). ``create=False`` refuses to make a new SQLite file.

    ``postgresql://`` URLs open the processor's PostgreSQL store, when it is installed.
    """
    resolved = store_url(url)
    scheme = urlsplit(resolved).scheme if "://" in resolved else ""
    if scheme in ("postgres", "postgresql"):
        try:
            from ..processor.postgres import PostgresReceiptStore
        except ImportError as exc:
            raise StoreError(
                f"store {_redacted(resolved)}: PostgreSQL needs the processor's driver ({exc.name} is not installed)"
            ) from None
        return PostgresReceiptStore(resolved)  # type: ignore[no-any-return]
    return SQLiteReceiptStore(sqlite_path(resolved), create=create)


def _redacted(url: str) -> str:
    """A URL without its password, fit for an error message."""
    parts = urlsplit(url)
    if parts.password is None:
        return repr(url)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return repr(parts._replace(netloc=netloc).geturl())


# --------------------------------------------------------------------------- time


def _ms(value: datetime | str) -> int:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise StoreError(f"{value!r} is not an ISO 8601 timestamp") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return int(value.timestamp() * 1000)


def immediate(db: sqlite3.Connection, fn: Callable[..., T], *args: Any) -> T:
    """``fn(db, *args)`` in one ``BEGIN IMMEDIATE`` transaction: committed, or rolled back if anything raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = fn(db, *args)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return result


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- SQLite

_TABLES = """
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
  workflow_id TEXT PRIMARY KEY, name TEXT NOT NULL, trace_id TEXT, stored_at TEXT NOT NULL, finished_at TEXT
);
"""

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 1 -> 2: workflows record when their root was seen and they were finished. A store from before kept no such
    # thing and read every workflow as finished; its workflows stay so.
    1: ("ALTER TABLE workflows ADD COLUMN finished_at TEXT", "UPDATE workflows SET finished_at = stored_at"),
}

_ROLLUP_COLUMN = {"policy": "policy_name", "model": "model", "workflow": "workflow_name"}


class SQLReceiptReads:
    """The reads that are the same SQL on every store; a store sets ``_param`` to its driver's placeholder."""

    _param = "?"

    @staticmethod
    def _flag(value: bool) -> object:
        """A boolean as the driver stores it: SQLite has no boolean type, so 0/1 there."""
        return int(value)

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:  # pragma: no cover - each store has one
        raise NotImplementedError

    def get(self, request_id: str) -> StoredReceipt | None:
        rows = self._read(
            f"SELECT body, revision, stored_at FROM receipts WHERE request_id = {self._param}", (request_id,)
        )
        if not rows:
            return None
        body, revision, stored_at = rows[0]
        return StoredReceipt(Receipt.model_validate_json(body), revision, stored_at)

    def _where(self, q: ReceiptQuery) -> tuple[str, list[object]]:
        p = self._param
        clauses: list[str] = []
        params: list[object] = []
        for column, value in (
            ("request_id", q.request_id),
            ("trace_id", q.trace_id),
            ("model", q.model),
            ("workflow_id", q.workflow_id),
        ):
            if value is not None:
                clauses.append(f"{column} = {p}")
                params.append(value)
        if q.policy is not None:
            clauses.append(f"(policy_name = {p} OR policy_fingerprint = {p})")
            params += [q.policy, q.policy]
        if q.fallback is not None:
            clauses.append(f"fallback = {p}")
            params.append(self._flag(q.fallback))
        if q.complete is not None:
            clauses.append(f"complete = {p}")
            params.append(self._flag(q.complete))
        if q.since is not None:
            clauses.append(f"ts_ms >= {p}")
            params.append(_ms(q.since))
        if q.until is not None:
            clauses.append(f"ts_ms < {p}")
            params.append(_ms(q.until))
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def count(self, query: ReceiptQuery = ReceiptQuery()) -> int:
        where, params = self._where(query)
        return int(self._read(f"SELECT COUNT(*) FROM receipts{where}", params)[0][0])

    def workflow(self, workflow_id: str) -> WorkflowReceipt | None:
        p = self._param
        rows = self._read(f"SELECT body FROM receipts WHERE workflow_id = {p}", (workflow_id,))
        info = self._read(f"SELECT name, trace_id, finished_at FROM workflows WHERE workflow_id = {p}", (workflow_id,))
        if not rows and not info:
            return None
        receipts = [Receipt.model_validate_json(r[0]) for r in rows]
        name, trace_id, finished_at = (
            info[0] if info else (next((r.workflow.name for r in receipts if r.workflow), ""), None, None)
        )
        return WorkflowReceipt.from_receipts(
            workflow_id, name, receipts, trace_id=trace_id, finished=finished_at is not None
        )

    def policy(self, fingerprint: str) -> str | None:
        rows = self._read(f"SELECT body FROM policies WHERE fingerprint = {self._param}", (fingerprint,))
        return rows[0][0] if rows else None

    def catalog(self, version: str) -> str | None:
        rows = self._read(f"SELECT body FROM catalogs WHERE version = {self._param}", (version,))
        return rows[0][0] if rows else None


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
                    [("kind", STORE_KIND), ("schema_version", str(STORE_SCHEMA_VERSION)), ("created_at", _now())],
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

    def _write(self, fn, *args):  # type: ignore[no-untyped-def]
        with self._lock:
            db = self._db
            if db.in_transaction:  # inside a transaction of a writer sharing the connection: one commit, its own
                try:
                    return fn(db, *args)
                except sqlite3.Error as exc:
                    raise StoreError(f"{self.path}: write failed: {exc}") from None
            try:
                return immediate(db, fn, *args)
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: write failed: {exc}") from None

    @staticmethod
    def _put_policy(db: sqlite3.Connection, body: str, name: str | None = None, schema: str | None = None) -> str:
        fingerprint = fingerprint_of(body)
        if name is None or schema is None:
            try:
                doc = json.loads(body)
                name = name or doc.get("name")
                schema = schema or doc.get("schema")
            except (ValueError, AttributeError):
                pass
        db.execute(
            "INSERT OR IGNORE INTO policies(fingerprint, name, schema, body, first_seen) VALUES (?, ?, ?, ?, ?)",
            (fingerprint, name, schema, body, _now()),
        )
        return fingerprint

    @staticmethod
    def _put_receipts(db: sqlite3.Connection, receipts: Sequence[Receipt], stamp: str) -> list[tuple[int, bool]]:
        """Upsert receipts (one read for all, one batched write); per receipt, its revision and whether it changed."""
        bodies = [r.to_json_bytes() for r in receipts]  # bound as UTF-8 text by CAST below
        stored: dict[str, tuple[str, int, int]] = {}
        ids = list({r.request_id for r in receipts})
        for k in range(0, len(ids), 500):
            chunk = ids[k : k + 500]
            for request_id, old_body, revision, old_complete in db.execute(
                f"SELECT request_id, body, revision, complete FROM receipts WHERE request_id IN ({','.join('?' * len(chunk))})",
                chunk,
            ):
                stored[request_id] = (old_body, revision, old_complete)
        out: list[tuple[int, bool]] = []
        rows, workflows = [], []
        for receipt, body in zip(receipts, bodies):
            old = stored.get(receipt.request_id)
            if old is not None:
                old_body, revision, old_complete = old
                # The same receipt again, or a partial re-delivery of one already stored whole: not a newer revision.
                if same_receipt_text(old_body, body) or (old_complete and not receipt.complete):
                    out.append((revision, False))
                    continue
                revision += 1
            else:
                revision = 1
            stored[receipt.request_id] = (body, revision, int(receipt.complete))
            wf = receipt.workflow
            model = receipt.answered_by or (receipt.selected.model if receipt.selected else None)
            rows.append(
                (
                    receipt.request_id,
                    receipt.trace_id,
                    _ms(receipt.timestamp),
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
                    int(receipt.complete),
                    revision,
                    stamp,
                    body,
                )
            )
            if wf is not None:
                workflows.append((wf.id, wf.name, receipt.trace_id, stamp))
            out.append((revision, True))
        if rows:
            db.executemany(
                "INSERT OR REPLACE INTO receipts(request_id, trace_id, ts_ms, policy_name, policy_fingerprint, catalog_version, "
                "model, outcome, fallback, cost_usd, baseline_model, baseline_usd, workflow_id, workflow_name, complete, "
                "revision, stored_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, CAST(? AS TEXT))",
                rows,
            )
        if workflows:
            db.executemany(
                "INSERT OR IGNORE INTO workflows(workflow_id, name, trace_id, stored_at) VALUES (?, ?, ?, ?)", workflows
            )
        return out

    def put(self, receipt: Receipt, policy_body: str | None = None) -> int:
        def run(db: sqlite3.Connection) -> int:
            if policy_body is not None:
                self._put_policy(db, policy_body, receipt.policy.name, receipt.policy.schema_)
            return self._put_receipts(db, [receipt], _now())[0][0]

        return self._write(run)

    def put_many(self, items: Iterable[tuple[Receipt, str | None]]) -> int:
        items = list(items)

        def run(db: sqlite3.Connection) -> int:
            for receipt, body in items:
                if body is not None:
                    self._put_policy(db, body, receipt.policy.name, receipt.policy.schema_)
            return sum(changed for _, changed in self._put_receipts(db, [r for r, _ in items], _now()))

        return self._write(run) if items else 0

    def put_rebuilt(self, decisions: Iterable["RebuiltDecision"]) -> int:
        """Upsert rebuilt decisions: receipts and the policy bodies they were decided under."""
        return self.put_many((d.receipt, d.policy_body) for d in decisions)

    def put_policy(self, body: str) -> str:
        return self._write(lambda db: self._put_policy(db, body))

    def put_catalog(self, catalog: "Catalog") -> str:
        version, body = catalog.version, catalog.canonical
        self._write(
            lambda db: db.execute(
                "INSERT OR IGNORE INTO catalogs(version, body, first_seen) VALUES (?, ?, ?)", (version, body, _now())
            )
        )
        return version

    def put_workflow(self, workflow_id: str, name: str, trace_id: str | None = None, finished: bool = False) -> None:
        now = _now()
        self._write(
            lambda db: db.execute(
                "INSERT INTO workflows(workflow_id, name, trace_id, stored_at, finished_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(workflow_id) DO UPDATE SET name = COALESCE(NULLIF(excluded.name, ''), name), "
                "trace_id = COALESCE(excluded.trace_id, trace_id), finished_at = COALESCE(finished_at, excluded.finished_at)",
                (workflow_id, name, trace_id, now, now if finished else None),
            )
        )

    # -- reading ---------------------------------------------------------------------------------

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: read failed: {exc}") from None

    def query(self, query: ReceiptQuery = ReceiptQuery()) -> list[Receipt]:
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

    def rollup(self, by: RollupKey, since: datetime | str | None = None) -> list[RollupRow]:
        """Per ``by`` key: decisions that reached a provider or found no candidate (dry runs are left out)."""
        if by not in _ROLLUP_COLUMN:
            raise StoreError(f"cannot roll up by {by!r}; expected one of {', '.join(ROLLUP_KEYS)}")
        column = _ROLLUP_COLUMN[by]
        where, params = "WHERE outcome != 'dry_run'", []
        if since is not None:
            where += " AND ts_ms >= ?"
            params.append(_ms(since))
        priced = "baseline_usd IS NOT NULL AND cost_usd IS NOT NULL"
        rows = self._read(
            f"SELECT COALESCE({column}, '(none)'), COUNT(*), SUM(fallback), SUM(outcome = 'failed'), "
            f"TOTAL(cost_usd), TOTAL(baseline_usd), TOTAL(CASE WHEN {priced} THEN baseline_usd - cost_usd END), "
            f"TOTAL(CASE WHEN {priced} THEN baseline_usd END) "
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
            )
            for key, n, fb, failed, cost, base, saved, priced_base in rows
        ]

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass

    def __enter__(self) -> "SQLiteReceiptStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteReceiptStore({self.location!r})"
