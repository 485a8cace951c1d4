"""The `fields`, `rank` and `fingerprint` commands, run as the real `unhardcoded` program in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from unhardcoded.catalog import Catalog
from unhardcoded.policy import load_policy_file
from unhardcoded.router import Router

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SUPPORT = EXAMPLES / "policies" / "support.yaml"
CUSTOM_CATALOG = EXAMPLES / "catalog.yaml"
TOOLS_REQUEST = EXAMPLES / "requests" / "tools.json"
DEFAULT_PROMPT = "Hello! Summarize our refund policy in two sentences."


def command() -> list[str]:
    beside = Path(sys.executable).parent / "unhardcoded"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("unhardcoded")
    return (
        [found] if found else [sys.executable, "-c", "import sys; from unhardcoded.cli import main; sys.exit(main())"]
    )


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


_RUNS: dict[tuple, Run] = {}


def _key(args: tuple, stdin: str | None, env: dict[str, str] | None) -> tuple:
    return (tuple(map(str, args)), stdin, tuple(sorted((env or {}).items())))


def _execute(args: tuple, stdin: str | None, env: dict[str, str] | None) -> Run:
    proc = subprocess.run(
        [*command(), *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def run(*args: str | Path, stdin: str | None = None, env: dict[str, str] | None = None) -> Run:
    """The program's exit code and output; commands prefetched by `files` were already run, in parallel."""
    key = _key(args, stdin, env)
    if key not in _RUNS:
        _RUNS[key] = _execute(args, stdin, env)
    return _RUNS[key]


IMAGE_BODY = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Input files for the commands; every command of this module is started here at once, to keep the suite fast."""
    d = tmp_path_factory.mktemp("cli")
    paths = {
        name: d / name
        for name in (
            "bad.yaml",
            "op.yaml",
            "missing.yaml",
            "none.json",
            "request.json",
            "empty.json",
            "catalog.yaml",
            "audited.yaml",
            "support.json",
        )
    }
    paths["bad.yaml"].write_text("schema: sigma-pol/v1\nname: t\nrules:\n  - id: a\n   field: x\n")
    paths["op.yaml"].write_text(SUPPORT.read_text().replace("op: lte", "op: gte2"))
    paths["request.json"].write_text('{"messages": [\n  {"role": "user", "content": "hi"},\n]}')
    paths["empty.json"].write_text('{"model": "gpt-5.5"}')
    paths["catalog.yaml"].write_text(
        "schema: unhardcoded-catalog/v1\nmodels:\n  - {id: a, provider: p, price_input_per_mtok: cheap, price_output_per_mtok: 1}\n"
    )
    paths["audited.yaml"].write_text(
        "schema: sigma-pol/v1\nname: audited\nrules:\n  - {id: soc2, field: soc2, op: eq, value: true}\n"
    )
    paths["support.json"].write_text(json.dumps(load_policy_file(SUPPORT).to_document(), indent=3))
    p = paths
    planned: list[tuple[tuple, str | None, dict[str, str] | None]] = [
        (("fields",), None, None),
        (("fields", "--json"), None, None),
        (("fields", "--catalog", CUSTOM_CATALOG, "--json"), None, None),
        (("fields", "--json"), None, {"UNHARDCODED_CATALOG": str(CUSTOM_CATALOG)}),
        (("rank", "--policy", SUPPORT), None, None),
        (("rank", "--policy", SUPPORT, "--json"), None, None),
        (("rank", "--policy", SUPPORT, "--catalog", CUSTOM_CATALOG, "--request", TOOLS_REQUEST, "--json"), None, None),
        (
            ("rank", "--policy", EXAMPLES / "policies" / "eu-only.yaml", "--request", "-", "--json"),
            json.dumps(IMAGE_BODY),
            None,
        ),
        (("rank", "--policy", p["audited.yaml"], "--catalog", CUSTOM_CATALOG, "--json"), None, None),
        (("rank", "--policy", p["audited.yaml"]), None, None),
        (("fingerprint", SUPPORT), None, None),
        (("fingerprint", p["support.json"]), None, None),
        (("fingerprint", SUPPORT, "--json"), None, None),
        (("rank", "--policy", p["bad.yaml"]), None, None),
        (("rank", "--policy", p["op.yaml"]), None, None),
        (("rank", "--policy", p["missing.yaml"]), None, None),
        (("rank", "--policy", SUPPORT, "--request", p["none.json"]), None, None),
        (("rank", "--policy", SUPPORT, "--request", p["request.json"]), None, None),
        (("rank", "--policy", SUPPORT, "--request", p["empty.json"]), None, None),
        (("rank", "--policy", SUPPORT, "--catalog", p["catalog.yaml"]), None, None),
        (("rank",), None, None),
        (("no-such-command",), None, None),
    ]
    with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
        futures = {_key(*job): pool.submit(_execute, *job) for job in planned}
        for key, future in futures.items():
            _RUNS[key] = future.result()
    return paths


def assert_bad_input(result: Run, *needles: str) -> str:
    assert result.code == 2, result
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("unhardcoded: ")
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


# -- fields -------------------------------------------------------------------------------------


def test_fields_lists_the_builtin_fields(files: dict[str, Path]):
    result = run("fields")
    assert result.code == 0 and result.err == ""
    lines = result.out.splitlines()
    assert lines[0].split()[:2] == ["id", "string"]
    assert any(line.split()[:2] == ["regions", "string[]"] for line in lines)
    assert any(line.startswith("price_input_per_mtok") and line.endswith("(USD/1M tokens)") for line in lines)
    builtin = Catalog.builtin()
    assert lines[-1] == f"catalog <built-in catalog> · version {builtin.version} · 35 models"
    assert "[custom]" not in result.out


def test_fields_json(files: dict[str, Path]):
    result = run("fields", "--json")
    assert result.code == 0 and result.err == ""
    data = result.json()
    assert data["catalog_version"] == Catalog.builtin().version
    assert [f["name"] for f in data["fields"]] == list(Catalog.builtin().fields)
    context = next(f for f in data["fields"] if f["name"] == "context_window")
    assert context == {
        "name": "context_window",
        "type": "integer",
        "unit": "tokens",
        "builtin": True,
        "description": "Maximum input plus output tokens",
    }


def test_fields_lists_the_live_fields_with_their_unobserved_values():
    data = run("fields", "--json").json()
    live = {f["name"]: f for f in data["fields"] if f.get("live")}
    assert live["live.latency_p50_ms"] == {
        "name": "live.latency_p50_ms",
        "type": "number",
        "unit": "ms",
        "builtin": False,
        "description": "Median latency of the model's last 64 successful calls",
        "live": True,
        "unobserved": "the catalog's latency_p50_ms (unset if the catalog has none)",
    }
    assert set(live) >= {"live.error_rate", "live.cooldown", "live.ratelimit_remaining_tokens", "live.in_flight"}


def test_fields_with_a_custom_catalog(files: dict[str, Path]):
    result = run("fields", "--catalog", CUSTOM_CATALOG, "--json")
    assert result.code == 0 and result.err == ""
    data = result.json()
    assert data["catalog_version"] == Catalog.from_file(CUSTOM_CATALOG).version
    custom = {f["name"]: f for f in data["fields"] if not f["builtin"] and not f.get("live")}
    assert custom == {
        "soc2": {
            "name": "soc2",
            "type": "bool",
            "unit": None,
            "builtin": False,
            "description": "SOC 2 Type II report on file",
        },
        "data_retention_days": {
            "name": "data_retention_days",
            "type": "integer",
            "unit": "days",
            "builtin": False,
            "description": "How long the provider keeps prompts",
        },
    }


def test_fields_reads_the_catalog_from_the_environment(files: dict[str, Path]):
    result = run("fields", "--json", env={"UNHARDCODED_CATALOG": str(CUSTOM_CATALOG)})
    assert result.code == 0
    assert "soc2" in [f["name"] for f in result.json()["fields"]]


# -- rank ---------------------------------------------------------------------------------------


def test_rank_prints_the_receipt_card(files: dict[str, Path]):
    result = run("rank", "--policy", SUPPORT)
    assert result.code == 0 and result.err == ""
    lines = result.out.splitlines()
    assert lines[0].startswith("trace · req_") and lines[0].endswith("DRY RUN")
    assert "selected  grok-4-fast-non-reasoning · score 0.6" in lines
    assert "reason    tools ✓, over quality floor, price ceiling passed, cheapest survivor" in lines
    assert any(
        line.startswith("rejected  mistral-small-2603") and "filtered: no tools [tools]" in line for line in lines
    )
    assert f"policy    support · fingerprint {load_policy_file(SUPPORT).fingerprint} · sigma-pol/v1" in lines


def test_rank_json_is_a_receipt_with_no_attempts(files: dict[str, Path]):
    result = run("rank", "--policy", SUPPORT, "--json")
    assert result.code == 0 and result.err == ""
    receipt = result.json()
    policy = load_policy_file(SUPPORT)
    expected = Router().decide(policy, {"messages": [{"role": "user", "content": DEFAULT_PROMPT}]})
    assert receipt["receipt"] == "unhardcoded.receipt/v1"
    assert receipt["request_id"].startswith("req_")
    assert receipt["policy"] == {"name": "support", "fingerprint": policy.fingerprint, "schema": "sigma-pol/v1"}
    assert receipt["catalog_version"] == Catalog.builtin().version
    assert receipt["attempts"] == []
    assert receipt["answered_by"] is None
    assert receipt["outcome"] == "dry_run"
    assert receipt["selected"] == {
        "model": "grok-4-fast-non-reasoning",
        "score": 0.6,
        "reason": "tools ✓, over quality floor, price ceiling passed, cheapest survivor",
    }
    assert receipt["candidates"] == expected.candidates
    assert receipt["fallback"] == {"chain": ["mistral-large-2512", "gpt-4.1"], "triggered": False, "hops": []}
    assert len(receipt["rejected"]) == 20
    flash = next(r for r in receipt["rejected"] if r["model"] == "deepseek-v4-flash")
    assert flash == {
        "model": "deepseek-v4-flash",
        "rule": "quality-floor",
        "field": "bench_intelligence",
        "op": "gte",
        "threshold": 0.5,
        "observed": 0.42,
        "message": "below quality floor (0.42 < 0.5)",
    }
    assert receipt["cost"]["baseline_model"] == "gpt-5.5"
    assert receipt["cost"]["usd"] == pytest.approx(expected.cost.usd, rel=1e-12)
    assert receipt["cost"]["baseline_usd"] == pytest.approx(expected.cost.baseline_usd, rel=1e-12)
    assert receipt["cost"]["savings_ratio"] == pytest.approx(
        1 - receipt["cost"]["usd"] / receipt["cost"]["baseline_usd"], rel=1e-12
    )
    assert receipt["workflow"] is None
    assert receipt["complete"] is True


def test_rank_with_a_request_and_a_custom_catalog(files: dict[str, Path]):
    result = run("rank", "--policy", SUPPORT, "--catalog", CUSTOM_CATALOG, "--request", TOOLS_REQUEST, "--json")
    assert result.code == 0 and result.err == ""
    receipt = result.json()
    assert receipt["catalog_version"] == Catalog.from_file(CUSTOM_CATALOG).version
    assert receipt["features"]["uses_tools"] is True
    assert receipt["features"]["max_tokens"] == 400
    assert receipt["selected"]["model"] == "mistral-large-2512"
    assert {r["model"]: r["rule"] for r in receipt["rejected"]} == {
        "gpt-5.5": "price-ceiling",
        "claude-sonnet-4-6": "price-ceiling",
        "mistral-small-2603": "tools",
        "deepseek-v4-flash": "quality-floor",
    }
    # Prices by reference: the overridden output price, the others genai-prices'.
    assert receipt["billing"]["prices"]["source"] == "genai-prices"


def test_rank_reads_the_request_from_stdin(files: dict[str, Path]):
    result = run(
        "rank",
        "--policy",
        EXAMPLES / "policies" / "eu-only.yaml",
        "--request",
        "-",
        "--json",
        stdin=json.dumps(IMAGE_BODY),
    )
    assert result.code == 0, result.err
    receipt = result.json()
    assert receipt["features"]["has_images"] is True
    assert receipt["policy"]["name"] == "eu-only"
    # No vision: the request rule rejects it, and it leaves the standby cascade too.
    vision = next(r for r in receipt["rejected"] if r["model"] == "mistral-large-2512")
    assert (vision["rule"], vision["message"]) == ("request:vision", "no vision")
    assert "mistral-large-2512" not in receipt["fallback"]["chain"]
    assert receipt["fallback"]["chain"] == ["claude-sonnet-4-6"]


def test_rank_a_custom_field_policy_needs_its_catalog(files: dict[str, Path]):
    policy = files["audited.yaml"]
    ok = run("rank", "--policy", policy, "--catalog", CUSTOM_CATALOG, "--json")
    assert ok.code == 0
    receipt = ok.json()
    assert receipt["selected"]["model"] == "mistral-large-2512"
    assert {r["model"]: r["message"] for r in receipt["rejected"]} == {
        "mistral-small-2603": "no soc2",
        "deepseek-v4-flash": "soc2 not set in the catalog (soc2)",
    }
    line = assert_bad_input(
        run("rank", "--policy", policy), "rules[0].field: unknown field 'soc2'", "unhardcoded fields"
    )
    assert line.startswith(f"unhardcoded: {policy}: ")


# -- fingerprint --------------------------------------------------------------------------------


def test_fingerprint_equals_the_library_value(files: dict[str, Path]):
    expected = load_policy_file(SUPPORT).fingerprint
    result = run("fingerprint", SUPPORT)
    assert (result.code, result.out, result.err) == (0, expected + "\n", "")
    assert run("fingerprint", files["support.json"]).out == expected + "\n"


def test_fingerprint_json(files: dict[str, Path]):
    policy = load_policy_file(SUPPORT)
    result = run("fingerprint", SUPPORT, "--json")
    assert result.code == 0
    assert result.json() == {
        "name": "support",
        "fingerprint": policy.fingerprint,
        "schema": "sigma-pol/v1",
        "canonical": policy.canonical,
    }


# -- bad input: exit 2, one line on stderr, nothing on stdout -------------------------------------


def test_bad_yaml(files: dict[str, Path]):
    bad = files["bad.yaml"]
    assert_bad_input(run("rank", "--policy", bad), str(bad), "line 5", "invalid YAML")


def test_bad_op(files: dict[str, Path]):
    bad = files["op.yaml"]
    line = assert_bad_input(run("rank", "--policy", bad))
    assert line == (
        f"unhardcoded: {bad}: rules[2].op: 'gte2' is not one of eq, ne, lt, lte, gt, gte, in, not_in, "
        "contains, intersects"
    )


def test_missing_files(files: dict[str, Path]):
    missing = files["missing.yaml"]
    assert assert_bad_input(run("rank", "--policy", missing)) == f"unhardcoded: {missing}: no such file"
    assert_bad_input(run("rank", "--policy", SUPPORT, "--request", files["none.json"]), "none.json: cannot read")


def test_bad_request_json(files: dict[str, Path]):
    bad = files["request.json"]
    assert assert_bad_input(run("rank", "--policy", SUPPORT, "--request", bad)) == (
        f"unhardcoded: {bad}: line 3: invalid JSON: Expecting value"
    )
    not_chat = files["empty.json"]
    assert assert_bad_input(run("rank", "--policy", SUPPORT, "--request", not_chat)) == (
        "unhardcoded: messages: must be a non-empty array of chat messages"
    )


def test_bad_catalog(files: dict[str, Path]):
    bad = files["catalog.yaml"]
    assert_bad_input(
        run("rank", "--policy", SUPPORT, "--catalog", bad),
        "models[0].price_input_per_mtok: expected number, got 'cheap'",
    )


def test_usage_errors_are_one_line_too(files: dict[str, Path]):
    assert_bad_input(run("rank"), "--policy")
    assert_bad_input(run("no-such-command"), "no-such-command")


# The program imports what a command runs only when that command runs: building the parser (for --help, or
# for `fingerprint`) must not load the proxy, the processor or their servers.
# The OpenTelemetry SDK too: with the router no longer importing telemetry, only a command that records loads it.
SERVICE_MODULES = (
    "starlette",
    "uvicorn",
    "grpc",
    "opentelemetry.sdk",
    "unhardcoded.server",
    "unhardcoded.processor",
    "unhardcoded.telemetry",
    "cryptography",  # only a command that signs or verifies loads it
)


@pytest.mark.parametrize("args", [["--help"], ["fingerprint", str(SUPPORT)]], ids=["help", "fingerprint"])
def test_commands_do_not_load_the_services(args: list[str]):
    probe = (
        "import contextlib, io, json, sys\n"
        "from unhardcoded.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        code = main(sys.argv[1:])\n"
        "    except SystemExit as exc:\n"
        "        code = exc.code\n"
        "print(json.dumps({'code': code, 'modules': sorted(sys.modules)}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["code"] == 0
    loaded = [m for m in result["modules"] if m.split(".")[0] in SERVICE_MODULES or m.startswith(SERVICE_MODULES)]
    assert loaded == []
