"""`unhardcoded replay --since …`: the impact report, run as the real command in a subprocess over a recorded history.

Exit codes (0 with the report, 1 with ``--fail-on-change`` when a decision changes, 2 on bad input), the table, and
``--json`` against its schema (docs/impact.schema.json) and against the report measured in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from impact_history import (
    CATALOG,
    NOW,
    POLICIES,
    catalog_document,
    history_db_fixture,  # noqa: F401  (fixture: history_db)
    history_fixture,  # noqa: F401  (fixture: history)
    triage_document,
)
from unhardcoded.policy import validate_policy
from unhardcoded.receipts import open_store
from unhardcoded.receipts.impact import measure_impact
from unhardcoded.receipts.replay import parse_since
from unhardcoded.receipts.stores import ReceiptQuery

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "impact.schema.json").read_text(encoding="utf-8"))
SINCE = "2026-05-24T12:00:00Z"  # eight days before the history's end: all of it


def run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("UNHARDCODED_")}
    environ["UNHARDCODED_HOME"] = str(tmp_path / "home")
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "unhardcoded.cli", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {
        "catalog": tmp_path / "catalog.json",
        "tight": tmp_path / "triage-tight.json",
        "same": tmp_path / "triage.json",
    }
    out["catalog"].write_text(json.dumps(catalog_document()), encoding="utf-8")
    out["tight"].write_text(json.dumps(triage_document(ceiling=0.35)), encoding="utf-8")
    out["same"].write_text(json.dumps(triage_document()), encoding="utf-8")
    return out


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("unhardcoded: ") and result.stderr.count("\n") == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_the_report_as_a_table_and_as_json(tmp_path, history_db, files):
    args = ["replay", "--since", SINCE, "--policy", str(files["tight"]), "--catalog", str(files["catalog"])]
    table = run(tmp_path, *args, "--store", str(history_db))
    assert table.returncode == 0, table.stderr
    with open_store(str(history_db), create=False) as store:
        expected = measure_impact(
            store, CATALOG, parse_since(SINCE), policy=validate_policy(triage_document(ceiling=0.35), CATALOG)
        )
    moved = expected.changes[0].decisions
    assert f"decisions {expected.decisions} decided again of 2500 in the window:" in table.stdout
    assert f"{moved}  triage  gpt-5.5-nano → mistral-small-4  price-ceiling: over price ceiling (0.4 > 0.35)" in (
        table.stdout
    )
    assert "policy    triage · fingerprint " + expected.policy.fingerprint in table.stdout  # type: ignore[union-attr]

    out = run(tmp_path, *args, "--store", f"sqlite:///{history_db}", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert doc["report"] == "unhardcoded.impact/v1"
    drop = ("until", "catalog")
    assert {k: v for k, v in doc.items() if k not in drop} == {
        k: v for k, v in expected.to_json_dict().items() if k not in drop
    }
    assert doc["catalog"]["version"] == CATALOG.version


def test_fail_on_change_exits_1_only_when_a_decision_changes(tmp_path, history_db, files):
    base = ["replay", "--since", SINCE, "--catalog", str(files["catalog"]), "--store", str(history_db)]
    changed = run(tmp_path, *base, "--policy", str(files["tight"]), "--fail-on-change")
    assert changed.returncode == 1, changed.stderr
    assert "gpt-5.5-nano → mistral-small-4" in changed.stdout
    assert run(tmp_path, *base, "--policy", str(files["tight"])).returncode == 0  # without the flag: 0
    same = run(tmp_path, *base, "--policy", str(files["same"]), "--fail-on-change", "--json")
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["differ"] == 0
    # Each decision under its own recorded policy, on the catalog it was made on: nothing changes either.
    own = run(tmp_path, *base, "--fail-on-change", "--json")
    assert own.returncode == 0, own.stderr
    assert (json.loads(own.stdout)["decisions"], json.loads(own.stdout)["policy"]) == (2500, None)


def test_since_takes_durations_and_iso_times(tmp_path, history_db, files):
    base = ["replay", "--catalog", str(files["catalog"]), "--store", str(history_db), "--json"]
    everything = json.loads(run(tmp_path, *base, "--since", "3650d").stdout)
    assert everything["decisions"] == 2500
    day = (NOW.replace(hour=0, minute=0)).strftime("%Y-%m-%d")  # the history's last half day
    last = json.loads(run(tmp_path, *base, "--since", day).stdout)
    with open_store(str(history_db), create=False) as store:
        assert last["decisions"] == store.count(ReceiptQuery(since=day, limit=None)) > 0
    assert last["decisions"] < 2500
    assert json.loads(run(tmp_path, *base, "--since", "30m").stdout)["decisions"] == 0  # the history is older


def test_bad_flags_and_files_exit_2_with_one_line(tmp_path, history_db, files):
    store = ["--store", str(history_db)]
    one_line_error(run(tmp_path, "replay", "--since", "yesterday", *store), "--since 'yesterday'")
    one_line_error(run(tmp_path, "replay", *store), "give a REQUEST_ID to replay, --all, or --since")
    one_line_error(
        run(tmp_path, "replay", "--since", "7d", "--policy", str(tmp_path / "nope.yaml"), *store), "nope.yaml"
    )
    one_line_error(run(tmp_path, "replay", "req_x", "--policy", str(files["tight"]), *store), "--policy: only for")
    one_line_error(run(tmp_path, "replay", "--all", "--fail-on-change", *store), "--fail-on-change: only for")
    bad_policy = tmp_path / "bad.json"
    bad_policy.write_text(json.dumps(dict(triage_document(), rank={"by": "colour"})), encoding="utf-8")
    one_line_error(
        run(
            tmp_path, "replay", "--since", "7d", "--policy", str(bad_policy), "--catalog", str(files["catalog"]), *store
        ),
        "bad.json",
        "rank.by",
    )
    bad_catalog = tmp_path / "bad-catalog.json"
    bad_catalog.write_text(json.dumps({"schema": "unhardcoded-catalog/v1", "models": [{"id": "x"}]}), encoding="utf-8")
    one_line_error(
        run(tmp_path, "replay", "--since", "7d", "--catalog", str(bad_catalog), *store),
        "models[0].provider: field required",
    )
    one_line_error(run(tmp_path, "replay", "--since", "7d", "--store", str(tmp_path / "none.db")), "none.db")
    both = run(tmp_path, "replay", "--since", "7d", *store, "--processor", "http://127.0.0.1:9")
    one_line_error(both, "not allowed with argument")
    down = run(tmp_path, "replay", "--since", "7d", "--processor", "http://127.0.0.1:9")
    one_line_error(down, "cannot reach the processor at http://127.0.0.1:9")


def test_the_recorded_policies_are_the_default_and_a_named_policy_scopes_the_report(tmp_path, history_db, files):
    assert POLICIES["triage"].fingerprint == validate_policy(triage_document(), CATALOG).fingerprint
    doc = json.loads(
        run(
            tmp_path,
            "replay",
            "--since",
            SINCE,
            "--policy",
            str(files["same"]),
            "--catalog",
            str(files["catalog"]),
            "--store",
            str(history_db),
            "--json",
        ).stdout
    )
    assert [r["policy"] for r in doc["by_policy"]] == ["triage"]
    assert doc["in_window"] == 2500 and doc["decisions"] == doc["kept"] < 2500


def test_demo_history_records_requests_the_report_decides_again(tmp_path):
    db = tmp_path / "demo.db"
    recorded = run(tmp_path, "demo", "--history", "25", "--store", str(db))
    assert recorded.returncode == 0, recorded.stderr
    assert recorded.stdout.strip() == f"recorded 25 demo requests in {db}, dated over the last 7 days"
    doc = json.loads(run(tmp_path, "replay", "--since", "8d", "--store", str(db), "--json").stdout)
    assert (doc["decisions"], doc["kept"], doc["cost"]["priced"]) == (25, 25, 25)
    assert {r["policy"] for r in doc["by_policy"]} == {"support", "triage"}
    one_line_error(run(tmp_path, "demo", "--history", "0", "--store", str(db)), "--history 0")
    one_line_error(run(tmp_path, "demo", "--history", "3", "--json", "--store", str(db)), "--json")
