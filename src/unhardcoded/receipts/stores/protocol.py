"""What every receipt store and every spool offers, and the types they speak in, whatever database is under them.

The SQLite (:mod:`.sqlite`) and PostgreSQL (:mod:`.postgres`) backends both implement these; callers type against
them and never against a backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from ...errors import UnhardcodedError
from ..model import Receipt, WorkflowReceipt

if TYPE_CHECKING:
    from ...catalog.model import Catalog
    from ..rebuild import RebuiltDecision

RollupKey = Literal["policy", "workflow", "model", "client", "provider"]
ROLLUP_KEYS: tuple[str, ...] = ("policy", "workflow", "model", "client", "provider")


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
    client: str | None = None
    """The name of the client key the request came with (a proxy started with ``--keys``)."""
    outcome: str | None = None
    """``answered``, ``failed``, ``no_candidate`` or ``dry_run``."""
    rule: str | None = None
    """A rule that rejected at least one model of the decision."""
    provider: str | None = None
    """The provider of the decision's last attempt (the one that answered, or the last that failed)."""
    since: datetime | str | None = None
    """Inclusive; a datetime or an ISO 8601 timestamp."""
    until: datetime | str | None = None
    """Exclusive."""
    complete: bool | None = None
    limit: int | None = 100
    offset: int = 0


DEFAULT_QUERY = ReceiptQuery()
"""Any receipt, the newest 100: what a listing shows when nothing narrows it."""


@dataclass(frozen=True)
class StoredReceipt:
    receipt: Receipt
    revision: int
    stored_at: str


@dataclass(frozen=True)
class ReceiptConflict:
    """A receipt for a stored request id from another decision (another trace id or decision span id): kept aside,
    never merged into the stored receipt, which stays the first decision's."""

    receipt: Receipt
    received_at: str


@dataclass(frozen=True)
class Written:
    """What a write of receipts did."""

    changed: int = 0
    """Receipts stored new, or as a new revision of the same decision."""
    conflicts: int = 0
    """Receipts from another decision for a stored request id, kept aside for the first time."""
    revised: int = 0
    """Of ``changed``, receipts stored before and now at a new revision."""


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
    over_budget: int = 0
    """Requests a spent budget refused (429 ``budget_exceeded``, outcome ``over_budget``)."""

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
            "over_budget": self.over_budget,
        }


@dataclass(frozen=True)
class HistoryQuery:
    """Which receipts a replay of history reads (:meth:`ReceiptStore.history`): a time window, oldest first, a page
    at a time from after the last row of the page before (``after``: its ``(ts_ms, request_id)``)."""

    since: datetime | str
    """Inclusive."""
    until: datetime | str
    """Exclusive."""
    policy: str | None = None
    """Only receipts recorded under a policy of this name."""
    client: str | None = None
    after: tuple[int, str] | None = None
    limit: int = 2000


HistoryRow = tuple[int, str, str, str, str, str, "str | None", "str | None", "str | None", "str | None"]
"""What a replay reads of one receipt, without building it: ``ts_ms``, ``request_id``, policy name, policy
fingerprint, catalog version, outcome, selected model, answering model, ``features`` and the last attempt (each as
compact JSON text, or None)."""


@dataclass(frozen=True)
class ListedReceipt:
    """One row of the console's receipt list: a receipt's columns, its body left unread."""

    request_id: str
    ts_ms: int
    trace_id: str | None
    policy: str
    model: str | None
    provider: str | None
    outcome: str
    fallback: bool
    cost_usd: float | None
    baseline_usd: float | None
    latency_ms: float | None
    workflow_id: str | None
    workflow_name: str | None
    client: str | None
    complete: bool


@dataclass(frozen=True)
class ReceiptCounts:
    """How many receipts a query matches, by outcome, and how many of them fell back."""

    total: int = 0
    answered: int = 0
    failed: int = 0
    no_candidate: int = 0
    dry_run: int = 0
    fallbacks: int = 0


@dataclass(frozen=True)
class SeriesRow:
    """What the console's charts read of one receipt (dry runs left out, as rollups leave them out)."""

    ts_ms: int
    policy: str
    workflow: str | None
    client: str | None
    model: str | None
    provider: str | None
    outcome: str
    fallback: bool
    cost_usd: float | None
    baseline_usd: float | None
    rules: tuple[str, ...]
    latency_ms: float | None


@runtime_checkable
class ReceiptStore(Protocol):
    """What every store (SQLite, PostgreSQL) offers.

    Receipts are append-only and first-come. A stored receipt belongs to one decision: its request id, trace id and
    decision span id. Only a receipt of that same decision changes an incomplete one (one made from more of its
    spans), and each change is a new revision; every earlier revision is kept (:meth:`revisions`). Writing the same
    content again, or a less complete receipt over a complete one, changes nothing. A receipt for a stored request id
    from another decision, or other content for a receipt stored complete (a complete receipt is final), is kept
    aside as a conflict (:meth:`conflicts`) and never merged.
    """

    location: str

    def put(self, receipt: Receipt, policy_body: str | None = None) -> int:
        """Store one receipt (and its policy body) by the rules above; returns the stored receipt's revision."""
        ...

    def put_many(self, items: Iterable[tuple[Receipt, str | None]]) -> int:
        """Store receipts with their policy bodies in one transaction; returns how many changed."""
        ...

    def put_receipts(self, items: Iterable[tuple[Receipt, str | None]]) -> Written:
        """:meth:`put_many`, saying also how many conflicts were kept aside."""
        ...

    def put_rebuilt(self, decisions: Iterable[RebuiltDecision]) -> int:
        """Upsert rebuilt decisions with their policy bodies; returns how many changed."""
        ...

    def put_policy(self, body: str) -> str:
        """Keep a canonical policy body; returns its fingerprint."""
        ...

    def put_catalog(self, catalog: Catalog) -> str:
        """Keep a catalog's canonical JSON; returns its version."""
        ...

    def put_workflow(self, workflow_id: str, name: str, trace_id: str | None = None, finished: bool = False) -> None:
        """Record a workflow; ``finished``: its root span was seen and the nodes that had arrived are written.

        A node receipt records its workflow too, unfinished. Once finished a workflow stays finished; node
        receipts that come later still join it.
        """
        ...

    def get(self, request_id: str) -> StoredReceipt | None: ...

    def revisions(self, request_id: str) -> list[StoredReceipt]:
        """Every revision of a stored receipt, the first first; empty when none is stored."""
        ...

    def conflicts(self, request_id: str | None = None, limit: int = 100, offset: int = 0) -> list[ReceiptConflict]:
        """Conflicts kept aside (of one request id, or all), oldest first."""
        ...

    def count_conflicts(self, request_id: str | None = None) -> int: ...

    def query(self, query: ReceiptQuery = DEFAULT_QUERY) -> list[Receipt]: ...

    def count(self, query: ReceiptQuery = DEFAULT_QUERY) -> int: ...

    def history(self, query: HistoryQuery) -> list[HistoryRow]:
        """One page of :class:`HistoryRow`, oldest first (``ts_ms``, then request id)."""
        ...

    def workflow(self, workflow_id: str) -> WorkflowReceipt | None: ...

    def policy(self, fingerprint: str) -> str | None: ...

    def catalog(self, version: str) -> str | None: ...

    def rollup(self, by: RollupKey, since: datetime | str | None = None) -> list[RollupRow]: ...

    def listing(self, query: ReceiptQuery, after: tuple[int, str] | None = None) -> list[ListedReceipt]:
        """Receipts matching ``query`` (its ``limit``; not its ``offset``), newest first, from their columns only;
        ``after``: the (``ts_ms``, request id) of the last row of the page before (a keyset cursor)."""
        ...

    def counts(self, query: ReceiptQuery = DEFAULT_QUERY) -> ReceiptCounts: ...

    def series(self, query: ReceiptQuery = DEFAULT_QUERY) -> list[SeriesRow]:
        """Every receipt matching ``query`` but dry runs (its ``limit`` and ``offset`` ignored), oldest first."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- the spool

GroupKey = tuple[str, str]
"""(trace id, group), e.g. ``("4bf9...", "r:req_8f41c2")``."""


class SpoolSpan(Protocol):
    """What the spool keeps of an incoming span (the processor's ``IncomingSpan`` is one)."""

    @property
    def trace_id(self) -> str: ...

    @property
    def span_id(self) -> str: ...

    @property
    def group(self) -> str:
        """Which receipt it belongs to: ``r:{request id}`` or ``w:{workflow id}``."""
        ...

    @property
    def service(self) -> str | None: ...

    @property
    def body(self) -> bytes:
        """The span, serialized as an OTLP ``Span`` message."""
        ...


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
    """The processor's spool: every span of ours, written down before its export is acknowledged.

    Spans live in the receipt store's own database (table ``processor_spans``), one row per span, keyed by trace
    and span id so an exporter's retry is stored once. A row is *pending* until its receipt is written, then
    *finished*; finished rows are kept for the late window so a span that arrives after its receipt was written
    rebuilds the receipt whole, and are pruned after that.
    """

    location: str

    def append(
        self, spans: Sequence[SpoolSpan], owner: str, now_ms: int, lookup: Iterable[GroupKey] = ()
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


def reopened(spans: Sequence[SpoolSpan], found: dict[GroupKey, list[StoredSpan]]) -> list[GroupKey]:
    """Finished groups that ``spans`` add a new span to: pending again until their receipt is rewritten.

    The one rule of :meth:`Spool.append` that is not SQL, so every spool keeps it the same way.
    """
    out = []
    for key, rows in found.items():
        if rows and rows[0].finished_ms is not None:
            stored = {r.span_id for r in rows}
            if any((s.trace_id, s.group) == key and s.span_id not in stored for s in spans):
                out.append(key)
    return out
