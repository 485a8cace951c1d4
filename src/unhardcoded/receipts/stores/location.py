"""Where the receipt store is: ``--store``, else ``$UNHARDCODED_STORE``, else a SQLite file in the per-user data dir.

A location is a file path, a ``sqlite:///path`` URL or a ``postgresql://`` URL.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..._paths import data_dir
from ..._wire import redact_url
from .protocol import StoreError

STORE_ENV = "UNHARDCODED_STORE"
STORE_FILE = "receipts.db"
POSTGRES_SCHEMES = ("postgres", "postgresql")


def default_store_path() -> Path:
    return data_dir() / STORE_FILE


def store_url(url: str | None = None) -> str:
    """``url``, else ``$UNHARDCODED_STORE``, else the per-user default path."""
    return url or os.environ.get(STORE_ENV) or str(default_store_path())


def is_postgres(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL store (``postgres://`` or ``postgresql://``)."""
    return "://" in url and urlsplit(url).scheme in POSTGRES_SCHEMES


def sqlite_path(url: str) -> Path:
    """The file a store URL names: a plain path, or ``sqlite:///path`` (``sqlite:////abs`` also works)."""
    if "://" not in url:
        return Path(url).expanduser()
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        # mysql://user:secret@host: the message names the URL without its password.
        raise StoreError(
            f"store {redact_url(url)!r}: unsupported scheme {parts.scheme!r}; use a file path or sqlite:///path"
        )
    if parts.netloc:
        raise StoreError(f"store {url!r}: a sqlite URL has no host; write sqlite:///path/to/receipts.db")
    path = unquote(parts.path)
    if not path or path == "/":
        raise StoreError(f"store {url!r}: no file path; write sqlite:///path/to/receipts.db")
    # sqlite:///tmp/r.db and sqlite:////tmp/r.db both mean /tmp/r.db.
    return Path("/" + path.lstrip("/")).expanduser()
