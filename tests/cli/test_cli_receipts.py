"""`unhardcoded receipt`, `replay` and `rollup`, run as the real command in a subprocess against a real store."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import genai_prices
import jsonschema
import pytest

from fixtures import generate
from unhardcoded.catalog import Catalog, CatalogArchive
from unhardcoded.policy import validate_policy
from unhardcoded.receipts import Receipt, open_store, rebuild_receipts
from unhardcoded.router.engine import CompiledPolicy
from unhardcoded.router.features import RequestFeatures

FIXTURES = Path(__file__).parent.parent / "fixtures"
EXPECTED = json.loads((FIXTURES / generate.EXPECTED).read_text(encoding="utf-8"))
HOPPED, DIRECT = EXPECTED["receipts"]
SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "receipt.schema.json").read_text(encoding="utf-8"))


@pytest.fixture
def home(tmp_path) -> Path:
    """A per-user data dir whose store holds the fixture trace, its policies and the built-in catalog."""
    home = tmp_path / "home"
    rebuilt = rebuild_receipts((FIXTURES / "trace.otlp.pb").read_bytes())
    with open_store(str(home / "receipts.db")) as store:
        store.put_rebuilt(rebuilt.decisions)
        for w in rebuilt.workflows:  # the trace holds the workflow's root span, as a processor would have seen it
            store.put_workflow(w.workflow_id, w.name, w.trace_id, finished=True)
        store.put_catalog(Catalog.builtin())
    return home


def run(
    home: Path | None, *args: str, env: dict[str, str] | None = None, stderr=subprocess.PIPE
) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("UNHARDCODED_")}
    if home is not None:
        environ["UNHARDCODED_HOME"] = str(home)
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "unhardcoded.cli", *args],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        timeout=60,
    )


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# --------------------------------------------------------------------------- receipt


def test_receipt_card(home):
    result = run(home, "receipt", HOPPED["request_id"])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"trace · {HOPPED['request_id']}") and "200 OK" in out.splitlines()[0]
    assert "selected  grok-4-fast-non-reasoning · score 0.6" in out
    assert "reason    tools ✓, over quality floor, price ceiling passed, cheapest survivor" in out
    assert "mistral-small-2603      filtered: no tools [tools]" in out
    assert "deepseek-v4-flash       filtered: below quality floor (0.42 < 0.5) [quality-floor]" in out
    assert "claude-sonnet-4-6       filtered: over price ceiling (15 > 10) [price-ceiling]" in out
    assert "fallback  grok-4-fast-non-reasoning ✗ error → mistral-large-2512 ✓ · triggered, 1 hop" in out
    assert "latency   604 ms" in out
    assert "cost      $0.000734 · ↓92% vs gpt-5.5 baseline ($0.0088)" in out
    assert f"· prices genai-prices {genai_prices.__version__} of 2026-12-06" in out
    assert f"policy    support · fingerprint {HOPPED['policy']['fingerprint']} · sigma-pol/v1" in out


def test_receipt_card_for_a_decision_that_did_not_fall_back(home):
    out = run(home, "receipt", DIRECT["request_id"]).stdout
    assert "fallback  mistral-large-2512 · standby cascade, not triggered this run" in out
    assert "cost      $0.0392 · ↓6% vs gpt-5.5 baseline ($0.0416)" in out


def test_receipt_json_is_the_receipt_and_validates(home):
    result = run(home, "receipt", HOPPED["request_id"], "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc == HOPPED
    jsonschema.validate(doc, SCHEMA, cls=jsonschema.Draft202012Validator)


def test_a_workflow_id_shows_the_workflow_receipt(home):
    result = run(home, "receipt", generate.WORKFLOW_ID)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"workflow · {generate.WORKFLOW_NAME} · {generate.WORKFLOW_ID}")
    assert "node      classify" in result.stdout and "node      answer" in result.stdout
    assert "OPEN" not in result.stdout and "INCOMPLETE" not in result.stdout
    doc = json.loads(run(home, "receipt", generate.WORKFLOW_ID, "--json").stdout)
    assert doc == EXPECTED["workflows"][0]


def test_a_workflow_whose_root_was_not_seen_reads_open(tmp_path):
    home = tmp_path / "home"
    with open_store(str(home / "receipts.db")) as store:  # node receipts only: the workflow's root never came
        store.put_rebuilt(rebuild_receipts((FIXTURES / "trace.otlp.pb").read_bytes()).decisions)
    result = run(home, "receipt", generate.WORKFLOW_ID)
    assert result.returncode == 0, result.stderr
    assert "node      classify" in result.stdout and "node      answer" in result.stdout
    assert "note      OPEN: not finished, its root span not seen yet" in result.stdout
    doc = json.loads(run(home, "receipt", generate.WORKFLOW_ID, "--json").stdout)
    assert doc == {**EXPECTED["workflows"][0], "complete": False}


def test_the_store_can_be_named_by_flag_url_or_environment(home, tmp_path):
    path = home / "receipts.db"
    elsewhere = tmp_path / "elsewhere"
    for args, env in (
        (["--store", str(path)], {}),
        (["--store", f"sqlite:///{path}"], {}),
        ([], {"UNHARDCODED_STORE": f"sqlite:///{path}"}),
        ([], {"UNHARDCODED_STORE": str(path)}),
    ):
        result = run(elsewhere, "receipt", DIRECT["request_id"], *args, env=env)
        assert result.returncode == 0, (args, env, result.stderr)


def test_an_unknown_id_exits_2_with_one_line(home):
    one_line_error(
        run(home, "receipt", "req_unknown"), "no receipt or workflow 'req_unknown'", str(home / "receipts.db")
    )


def test_no_store_yet_exits_2_naming_the_file(tmp_path):
    one_line_error(
        run(tmp_path / "empty-home", "receipt", "req_x"),
        str(tmp_path / "empty-home" / "receipts.db"),
        "no receipt store",
    )
    assert not (tmp_path / "empty-home" / "receipts.db").exists()


def test_a_corrupt_store_exits_2_naming_the_file(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(os.urandom(8192))
    one_line_error(run(tmp_path, "receipt", "req_x", "--store", str(bad)), str(bad), "not a usable receipt store")


def test_help_names_the_default_store(home):
    result = run(home, "receipt", "--help")
    assert result.returncode == 0 and "UNHARDCODED_STORE" in result.stdout
    # argparse wraps the help, breaking a long path anywhere: compare without the whitespace it adds
    assert str(home / "receipts.db") in "".join(result.stdout.split())


def test_receipt_without_an_id_is_a_usage_error(home):
    result = run(home, "receipt")
    assert result.returncode == 2 and "REQUEST_ID" in result.stderr


def test_the_console_script_is_installed_and_runs(home):
    exe = shutil.which("unhardcoded")
    assert exe is not None, "the unhardcoded console script is not on PATH: install the package (scripts/test.sh does)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNHARDCODED_")}
    env["UNHARDCODED_HOME"] = str(home)
    result = subprocess.run(
        [exe, "receipt", DIRECT["request_id"], "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["request_id"] == DIRECT["request_id"]


# --------------------------------------------------------------------------- replay


def _pricier_grok(tmp_path: Path) -> Path:
    """Today's catalog: gemini-3.5-flash now costs more than the support policy's price ceiling allows."""
    doc = Catalog.builtin().to_document()
    for m in doc["models"]:
        if m["id"] == "grok-4-fast-non-reasoning":
            m["price_output_per_mtok"] = 12.0
    path = tmp_path / "today.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_replay_on_the_same_catalog_is_the_same_decision(home):
    result = run(home, "replay", HOPPED["request_id"])
    assert result.returncode == 0, result.stderr
    assert "SAME decision today" in result.stdout.splitlines()[0]
    assert "winner    grok-4-fast-non-reasoning (unchanged)" in result.stdout


def test_replay_on_a_changed_catalog_says_what_changed_and_exits_1(home, tmp_path):
    today = _pricier_grok(tmp_path)
    result = run(home, "replay", HOPPED["request_id"], "--catalog", str(today))
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert "DIFFERS today" in out.splitlines()[0]
    assert "winner    grok-4-fast-non-reasoning → " in out
    assert "rejected  + grok-4-fast-non-reasoning  now filtered: over price ceiling (12 > 10) [price-ceiling]" in out
    assert f"catalog   recorded {HOPPED['catalog_version']} → today {Catalog.from_file(today).version}" in out
    assert "est. cost $0.00044 → " in out

    doc = json.loads(run(home, "replay", HOPPED["request_id"], "--catalog", str(today), "--json").stdout)
    assert doc["same"] is False and doc["reproduces"] is True
    assert doc["winner"]["recorded"] == "grok-4-fast-non-reasoning"
    assert doc["winner"]["today"] != "grok-4-fast-non-reasoning"
    assert [c["model"] for c in doc["rejections"]] == ["grok-4-fast-non-reasoning"]


def test_a_price_change_that_does_not_change_the_route_is_the_same_decision(home, tmp_path):
    doc = Catalog.builtin().to_document()
    for m in doc["models"]:
        if m["id"] == "grok-4-fast-non-reasoning":
            m["price_input_per_mtok"] = 0.21
    path = tmp_path / "today.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    result = run(home, "replay", HOPPED["request_id"], "--catalog", str(path))
    assert result.returncode == 0, result.stdout
    assert "est. cost $0.00044 → $0.000452" in result.stdout


def test_replay_finds_the_recorded_catalog_in_the_archive(tmp_path):
    """A decision made on a catalog the store never kept: the catalog archive has it."""
    home = tmp_path / "home"
    doc = Catalog.builtin().to_document()
    doc["models"] = [m for m in doc["models"] if m["id"] != "gpt-5.5-pro"]
    then = Catalog.from_document(doc)
    CatalogArchive(home / "catalogs").save(then)
    policy = validate_policy(generate.SUPPORT, then)
    d = CompiledPolicy(policy, then).decide(
        RequestFeatures(input_tokens=900, uses_tools=True), request_id="req_archived"
    )
    with open_store(str(home / "receipts.db")) as store:
        store.put(Receipt.from_decision(d), policy_body=policy.canonical)
    result = run(home, "replay", "req_archived")
    assert result.returncode == 0, result.stderr
    assert f"catalog   recorded {then.version} → today {Catalog.builtin().version}" in result.stdout
    # A model added to the catalog since, and rejected, changes the receipt but not the route.
    assert (
        "rejected  + gpt-5.5-pro  new in today's catalog, filtered: over price ceiling (180 > 10) [price-ceiling]"
        in result.stdout
    )
    assert "SAME decision today" in result.stdout


def test_replay_without_the_recorded_catalog_exits_2(tmp_path):
    home = tmp_path / "home"
    doc = Catalog.builtin().to_document()
    doc["models"] = doc["models"][:-1]
    then = Catalog.from_document(doc)
    policy = validate_policy(generate.SUPPORT, then)
    d = CompiledPolicy(policy, then).decide(RequestFeatures(input_tokens=900), request_id="req_lost_catalog")
    with open_store(str(home / "receipts.db")) as store:
        store.put(Receipt.from_decision(d), policy_body=policy.canonical)
    one_line_error(run(home, "replay", "req_lost_catalog"), f"catalog version {then.version}", "cannot be replayed")


def test_replay_bad_input_exits_2_with_one_line(home):
    one_line_error(run(home, "replay", "req_unknown"), "no receipt 'req_unknown'")
    one_line_error(run(home, "replay"), "give a REQUEST_ID to replay, --all, or --since DURATION for the impact report")
    one_line_error(run(home, "replay", "req_x", "--all"), "not both")
    one_line_error(run(home, "replay", "req_x", "--since", "7d"), "--since goes with --all")
    one_line_error(run(home, "replay", "--all", "--since", "last tuesday"), "--since 'last tuesday'")
    one_line_error(run(home, "replay", HOPPED["request_id"], "--catalog", "/nonexistent.yaml"), "/nonexistent.yaml")


def test_replay_all_summarizes_and_exits_1_when_any_differ(home, tmp_path):
    result = run(home, "replay", "--all", "--since", "3650d")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"replayed 2 decisions since \S+: 2 same, 0 differ", result.stdout.strip()), result.stdout
    assert result.stderr == ""  # no progress bar when stderr is not a terminal

    today = _pricier_grok(tmp_path)
    result = run(home, "replay", "--all", "--catalog", str(today))
    assert result.returncode == 1
    assert f"differs   {HOPPED['request_id']}  support  winner grok-4-fast-non-reasoning → " in result.stdout
    assert result.stdout.strip().endswith("replayed 2 decisions: 1 same, 1 differ")
    summary = json.loads(run(home, "replay", "--all", "--catalog", str(today), "--json").stdout)
    assert (summary["replayed"], summary["same"], summary["differ"]) == (2, 1, 1)
    assert [d["request_id"] for d in summary["differing"]] == [HOPPED["request_id"]]

    future = run(home, "replay", "--all", "--since", "2099-01-01")
    assert future.returncode == 0 and "replayed 0 decisions" in future.stdout


def test_replay_all_draws_a_progress_bar_on_a_terminal(home):
    import pty

    leader, follower = pty.openpty()
    try:
        result = run(home, "replay", "--all", stderr=follower)
        os.close(follower)
        follower = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        if follower != -1:
            os.close(follower)
        os.close(leader)
    assert result.returncode == 0
    assert b"replaying [" in drawn and b"2/2" in drawn
    assert "replaying" not in result.stdout


def test_a_replayed_decision_whose_policy_was_not_kept_is_skipped_in_all(home):
    with open_store(str(home / "receipts.db")) as store:
        r = Receipt.model_validate(DIRECT).model_copy(update={"request_id": "req_nopolicy"})
        r = r.model_copy(update={"policy": r.policy.model_copy(update={"fingerprint": "1-1"})})
        store.put(r)
    result = run(home, "replay", "--all")
    assert result.returncode == 0
    assert "1 skipped" in result.stdout and "policy eu-answers (1-1) is not kept" in result.stdout


# --------------------------------------------------------------------------- rollup


def test_rollup_table_by_policy(home):
    result = run(home, "rollup")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["policy", "decisions", "fallback", "failed", "cost", "baseline", "saved", "saved", "%"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["support"][1:3] == ["1", "100.0%"]
    assert rows["eu-answers"][1:3] == ["1", "0.0%"]
    assert rows["total"][1:3] == ["2", "50.0%"]


def test_rollup_json_by_model_and_workflow(home):
    doc = json.loads(run(home, "rollup", "--by", "model", "--json").stdout)
    assert doc["by"] == "model"
    assert {r["key"] for r in doc["rows"]} == {"mistral-large-2512", "claude-opus-4-7"}
    row = next(r for r in doc["rows"] if r["key"] == "mistral-large-2512")
    assert row["cost_usd"] == pytest.approx(HOPPED["cost"]["usd"])
    assert row["baseline_usd"] == pytest.approx(HOPPED["cost"]["baseline_usd"])
    assert row["savings_ratio"] == pytest.approx(HOPPED["cost"]["savings_ratio"])
    workflow = json.loads(run(home, "rollup", "--by", "workflow", "--json").stdout)
    assert [(r["key"], r["decisions"], r["fallbacks"]) for r in workflow["rows"]] == [(generate.WORKFLOW_NAME, 2, 1)]
    assert json.loads(run(home, "rollup", "--since", "1d", "--json").stdout)["rows"] == []


def test_rollup_bad_input_exits_2(home):
    result = run(home, "rollup", "--by", "colour")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    one_line_error(run(home, "rollup", "--since", "soon"), "--since 'soon'")
