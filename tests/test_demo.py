"""`unhardcoded demo`, the README's first command, run for real: its receipts are stored and correct."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from unhardcoded.receipts import open_store

CLI = [sys.executable, "-m", "unhardcoded.cli"]


def run(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "UNHARDCODED_HOME": str(home), **env}
    full_env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=full_env, timeout=120)


def test_demo_runs_a_five_node_workflow_with_one_fallback_and_stores_every_receipt(tmp_path: Path):
    done = run(["demo"], tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Simulated providers on loopback" in out and "no real LLM is called" in out
    assert "5 decisions · 1 fallback · 0 failed" in out
    assert "note      " not in out, "the workflow card has no OPEN or INCOMPLETE note"
    commands = [line.split()[-1] for line in out.splitlines() if line.strip().startswith("unhardcoded receipt req_")]
    assert len(commands) == 5

    store = open_store(str(tmp_path / "receipts.db"), create=False)
    try:
        receipts = [store.get(rid) for rid in commands]
        assert all(r is not None for r in receipts)
        nodes = [r.receipt for r in receipts]  # type: ignore[union-attr]
        assert [n.workflow.node for n in nodes] == [
            "classify",
            "extract-order",
            "lookup-order",
            "draft-reply",
            "check-tone",
        ]
        assert [n.workflow.step for n in nodes] == [0, 1, 2, 3, 4]
        assert len({n.trace_id for n in nodes}) == 1, "every node of the workflow is in one trace"
        assert {n.policy.name for n in nodes} == {"support", "triage"}
        assert all(n.complete and n.outcome == "answered" for n in nodes)

        fell_back = [n for n in nodes if n.fallback.triggered]
        assert len(fell_back) == 1
        hop = fell_back[0]
        assert hop.workflow.node == "lookup-order"
        assert hop.selected.model == "grok-4-fast-non-reasoning"
        assert [(h.from_, h.to, h.reason) for h in hop.fallback.hops] == [
            ("grok-4-fast-non-reasoning", "mistral-large-2512", "error")
        ]
        assert [(a.model, a.status, a.error_type) for a in hop.attempts] == [
            ("grok-4-fast-non-reasoning", "error", "503"),
            ("mistral-large-2512", "ok", None),
        ]
        assert hop.answered_by == "mistral-large-2512"
        # The rejections the card promises, with the rule that rejected each model.
        by_model = {r.model: r for r in hop.rejected}
        assert by_model["mistral-small-2603"].rule == "tools" and by_model["mistral-small-2603"].message == "no tools"
        assert by_model["deepseek-v4-flash"].message == "below quality floor (0.42 < 0.5)"

        wf_id = nodes[0].workflow.id
        workflow = store.workflow(wf_id)
        assert workflow is not None and workflow.totals.decisions == 5 and workflow.totals.fallbacks == 1
        assert workflow.complete, "the workflow's root span ended after its nodes: the workflow is finished"
    finally:
        store.close()

    card = run(["receipt", hop.request_id], tmp_path)
    assert card.returncode == 0, card.stderr
    assert "grok-4-fast-non-reasoning ✗ error → mistral-large-2512 ✓" in card.stdout
    assert f"fingerprint {hop.policy.fingerprint} · sigma-pol/v1" in card.stdout

    replay = run(["replay", hop.request_id], tmp_path)
    assert replay.returncode == 0, replay.stdout + replay.stderr


def test_demo_json_prints_the_workflow_receipt(tmp_path: Path):
    done = run(["demo", "--json"], tmp_path)
    assert done.returncode == 0, done.stderr
    receipt = json.loads(done.stdout)
    assert receipt["receipt"] == "unhardcoded.workflow-receipt/v1"
    assert [n["workflow"]["node"] for n in receipt["nodes"]][0] == "classify"
    assert receipt["totals"]["decisions"] == 5 and receipt["totals"]["fallbacks"] == 1
    assert receipt["complete"] is True


def test_demo_with_the_sdk_disabled_still_stores_every_receipt(tmp_path: Path):
    """OTEL_SDK_DISABLED=true (a standard OpenTelemetry variable) records no span; the receipts are stored from the
    decisions, so the demo still ends with its workflow card and every node's receipt."""
    done = run(["demo"], tmp_path, OTEL_SDK_DISABLED="true")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    out = done.stdout
    assert "OTEL_SDK_DISABLED is set" in out and "5 decisions · 1 fallback · 0 failed" in out
    commands = [line.split()[-1] for line in out.splitlines() if line.strip().startswith("unhardcoded receipt req_")]
    store = open_store(str(tmp_path / "receipts.db"), create=False)
    try:
        nodes = [store.get(rid) for rid in commands]
        assert len(nodes) == 5 and all(n is not None and n.receipt.outcome == "answered" for n in nodes)
        workflow_id = [line.split()[2] for line in out.splitlines() if line.strip().endswith("# the whole workflow")]
        stored = store.workflow(workflow_id[0])
        assert stored is not None and stored.totals.decisions == 5 and stored.totals.fallbacks == 1
    finally:
        store.close()
