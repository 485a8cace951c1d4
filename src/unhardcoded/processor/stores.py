"""Where the processor keeps receipts and its spool: one database, SQLite (a file) or PostgreSQL (shared by instances)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..receipts.store import SQLiteReceiptStore, sqlite_path, store_url
from .spool import SQLiteSpool, Spool

if TYPE_CHECKING:
    from ..receipts.store import ReceiptStore


def is_postgres(url: str) -> bool:
    return "://" in url and urlsplit(url).scheme in ("postgres", "postgresql")


def open_backend(url: str | None = None) -> tuple["ReceiptStore", Spool]:
    """The receipt store and the spool ``url`` names (default: ``$UNHARDCODED_STORE`` or the per-user SQLite file)."""
    resolved = store_url(url)
    if is_postgres(resolved):
        from .postgres import PostgresReceiptStore, PostgresSpool

        store = PostgresReceiptStore(resolved)
        return store, PostgresSpool(resolved)
    store = SQLiteReceiptStore(sqlite_path(resolved), create=True)
    try:
        spool = SQLiteSpool(store.path, store=store)
    except BaseException:
        store.close()
        raise
    return store, spool


def open_receipt_store(url: str | None = None, *, create: bool = False) -> "ReceiptStore":
    """Only the receipt store (for reading): SQLite through ``unhardcoded.receipts``, PostgreSQL from here."""
    resolved = store_url(url)
    if is_postgres(resolved):
        from .postgres import PostgresReceiptStore

        return PostgresReceiptStore(resolved)
    from ..receipts.store import open_store

    return open_store(resolved, create=create)
