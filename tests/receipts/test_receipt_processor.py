"""In-process receipts: ReceiptSpanProcessor on a real TracerProvider writes each decision's receipt to a real store."""

from __future__ import annotations

import itertools
import threading

from hypothesis import HealthCheck, given, settings
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from fixtures import generate
from fixtures import span_layout as L
from fixtures.decisions import decisions
from unhardcoded.catalog import Catalog
from unhardcoded.receipts import (
    Receipt,
    ReceiptQuery,
    ReceiptSpanProcessor,
    SQLiteReceiptStore,
    WorkflowReceipt,
    open_store,
)
from unhardcoded.semconv import attributes as A


def _provider(processor: ReceiptSpanProcessor) -> TracerProvider:
    tp = TracerProvider()
    tp.add_span_processor(processor)
    return tp


def test_receipts_land_in_the_store_as_decisions_end(tmp_path):
    store = open_store(str(tmp_path / "r.db"))
    processor = ReceiptSpanProcessor(store, catalogs=[Catalog.builtin()])
    tp = _provider(processor)
    ds = generate.decisions()
    L.emit_workflow(tp.get_tracer("unhardcoded"), generate.WORKFLOW_ID, generate.WORKFLOW_NAME, ds)
    assert processor.force_flush()
    for d in ds:
        stored = store.get(d.request_id)
        assert stored is not None and stored.receipt == Receipt.from_decision(d)
        assert store.policy(d.policy.fingerprint) == d.policy.canonical
    assert store.catalog(Catalog.builtin().version) is not None
    expected = WorkflowReceipt.from_receipts(
        generate.WORKFLOW_ID, generate.WORKFLOW_NAME, [Receipt.from_decision(d) for d in ds]
    )
    assert store.workflow(generate.WORKFLOW_ID).nodes == expected.nodes
    assert store.workflow(generate.WORKFLOW_ID).complete  # the root span ended after its nodes: finished
    assert processor.stats.receipts_written == 2 and processor.stats.lost == 0
    assert processor.stats.workflows_finished == 1
    tp.shutdown()
    store.close()


def test_a_second_decision_under_a_stored_request_id_is_kept_aside(tmp_path):
    """The in-process processor writes through the same store rules: first come, the other decision a conflict."""
    store = open_store(str(tmp_path / "r.db"))
    processor = ReceiptSpanProcessor(store)
    tp = _provider(processor)
    first, second = generate.decisions()
    second = second.model_copy(update={"request_id": first.request_id})
    tracer = tp.get_tracer("unhardcoded")
    L.emit_decision(tracer, first)
    assert processor.force_flush()
    L.emit_decision(tracer, second)
    assert processor.force_flush()
    assert store.get(first.request_id).receipt == Receipt.from_decision(first)
    assert [c.receipt for c in store.conflicts(first.request_id)] == [Receipt.from_decision(second)]
    assert processor.stats.conflicts == 1 and processor.stats.lost == 0
    tp.shutdown()
    store.close()


_EXAMPLES = itertools.count()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(decisions())
def test_every_kind_of_decision_round_trips_through_the_processor(tmp_path, decision):
    # A store per example: examples share tmp_path and may draw the same request id, whose first receipt stays.
    store = open_store(str(tmp_path / f"r-{next(_EXAMPLES)}.db"))
    processor = ReceiptSpanProcessor(store)
    tp = _provider(processor)
    L.emit_decision(tp.get_tracer("unhardcoded"), decision)
    processor.force_flush()
    assert store.get(decision.request_id).receipt == Receipt.from_decision(decision)
    tp.shutdown()
    store.close()


def test_many_app_threads_at_once(tmp_path):
    store = open_store(str(tmp_path / "r.db"))
    processor = ReceiptSpanProcessor(store, batch_size=16)
    tp = _provider(processor)
    tracer = tp.get_tracer("unhardcoded")
    base = generate.decisions()[0]

    def work(worker: int) -> None:
        for i in range(25):
            d = base.model_copy(deep=True)
            d.request_id = f"req_{worker:02d}{i:014d}"
            d.workflow = None
            L.emit_decision(tracer, d)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    processor.force_flush()
    assert store.count(ReceiptQuery(complete=True)) == 200
    assert processor.stats.receipts_written == 200 and processor.stats.lost == 0
    tp.shutdown()
    store.close()


def test_a_store_that_fails_loses_receipts_but_never_raises_into_the_app(tmp_path):
    store = open_store(str(tmp_path / "r.db"))
    processor = ReceiptSpanProcessor(store)
    tp = _provider(processor)
    store.close()  # every write now fails
    for d in generate.decisions():
        d.workflow = None
        L.emit_decision(tp.get_tracer("unhardcoded"), d)  # must not raise
    processor.force_flush()
    assert processor.stats.lost == 2 and processor.stats.write_errors >= 1 and processor.stats.receipts_written == 0
    tp.shutdown()


def test_a_damaged_decision_span_is_counted_not_raised(tmp_path):
    store = open_store(str(tmp_path / "r.db"))
    processor = ReceiptSpanProcessor(store)
    tracer = _provider(processor).get_tracer("unhardcoded")
    with tracer.start_as_current_span("route broken") as span:
        span.set_attribute(A.UNHARDCODED_REQUEST_ID, "req_broken")
        span.set_attribute(A.UNHARDCODED_POLICY_FINGERPRINT, "1-2")  # and nothing else
    processor.force_flush()
    assert processor.stats.lost == 1 and processor.stats.rebuild_errors == 1
    assert store.get("req_broken") is None
    store.close()


def test_spans_that_are_not_ours_pass_through(tmp_path):
    store = open_store(str(tmp_path / "r.db"))
    processor = ReceiptSpanProcessor(store)
    tracer = _provider(processor).get_tracer("app")
    L.foreign_span(tracer)
    processor.force_flush()
    assert store.count() == 0 and processor.stats.lost == 0
    store.close()


def test_attempts_whose_decision_never_ends_are_counted_at_shutdown(tmp_path):
    store = open_store(str(tmp_path / "r.db"))
    processor = ReceiptSpanProcessor(store)
    tp = _provider(processor)
    tracer = tp.get_tracer("unhardcoded")
    decision = tracer.start_span("route support")
    with tracer.start_as_current_span("chat gpt-5.5", context=trace.set_span_in_context(decision)) as attempt:
        attempt.set_attribute(A.UNHARDCODED_ATTEMPT_INDEX, 0)
    tp.shutdown()  # the decision span never ended
    assert processor.stats.orphan_attempts == 1
    store.close()


def test_a_full_queue_drops_and_counts(tmp_path):
    release = threading.Event()

    class SlowStore(SQLiteReceiptStore):
        def put_rebuilt(self, decisions):  # a store stalled on a locked disk
            release.wait(10)
            return super().put_rebuilt(decisions)

    store = SlowStore(tmp_path / "r.db")
    processor = ReceiptSpanProcessor(store, max_queue=2, batch_size=1)
    tracer = _provider(processor).get_tracer("unhardcoded")
    base = generate.decisions()[1]
    for i in range(10):
        d = base.model_copy(deep=True)
        d.request_id = f"req_full{i:02d}"
        L.emit_decision(tracer, d)
    release.set()
    processor.force_flush()
    written, lost = processor.stats.receipts_written, processor.stats.lost
    assert written + lost == 10 and lost >= 1 and processor.stats.queue_full == lost
    assert store.count() == written
    store.close()


def test_an_attempt_under_another_instrumentations_span_is_still_claimed(tmp_path):
    store = open_store(str(tmp_path / "r.db"))
    processor = ReceiptSpanProcessor(store)
    tracer = _provider(processor).get_tracer("unhardcoded")
    d = generate.decisions()[1]
    d.workflow = None

    class Wedge:  # an HTTP client span wedged between the decision span and its attempt span
        def __init__(self, real):
            self.real = real

        def start_span(self, name, context=None, **kw):
            if name.startswith("chat "):
                http = self.real.start_span("POST", context=context)
                span = self.real.start_span(name, context=trace.set_span_in_context(http), **kw)
                http.end()
                return span
            return self.real.start_span(name, context=context, **kw)

    L.emit_decision(Wedge(tracer), d)
    processor.force_flush()
    stored = store.get(d.request_id)
    assert stored is not None and stored.receipt == Receipt.from_decision(d) and stored.receipt.complete
    store.close()


def test_a_workflow_is_open_until_its_root_span_ends(tmp_path):
    from unhardcoded.telemetry import workflow

    store = open_store(str(tmp_path / "r.db"))
    processor = ReceiptSpanProcessor(store)
    tp = _provider(processor)
    tracer = tp.get_tracer("unhardcoded")
    ds = generate.decisions()
    with workflow(generate.WORKFLOW_NAME, id=generate.WORKFLOW_ID, tracer_provider=tp) as wf:
        trace_id = wf.trace_id
        for d in ds:
            with wf.node(d.workflow.node):
                L.emit_decision(tracer, d)
        assert processor.force_flush()
        running = store.workflow(generate.WORKFLOW_ID)
        assert [n.request_id for n in running.nodes] == [d.request_id for d in ds]
        assert running.complete is False and running.still_open
    assert processor.force_flush()
    done = store.workflow(generate.WORKFLOW_ID)
    assert done.complete and done.trace_id == trace_id and done.name == generate.WORKFLOW_NAME
    assert processor.stats.workflows_finished == 1 and processor.stats.lost == 0
    tp.shutdown()
    store.close()
