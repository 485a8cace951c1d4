"""Assembly: spans grouped into the receipts they make, and the moment each receipt is ready to be written.

A decision's group is ready as soon as its decision span and all the attempt
spans it announces (``fallback.hops + 1`` when a provider was called) are in.
A workflow root's group is ready once its root span is in and no decision of
its trace is pending here: the receipts of the nodes that arrived are written
first (a count of pending decision groups per trace keeps that check O(1)).
A group that is not ready within the wait window is finished with what it has
(the rebuild marks a decision ``complete: false``; a workflow is finished with
the nodes written by then, and later nodes still join it).
A group's decision is its first decision span, by arrival; another decision
span with the same request id in the same trace is kept in ``others`` and
written as a conflict, never merged into the decision (receipts are first-come).
A decision's attempts are the attempt spans whose parent it is. Spans read
back from the spool for a receipt already written come in no set order: there
the store decides, as the receipt it holds names its decision span.
Memory is bounded by a number of spans and by bytes (each span counts for
:data:`SPAN_BYTES` and the bytes it holds: its serialized form until the
spool has it, then its attributes if it keeps them): past either, the oldest
groups are finished early, and counted. This module holds no I/O; the service drives it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator

from ..receipts.stores import GroupKey
from .otlp import ROLE_ATTEMPT, ROLE_DECISION, ROLE_WORKFLOW, IncomingSpan

SPAN_BYTES = 600
"""What a pending span costs in memory besides the bytes it holds: the span object, its ids, its group's share."""
DEFAULT_MAX_PENDING_BYTES = 256 * 1024 * 1024


class Group:
    """The spans of one receipt (a decision and its attempts) or of one workflow root."""

    __slots__ = ("attempts", "decision", "first_seen", "key", "keys", "others", "spans", "trace_id")

    def __init__(self, trace_id: str, key: str, first_seen: float) -> None:
        self.trace_id = trace_id
        self.key = key
        self.spans: dict[str, IncomingSpan] = {}
        self.decision: IncomingSpan | None = None
        self.others: list[IncomingSpan] = []
        """Decision spans that came after ``decision`` for the same request id: conflicts, not the decision."""
        self.attempts: dict[str | None, set[int]] = {}
        """Attempt indices by the span id of the decision they were made under (their parent)."""
        self.first_seen = first_seen
        self.keys: set[str] = {key}

    def add(self, span: IncomingSpan) -> bool:
        """Add a span; False when it was already here (an exporter's retry)."""
        if span.span_id in self.spans:
            return False
        self.spans[span.span_id] = span
        if span.role == ROLE_DECISION:
            if self.decision is None:
                self.decision = span
            else:
                self.others.append(span)
        elif span.role == ROLE_ATTEMPT and span.attempt_index is not None:
            self.attempts.setdefault(span.parent, set()).add(span.attempt_index)
        return True

    @property
    def is_workflow(self) -> bool:
        return self.key.startswith("w:")

    @property
    def ready(self) -> bool:
        """Every span of the receipt is in. For a workflow root, the root itself; its nodes are the assembler's to check."""
        if self.is_workflow:
            return True
        d = self.decision
        if d is None:
            return False
        expected = d.expected_attempts or 0
        if not expected:
            return True
        # Only the decision's own attempts count: another decision's in the group never complete it.
        mine = self.attempts.get(d.span_id)
        loose = self.attempts.get(None)
        if loose:
            mine = loose | mine if mine else loose
        return mine is not None and mine.issuperset(range(expected))

    def __len__(self) -> int:
        return len(self.spans)


class Assembler:
    """Pending groups, oldest first; ready groups are handed out by :meth:`take_ready`."""

    def __init__(self, max_pending_spans: int, max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES) -> None:
        self.max_pending_spans = max_pending_spans
        self.max_pending_bytes = max_pending_bytes
        self._groups: OrderedDict[GroupKey, Group] = OrderedDict()
        self._alias: dict[GroupKey, GroupKey] = {}
        self._ready: dict[GroupKey, Group] = {}
        self._open: dict[str, int] = {}
        """Trace id -> decision groups (and stray attempt groups) of it pending here; absent when none."""
        self._roots: dict[str, list[GroupKey]] = {}
        """Trace id -> workflow root groups of it pending here."""
        self.pending_spans = 0
        self.pending_bytes = 0
        """:data:`SPAN_BYTES` and ``held`` of every pending span."""
        self.duplicates = 0

    def __contains__(self, key: GroupKey) -> bool:
        return self._resolve(key) in self._groups

    def __len__(self) -> int:
        return len(self._groups)

    def _resolve(self, key: GroupKey) -> GroupKey:
        return self._alias.get(key, key)

    def unknown(self, spans: Iterable[IncomingSpan]) -> set[GroupKey]:
        """Groups of ``spans`` that are not pending here: the spool may know them (finished, or from before a restart)."""
        out = set()
        for s in spans:
            key = (s.trace_id, s.group)
            if self._resolve(key) not in self._groups:
                out.add(key)
        return out

    def add(self, span: IncomingSpan, now: float) -> Group | None:
        """File a span under its group; returns the group when the span was new."""
        key = self._resolve((span.trace_id, span.group))
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = Group(span.trace_id, key[1], now)
            self._opened(key, group)
        if not group.add(span):
            self.duplicates += 1
            return None
        self.pending_spans += 1
        if span.held < 0:
            span.held = len(span.body)
        self.pending_bytes += SPAN_BYTES + span.held
        if span.role == ROLE_DECISION and span.alias:
            # Attempt spans that name no request id are filed under their parent, the decision span.
            alias = (span.trace_id, span.alias)
            self._alias[alias] = key
            group.keys.add(span.alias)
            strays = self._groups.pop(alias, None)
            if strays is not None:
                self._ready.pop(alias, None)
                self._closed(alias, strays)
                self.pending_spans -= len(strays)
                self.pending_bytes -= _bytes(strays)
                for s in strays.spans.values():
                    if group.add(s):
                        self.pending_spans += 1
                        self.pending_bytes += SPAN_BYTES + s.held
        if group.ready and not (group.is_workflow and group.trace_id in self._open):
            self._ready[key] = group
        return group

    def take_ready(self) -> list[Group]:
        """Ready groups; a workflow root after the decisions of its trace taken with it."""
        out = []
        while self._ready:
            ready, self._ready = self._ready, {}
            for key, group in ready.items():
                if self._groups.get(key) is not group:
                    continue
                if group.is_workflow and group.trace_id in self._open:
                    continue  # nodes of its trace are pending: marked ready again when the last of them is taken
                self._drop(key)  # taking a trace's last pending decision marks its workflow root ready: the next pass
                out.append(group)
        return out

    def take_expired(self, older_than: float) -> list[Group]:
        """Groups first seen before ``older_than`` (monotonic seconds): the wait window is over."""
        out = []
        for group in self._groups.values():
            if group.first_seen >= older_than:
                break
            out.append(group)
        for group in out:
            self._drop((group.trace_id, group.key))
        return out

    def release(self, span: IncomingSpan, held: int) -> None:
        """``span`` holds ``held`` bytes now (its bytes and perhaps its attributes were let go)."""
        key = self._resolve((span.trace_id, span.group))
        group = self._groups.get(key)
        if group is not None and group.spans.get(span.span_id) is span:
            self.pending_bytes += held - span.held
        span.held = held

    def take_overflow(self) -> list[Group]:
        """The oldest groups, until at most ``max_pending_spans`` spans and ``max_pending_bytes`` are left pending."""
        out = []
        while (
            self.pending_spans > self.max_pending_spans or self.pending_bytes > self.max_pending_bytes
        ) and self._groups:
            key, group = next(iter(self._groups.items()))
            self._drop(key)
            out.append(group)
        return out

    def put_back(self, groups: Iterable[Group]) -> None:
        """Groups whose receipts could not be written: pending again, oldest first, ready as they were."""
        groups = list(groups)
        for group in reversed(groups):
            key = (group.trace_id, group.key)
            self._groups[key] = group
            self._groups.move_to_end(key, last=False)
            self._opened(key, group)
            self.pending_spans += len(group)
            self.pending_bytes += _bytes(group)
            for k in group.keys:
                if k != group.key:
                    self._alias[(group.trace_id, k)] = key
            if group.ready:
                self._ready[key] = group

    def _drop(self, key: GroupKey) -> None:
        group = self._groups.pop(key)
        self._ready.pop(key, None)
        self._closed(key, group)
        self.pending_spans -= len(group)
        self.pending_bytes -= _bytes(group)
        for k in group.keys:
            if k != group.key:
                self._alias.pop((group.trace_id, k), None)

    def _opened(self, key: GroupKey, group: Group) -> None:
        """``group`` is pending now: a decision holds back its trace's workflow root."""
        trace_id = group.trace_id
        if group.is_workflow:
            self._roots.setdefault(trace_id, []).append(key)
        else:
            self._open[trace_id] = self._open.get(trace_id, 0) + 1

    def _closed(self, key: GroupKey, group: Group) -> None:
        """``group`` is no longer pending; the last decision of a trace to go lets its workflow root be finished."""
        trace_id = group.trace_id
        if group.is_workflow:
            roots = self._roots.get(trace_id)
            if roots is not None and key in roots:
                roots.remove(key)
                if not roots:
                    del self._roots[trace_id]
            return
        left = self._open.get(trace_id, 0) - 1
        if left > 0:
            self._open[trace_id] = left
            return
        self._open.pop(trace_id, None)
        for root in self._roots.get(trace_id, ()):
            waiting = self._groups.get(root)
            if waiting is not None:
                self._ready[root] = waiting

    def groups(self) -> Iterator[Group]:
        return iter(list(self._groups.values()))


def _bytes(group: Group) -> int:
    return sum(SPAN_BYTES + s.held for s in group.spans.values())


def workflow_of(group: Group) -> tuple[str, str | None] | None:
    """(workflow id, name) of a workflow group."""
    for span in group.spans.values():
        if span.role == ROLE_WORKFLOW:
            return span.group[2:], span.workflow_name
    return None
