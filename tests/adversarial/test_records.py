"""Receipts nobody can rewrite: forged decision spans against a real processor, on SQLite and PostgreSQL.

A stored receipt belongs to the first decision that claimed its request id (its
trace id and decision span id). Each case of ``CORPUS`` sends spans that claim a
victim's request id (from another trace, as a second decision span in the
victim's own trace, in the victim's own export, or replaying the victim's ids
with other content) over OTLP/HTTP (protobuf or JSON) or OTLP/gRPC, and asserts:
the stored receipt is the victim's, byte for byte, at the same revision; the
forgery is kept aside as a conflict (API, metric, page) or, when it is a replay
of stored span ids, dropped as one; nothing else is stored; the processor still
serves; the canary key on the forger's spans shows up nowhere. Late spans of the
victim's own decision still complete its receipt, and every revision is kept.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
import sqlite3
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

from fixtures import span_layout as L
from processor_fixtures import PostgresCluster, ProcessorProcess, make_decision
from unhardcoded.receipts import Receipt
from unhardcoded.receipts.stores import open_store
from unhardcoded.router.decision import Decision

CANARY = "sk-CANARY-records-5f1c0d7e9a"
PB = {"Content-Type": "application/x-protobuf"}
JSON_CT = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Forgery:
    id: str
    transport: str
    """``http`` (protobuf), ``http-json`` or ``grpc``."""
    trace: str
    """``other``: a trace of its own; ``same``: the victim's trace, another decision span; ``same-ids``: the victim's
    trace and decision span id (a replay with other content)."""
    outcome: str
    with_victim: bool = False
    """In the victim's own export, after the victim's spans (nothing stored yet: the first decision span wins)."""

    @property
    def conflict(self) -> bool:
        """A replay of stored span ids is an exporter's retry to the spool: dropped, not a conflict."""
        return self.trace != "same-ids"


CORPUS = [
    Forgery("other-trace-dry-run-http", "http", "other", "dry_run"),
    Forgery("other-trace-dry-run-grpc", "grpc", "other", "dry_run"),
    Forgery("other-trace-no-candidate-http-json", "http-json", "other", "no_candidate"),
    Forgery("other-trace-no-candidate-grpc", "grpc", "other", "no_candidate"),
    Forgery("other-trace-cheaper-answer-with-attempts-http", "http", "other", "answered"),
    Forgery("other-trace-failed-grpc", "grpc", "other", "failed"),
    Forgery("same-trace-second-decision-dry-run-http", "http", "same", "dry_run"),
    Forgery("same-trace-second-decision-with-attempts-grpc", "grpc", "same", "answered"),
    Forgery("same-trace-second-decision-no-candidate-http-json", "http-json", "same", "no_candidate"),
    Forgery("same-trace-second-decision-in-the-victims-export", "http", "same", "no_candidate", with_victim=True),
    Forgery("other-trace-in-the-victims-export", "grpc", "other", "dry_run", with_victim=True),
    Forgery("same-ids-replayed-with-other-content-http", "http", "same-ids", "dry_run"),
    Forgery("same-ids-replayed-with-other-content-grpc", "grpc", "same-ids", "no_candidate"),
]
HOSTILE_INPUTS = len(CORPUS) * 2  # each on SQLite and on PostgreSQL


# --------------------------------------------------------------------------- spans, honest and forged


class _Ids(IdGenerator):
    """A forger's ids: a chosen trace id, and a chosen first span id (the decision span is started first)."""

    def __init__(self, trace_id: int | None = None, span_id: int | None = None) -> None:
        self._random = RandomIdGenerator()
        self._trace_id = trace_id
        self._span_id = span_id

    def generate_span_id(self) -> int:
        span_id, self._span_id = self._span_id, None
        return span_id or self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        return self._trace_id or self._random.generate_trace_id()


def _spans(d: Decision, ids: IdGenerator | None = None, canary: bool = False) -> list[Any]:
    """The decision's spans as the SDK ends them; a forger's carry the canary key as a resource attribute."""
    attrs = {"service.name": "checkout"}
    if canary:
        attrs["http.request.header.authorization"] = f"Bearer {CANARY}"
    exporter = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create(attrs), id_generator=ids or RandomIdGenerator())
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    L.emit_decision(tp.get_tracer("unhardcoded"), d)
    spans = list(exporter.get_finished_spans())
    tp.shutdown()
    return spans


def _forged_decision(case: Forgery, victim: Decision, rng: random.Random) -> Decision:
    """Another decision under the victim's request id: other outcome, other cost."""
    if case.outcome == "answered":
        f = make_decision(rng, victim.request_id, hops=1)
        f.cost = f.cost.model_copy(update={"usd": 0.0, "savings_ratio": 1.0})
    elif case.outcome == "failed":
        f = make_decision(rng, victim.request_id, hops=0)
        f.attempts = [f.attempts[0].model_copy(update={"status": "error", "error_type": "503"})]
        f.answered_by, f.outcome = None, "failed"
    else:
        f = make_decision(rng, victim.request_id, called=False)
        if case.outcome == "no_candidate":
            f.selected, f.candidates, f.fallback_chain, f.outcome = None, [], [], "no_candidate"
    f.timestamp = victim.timestamp
    return f


def _forge(case: Forgery, victim: Decision, rng: random.Random) -> tuple[Decision, list[Any]]:
    f = _forged_decision(case, victim, rng)
    assert victim.trace_id and victim.span_id
    if case.trace == "other":
        ids = _Ids()
    elif case.trace == "same":
        ids = _Ids(int(victim.trace_id, 16))
    else:
        ids = _Ids(int(victim.trace_id, 16), int(victim.span_id, 16))
    spans = _spans(f, ids, canary=True)
    if case.trace == "same-ids":
        assert (f.trace_id, f.span_id) == (victim.trace_id, victim.span_id)
    else:
        assert f.span_id != victim.span_id
    return f, spans


def _send(p: ProcessorProcess, transport: str, spans: list[Any]) -> None:
    if transport == "grpc":
        exporter = GrpcExporter(endpoint=p.grpc_endpoint, insecure=True)
        try:
            assert exporter.export(spans) == SpanExportResult.SUCCESS
        finally:
            exporter.shutdown()
        return
    if transport == "http-json":
        r = httpx.post(p.url + "/v1/traces", content=L.otlp_json(spans), headers=JSON_CT, timeout=10)
    else:
        r = httpx.post(p.url + "/v1/traces", content=L.otlp_bytes(spans), headers=PB, timeout=10)
    assert r.status_code == 200, r.text


def _settled(p: ProcessorProcess) -> bool:
    return bool(p.wait_for(lambda: p.stats()["pending_receipts"] == 0, 15))


def _path(request_id: str) -> str:
    from urllib.parse import quote

    return quote(request_id, safe="")


# --------------------------------------------------------------------------- a processor per store, for the module


@pytest.fixture(scope="module")
def cluster():
    base = Path(tempfile.mkdtemp(prefix="unhardcoded-pg-records-"))
    c = PostgresCluster(base)
    yield c
    c.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def processor(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(f"records-{request.param}")
    url = str(base / "receipts.db") if request.param == "sqlite" else request.getfixturevalue("cluster").new_database()
    p = ProcessorProcess(url, "--wait-window", "1", log=base / "processor.log").start()
    yield p
    p.stop()


def _stored(p: ProcessorProcess, request_id: str, revision: int = 1) -> dict[str, Any] | None:
    def ready() -> dict[str, Any] | None:
        r = p.get(f"/receipts/{_path(request_id)}")
        doc = r.json() if r.status_code == 200 else None
        return doc if doc is not None and doc["revision"] >= revision else None

    return p.wait_for(ready, 15)


# --------------------------------------------------------------------------- the corpus


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_a_forged_decision_cannot_change_a_stored_receipt(processor, case):
    p = processor
    rng = random.Random(zlib.crc32(case.id.encode()))
    victim = make_decision(rng, f"victim_{case.id}", hops=1)
    victim_spans = _spans(victim)
    want = Receipt.from_decision(victim).to_json_dict()
    forged, forged_spans = _forge(case, victim, rng)
    before = p.stats()
    receipts_before = len(p.get("/receipts", params={"limit": 1000}).json()["items"])

    if case.with_victim:
        _send(p, case.transport, victim_spans + forged_spans)
    else:
        _send(p, "http", victim_spans)
        assert _stored(p, victim.request_id) is not None, p.tail()
        assert _settled(p)
        _send(p, case.transport, forged_spans)
    if case.conflict:
        assert p.wait_for(lambda: p.stats()["receipt_conflicts"] > before["receipt_conflicts"], 15), p.tail()
    else:
        assert p.wait_for(lambda: p.stats()["spans_duplicate"] > before["spans_duplicate"], 15), p.tail()
    assert _settled(p), p.tail()

    rid = _path(victim.request_id)
    answer = p.get(f"/receipts/{rid}")
    assert answer.status_code == 200
    doc = answer.json()
    assert doc["receipt"] == want and doc["revision"] == 1  # the victim's receipt, unchanged
    assert doc["conflicts"] == int(case.conflict)
    assert doc["links"]["conflicts"] == f"/receipts/{rid}/conflicts"
    revisions = p.get(f"/receipts/{rid}/revisions")
    assert revisions.status_code == 200
    assert [(r["revision"], r["receipt"]) for r in revisions.json()["revisions"]] == [(1, want)]
    conflicts = p.get(f"/receipts/{rid}/conflicts")
    assert conflicts.status_code == 200
    items = conflicts.json()["items"]
    after = p.stats()
    assert after["receipt_conflicts"] - before["receipt_conflicts"] == int(case.conflict)
    assert after["receipts_revised"] == before["receipts_revised"]  # the forgery revised nothing
    page = p.get(f"/r/{rid}")
    assert page.status_code == 200
    if case.conflict:
        assert [(c["trace_id"], c["span_id"]) for c in items] == [(forged.trace_id, forged.span_id)]
        kept = items[0]["receipt"]
        assert kept["outcome"] == forged.outcome and kept["request_id"] == victim.request_id
        assert "conflicting decision" in page.text and forged.trace_id in page.text
        listed = p.get("/conflicts", params={"limit": 1000}).json()["items"]
        assert (victim.request_id, forged.span_id) in {(c["request_id"], c["span_id"]) for c in listed}
    else:
        assert items == [] and "conflicting decision" not in page.text
    # Nothing stored besides the victim's receipt; the processor still serves; the forger's key is nowhere.
    assert len(p.get("/receipts", params={"limit": 1000}).json()["items"]) == receipts_before + 1
    assert p.get("/healthz").status_code == 200
    for text in (answer.text, revisions.text, conflicts.text, page.text, p.tail()):
        assert CANARY not in text


def test_late_spans_of_the_same_decision_still_complete_it_and_every_revision_is_kept(processor):
    p = processor
    rng = random.Random(77)
    victim = make_decision(rng, "victim_late_attempts", hops=1)
    spans = _spans(victim)
    decision_span = [s for s in spans if s.parent is None]
    attempts = [s for s in spans if s.parent is not None]
    revised = p.stats()["receipts_revised"]
    _send(p, "http", decision_span)
    first = _stored(p, victim.request_id)  # the wait window (1 s) runs out: written incomplete
    assert first is not None and first["receipt"]["complete"] is False and first["revision"] == 1, p.tail()
    _send(p, "grpc", attempts)
    second = _stored(p, victim.request_id, revision=2)
    assert second is not None, p.tail()
    assert second["receipt"] == Receipt.from_decision(victim).to_json_dict()
    assert p.wait_for(lambda: p.stats()["receipts_revised"] == revised + 1, 15)
    revisions = p.get(f"/receipts/{victim.request_id}/revisions").json()["revisions"]
    assert [r["revision"] for r in revisions] == [1, 2]
    assert revisions[0]["receipt"] == first["receipt"] and revisions[1]["receipt"] == second["receipt"]
    # Then a forgery from another trace: kept aside; the receipt stays at revision 2, both revisions listed.
    before = p.stats()["receipt_conflicts"]
    forged, forged_spans = _forge(Forgery("late", "http", "other", "dry_run"), victim, rng)
    _send(p, "http", forged_spans)
    assert p.wait_for(lambda: p.stats()["receipt_conflicts"] > before, 15), p.tail()
    doc = p.receipt(victim.request_id)
    assert doc["revision"] == 2 and doc["receipt"] == second["receipt"] and doc["conflicts"] == 1
    assert p.stats()["receipts_revised"] == revised + 1
    assert [r["revision"] for r in p.get(f"/receipts/{victim.request_id}/revisions").json()["revisions"]] == [1, 2]
    assert "2 revisions, every one kept" in p.get(f"/r/{victim.request_id}").text


def test_revisions_and_conflicts_are_not_taken_for_request_ids_that_end_like_them(processor):
    """Request ids may hold ``/``: a suffix as a path segment is the sub-resource, percent-encoded it is the id."""
    p = processor
    rng = random.Random(78)
    base = make_decision(rng, "tenant/a", hops=0)
    tricky = make_decision(rng, "tenant/a/revisions", hops=0)
    other = make_decision(rng, "tenant/b/conflicts", hops=0)
    _send(p, "http", _spans(base) + _spans(tricky) + _spans(other))
    for d in (base, tricky, other):
        assert _stored(p, d.request_id) is not None, p.tail()
    as_id = p.get("/receipts/tenant%2Fa%2Frevisions").json()
    assert as_id["receipt"] == Receipt.from_decision(tricky).to_json_dict()
    for path in ("/receipts/tenant/a/revisions", "/receipts/tenant%2Fa/revisions"):
        listing = p.get(path).json()
        assert listing["request_id"] == "tenant/a" and len(listing["revisions"]) == 1, path
        assert listing["revisions"][0]["receipt"] == Receipt.from_decision(base).to_json_dict()
    assert p.get("/receipts/tenant%2Fb%2Fconflicts").json()["receipt"]["request_id"] == "tenant/b/conflicts"
    assert p.get("/receipts/tenant/b/conflicts").status_code == 404  # no receipt "tenant/b"
    assert p.get("/receipts/tenant%2Fa%2Frevisions/revisions").json()["request_id"] == "tenant/a/revisions"
    assert p.get("/receipts/tenant%2Fa%2Frevisions/conflicts").json()["items"] == []
    assert p.get("/receipts/nobody/revisions").status_code == 404
    assert p.get("/receipts/nobody/conflicts").status_code == 404
    assert p.get("/conflicts", params={"limit": "0"}).status_code == 400


# --------------------------------------------------------------------------- the store's rules, fuzzed

_FUZZ_DB = itertools.count()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    first_complete=st.booleans(),
    writes=st.lists(
        st.tuples(
            st.sampled_from(["same", "other-trace", "other-span", "no-ids"]),
            st.booleans(),  # complete
            st.integers(min_value=0, max_value=3),  # content variant
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_the_store_never_lets_another_decision_change_a_receipt(tmp_path, first_complete, writes):
    """Whatever is written after it under its request id, a stored receipt changes only by its own decision, and
    only while incomplete; every revision stays listed; every other decision is one conflict."""
    rng = random.Random(5)
    d = make_decision(rng, "req_fuzz", hops=1)
    d.trace_id, d.span_id = "1" * 32, "2" * 16
    first = Receipt.from_decision(d).model_copy(update={"complete": first_complete})
    with open_store(str(tmp_path / f"fuzz-{next(_FUZZ_DB)}.db")) as store:
        assert store.put(first) == 1
        current, revisions, conflicts = first, [first], set()
        for ids, complete, variant in writes:
            update: dict[str, Any] = {"complete": complete, "latency_ms": first.latency_ms + variant}
            if ids == "other-trace":
                update["trace_id"] = "3" * 32
            elif ids == "other-span":
                update["span_id"] = "4" * 16
            elif ids == "no-ids":
                update["trace_id"] = update["span_id"] = None
            r = first.model_copy(update=update)
            same_decision = ids == "same"
            unchanged = r == current or (current.complete and not r.complete)
            store.put(r)
            if same_decision and unchanged:
                pass
            elif same_decision and not current.complete:
                current = r
                revisions.append(r)
            else:
                conflicts.add((r.trace_id or "", r.span_id or ""))
            got = store.get("req_fuzz")
            assert got.receipt == current and got.revision == len(revisions)
        assert [s.receipt for s in store.revisions("req_fuzz")] == revisions
        assert [s.revision for s in store.revisions("req_fuzz")] == list(range(1, len(revisions) + 1))
        assert store.count_conflicts("req_fuzz") == len(conflicts)
        assert {(c.receipt.trace_id or "", c.receipt.span_id or "") for c in store.conflicts("req_fuzz")} == conflicts
        assert store.count() == 1


# --------------------------------------------------------------------------- stores from before


def test_a_postgres_store_from_before_receipts_named_their_decision_span(cluster):
    """The receipts table as it was: opening the store adds ``span_id`` from the bodies, and first-come holds for the
    receipts already there."""
    import psycopg

    url = cluster.new_database()
    rng = random.Random(79)
    d = make_decision(rng, "req_old_pg", hops=1)
    d.trace_id, d.span_id = "5" * 32, "6" * 16
    old = Receipt.from_decision(d)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE receipts (request_id TEXT PRIMARY KEY, trace_id TEXT, ts_ms BIGINT NOT NULL, "
            "policy_name TEXT NOT NULL, policy_fingerprint TEXT NOT NULL, catalog_version TEXT NOT NULL, model TEXT, "
            "outcome TEXT NOT NULL, fallback BOOLEAN NOT NULL, cost_usd DOUBLE PRECISION, baseline_model TEXT, "
            "baseline_usd DOUBLE PRECISION, workflow_id TEXT, workflow_name TEXT, complete BOOLEAN NOT NULL, "
            "revision INTEGER NOT NULL, stored_at TEXT NOT NULL, body TEXT NOT NULL)"
        )
        conn.execute(
            "INSERT INTO receipts VALUES (%s, %s, 0, %s, %s, %s, NULL, %s, false, NULL, NULL, NULL, NULL, NULL, true, 1, "
            "'2026-03-14T09:00:00.000Z', %s)",
            (
                old.request_id,
                old.trace_id,
                old.policy.name,
                old.policy.fingerprint,
                old.catalog_version,
                old.outcome,
                old.to_json_text(),
            ),
        )
    store = open_store(url)
    try:
        assert store.get(old.request_id).receipt == old
        forged = old.model_copy(update={"span_id": "7" * 16, "outcome": "dry_run"})
        assert store.put(forged) == 1
        assert store.get(old.request_id).receipt == old and store.count_conflicts(old.request_id) == 1
        assert [s.revision for s in store.revisions(old.request_id)] == [1]
    finally:
        store.close()
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT span_id FROM receipts").fetchall() == [("6" * 16,)]


def test_a_sqlite_store_keeps_revisions_and_conflicts_in_its_own_tables(tmp_path):
    """What the processor's fault test reads: the tables, as a reader with sqlite3 sees them."""
    rng = random.Random(80)
    d = make_decision(rng, "req_tables", hops=1)
    d.trace_id, d.span_id = "8" * 32, "9" * 16
    whole = Receipt.from_decision(d)
    partial = whole.model_copy(update={"attempts": whole.attempts[:1], "complete": False})
    with open_store(str(tmp_path / "r.db")) as store:
        store.put(partial)
        store.put(whole)
        store.put(whole.model_copy(update={"trace_id": "a" * 32}))
    with sqlite3.connect(tmp_path / "r.db") as db:
        assert db.execute("SELECT request_id, revision FROM receipt_revisions").fetchall() == [("req_tables", 1)]
        assert json.loads(db.execute("SELECT body FROM receipt_revisions").fetchone()[0])["complete"] is False
        assert db.execute("SELECT request_id, trace_id, span_id FROM receipt_conflicts").fetchall() == [
            ("req_tables", "a" * 32, "9" * 16)
        ]


# --------------------------------------------------------------------------- the assembly, fuzzed


def _engine_case() -> tuple[Decision, Decision, list[Any]]:
    """A victim with one fallback hop and a forger in its trace with its own attempts: their spans as classified."""
    from unhardcoded.processor.otlp import classify, parse_protobuf

    rng = random.Random(81)
    victim = make_decision(rng, "req_engine_fuzz", hops=1)
    victim_spans = _spans(victim)
    forged, forged_spans = _forge(Forgery("engine", "http", "same", "answered"), victim, rng)
    return victim, forged, classify(parse_protobuf(L.otlp_bytes(victim_spans + forged_spans))).spans


_ENGINE_CASE = _engine_case()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(range(len(_ENGINE_CASE[2]))), cuts=st.sets(st.integers(1, len(_ENGINE_CASE[2]) - 1)))
def test_whatever_the_arrival_order_the_first_decision_span_is_the_decision(tmp_path, order, cuts):
    """Two decision spans of one request id in one trace, their spans in any order and any exports: the stored
    receipt is the first decision span's, the other is one conflict, and nothing is merged (an attempt of the one
    never completes the other). The wait window is short, so some receipts are written incomplete and completed by
    a later export, as revisions."""
    from unhardcoded.processor.metrics import ProcessorMetrics
    from unhardcoded.processor.service import ProcessorConfig, ProcessorEngine
    from unhardcoded.receipts.stores import open_store_and_spool

    victim, forged, spans = _ENGINE_CASE
    arrived = [spans[i] for i in order]
    first = next(s for s in arrived if s.role == "decision")
    winner, loser = (victim, forged) if first.span_id == victim.span_id else (forged, victim)
    store, spool = open_store_and_spool(str(tmp_path / f"engine-{next(_FUZZ_DB)}.db"))
    engine = ProcessorEngine(store, spool, ProcessorConfig(wait_window_s=0.2), ProcessorMetrics())
    engine.start()
    try:
        bounds = [0, *sorted(cuts), len(arrived)]
        for a, b in itertools.pairwise(bounds):
            engine.submit([copy.copy(s) for s in arrived[a:b]]).result(10)
            assert engine.drain()
        got = store.get(victim.request_id)
        assert got is not None and got.receipt == Receipt.from_decision(winner)
        assert [c.receipt.span_id for c in store.conflicts(victim.request_id)] == [loser.span_id]
        assert engine.stats()["receipt_conflicts"] == 1
        assert all(r.receipt.span_id == winner.span_id for r in store.revisions(victim.request_id))
    finally:
        engine.stop()
        store.close()
        spool.close()
