"""Where receipts are kept: the store protocol, its SQLite (default) and PostgreSQL backends, and the processor's spool.

:func:`open_store` opens the store a location names; :func:`open_store_and_spool` opens it with the spool the
receipts processor writes spans to, in the same database.
"""

from __future__ import annotations

from .location import STORE_ENV, STORE_FILE, default_store_path, is_postgres, sqlite_path, store_url
from .postgres import PostgresReceiptStore, PostgresSpool
from .protocol import (
    ROLLUP_KEYS,
    GroupKey,
    HistoryQuery,
    HistoryRow,
    ListedReceipt,
    ReceiptConflict,
    ReceiptCounts,
    ReceiptQuery,
    ReceiptStore,
    RollupKey,
    RollupRow,
    SeriesRow,
    Spool,
    SpoolSpan,
    StoredReceipt,
    StoredSpan,
    StoreError,
    Written,
)
from .sqlite import STORE_SCHEMA_VERSION, SQLiteReceiptStore, SQLiteSpool

__all__ = [
    "ROLLUP_KEYS",
    "STORE_ENV",
    "STORE_FILE",
    "STORE_SCHEMA_VERSION",
    "GroupKey",
    "HistoryQuery",
    "HistoryRow",
    "ListedReceipt",
    "PostgresReceiptStore",
    "PostgresSpool",
    "ReceiptConflict",
    "ReceiptCounts",
    "ReceiptQuery",
    "ReceiptStore",
    "RollupKey",
    "RollupRow",
    "SQLiteReceiptStore",
    "SQLiteSpool",
    "SeriesRow",
    "Spool",
    "SpoolSpan",
    "StoreError",
    "StoredReceipt",
    "StoredSpan",
    "Written",
    "default_store_path",
    "is_postgres",
    "open_store",
    "open_store_and_spool",
    "sqlite_path",
    "store_url",
]


def open_store(url: str | None = None, *, create: bool = True) -> ReceiptStore:
    """Open the store ``url`` names (see :func:`store_url`). ``create=False`` refuses to make a new SQLite file.

    ``postgresql://`` URLs open a PostgreSQL store (with the ``postgres`` extra installed).
    """
    resolved = store_url(url)
    if is_postgres(resolved):
        return PostgresReceiptStore(resolved)
    return SQLiteReceiptStore(sqlite_path(resolved), create=create)


def open_store_and_spool(url: str | None = None, *, synchronous: str = "NORMAL") -> tuple[ReceiptStore, Spool]:
    """The receipt store and the processor's spool ``url`` names, in one database (see :func:`store_url`).

    On SQLite the spool shares the store's connection, at ``synchronous`` (``NORMAL`` or ``FULL``): a receipt and
    the mark that its spans are finished are one transaction. On PostgreSQL durability is the server's
    ``synchronous_commit`` and ``synchronous`` is not used.
    """
    resolved = store_url(url)
    store: ReceiptStore
    spool: Spool
    if is_postgres(resolved):
        store = PostgresReceiptStore(resolved)
    else:
        store = SQLiteReceiptStore(sqlite_path(resolved), create=True)
    try:
        if isinstance(store, SQLiteReceiptStore):
            spool = SQLiteSpool(store.path, synchronous=synchronous, store=store)
        else:
            spool = PostgresSpool(resolved)
    except BaseException:
        store.close()
        raise
    return store, spool
