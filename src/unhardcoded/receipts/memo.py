"""Memos of decoded span values, bounded in bytes: what the span readers and the rebuild read once and share.

A memo is a plain dict (lookups stay a ``dict.get``) that keeps an estimate of
the bytes its entries hold. A value bigger than ``max_item_bytes`` is never
kept: a large value is read each time it comes, so a stream of distinct huge
attributes costs no memory after it is read. Past its budget a memo is emptied
and fills again with what comes next (the values worth keeping repeat).
Budgets are a share of one total, :data:`DEFAULT_TOTAL_BYTES` unless
:func:`configure` (``unhardcoded processor --cache-bytes``) or the environment
(``UNHARDCODED_CACHE_BYTES``, ``UNHARDCODED_CACHE_ITEM_BYTES``) says otherwise.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

from ..errors import ConfigError

K = TypeVar("K")
V = TypeVar("V")

DEFAULT_TOTAL_BYTES = 64 * 1024 * 1024
"""All memos together, at most (estimated): 64 MiB."""
DEFAULT_MAX_ITEM_BYTES = 64 * 1024
"""A value whose bytes are over this is never kept: 64 KiB."""
ENTRY_OVERHEAD = 200
"""Bytes counted for an entry on top of its key and value: the dict slot and the objects around them."""

TOTAL_ENV = "UNHARDCODED_CACHE_BYTES"
ITEM_ENV = "UNHARDCODED_CACHE_ITEM_BYTES"


class Memo(dict[K, V]):
    """A dict with a byte budget; write it only through :meth:`put`."""

    __slots__ = ("budget", "max_item_bytes", "name", "share", "size")

    def __init__(self, name: str, share: float) -> None:
        super().__init__()
        self.name = name
        self.share = share
        self.size = 0
        """Estimated bytes held: keys, values and :data:`ENTRY_OVERHEAD` per entry."""
        self.budget = int(DEFAULT_TOTAL_BYTES * share)
        self.max_item_bytes = DEFAULT_MAX_ITEM_BYTES

    def put(self, key: K, value: V, nbytes: int) -> None:
        """Keep ``value`` under ``key``, ``nbytes`` being the bytes of what it was read from; too big: not kept."""
        if nbytes > self.max_item_bytes:
            return
        cost = 2 * nbytes + ENTRY_OVERHEAD  # the bytes of the key, and the value read from them
        if self.size + cost > self.budget:
            self.clear()
        self[key] = value
        self.size += cost

    def clear(self) -> None:
        super().clear()
        self.size = 0


MEMOS: list[Memo[Any, Any]] = []
"""Every memo, in the order they were made (the processor reports each one's size)."""


def memo(name: str, share: float) -> Memo[Any, Any]:
    """A new memo named ``name`` with ``share`` of the total budget."""
    m: Memo[Any, Any] = Memo(name, share)
    MEMOS.append(m)
    _apply(m)
    return m


_settings = {"total": DEFAULT_TOTAL_BYTES, "item": DEFAULT_MAX_ITEM_BYTES}


def _apply(m: Memo[Any, Any]) -> None:
    m.budget = int(_settings["total"] * m.share)
    m.max_item_bytes = _settings["item"]
    if m.size > m.budget:
        m.clear()


def configure(total_bytes: int | None = None, max_item_bytes: int | None = None) -> None:
    """Set the total budget of every memo and the largest value one keeps (None: leave as is)."""
    if total_bytes is not None:
        if total_bytes < 0:
            raise ConfigError(f"cache bytes {total_bytes}: expected 0 or more")
        _settings["total"] = total_bytes
    if max_item_bytes is not None:
        if max_item_bytes < 0:
            raise ConfigError(f"cache item bytes {max_item_bytes}: expected 0 or more")
        _settings["item"] = max_item_bytes
    for m in MEMOS:
        _apply(m)


def sizes() -> dict[str, int]:
    """Estimated bytes held by each memo, by name."""
    return {m.name: m.size for m in MEMOS}


def environment_bytes(var: str) -> int | None:
    """A byte count from the environment variable ``var``; None when unset. Not a whole number: ConfigError."""
    text = os.environ.get(var, "").strip()
    if not text:
        return None
    if not text.isdecimal() or not text.isascii():
        raise ConfigError(f"{var}={text!r}: expected a whole number of bytes")
    return int(text)


def _from_environment() -> None:
    # At import a bad value is left for the command that reads it to report (exit 2); the defaults stand.
    try:
        configure(environment_bytes(TOTAL_ENV), environment_bytes(ITEM_ENV))
    except ConfigError:
        pass


_from_environment()
