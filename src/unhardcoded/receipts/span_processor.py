"""In-process receipts: a SpanProcessor that rebuilds each decision's receipt as it ends and stores it.

Attempt spans end before their decision span; they wait, keyed by the decision
span's id, until it ends. A workflow's root span ends after its nodes: its end
marks the workflow finished, written after the node receipts queued before it.
Rebuilding and writing happen on a background thread
so the app's request path never waits on them, and nothing here ever raises into the app:
what cannot be rebuilt or written is counted in :attr:`ReceiptSpanProcessor.stats`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from ..semconv import attributes as A
from .rebuild import RebuiltDecision, rebuild_decision
from .spans import SpanRecord, from_readable_spans

if TYPE_CHECKING:
    from ..catalog.model import Catalog
    from .stores import ReceiptStore

logger = logging.getLogger(__name__)

_STOP = object()


@dataclass(frozen=True)
class _WorkflowFinished:
    """Queued when a workflow's root span ends."""

    workflow_id: str
    name: str
    trace_id: str | None


@dataclass
class ProcessorStats:
    """What the processor did; ``lost`` counts receipts that could not be rebuilt or written."""

    receipts_written: int = 0
    lost: int = 0
    rebuild_errors: int = 0
    write_errors: int = 0
    queue_full: int = 0
    orphan_attempts: int = 0
    incomplete: int = 0
    workflows_finished: int = 0
    conflicts: int = 0
    """Receipts of another decision for a request id already stored, kept aside by the store (not merged)."""


class ReceiptSpanProcessor(SpanProcessor):
    """``provider.add_span_processor(ReceiptSpanProcessor(store))``: every decision's receipt lands in ``store``.

    Give ``catalogs=[router.catalog]`` so the store keeps the catalog the decisions
    are made on and `unhardcoded replay` can decide them again months later (the
    policies are kept from the spans). Call ``force_flush()`` to wait for pending
    writes; ``shutdown()`` (the provider's) writes what is queued and stops.
    """

    def __init__(
        self,
        store: ReceiptStore,
        *,
        catalogs: Iterable[Catalog] = (),
        max_pending_attempts: int = 10_000,
        max_queue: int = 10_000,
        batch_size: int = 256,
    ) -> None:
        self.store = store
        self.stats = ProcessorStats()
        self._pending: OrderedDict[tuple[int, int], list[ReadableSpan]] = OrderedDict()
        self._parents: OrderedDict[tuple[int, str], set[tuple[int, int]]] = OrderedDict()
        self._pending_lock = threading.Lock()
        self._max_pending = max_pending_attempts
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._batch_size = batch_size
        self._stats_lock = threading.Lock()
        self._shutdown = False
        for catalog in catalogs:
            try:
                store.put_catalog(catalog)
            except Exception:  # noqa: BLE001 - a store that fails here must not stop the app from starting
                logger.warning(
                    "receipt store %s: could not keep catalog %s", getattr(store, "location", "?"), catalog.version
                )
        self._worker = threading.Thread(target=self._run, name="unhardcoded-receipts", daemon=True)
        self._worker.start()

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    # -- SpanProcessor ---------------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        try:
            self._on_end(span)
        except Exception:
            self._count(lost=1, rebuild_errors=1)
            logger.debug("receipt processor: span %r dropped", getattr(span, "name", "?"), exc_info=True)

    def _on_end(self, span: ReadableSpan) -> None:
        if self._shutdown:
            return
        attrs = span.attributes or {}
        if A.UNHARDCODED_ATTEMPT_INDEX in attrs:
            parent = span.parent
            if parent is None:
                self._count(orphan_attempts=1)
                return
            key = (parent.trace_id, parent.span_id)
            request_id = attrs.get(A.UNHARDCODED_REQUEST_ID)
            with self._pending_lock:
                self._pending.setdefault(key, []).append(span)
                if isinstance(request_id, str):
                    # For an attempt whose parent is not its decision span (another instrumentation's in between).
                    self._parents.setdefault((parent.trace_id, request_id), set()).add(key)
                evicted = 0
                while len(self._pending) > self._max_pending:
                    evicted += len(self._pending.popitem(last=False)[1])
                while len(self._parents) > self._max_pending:
                    self._parents.popitem(last=False)
            if evicted:
                self._count(orphan_attempts=evicted)
            return
        request_id = attrs.get(A.UNHARDCODED_REQUEST_ID)
        if request_id is None and A.UNHARDCODED_WORKFLOW_ID in attrs and A.UNHARDCODED_WORKFLOW_NODE not in attrs:
            self._workflow_ended(span, attrs)
            return
        if request_id is None or A.UNHARDCODED_POLICY_FINGERPRINT not in attrs:
            return
        ctx = span.context
        own = (ctx.trace_id, ctx.span_id)
        with self._pending_lock:
            attempts = self._pending.pop(own, [])
            if isinstance(request_id, str):  # only a string request id is ever kept there
                for key in self._parents.pop((ctx.trace_id, request_id), ()):
                    if key != own:
                        attempts.extend(self._pending.pop(key, []))
        try:
            self._queue.put_nowait((span, attempts))
        except queue.Full:
            self._count(lost=1, queue_full=1)

    def _workflow_ended(self, span: ReadableSpan, attrs: Any) -> None:
        """A workflow's root span ended: every node in it ended before, so its receipts are queued ahead of this."""
        workflow_id, name = attrs.get(A.UNHARDCODED_WORKFLOW_ID), attrs.get(A.UNHARDCODED_WORKFLOW_NAME)
        if not isinstance(workflow_id, str) or not workflow_id:
            return
        ctx = span.context
        finished = _WorkflowFinished(
            workflow_id, name if isinstance(name, str) else "", format(ctx.trace_id, "032x") if ctx else None
        )
        try:
            self._queue.put_nowait(finished)
        except queue.Full:
            self._count(lost=1, queue_full=1)

    def _rebuild(self, span: ReadableSpan, attempts: list[ReadableSpan]) -> RebuiltDecision | None:
        try:
            decision = rebuild_from_readable(span, attempts)
        except Exception:
            self._count(lost=1, rebuild_errors=1)
            logger.debug("receipt processor: decision span %r could not be rebuilt", span.name, exc_info=True)
            return None
        if not decision.receipt.complete:
            self._count(incomplete=1)
        return decision

    # -- writing ---------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                if self._drain():
                    return
            except Exception:
                logger.warning("receipt processor: writer error", exc_info=True)

    def _drain(self) -> bool:
        """Take what is queued (up to a batch), rebuild and write it; True once told to stop."""
        item = self._queue.get()
        batch: list[RebuiltDecision] = []
        finished: list[_WorkflowFinished] = []
        flushes: list[threading.Event] = []
        stop = False
        while True:
            if item is _STOP:
                stop = True
            elif isinstance(item, threading.Event):
                flushes.append(item)
            elif isinstance(item, _WorkflowFinished):
                finished.append(item)
            else:
                decision = self._rebuild(*item)
                if decision is not None:
                    batch.append(decision)
            if stop or len(batch) >= self._batch_size:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        if batch:
            self._write(batch)
        for w in finished:  # after the batch: its node receipts are written first
            self._finish_workflow(w)
        for event in flushes:
            event.set()
        return stop

    def _write(self, batch: list[RebuiltDecision]) -> None:
        try:
            # The store's rules hold here as in the processor: first come, a conflicting decision kept aside.
            written = self.store.put_receipts((d.receipt, d.policy_body) for d in batch)
            self._count(receipts_written=len(batch), conflicts=written.conflicts)
        except Exception:
            self._count(lost=len(batch), write_errors=1)
            logger.warning(
                "receipt store %s: %d receipts not written",
                getattr(self.store, "location", "?"),
                len(batch),
                exc_info=True,
            )

    def _finish_workflow(self, w: _WorkflowFinished) -> None:
        try:
            self.store.put_workflow(w.workflow_id, w.name, w.trace_id, finished=True)
            self._count(workflows_finished=1)
        except Exception:
            self._count(lost=1, write_errors=1)
            logger.warning(
                "receipt store %s: workflow %s not marked finished",
                getattr(self.store, "location", "?"),
                w.workflow_id,
                exc_info=True,
            )

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        if self._shutdown or not self._worker.is_alive():
            return True
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout_millis / 1000)
        except queue.Full:
            return False
        return done.wait(timeout_millis / 1000)

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        deadline = time.monotonic() + 30
        try:
            self._queue.put(_STOP, timeout=30)
        except queue.Full:
            pass
        self._worker.join(max(0.0, deadline - time.monotonic()))
        with self._pending_lock:
            left = sum(len(v) for v in self._pending.values())
            self._pending.clear()
            self._parents.clear()
        if left:
            self._count(orphan_attempts=left)


def rebuild_from_readable(span: ReadableSpan, attempts: Iterable[ReadableSpan] = ()) -> RebuiltDecision:
    """The receipt of one SDK decision span and its attempt spans."""
    records: list[SpanRecord] = from_readable_spans([span, *attempts])
    return rebuild_decision(records[0], records[1:])
