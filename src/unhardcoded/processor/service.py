"""The processor's engine: exports are decoded, spooled (then acknowledged), assembled, rebuilt and stored, on one thread.

Both front doors (OTLP/HTTP and OTLP/gRPC) hand an export's body, as it came
(inflated and size-checked), to :meth:`ProcessorEngine.submit_export` and wait
for its future: it resolves once the export's spans are in the spool, so an
acknowledged export survives ``kill -9``. The worker decodes the body itself:
a front door decoding the next export while the worker finishes the last one
makes two threads take turns at the GIL, which cost about 5% more CPU per span
(bench/README.md), and the HTTP event loop is not held up by a decode. Exports
that queue up together are written in one transaction (group commit). After
that the same thread files spans under their receipts and writes the receipts
that are ready, through the one rebuild in :mod:`unhardcoded.receipts`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UnhardcodedError
from ..receipts.memo import sizes as cache_sizes
from ..receipts.rebuild import RebuiltDecision, rebuild_decision
from ..receipts.spans import SpanFormatError, from_span_bytes, from_span_view
from ..receipts.stores import GroupKey, Spool, Written
from .assembly import DEFAULT_MAX_PENDING_BYTES, Assembler, Group, workflow_of
from .metrics import ProcessorMetrics
from .otlp import ROLE_ATTEMPT, DecodedExport, IncomingSpan, PayloadError, decode, span_from_body

if TYPE_CHECKING:
    from ..receipts.stores import ReceiptStore
    from .forward import Forwarder

logger = logging.getLogger(__name__)


class Backpressure(UnhardcodedError):
    """The processor cannot take this export now; the client should send it again after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float, busy: bool) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.busy = busy
        """True: too much queued (429 / RESOURCE_EXHAUSTED). False: the store is failing or we are stopping (503 / UNAVAILABLE)."""


@dataclass
class ProcessorConfig:
    wait_window_s: float = 5.0
    """How long a receipt whose spans are not all in waits before it is written ``complete: false``."""
    late_window_s: float = 600.0
    """How long spans of finished receipts are kept, so a late span rebuilds its receipt whole."""
    max_pending_spans: int = 100_000
    """Spans held for receipts not finished yet; past it the oldest receipts are finished early."""
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES
    """Bytes held in memory for those spans (``assembly.SPAN_BYTES`` each and what they keep); past it, the same."""
    max_queue_spans: int = 50_000
    """Spans received but not yet spooled; past it exports are refused with retry information. An export not decoded
    yet counts for its size divided by the bytes per span of the exports decoded so far."""
    max_queue_bytes: int = 64 * 1024 * 1024
    """Bytes of exports received but not yet spooled; past it exports are refused the same way. One export is always
    taken when nothing is queued (its size is bounded by the front doors' ``--max-body-bytes``)."""
    owner: str = "default"
    """This instance's name in a shared store: after a restart it picks up its own pending spans."""
    retry_after_s: float = 1.0
    batch_spans: int = 20_000
    """At most this many spans in one spool transaction."""
    view_batch_spans: int = 8_192
    """Past this many spans in one batch, the exports after are taken without their bytes view (see
    ``IncomingSpan.view``): a view holds its whole export parsed, about twice its size, and a backlog taken in
    one batch should cost the memory it did without."""
    kept_attributes_spans: int = 8_192
    """While no more spans than this are pending, a span left waiting keeps its attributes (0.6-1.4 KB; its
    bytes go back to the spool): when the rest of its receipt comes, it is read back without decoding them again."""
    kept_attributes_span_bytes: int = 64 * 1024
    """A span larger than this never keeps its attributes: it is read again from the spool when its receipt is."""


@dataclass
class _Export:
    future: Future[Any]
    """Resolves to ``decoded``: the :class:`DecodedExport` of an export's body, ``None`` for spans given decoded."""
    cost: int
    """Spans it counts for in the queue: ``len(spans)``, or estimated from the size of ``body``."""
    nbytes: int
    """Bytes it counts for in the queue: its body's, or its spans'."""
    spans: list[IncomingSpan] | None = None
    """``None`` until the worker decodes ``body``."""
    body: bytes = b""
    kind: str = "protobuf"
    transport: str = "http"
    decoded: DecodedExport | None = None
    """What the future resolves to."""


_STOP = object()


class ProcessorEngine:
    def __init__(
        self,
        store: ReceiptStore,
        spool: Spool,
        config: ProcessorConfig | None = None,
        metrics: ProcessorMetrics | None = None,
        forwarder: Forwarder | None = None,
    ) -> None:
        self.store = store
        self.spool = spool
        self.config = config or ProcessorConfig()
        self.metrics = metrics or ProcessorMetrics()
        self.forwarder = forwarder
        self.assembler = Assembler(self.config.max_pending_spans, self.config.max_pending_bytes)
        self._queue: deque[_Export] = deque()
        self._queued_spans = 0
        self._queued_bytes = 0
        self._bytes_per_span = 1024.0
        """Of the exports decoded so far (a moving average): what an export not decoded yet counts for in the queue."""
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._healthy = True
        self._last_prune = 0.0
        self._store_backoff_until = 0.0
        self._loops = 0
        self._fresh: list[IncomingSpan] = []
        """Spans filed since the last finishing round; their bytes are let go after it (the spool has them)."""

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Pick up what a previous run left pending, then start the worker."""
        self._recover()
        self._thread = threading.Thread(target=self._run, name="unhardcoded-processor", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Spool what is queued and write what is ready; receipts still waiting for spans stay pending in the spool."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self.forwarder is not None:
            self.forwarder.stop()

    @property
    def healthy(self) -> bool:
        return self._healthy and self._thread is not None and self._thread.is_alive()

    def _recover(self) -> None:
        rows = self.spool.pending(self.config.owner)
        now, now_ms = time.monotonic(), _now_ms()
        for row in rows:
            try:
                span = span_from_body(row.body, row.service)
            except Exception:  # noqa: BLE001 - a row we cannot read back is skipped, not fatal
                logger.warning("spool: span %s/%s could not be read back", row.trace_id, row.span_id)
                continue
            if span is not None:
                span.group = row.group
                age = max(0.0, (now_ms - row.received_ms) / 1000)
                self.assembler.add(span, now - age)
                self._fresh.append(span)
        self.metrics.add(recovered_spans=len(rows))
        if rows:
            logger.info("picked up %d pending spans from %s", len(rows), self.spool.location)

    # -- the front doors call this -----------------------------------------------------------------

    def submit_export(self, body: bytes, kind: str, transport: str) -> Future[DecodedExport]:
        """Queue an export's body (inflated, size-checked; ``kind`` is ``protobuf`` or ``json``) for the worker to decode.

        The future resolves to its :class:`~.otlp.DecodedExport` once its spans are spooled, or fails with
        :class:`~.otlp.PayloadError` (not an OTLP export) or :class:`Backpressure`, which is also raised here.
        """
        future: Future[DecodedExport] = Future()
        self._enqueue(
            _Export(
                future,
                max(1, int(len(body) / self._bytes_per_span)),
                len(body),
                body=body,
                kind=kind,
                transport=transport,
            )
        )
        return future

    def submit(self, spans: list[IncomingSpan]) -> Future[None]:
        """Queue spans decoded already; the future resolves when they are spooled (or fails with :class:`Backpressure`)."""
        future: Future[None] = Future()
        if not spans:
            future.set_result(None)
            return future
        self._enqueue(_Export(future, len(spans), sum(len(s.body) for s in spans), spans=spans))
        return future

    def _enqueue(self, item: _Export) -> None:
        with self._cond:
            if self._stopping or not self.healthy:
                raise Backpressure("the processor is stopping", self.config.retry_after_s, busy=False)
            if time.monotonic() < self._store_backoff_until:
                raise Backpressure("the receipt store is failing; retry later", self.config.retry_after_s, busy=False)
            if self._queued_spans and self._queued_spans + item.cost > self.config.max_queue_spans:
                raise Backpressure(
                    f"{self._queued_spans} spans queued; retry later", self.config.retry_after_s, busy=True
                )
            if self._queued_bytes and self._queued_bytes + item.nbytes > self.config.max_queue_bytes:
                raise Backpressure(
                    f"{self._queued_bytes} bytes queued; retry later", self.config.retry_after_s, busy=True
                )
            self._queue.append(item)
            self._queued_spans += item.cost
            self._queued_bytes += item.nbytes
            self.metrics.stats.queue_depth = self._queued_spans
            self.metrics.stats.queue_bytes = self._queued_bytes
            self._cond.notify()

    # -- the worker ---------------------------------------------------------------------------------

    def _tick(self) -> float:
        return max(0.02, min(0.25, self.config.wait_window_s / 4))

    def _take(self) -> list[_Export] | None:
        with self._cond:
            if not self._queue and not self._stopping:
                self._cond.wait(self._tick())
            if not self._queue:
                return None if self._stopping else []
            out: list[_Export] = []
            n = 0
            while self._queue and (not out or n + self._queue[0].cost <= self.config.batch_spans):
                item = self._queue.popleft()
                out.append(item)
                n += item.cost
            return out

    def _dequeued(self, items: list[_Export]) -> None:
        with self._cond:
            self._queued_spans -= sum(i.cost for i in items)
            self._queued_bytes -= sum(i.nbytes for i in items)
            self.metrics.stats.queue_depth = self._queued_spans
            self.metrics.stats.queue_bytes = self._queued_bytes

    def _decode(self, items: list[_Export]) -> list[_Export]:
        """Decode the bodies of ``items``; those that are not OTLP, or hold no span of ours, are answered now.
        Returns the others, whose spans go to the spool."""
        out, answered = [], []
        n = 0
        for item in items:
            if item.spans is None:
                try:
                    decoded = decode(item.body, item.kind)
                except PayloadError as exc:
                    item.future.set_exception(exc)
                    answered.append(item)
                    continue
                except Exception as exc:  # noqa: BLE001 - whatever a payload does to a parser, it is the payload's fault
                    item.future.set_exception(PayloadError(f"could not read the payload: {type(exc).__name__}"))
                    answered.append(item)
                    continue
                if decoded.total:
                    self._bytes_per_span += (len(item.body) / decoded.total - self._bytes_per_span) / 8
                item.body = b""
                item.spans, item.decoded = decoded.spans, decoded
                self.metrics.received(item.transport, decoded.total, decoded.rejected, decoded.ignored)
                if not decoded.spans:
                    item.future.set_result(decoded)
                    answered.append(item)
                    continue
            if n > self.config.view_batch_spans:
                for s in item.spans:
                    s.view = s.attributes = None
            n += len(item.spans)
            out.append(item)
        if answered:
            self._dequeued(answered)
        return out

    def _run(self) -> None:
        while True:
            try:
                items = self._take()
                if items is None:
                    self._finish_due(time.monotonic(), final=True)
                    return
                if items:
                    items = self._decode(items)
                if items:
                    self._ingest(items)
                self._finish_due(time.monotonic())
                self._release()
                self._housekeeping()
                self._loops += 1
            except Exception:
                logger.exception("processor worker error")
                time.sleep(0.1)

    def _ingest(self, items: list[_Export]) -> None:
        spans = [s for item in items if item.spans is not None for s in item.spans]  # _decode set every one
        now, now_ms = time.monotonic(), _now_ms()
        lookup = self.assembler.unknown(spans)
        try:
            known = self.spool.append(spans, self.config.owner, now_ms, lookup)
        except Exception as exc:  # noqa: BLE001 - the store is down: refuse (retryably), lose nothing
            logger.warning("spool write failed: %s", exc)
            self.metrics.add(store_errors=1)
            self._store_backoff_until = time.monotonic() + self.config.retry_after_s
            self._dequeued(items)
            for item in items:
                if not item.future.done():
                    item.future.set_exception(
                        Backpressure(f"the receipt store is unavailable: {exc}", self.config.retry_after_s, busy=False)
                    )
            return
        self._dequeued(items)
        for item in items:
            if not item.future.done():
                item.future.set_result(item.decoded)

        skip: set[GroupKey] = set()
        for key, rows in known.items():
            new_ids = {s.span_id for s in spans if (s.trace_id, s.group) == key}
            stored = {r.span_id for r in rows}
            if new_ids <= stored and all(r.finished_ms is not None for r in rows):
                skip.add(key)  # a retry of spans whose receipt is written: nothing changes
                continue
            for r in rows:
                span = span_from_body(r.body, r.service)
                if span is not None:
                    span.group = r.group
                    self.assembler.add(span, now)
                    self._fresh.append(span)
        duplicates = 0
        for s in spans:
            if (s.trace_id, s.group) in skip or self.assembler.add(s, now) is None:
                duplicates += 1
            else:
                self._fresh.append(s)
        if duplicates:
            self.metrics.add(spans_duplicate=duplicates)
        self.metrics.stats.spans_pending = self.assembler.pending_spans
        self.metrics.stats.pending_bytes = self.assembler.pending_bytes

    def _release(self) -> None:
        """Let go of the bytes (and the export they were read from) of spans still waiting, and of their attributes past
        ``kept_attributes_spans``: memory holds ids, the spool holds spans."""
        # Kept spans are pending spans, and were kept while no more than the bound were pending: never more than it.
        # What a span keeps counts for its serialized size (its attributes are about that), against the byte bound.
        keep = self.assembler.pending_spans <= self.config.kept_attributes_spans
        largest = self.config.kept_attributes_span_bytes
        release = self.assembler.release
        for span in self._fresh:
            size = len(span.body)
            span.body = b""
            span.view = None
            if not keep or size > largest or span.attributes is None:
                span.attributes = None
                size = 0
            if size != span.held:
                release(span, size)
        self._fresh = []
        self.metrics.stats.pending_bytes = self.assembler.pending_bytes

    def _finish_due(self, now: float, final: bool = False) -> None:
        if now < self._store_backoff_until and not final:
            return
        batches = [
            (self.assembler.take_ready(), "telemetry"),
            (self.assembler.take_expired(now - self.config.wait_window_s), "wait_window"),
            (self.assembler.take_overflow(), "memory"),
            # Workflow roots whose last pending node was just finished above: written after it, in this round.
            (self.assembler.take_ready(), "telemetry"),
        ]
        if any(groups for groups, _ in batches):
            self._finish(batches)
        self.metrics.stats.spans_pending = self.assembler.pending_spans
        self.metrics.stats.pending_bytes = self.assembler.pending_bytes

    def _finish(self, batches: list[tuple[list[Group], str]]) -> None:
        groups = [g for gs, _ in batches for g in gs]
        cause_of = {id(g): cause for gs, cause in batches for g in gs}
        wanted = [s for g in groups if not g.is_workflow and g.decision is not None for s in g.spans.values()]
        missing = [(s.trace_id, s.span_id) for s in wanted if not s.body]
        if missing:
            try:
                bodies = self.spool.bodies(missing)
            except Exception as exc:  # noqa: BLE001 - the spool cannot be read now: try these again later
                logger.warning("spool read failed (%d receipts kept pending): %s", len(groups), exc)
                self.metrics.add(store_errors=1)
                self._store_backoff_until = time.monotonic() + self.config.retry_after_s
                self.assembler.put_back(groups)
                return
            for s in wanted:
                if not s.body:
                    s.body = bodies.get((s.trace_id, s.span_id), b"")
        records = {}
        for s in wanted:
            if s.body:
                try:
                    if s.view is not None:
                        records[(s.trace_id, s.span_id)] = from_span_view(s.view, s.service, s.attributes or {})
                    else:
                        records[(s.trace_id, s.span_id)] = from_span_bytes(s.body, s.service, s.attributes)
                except SpanFormatError:
                    pass  # its receipt is counted malformed (decision) or incomplete (attempt) below
        decisions: list[RebuiltDecision] = []
        extra: list[RebuiltDecision] = []
        """Receipts of decision spans that came after their group's decision: written after it, as conflicts."""
        causes: list[str] = []
        orphaned = malformed = 0
        workflows: list[tuple[str, str, str]] = []
        for g in groups:
            if g.is_workflow:
                wf = workflow_of(g)
                if wf is not None:
                    workflows.append((wf[0], wf[1] or "", g.trace_id))
                continue
            if g.decision is None:
                orphaned += len(g)
                continue
            decision = records.get((g.trace_id, g.decision.span_id))
            attempts = [
                records[(g.trace_id, sid)]
                for sid, s in g.spans.items()
                if s.role == ROLE_ATTEMPT and (g.trace_id, sid) in records
            ]
            if decision is None:
                malformed += 1
                continue
            # A decision takes the attempts made under it (its children; an attempt with no parent, the group's
            # decision): an attempt of another decision that names the same request id is never merged into it.
            own = (decision.span_id, None)
            everyone, attempts = attempts, [a for a in attempts if a.parent_span_id in own]
            others = [records[(g.trace_id, o.span_id)] for o in g.others if (g.trace_id, o.span_id) in records]
            conflicting = [(o, [a for a in everyone if a.parent_span_id == o.span_id]) for o in others]
            try:
                rebuilt = rebuild_decision(decision, attempts)
            except (ValueError, TypeError):
                malformed += 1
                continue
            decisions.append(rebuilt)
            causes.append(cause_of[id(g)])
            # After the decision they came after: the store keeps them aside as conflicts.
            for other, its_attempts in conflicting:
                try:
                    extra.append(rebuild_decision(other, its_attempts))
                except (ValueError, TypeError):
                    malformed += 1
        # A policy body once per batch: the store hashes and parses every body it is given.
        seen: set[str] = set()
        items = []
        for d in [*decisions, *extra]:
            fp = d.receipt.policy.fingerprint
            items.append((d.receipt, d.policy_body if fp not in seen else None))
            seen.add(fp)
        written = [Written()]

        def write_receipts() -> None:
            if items:
                written[0] = self.store.put_receipts(items)
            for workflow_id, name, trace_id in workflows:
                self.store.put_workflow(workflow_id, name, trace_id, finished=True)

        try:
            # The receipts, then the marks that their spans are finished: one transaction where the store and the
            # spool share a connection; otherwise a crash between the two only rewrites the same receipts.
            self.spool.finish(
                [(g.trace_id, k) for g in groups for k in {g.key, *(s.group for s in g.spans.values())}],
                _now_ms(),
                write_receipts,
            )
        except Exception as exc:  # noqa: BLE001 - keep the groups and try again; the spool still has every span
            logger.warning("receipt store write failed (%d receipts kept pending): %s", len(decisions), exc)
            self.metrics.add(store_errors=1)
            self._store_backoff_until = time.monotonic() + self.config.retry_after_s
            self.assembler.put_back(groups)
            return
        incomplete: dict[str, int] = {}
        complete = 0
        for d, cause in zip(decisions, causes):
            if d.receipt.complete:
                complete += 1
            else:
                incomplete[cause] = incomplete.get(cause, 0) + 1
        self.metrics.finished(complete, incomplete, written[0].revised)
        if written[0].conflicts:
            self.metrics.conflicts(written[0].conflicts)
        evicted = sum(1 for g in groups if cause_of[id(g)] == "memory")
        if evicted or malformed:
            self.metrics.add(evicted_groups=evicted, malformed_decisions=malformed)
        if orphaned:
            self.metrics.orphaned(orphaned)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < 5.0:
            return
        self._last_prune = now
        try:
            self.spool.prune(_now_ms() - int(self.config.late_window_s * 1000))
        except Exception as exc:  # noqa: BLE001 - pruning can wait for the next round
            logger.debug("spool prune failed: %s", exc)

    # -- for tests and GET /stats ---------------------------------------------------------------------

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until nothing is queued and nothing ready is left unwritten (tests, benchmarks)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._cond:
                idle = not self._queue
                loops = self._loops
            if idle:
                # Two more rounds of the worker: the one in progress, and one that saw the queue empty.
                while time.monotonic() < deadline and self._loops < loops + 2:
                    time.sleep(0.005)
                return self._loops >= loops + 2
            time.sleep(0.005)
        return False

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = self.metrics.stats.to_json_dict()
        out["pending_receipts"] = len(self.assembler)
        out["caches"] = cache_sizes()
        return out


def _now_ms() -> int:
    return int(time.time() * 1000)
