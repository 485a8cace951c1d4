"""The console's filter: query parameters (``?policy=&model=&fallback=true&outcome=&rule=&client=&since=``) read
into a :class:`~unhardcoded.receipts.stores.ReceiptQuery`, with an error naming the parameter for anything else."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from urllib.parse import urlencode

from ...errors import UnhardcodedError
from ..stores import ReceiptQuery

OUTCOMES = ("answered", "failed", "no_candidate", "dry_run")
TEXT_FILTERS = ("policy", "model", "provider", "rule", "client", "workflow")
"""Filters matched exactly against one store column each."""
FILTER_PARAMS = (*TEXT_FILTERS, "outcome", "fallback", "since", "until")
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_PARAM = 512
"""Longest value a filter takes: ids and names are far shorter; anything longer is refused, not truncated."""


class FilterError(ValueError):
    """A query parameter the console cannot read; the message names it."""


def _since(text: str, name: str) -> datetime:
    from ..replay import parse_since

    expected = f"{name}={text[:80]!r}: expected a duration like 1h, 24h or 7d, or an ISO 8601 date/time"
    try:
        when = parse_since(text)
        when.timestamp()
    except UnhardcodedError:
        raise FilterError(expected) from None
    except (OverflowError, ValueError):
        raise FilterError(f"{expected}, within the years 1 to 9999") from None
    return when


@dataclass(frozen=True)
class ConsoleFilter:
    """The filter in force, as given (``params``: the non-empty filter parameters, for links) and as a query."""

    params: dict[str, str] = field(default_factory=dict)
    query: ReceiptQuery = field(default_factory=ReceiptQuery)
    limit: int = PAGE_SIZE
    after: tuple[int, str] | None = None

    def link(self, path: str, **more: str | None) -> str:
        """``path`` with this filter's parameters and ``more`` (None drops one) as its query string."""
        merged = {**self.params, **more}
        kept = {k: v for k, v in merged.items() if v is not None and v != ""}
        return path + ("?" + urlencode(kept) if kept else "")

    @property
    def narrowed(self) -> bool:
        return bool(self.params)


def read_filter(params: Mapping[str, str]) -> ConsoleFilter:
    """The filter ``params`` give; :class:`FilterError` naming the first parameter that is not readable."""
    given: dict[str, str] = {}
    for name in FILTER_PARAMS:
        value = params.get(name, "")
        if len(value) > MAX_PARAM:
            raise FilterError(f"{name}: longer than {MAX_PARAM} characters")
        value = value.strip()
        if value:
            given[name] = value
    outcome = given.get("outcome")
    if outcome is not None and outcome not in OUTCOMES:
        raise FilterError(f"outcome={outcome[:80]!r}: expected one of {', '.join(OUTCOMES)}")
    fallback: bool | None = None
    if "fallback" in given:
        text = given["fallback"].lower()
        if text in ("true", "1", "yes"):
            fallback, given["fallback"] = True, "true"
        elif text in ("false", "0", "no"):
            fallback, given["fallback"] = False, "false"
        else:
            raise FilterError(f"fallback={given['fallback'][:80]!r}: expected true or false")
    limit = PAGE_SIZE
    text = params.get("limit", "")
    if text:
        if not (text.isascii() and text.isdecimal() and len(text) <= 4) or not 1 <= int(text) <= MAX_PAGE_SIZE:
            raise FilterError(f"limit={text[:80]!r}: expected a whole number from 1 to {MAX_PAGE_SIZE}")
        limit = int(text)
        given["limit"] = text
    query = ReceiptQuery(
        policy=given.get("policy"),
        model=given.get("model"),
        provider=given.get("provider"),
        rule=given.get("rule"),
        client=given.get("client"),
        workflow_id=given.get("workflow"),
        outcome=outcome,
        fallback=fallback,
        since=_since(given["since"], "since") if "since" in given else None,
        until=_since(given["until"], "until") if "until" in given else None,
        limit=limit + 1,
    )
    cursor = params.get("cursor", "")
    return ConsoleFilter(given, query, limit, decode_cursor(cursor) if cursor else None)


def encode_cursor(ts_ms: int, request_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([ts_ms, request_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        if len(cursor) > 2048:
            raise ValueError
        ts, request_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, RecursionError):
        raise FilterError("cursor: not a cursor this console handed out") from None
    if ts.__class__ is not int or request_id.__class__ is not str or abs(ts) > 2**53:
        raise FilterError("cursor: not a cursor this console handed out")
    return ts, request_id


def without(f: ConsoleFilter, *names: str) -> ConsoleFilter:
    """``f`` with the parameters ``names`` left out of its links (its query unchanged)."""
    return replace(f, params={k: v for k, v in f.params.items() if k not in names})
