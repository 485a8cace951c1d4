"""The spool: every span of ours, written down before its export is acknowledged, so a crash loses nothing.

Spans live in the receipt store's own database (table ``processor_spans``),
one row per span, keyed by trace and span id so an exporter's retry is stored
once. A row is *pending* until its receipt is written, then *finished*;
finished rows are kept for the late window so a span that arrives after its
receipt was written rebuilds the receipt whole, and are pruned after that.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Protocol, Sequence

from ..receipts.store import StoreError, immediate
from .otlp import IncomingSpan

if TYPE_CHECKING:
    from ..receipts.store import SQLiteReceiptStore

GroupKey = tuple[str, str]
"""(trace id, group), e.g. ``("4bf9...", "r:req_8f41c2")``."""


@dataclass(slots=True)
class StoredSpan:
    trace_id: str
    span_id: str
    group: str
    body: bytes
    service: str | None
    received_ms: int
    finished_ms: int | None


class Spool(Protocol):
    location: str

    def append(
        self, spans: Sequence[IncomingSpan], owner: str, now_ms: int, lookup: Iterable[GroupKey] = ()
    ) -> dict[GroupKey, list[StoredSpan]]:
        """Store ``spans`` (one transaction; already-stored spans are skipped) and, in the same transaction,
        return what was already stored for the groups in ``lookup``, as it was before this append."""
        ...

    def finish(
        self, groups: Iterable[GroupKey], now_ms: int, write_receipts: Callable[[], object] | None = None
    ) -> None:
        """Mark the spans of ``groups`` finished: their receipts are written.

        ``write_receipts`` (the store's writes of those receipts) runs first; where the store shares the spool's
        connection it runs in the same transaction, so the receipts and the marks are committed together.
        """
        ...

    def bodies(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        """Serialized spans by (trace id, span id)."""
        ...

    def pending(self, owner: str) -> list[StoredSpan]:
        """Spans not finished yet, oldest first: what a restarted processor picks up."""
        ...

    def prune(self, finished_before_ms: int, limit: int = 10_000) -> int:
        """Forget finished spans older than the late window; returns how many went."""
        ...

    def counts(self) -> tuple[int, int]:
        """(pending, finished) rows."""
        ...

    def close(self) -> None: ...


_TABLE = """
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
_SPAN_COLUMNS = "s.trace_id, s.span_id, s.group_key, s.body, s.service, s.received_ms, g.finished_ms"
_JOIN = "processor_spans s LEFT JOIN processor_groups g ON g.trace_id = s.trace_id AND g.group_key = s.group_key"


def reopened(spans: Sequence[IncomingSpan], found: dict[GroupKey, list[StoredSpan]]) -> list[GroupKey]:
    """Finished groups that ``spans`` add a new span to: pending again until their receipt is rewritten."""
    out = []
    for key, rows in found.items():
        if rows and rows[0].finished_ms is not None:
            stored = {r.span_id for r in rows}
            if any((s.trace_id, s.group) == key and s.span_id not in stored for s in spans):
                out.append(key)
    return out


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
        store: "SQLiteReceiptStore | None" = None,
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
                self._db.executescript(_TABLE)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the processor spool: {exc}") from None

    def _txn(self, fn):  # type: ignore[no-untyped-def]
        with self._lock:
            try:
                return immediate(self._db, fn)
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: spool write failed: {exc}") from None

    def _select(self, db: sqlite3.Connection, traces: list[str]) -> list[tuple]:
        rows: list[tuple] = []
        for i in range(0, len(traces), _CHUNK):
            chunk = traces[i : i + _CHUNK]
            rows += db.execute(
                f"SELECT {_SPAN_COLUMNS} FROM {_JOIN} WHERE s.trace_id IN ({','.join('?' * len(chunk))})", chunk
            ).fetchall()
        return rows

    def append(
        self, spans: Sequence[IncomingSpan], owner: str, now_ms: int, lookup: Iterable[GroupKey] = ()
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
                    f"SELECT {_SPAN_COLUMNS} FROM {_JOIN} WHERE g.trace_id IS NULL AND s.owner = ? ORDER BY s.received_ms, s.rowid",
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
            pending = self._db.execute(f"SELECT COUNT(*) FROM {_JOIN} WHERE g.trace_id IS NULL").fetchone()[0]
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
