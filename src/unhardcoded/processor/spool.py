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
from typing import Iterable, Protocol, Sequence

from ..receipts.store import StoreError
from .otlp import IncomingSpan

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

    def append(self, spans: Sequence[IncomingSpan], owner: str, now_ms: int, lookup: Iterable[GroupKey] = ()) -> dict[GroupKey, list[StoredSpan]]:
        """Store ``spans`` (one transaction; already-stored spans are skipped) and, in the same transaction,
        return what was already stored for the groups in ``lookup``, as it was before this append."""
        ...

    def finish(self, groups: Iterable[GroupKey], now_ms: int) -> None:
        """Mark the spans of ``groups`` finished: their receipts are written."""
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
  finished_ms INTEGER,
  service TEXT,
  body BLOB NOT NULL,
  PRIMARY KEY (trace_id, span_id)
);
CREATE INDEX IF NOT EXISTS processor_spans_by_finished ON processor_spans(finished_ms);
"""

_CHUNK = 500  # ids per IN (...) list: well under SQLite's variable limit


class SQLiteSpool:
    """The spool in the SQLite receipt store's file (its own connection; WAL makes the two get along)."""

    def __init__(self, path: str | Path, *, timeout_s: float = 30.0, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.path), timeout=timeout_s, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a killed process (the WAL is written before COMMIT returns);
            # FULL also survives the machine losing power, at a cost per commit.
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.executescript(_TABLE)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the processor spool: {exc}") from None

    def _txn(self, fn):  # type: ignore[no-untyped-def]
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(db)
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: spool write failed: {exc}") from None
            return result

    def append(self, spans: Sequence[IncomingSpan], owner: str, now_ms: int, lookup: Iterable[GroupKey] = ()) -> dict[GroupKey, list[StoredSpan]]:
        wanted = set(lookup)

        def run(db: sqlite3.Connection) -> dict[GroupKey, list[StoredSpan]]:
            found: dict[GroupKey, list[StoredSpan]] = {}
            if wanted:
                traces = sorted({t for t, _ in wanted})
                for i in range(0, len(traces), _CHUNK):
                    chunk = traces[i:i + _CHUNK]
                    rows = db.execute(
                        "SELECT trace_id, span_id, group_key, body, service, received_ms, finished_ms FROM processor_spans "
                        f"WHERE trace_id IN ({','.join('?' * len(chunk))})", chunk,
                    ).fetchall()
                    for row in rows:
                        key = (row[0], row[2])
                        if key in wanted:
                            found.setdefault(key, []).append(StoredSpan(*row))
            db.executemany(
                "INSERT OR IGNORE INTO processor_spans(trace_id, span_id, group_key, owner, received_ms, finished_ms, service, body) "
                "VALUES (?, ?, ?, ?, ?, NULL, ?, ?)",
                [(s.trace_id, s.span_id, s.group, owner, now_ms, s.service, s.body) for s in spans],
            )
            return found

        return self._txn(run)

    def finish(self, groups: Iterable[GroupKey], now_ms: int) -> None:
        rows = [(now_ms, t, g) for t, g in groups]
        if rows:
            self._txn(lambda db: db.executemany(
                "UPDATE processor_spans SET finished_ms = ? WHERE trace_id = ? AND group_key = ?", rows
            ))

    def pending(self, owner: str) -> list[StoredSpan]:
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT trace_id, span_id, group_key, body, service, received_ms, finished_ms FROM processor_spans "
                    "WHERE finished_ms IS NULL AND owner = ? ORDER BY received_ms, rowid", (owner,),
                ).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: spool read failed: {exc}") from None
        return [StoredSpan(*r) for r in rows]

    def prune(self, finished_before_ms: int, limit: int = 10_000) -> int:
        def run(db: sqlite3.Connection) -> int:
            return db.execute(
                "DELETE FROM processor_spans WHERE rowid IN (SELECT rowid FROM processor_spans "
                "WHERE finished_ms IS NOT NULL AND finished_ms < ? LIMIT ?)", (finished_before_ms, limit),
            ).rowcount

        return self._txn(run)

    def counts(self) -> tuple[int, int]:
        with self._lock:
            pending = self._db.execute("SELECT COUNT(*) FROM processor_spans WHERE finished_ms IS NULL").fetchone()[0]
            total = self._db.execute("SELECT COUNT(*) FROM processor_spans").fetchone()[0]
        return int(pending), int(total - pending)

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
