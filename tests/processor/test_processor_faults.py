"""Faults: the processor killed with SIGKILL (twice) while a sender exports; every acknowledged decision has its receipt.

An export is acknowledged only after its spans are in the spool, so whatever
the moment of the kill, a restarted processor finishes what was pending and an
exporter's retry of an unacknowledged export is stored once.
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from processor_fixtures import ProcessorProcess

TESTS = Path(__file__).resolve().parent.parent


def test_kill_9_during_a_load_loses_no_acknowledged_decision(tmp_path):
    db = tmp_path / "receipts.db"
    acked = tmp_path / "acked.jsonl"
    p = ProcessorProcess(str(db), "--wait-window", "1", log=tmp_path / "processor.log").start()
    with open(tmp_path / "sender.log", "wb") as sender_log:  # the sender has its own copy of the descriptor
        sender = subprocess.Popen(
            [
                sys.executable,
                str(TESTS / "processor_fixtures.py"),
                "send",
                "--http",
                p.url,
                "--grpc",
                p.grpc_endpoint,
                "--decisions",
                "300",
                "--out",
                str(acked),
                "--pause",
                "0.04",
            ],
            cwd=str(TESTS),
            stderr=sender_log,
        )
    rng = random.Random(5)
    kills = 0
    try:
        for _ in range(2):
            time.sleep(rng.uniform(0.8, 1.6))
            if sender.poll() is not None:
                break
            p.kill()
            kills += 1
            time.sleep(rng.uniform(0.1, 0.5))
            p.start()
        assert sender.wait(180) == 0, (tmp_path / "sender.log").read_text()
        assert kills == 2, "the sender finished before both kills: slow it down"
        expected = {}
        for line in acked.read_text().splitlines():
            r = json.loads(line)
            expected[r["request_id"]] = r
        assert len(expected) == 300

        def all_in() -> bool:
            with sqlite3.connect(db) as c:
                return c.execute("SELECT COUNT(*) FROM receipts WHERE complete = 1").fetchone()[0] >= len(expected)

        assert p.wait_for(all_in, 30, 0.2), p.tail()
    finally:
        p.stop()
        if sender.poll() is None:
            sender.kill()
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT request_id, body, revision, trace_id, span_id FROM receipts").fetchall()
        earlier = c.execute("SELECT request_id, revision, body FROM receipt_revisions ORDER BY 1, 2").fetchall()
        conflicts = c.execute("SELECT request_id, trace_id, span_id FROM receipt_conflicts").fetchall()
        pending = c.execute(
            "SELECT COUNT(*) FROM processor_spans s LEFT JOIN processor_groups g ON g.trace_id = s.trace_id "
            "AND g.group_key = s.group_key WHERE g.trace_id IS NULL"
        ).fetchone()[0]
    # Exactly one decision per request: spans replayed after a kill (the spool's, the exporter's retries) never made
    # a second decision of one, and never rewrote a receipt already whole.
    assert conflicts == []
    revisions: dict[str, list[int]] = {}
    for request_id, revision, body in earlier:
        revisions.setdefault(request_id, []).append(revision)
        assert json.loads(body)["complete"] is False, request_id  # only an incomplete receipt is ever revised
    got = {}
    for request_id, body, revision, trace_id, span_id in rows:
        got[request_id] = json.loads(body)
        assert (got[request_id]["trace_id"], got[request_id]["span_id"]) == (trace_id, span_id)
        # Every revision kept, numbered 1..n with the stored one last.
        assert revisions.get(request_id, []) == list(range(1, revision)), request_id
    assert set(got) == set(expected)
    for request_id, want in expected.items():
        have = got[request_id]
        # Ids are made where the spans are; everything else is the decision.
        assert {k: v for k, v in have.items() if k not in ("trace_id", "span_id")} == {
            k: v for k, v in want.items() if k not in ("trace_id", "span_id")
        }, request_id
    assert pending == 0
