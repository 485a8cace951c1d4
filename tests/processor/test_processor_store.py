"""The processor's stores, the same tests on SQLite and on PostgreSQL (a throwaway cluster on loopback).

PostgreSQL is what lets several processors share receipts; the tests end with
two processor processes on one PostgreSQL store, each fed its own traces (as a
Collector's loadbalancing exporter routes by trace id), both answering for all.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import httpx
import pytest

from fixtures import span_layout as L
from processor_fixtures import (
    PostgresCluster,
    ProcessorProcess,
    decisions_with_spans,
    make_decision,
    workflow_with_spans,
)
from unhardcoded.processor.metrics import ProcessorMetrics
from unhardcoded.processor.otlp import classify, parse_protobuf
from unhardcoded.processor.service import ProcessorConfig, ProcessorEngine
from unhardcoded.receipts import Receipt, ReceiptQuery, WorkflowReceipt
from unhardcoded.receipts.stores import open_store_and_spool

PB = {"Content-Type": "application/x-protobuf"}


@pytest.fixture(scope="module")
def cluster():
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("psycopg is not installed: pip install 'psycopg[binary]' (scripts/install-test-deps.sh does)")
    base = Path(tempfile.mkdtemp(prefix="unhardcoded-pg-"))
    try:
        c = PostgresCluster(base)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield c
    c.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "receipts.db")
    return request.getfixturevalue("cluster").new_database()


@pytest.fixture
def backend(store_url):
    store, spool = open_store_and_spool(store_url)
    yield store, spool
    store.close()
    spool.close()


def test_revisions(backend):
    store, _ = backend
    rng = random.Random(1)
    d = make_decision(rng, "req_rev", hops=1)
    whole = Receipt.from_decision(d)
    partial = whole.model_copy(update={"attempts": whole.attempts[:1], "complete": False})
    assert store.put(partial, d.policy.canonical) == 1
    assert store.put(partial) == 1  # the same again: no new revision
    assert store.put(whole) == 2
    assert store.put(partial) == 2  # a partial re-delivery never replaces the whole receipt
    got = store.get("req_rev")
    assert got.receipt == whole and got.revision == 2
    assert store.policy(d.policy.fingerprint) == d.policy.canonical
    assert store.get("req_nope") is None


def test_queries_counts_and_rollups(backend):
    store, _ = backend
    rng = random.Random(2)
    ds = [make_decision(rng, f"req_q{i:02d}") for i in range(25)]
    assert store.put_many((Receipt.from_decision(d), d.policy.canonical) for d in ds) == 25
    newest_first = sorted(ds, key=lambda d: (d.timestamp, d.request_id), reverse=True)
    assert [r.request_id for r in store.query(ReceiptQuery(limit=5))] == [d.request_id for d in newest_first[:5]]
    assert len(store.query(ReceiptQuery(limit=10, offset=20))) == 5
    assert store.count(ReceiptQuery(policy="triage")) == sum(d.policy.name == "triage" for d in ds)
    assert store.count(ReceiptQuery(fallback=True)) == sum(bool(d.hops) for d in ds)
    assert store.count(ReceiptQuery(model=ds[0].answered_by)) == sum(d.answered_by == ds[0].answered_by for d in ds)
    mid = sorted(d.timestamp for d in ds)[12]
    assert store.count(ReceiptQuery(since=mid)) == sum(d.timestamp >= mid for d in ds)
    rows = {r.key: r for r in store.rollup("policy")}
    for name in ("support", "triage"):
        mine = [d for d in ds if d.policy.name == name]
        if mine:
            assert rows[name].decisions == len(mine)
            assert rows[name].fallbacks == sum(bool(d.hops) for d in mine)
            assert rows[name].cost_usd == pytest.approx(sum(d.cost.usd or 0 for d in mine))


def test_workflows(backend):
    store, _ = backend
    ds, _ = workflow_with_spans("wf_store", "triage-flow", ["a", "b"])
    nodes = [Receipt.from_decision(d) for d in ds]

    def want(finished: bool, receipts: list[Receipt] = nodes) -> WorkflowReceipt:
        return WorkflowReceipt.from_receipts(
            "wf_store", "triage-flow", receipts, trace_id=ds[0].trace_id, finished=finished
        )

    store.put_many((r, None) for r in reversed(nodes))
    open_ = store.workflow("wf_store")
    assert open_ == want(False)  # node receipts record their workflow, not that it finished
    assert open_.complete is False and open_.still_open
    store.put_workflow("wf_store", "triage-flow", ds[0].trace_id)
    assert store.workflow("wf_store") == want(False)  # recorded again, still not finished
    store.put_workflow("wf_store", "triage-flow", ds[0].trace_id, finished=True)
    assert store.workflow("wf_store") == want(True) and store.workflow("wf_store").complete
    store.put_workflow(
        "wf_store", "", None
    )  # a later record without a name or trace changes nothing, and never reopens it
    assert store.workflow("wf_store") == want(True)
    partial = nodes[1].model_copy(
        update={
            "complete": False,
            "request_id": "req_wf_store_late",
            "workflow": nodes[1].workflow.model_copy(update={"node": "c", "step": 2}),
        }
    )
    store.put(partial)  # a node written after the workflow was finished joins it
    late = store.workflow("wf_store")
    assert late == want(True, nodes + [partial]) and late.complete is False and not late.still_open
    assert store.workflow("wf_nope") is None


def test_a_workflow_finished_before_any_node_was_written(backend):
    store, _ = backend
    ds, _ = workflow_with_spans("wf_root_first", "triage-flow", ["a", "b"], seed=8)
    store.put_workflow("wf_root_first", "triage-flow", ds[0].trace_id, finished=True)
    empty = store.workflow("wf_root_first")
    assert empty.nodes == [] and empty.complete and empty.trace_id == ds[0].trace_id
    store.put_many((Receipt.from_decision(d), None) for d in ds)
    assert store.workflow("wf_root_first") == WorkflowReceipt.from_receipts(
        "wf_root_first", "triage-flow", [Receipt.from_decision(d) for d in ds], trace_id=ds[0].trace_id
    )


def test_receipts_name_their_client_key_and_roll_up_by_it(backend):
    store, _ = backend
    rng = random.Random(5)
    ds = [make_decision(rng, f"req_c{i:02d}") for i in range(9)]
    for i, d in enumerate(ds):
        d.client = ("support-bot", "triage-bot", None)[i % 3]
    store.put_many((Receipt.from_decision(d), None) for d in ds)
    assert store.get(ds[0].request_id).receipt.client == "support-bot"
    assert store.get(ds[2].request_id).receipt.client is None
    rows = {r.key: r for r in store.rollup("client")}
    assert {k: r.decisions for k, r in rows.items()} == {"support-bot": 3, "triage-bot": 3, "(none)": 3}
    assert rows["triage-bot"].cost_usd == pytest.approx(sum(d.cost.usd or 0 for d in ds[1::3]))
    assert {r.request_id for r in store.query(ReceiptQuery(client="triage-bot"))} == {d.request_id for d in ds[1::3]}


def test_a_postgres_store_from_before_receipts_named_their_client(cluster):
    """The receipts table as it was: opening the store adds the ``client`` column once; old receipts have none."""
    import psycopg

    from unhardcoded.receipts.stores.postgres import _SCHEMA

    url = cluster.new_database()
    rng = random.Random(6)
    old, new = make_decision(rng, "req_old_client"), make_decision(rng, "req_new_client")
    new.client = "support-bot"
    assert "  client TEXT,\n" in _SCHEMA
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_SCHEMA.replace("  client TEXT,\n", ""))
    for _ in range(2):  # opened twice: the column is added once
        store, spool = open_store_and_spool(url)
        try:
            store.put(Receipt.from_decision(old))
            store.put(Receipt.from_decision(new))
            assert store.get("req_old_client").receipt.client is None
            assert {r.key for r in store.rollup("client")} == {"support-bot", "(none)"}
        finally:
            store.close()
            spool.close()


def test_a_postgres_store_from_before_workflows_recorded_their_root(cluster):
    """The workflows table as it was: opening the store adds ``finished_at`` once, and old workflows read finished."""
    import psycopg

    url = cluster.new_database()
    ds, _ = workflow_with_spans("wf_old", "triage-flow", ["a", "b"], seed=9)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE workflows (workflow_id TEXT PRIMARY KEY, name TEXT NOT NULL, trace_id TEXT, stored_at TEXT NOT NULL)"
        )
        conn.execute(
            "INSERT INTO workflows VALUES ('wf_old', 'triage-flow', %s, '2026-03-14T09:00:00.000Z')", (ds[0].trace_id,)
        )
    store, spool = open_store_and_spool(url)
    try:
        store.put_many((Receipt.from_decision(d), None) for d in ds)
        assert store.workflow("wf_old") == WorkflowReceipt.from_receipts(
            "wf_old", "triage-flow", [Receipt.from_decision(d) for d in ds], trace_id=ds[0].trace_id
        )
        new, _ = workflow_with_spans("wf_new", "triage-flow", ["a"], seed=10)
        store.put(Receipt.from_decision(new[0]))
        assert store.workflow("wf_new").still_open
    finally:
        store.close()
        spool.close()
    store, spool = open_store_and_spool(url)  # opened again: the column is there, nothing is filled in twice
    try:
        assert store.workflow("wf_old").complete
        assert store.workflow("wf_new").still_open
    finally:
        store.close()
        spool.close()


def test_the_spool(backend):
    _, spool = backend
    _, spans = decisions_with_spans(3, seed=3, hops=1)
    ours = classify(parse_protobuf(L.otlp_bytes(spans))).spans
    keys = {(s.trace_id, s.group) for s in ours}
    assert spool.append(ours, "me", 1000, keys) == {}
    again = spool.append(ours[:2], "me", 2000, {(ours[0].trace_id, ours[0].group)})  # a retry: stored once
    assert sorted(r.span_id for r in again[(ours[0].trace_id, ours[0].group)]) == sorted(
        s.span_id for s in ours if (s.trace_id, s.group) == (ours[0].trace_id, ours[0].group)
    )
    pending = spool.pending("me")
    assert len(pending) == len(ours) and spool.pending("someone-else") == []
    assert [p.body for p in pending] == [s.body for s in ours]
    first = (ours[0].trace_id, ours[0].group)
    spool.finish([first], 5000)
    assert len(spool.pending("me")) == len(ours) - sum((s.trace_id, s.group) == first for s in ours)
    assert spool.prune(4000) == 0
    assert spool.prune(6000) == sum((s.trace_id, s.group) == first for s in ours)


def test_on_sqlite_receipts_and_their_finish_marks_commit_together(tmp_path):
    """The spool shares the store's connection: the receipts written in a finish and its marks are one transaction."""
    store, spool = open_store_and_spool(str(tmp_path / "receipts.db"))
    try:
        ds, spans = decisions_with_spans(2, seed=4, hops=1)
        ours = classify(parse_protobuf(L.otlp_bytes(spans))).spans
        spool.append(ours, "me", 1000)
        groups = sorted({(s.trace_id, s.group) for s in ours})
        receipts = [Receipt.from_decision(d) for d in ds]

        def fail_after_writing() -> None:
            store.put_many([(r, None) for r in receipts])
            raise RuntimeError("the process dies here")

        with pytest.raises(RuntimeError):
            spool.finish(groups, 2000, fail_after_writing)
        assert [store.get(d.request_id) for d in ds] == [None, None]
        assert len(spool.pending("me")) == len(ours)
        spool.finish(groups, 2000, lambda: store.put_many([(r, None) for r in receipts]))
        assert [store.get(d.request_id).receipt for d in ds] == receipts
        assert spool.pending("me") == []
    finally:
        store.close()
        spool.close()


def test_the_processor_on_each_store_survives_a_restart(store_url):
    ds, spans = decisions_with_spans(10, seed=4, hops=1)
    ours = classify(parse_protobuf(L.otlp_bytes(spans))).spans
    decision_ids = {s.span_id for s in ours if s.role == "decision"}
    store, spool = open_store_and_spool(store_url)
    cfg = ProcessorConfig(wait_window_s=30, owner="one")
    p = ProcessorEngine(store, spool, cfg, ProcessorMetrics())
    p.start()
    p.submit([s for s in ours if s.span_id not in decision_ids]).result(10)  # attempts only: nothing can finish
    assert p.drain()
    p.stop()
    store.close()
    spool.close()
    store, spool = open_store_and_spool(store_url)  # a new process, as after a crash: pending spans are picked up
    p = ProcessorEngine(store, spool, cfg, ProcessorMetrics())
    p.start()
    assert p.stats()["recovered_spans"] == len(ours) - len(decision_ids)
    p.submit([s for s in ours if s.span_id in decision_ids]).result(10)
    assert p.drain()
    for d in ds:
        got = store.get(d.request_id)
        assert got is not None and got.receipt == Receipt.from_decision(d) and got.revision == 1
    p.stop()
    store.close()
    spool.close()


def test_a_workflow_is_finished_after_its_pending_nodes_on_each_store_and_across_a_restart(store_url):
    ds, spans = workflow_with_spans("wf_engine", "refund-flow", ["classify", "draft", "review"], seed=12)
    ours = classify(parse_protobuf(L.otlp_bytes(spans))).spans
    held = next(d for d in reversed(ds) if d.attempts)
    attempts = [s for s in ours if s.role == "attempt" and s.group == "r:" + held.request_id]
    first = [s for s in ours if s not in attempts]  # the root and every node, but one node's attempts
    want = WorkflowReceipt.from_receipts(
        "wf_engine", "refund-flow", [Receipt.from_decision(d) for d in ds], trace_id=ds[0].trace_id
    )
    cfg = ProcessorConfig(wait_window_s=60, owner="one")
    store, spool = open_store_and_spool(store_url)
    p = ProcessorEngine(store, spool, cfg, ProcessorMetrics())
    p.start()
    p.submit(first).result(10)
    assert p.drain()
    waiting = store.workflow("wf_engine")  # the root is in; one node's receipt is not written, so neither is the root
    assert waiting is not None and waiting.still_open
    assert [n.request_id for n in waiting.nodes] == [d.request_id for d in ds if d is not held]
    p.stop()
    store.close()
    spool.close()
    store, spool = open_store_and_spool(store_url)  # restarted: the root and the held node are picked up, still waiting
    p = ProcessorEngine(store, spool, cfg, ProcessorMetrics())
    p.start()
    assert p.stats()["recovered_spans"] >= 2
    assert p.drain() and store.workflow("wf_engine").still_open
    p.submit(attempts).result(10)
    assert p.drain()
    assert store.workflow("wf_engine") == want and want.complete
    p.stop()
    store.close()
    spool.close()


def test_two_processors_share_one_postgres_store(cluster, tmp_path):
    url = cluster.new_database()
    a = ProcessorProcess(url, "--wait-window", "1", "--instance-id", "a", log=tmp_path / "a.log").start()
    b = ProcessorProcess(url, "--wait-window", "1", "--instance-id", "b", log=tmp_path / "b.log").start()
    try:
        ds_a, spans_a = decisions_with_spans(8, seed=5, service="checkout")
        ds_b, spans_b = decisions_with_spans(8, seed=6, service="agents")
        assert httpx.post(a.url + "/v1/traces", content=L.otlp_bytes(spans_a), headers=PB).status_code == 200
        assert httpx.post(b.url + "/v1/traces", content=L.otlp_bytes(spans_b), headers=PB).status_code == 200
        for d in ds_a + ds_b:
            for p in (a, b):
                doc = p.wait_for(lambda: p.receipt(d.request_id), 15)
                assert doc is not None and doc["receipt"] == Receipt.from_decision(d).to_json_dict()
        assert a.get("/receipts", params={"limit": 100}).json()["count"] == 16
    finally:
        a.stop()
        b.stop()


def test_the_console_filters_by_rule_outcome_and_provider_on_each_store(backend):
    """Store schema 4: the rules that rejected a model, the last attempt's provider and the latency are columns."""
    store, _ = backend
    rng = random.Random(7)
    ds = [make_decision(rng, f"req_f{i:02d}", called=i % 4 != 3) for i in range(24)]
    store.put_many((Receipt.from_decision(d), None) for d in ds)
    rules = {j.rule for d in ds for j in d.rejected}
    assert rules
    for rule in rules:
        expected = {d.request_id for d in ds if any(j.rule == rule for j in d.rejected)}
        assert {r.request_id for r in store.query(ReceiptQuery(rule=rule, limit=None))} == expected
        # A rule matches whole names only: a prefix of one names no rule.
        assert store.count(ReceiptQuery(rule=rule[:-1])) == sum(
            1 for d in ds if any(j.rule == rule[:-1] for j in d.rejected)
        )
    for outcome in {d.outcome for d in ds}:
        assert store.count(ReceiptQuery(outcome=outcome)) == sum(d.outcome == outcome for d in ds)
    providers = {d.attempts[-1].provider for d in ds if d.attempts}
    for provider in providers:
        expected = {d.request_id for d in ds if d.attempts and d.attempts[-1].provider == provider}
        assert {r.request_id for r in store.query(ReceiptQuery(provider=provider, limit=None))} == expected
    assert {r.key for r in store.rollup("provider")} <= providers | {"(none)"}


def test_a_postgres_store_from_before_the_console_gets_its_columns_from_the_bodies(cluster):
    import psycopg

    from unhardcoded.receipts.stores.postgres import _SCHEMA
    from unhardcoded.receipts.stores.sql import console_values

    url = cluster.new_database()
    rng = random.Random(8)
    ds = [make_decision(rng, f"req_pg4_{i}") for i in range(6)]
    old = "  span_id TEXT,\n  rules TEXT,\n  provider TEXT,\n  latency_ms DOUBLE PRECISION\n"
    assert old in _SCHEMA
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_SCHEMA.replace(old, "  span_id TEXT\n"))
    store, spool = open_store_and_spool(url)  # schema 4 as written today, then the columns dropped below
    store.put_many((Receipt.from_decision(d), None) for d in ds)
    store.close()
    spool.close()
    with psycopg.connect(url, autocommit=True) as conn:
        for column in ("rules", "provider", "latency_ms"):
            conn.execute(f"ALTER TABLE receipts DROP COLUMN {column}")
    for _ in range(2):  # opened twice: the columns are added and filled once
        store, spool = open_store_and_spool(url)
        try:
            with psycopg.connect(url) as conn:
                rows = dict(
                    (r[0], r[1:])
                    for r in conn.execute("SELECT request_id, rules, provider, latency_ms FROM receipts").fetchall()
                )
            assert rows == {d.request_id: console_values(Receipt.from_decision(d)) for d in ds}
        finally:
            store.close()
            spool.close()
