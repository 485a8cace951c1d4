"""`unhardcoded replay --live`: a decision made under a cooldown replays the same from the snapshot on its span, and
differs when the live state is ignored; a policy reading a live field the snapshot never held says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unhardcoded.catalog import Catalog
from unhardcoded.policy import load_policy_file
from unhardcoded.policy.builtin import builtin_policy_dir
from unhardcoded.receipts import Receipt, open_store, rebuild_receipts
from unhardcoded.receipts.replay import replay
from unhardcoded.router.live import LiveState
from unhardcoded.testing import capture

COOLED = "grok-4-fast-non-reasoning"  # the shipped support policy's usual winner
BODY = {"messages": [{"role": "user", "content": "Where is my parcel?"}]}


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("UNHARDCODED_")}
    environ["UNHARDCODED_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "unhardcoded.cli", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def cooled(tmp_path: Path) -> tuple[Path, str]:
    """A store holding one decision made while the support policy's usual winner was cooling down."""
    live = LiveState()
    live.open_circuit(COOLED, live.clock() + 30, failures=5)
    policy = load_policy_file(builtin_policy_dir() / "support.yaml")
    with capture() as tel:
        decision = tel.router(live=live).decide(policy, BODY)
        rebuilt = rebuild_receipts(tel.spans())
    assert decision.selected is not None and decision.selected.model != COOLED
    [receipt] = rebuilt.receipts
    assert receipt.live is not None and receipt.rejected[-1].rule == "live:cooldown"
    assert receipt == Receipt.from_decision(decision)  # rebuilt from the spans: live rejections like static ones
    home = tmp_path / "home"
    with open_store(str(home / "receipts.db")) as store:
        store.put_rebuilt(rebuilt.decisions)
        store.put_catalog(Catalog.builtin())
    return home, decision.request_id


def test_replay_under_a_cooldown_is_the_same_decision_from_the_recorded_snapshot(cooled: tuple[Path, str]) -> None:
    home, request_id = cooled
    result = run(home, "replay", request_id)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SAME decision today" in result.stdout.splitlines()[0]
    doc = json.loads(run(home, "replay", request_id, "--live", "recorded", "--json").stdout)
    assert doc["same"] is True and doc["reproduces"] is True


def test_replay_ignoring_the_live_state_reports_the_difference(cooled: tuple[Path, str]) -> None:
    home, request_id = cooled
    result = run(home, "replay", request_id, "--live", "ignore")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "DIFFERS today" in result.stdout.splitlines()[0]
    assert (
        f"winner    {json.loads(run(home, 'replay', request_id, '--json').stdout)['winner']['recorded']} → {COOLED}"
        in result.stdout
    )
    doc = json.loads(run(home, "replay", request_id, "--live", "ignore", "--json").stdout)
    assert doc["winner"]["today"] == COOLED and doc["reproduces"] is True
    [change] = [c for c in doc["rejections"] if c["model"] == COOLED]
    assert change["recorded"]["rule"] == "live:cooldown" and change["today"] is None
    assert "live state ignored: decided as if nothing had been observed" in doc["notes"]


def test_replay_now_reads_this_process_state(cooled: tuple[Path, str]) -> None:
    home, request_id = cooled
    # A fresh process has observed nothing: today's decision is the one without the cooldown.
    result = run(home, "replay", request_id, "--live", "now")
    assert result.returncode == 1 and "live state: today's, as this process sees it" in result.stdout


def test_a_new_policy_reading_an_unrecorded_live_field_evaluates_it_as_unknown(cooled: tuple[Path, str]) -> None:
    home, request_id = cooled
    with open_store(str(home / "receipts.db"), create=False) as store:
        stored = store.get(request_id)
        assert stored is not None
        receipt = stored.receipt
    doc = load_policy_file(builtin_policy_dir() / "support.yaml").to_document()
    doc["rules"].append({"id": "fast-now", "field": "live.latency_p50_ms", "op": "lte", "value": 1})
    body = json.dumps(doc)
    receipt = receipt.model_copy(update={"policy": receipt.policy.model_copy(update={"fingerprint": _fp(body)})})
    result = replay(receipt, body, Catalog.builtin(), Catalog.builtin())
    assert (
        "live.latency_p50_ms was never recorded on this decision: fast-now evaluated as unknown (not applied)"
        in result.notes
    )
    # Unknown is not applied: the rule rejects nothing, though every catalog latency is over 1 ms.
    assert not any(r.rule == "fast-now" for r in result.now.rejected)


def _fp(body: str) -> str:
    from unhardcoded.policy import Policy

    return Policy.model_validate(json.loads(body)).fingerprint
