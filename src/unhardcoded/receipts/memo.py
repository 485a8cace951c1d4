"""Memos of decoded span values, bounded in bytes: what the span readers and the rebuild read once and share.

A memo is a plain dict (lookups stay a ``dict.get``) that keeps an estimate of
the bytes its entries hold. A value bigger than ``max_item_bytes`` is never
kept: a large value is read each time it comes, so a stream of distinct huge
attributes costs no memory after it is read. Past its budget a memo is emptied
and fills again with what comes next (the values worth keeping repeat).
Budgets are a share of one total, :data:`DEFAULT_TOTAL_BYTES` unless
:func:`configure` (``unhardcoded processor --cache-bytes``) or the environment
(``UNHARDCODED_CACHE_BYTES``, ``UNHARDCODED_CACHE_ITEM_BYTES``) says otherwise.

Most entries are small (an attribute of a few dozen bytes): each of those counts
as :data:`SMALL_COST`, an upper bound, so keeping one is a length check and a
store, as cheap as the entry-count bound this replaced (counting each entry's
bytes through a method call cost about 200 ns per new attribute, which every
span has several of). Larger entries count their own bytes.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

from ..errors import ConfigError

K = TypeVar("K")
V = TypeVar("V")

DEFAULT_TOTAL_BYTES = 128 * 1024 * 1024
"""All memos together, at most (estimated): 128 MiB. Each small entry counts as :data:`SMALL_COST`, an upper bound,
so this keeps as many entries as the entry caps it replaced (which ``bench/rebuild.py`` measured: with half the
entries, a memo emptied within a round of 3,000 decisions makes the median round 20 % slower)."""
DEFAULT_MAX_ITEM_BYTES = 64 * 1024
"""A value whose bytes are over this is never kept: 64 KiB."""
ENTRY_OVERHEAD = 256
"""Bytes counted for an entry on top of its key and value: the dict slot and the objects around them (tracemalloc:
an attribute read from 256 bytes holds 426 bytes besides those 256 bytes of key)."""
SMALL_BYTES = 256
"""An entry read from at most this many bytes counts as :data:`SMALL_COST`, whatever its size."""
SMALL_COST = 2 * SMALL_BYTES + ENTRY_OVERHEAD

TOTAL_ENV = "UNHARDCODED_CACHE_BYTES"
ITEM_ENV = "UNHARDCODED_CACHE_ITEM_BYTES"


class Memo(dict[K, V]):
    """A dict with a byte budget; write it only through :meth:`put` (or, in a hot loop, as :meth:`put` does for a
    small entry: ``if len(m) >= m.cap: m.clear()`` then ``m[key] = value``, when ``nbytes <= m.small``)."""

    __slots__ = ("big_bytes", "big_count", "budget", "cap", "max_item_bytes", "name", "share", "small")

    def __init__(self, name: str, share: float) -> None:
        super().__init__()
        self.name = name
        self.share = share
        self.budget = int(DEFAULT_TOTAL_BYTES * share)
        self.max_item_bytes = DEFAULT_MAX_ITEM_BYTES
        self.small = min(SMALL_BYTES, self.max_item_bytes)
        """Entries read from at most this many bytes are small."""
        self.big_bytes = 0
        self.big_count = 0
        self.cap = 0
        """Entries it may hold before it is emptied, while no more large ones come."""
        self.clear()

    @property
    def size(self) -> int:
        """Estimated bytes held: :data:`SMALL_COST` per small entry, key, value and overhead of each larger one."""
        return (len(self) - self.big_count) * SMALL_COST + self.big_bytes

    def put(self, key: K, value: V, nbytes: int) -> None:
        """Keep ``value`` under ``key``, ``nbytes`` being the bytes of what it was read from; too big: not kept."""
        if nbytes <= self.small:
            if len(self) >= self.cap:
                self.clear()
            self[key] = value
            return
        if nbytes > self.max_item_bytes or key in self:
            return
        cost = 2 * nbytes + ENTRY_OVERHEAD  # the bytes of the key, and the value read from them
        if self.size + cost > self.budget:
            self.clear()
        self[key] = value
        self.big_bytes += cost
        self.big_count += 1
        self.cap = self.big_count + max(0, self.budget - self.big_bytes) // SMALL_COST

    def clear(self) -> None:
        super().clear()
        self.big_bytes = self.big_count = 0
        self.cap = self.budget // SMALL_COST


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
    m.small = min(SMALL_BYTES, m.max_item_bytes)
    m.clear()


def configure(total_bytes: int | None = None, max_item_bytes: int | None = None) -> None:
    """Set the total budget of every memo and the largest value one keeps (None: leave as is); empties them."""
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
