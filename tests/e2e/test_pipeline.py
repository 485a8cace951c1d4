"""The whole pipeline on real backends: app -> Collector (tail sampling, span metrics) -> Jaeger + Tempo.

One module-scoped stack (Jaeger, Tempo, otelcol-unhardcoded on free loopback
ports, data in tmp dirs, always stopped in teardown). `unhardcoded demo`
exports its workflow there; a sender pushes 50 plain and 5 fallback decisions.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import urllib.parse
from contextlib import ExitStack, redirect_stdout
from pathlib import Path

import pytest

from unhardcoded.cli import main as cli_main
from unhardcoded.receipts.backends import JaegerSource, TempoSource

from .infra import http_get, start_collector, start_jaeger, start_processor, start_tempo, wait_for

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
SENDER_SERVICE = "e2e-decisions"
PLAIN, FALLBACK = 50, 5


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e-stack")
    with ExitStack() as stack:
        jaeger, j = start_jaeger(tmp)
        stack.callback(jaeger.stop)
        tempo, t = start_tempo(tmp)
        stack.callback(tempo.stop)
        processor, pr = start_processor(tmp)
        stack.callback(processor.stop)
        collector, c = start_collector(
            tmp, j["otlp_grpc"], t["otlp_grpc"], extra_env={"UNHARDCODED_PROCESSOR_ENDPOINT": pr["http"]}
        )
        stack.callback(collector.stop)
        yield {
            "jaeger": j["query"],
            "tempo": t["http"],
            "processor": pr["http"],
            "collector": c,
            "tmp": tmp,
            "logs": {"jaeger": jaeger, "tempo": tempo, "otelcol": collector},
        }


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def demo(stack):
    """`unhardcoded demo --json` exporting to the Collector; receipts also stored under its own UNHARDCODED_HOME."""
    home = stack["tmp"] / "demo-home"
    home.mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "unhardcoded.cli", "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(UNHARDCODED_HOME=str(home), OTEL_EXPORTER_OTLP_ENDPOINT=stack["collector"]["otlp_grpc"]),
    )
    assert r.returncode == 0, r.stderr
    workflow = json.loads(r.stdout)
    return {"home": home, "workflow": workflow, "request_ids": [n["request_id"] for n in workflow["nodes"]]}


@pytest.fixture(scope="module")
def sent(stack):
    r = subprocess.run(
        [
            sys.executable,
            str(HERE / "send_decisions.py"),
            "--endpoint",
            stack["collector"]["otlp_grpc"],
            "--service",
            SENDER_SERVICE,
            "--plain",
            str(PLAIN),
            "--fallback",
            str(FALLBACK),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _cli_json(*argv: str) -> dict:
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = cli_main(["receipt", *argv, "--json"])
    assert rc == 0
    return json.loads(buf.getvalue())


def _tempo_trace_ids(tempo: str, traceql: str) -> set[str]:
    now = int(time.time())
    q = urllib.parse.urlencode({"q": traceql, "limit": 1000, "start": now - 3600, "end": now + 60})
    status, body = http_get(f"{tempo}/api/search?{q}", timeout=10)
    assert status == 200, body
    return {t["traceID"].rjust(32, "0") for t in json.loads(body).get("traces") or []}


def test_demo_receipt_is_the_same_from_jaeger_tempo_and_the_store(stack, demo, monkeypatch):
    monkeypatch.setenv("UNHARDCODED_HOME", str(demo["home"]))
    ids = demo["request_ids"]
    assert len(ids) == 5
    # the demo trace holds a fallback, so tail sampling keeps it whole; wait for the last node in both backends
    wait_for("the demo trace in Jaeger", lambda: JaegerSource(stack["jaeger"]).fetch_request(ids[-1]), timeout=30)
    wait_for("the demo trace in Tempo", lambda: TempoSource(stack["tempo"]).fetch_request(ids[-1]), timeout=30)
    fallbacks = 0
    for rid in ids:
        stored = _cli_json(rid)
        from_jaeger = _cli_json(rid, "--jaeger", stack["jaeger"])
        from_tempo = _cli_json(rid, "--tempo", stack["tempo"])
        assert from_jaeger == stored, rid
        assert from_tempo == stored, rid
        assert stored["complete"] is True
        fallbacks += stored["fallback"]["triggered"]
    assert fallbacks == 1  # lookup-order falls back in the demo
    # the whole workflow too
    wf_id = demo["workflow"]["workflow_id"]
    stored_wf = _cli_json(wf_id)
    assert _cli_json(wf_id, "--jaeger", stack["jaeger"]) == stored_wf
    assert _cli_json(wf_id, "--tempo", stack["tempo"]) == stored_wf
    assert stored_wf["complete"] is True  # the root span was seen, every node receipt is complete


def test_the_receipts_processor_behind_the_collector_gets_every_decision(stack, demo, sent, monkeypatch):
    """otelcol.yaml's traces/receipts pipeline sends every span, unsampled, to the processor."""

    def processor_receipt(rid: str):
        status, body = http_get(f"{stack['processor']}/receipts/{rid}")
        return json.loads(body)["receipt"] if status == 200 else None

    monkeypatch.setenv("UNHARDCODED_HOME", str(demo["home"]))
    for rid in demo["request_ids"]:
        got = wait_for(f"{rid} in the processor", lambda: processor_receipt(rid), timeout=30)
        assert got == _cli_json(rid)

    def processor_workflow(workflow_id: str):
        status, body = http_get(f"{stack['processor']}/workflows/{workflow_id}")
        doc = json.loads(body)["workflow"] if status == 200 else None
        return doc if doc is not None and doc["complete"] else None

    # the workflow is finished once its root span is in, after its nodes: the same as the demo's own store has it
    wf_id = demo["workflow"]["workflow_id"]
    assert wait_for(
        f"workflow {wf_id} finished in the processor", lambda: processor_workflow(wf_id), timeout=30
    ) == _cli_json(wf_id)
    # plain decisions that tail sampling dropped from Jaeger/Tempo still have receipts
    for d in sent["plain"] + sent["fallback"]:
        got = wait_for(f"{d['request_id']} in the processor", lambda: processor_receipt(d["request_id"]), timeout=30)
        assert got["trace_id"] == d["trace_id"] and got["complete"] is True


def test_unknown_request_is_not_found_in_either_backend(stack, capsys):
    for flag, url in (("--jaeger", stack["jaeger"]), ("--tempo", stack["tempo"])):
        assert cli_main(["receipt", "req_0000000000000000", flag, url]) == 2
        assert "no receipt or workflow" in capsys.readouterr().err


def _jaeger_request_ids(jaeger: str) -> set[str]:
    q = urllib.parse.urlencode({"service": SENDER_SERVICE, "limit": 1000, "lookback": "1h"})
    status, body = http_get(f"{jaeger}/api/traces?{q}", timeout=10)
    assert status == 200, body
    found = set()
    for trace in json.loads(body)["data"]:
        for span in trace["spans"]:
            for tag in span.get("tags", []):
                if tag["key"] == "unhardcoded.request.id":
                    found.add(tag["value"])
    return found


def test_tail_sampling_keeps_every_fallback_and_drops_most_plain_decisions(stack, sent):
    fallback_ids = {d["request_id"] for d in sent["fallback"]}
    plain_ids = {d["request_id"] for d in sent["plain"]}
    assert len(fallback_ids) == FALLBACK and len(plain_ids) == PLAIN
    found = wait_for(
        "every fallback decision in Jaeger",
        lambda: (lambda f: f if fallback_ids <= f else None)(_jaeger_request_ids(stack["jaeger"])),
        timeout=40,
    )
    time.sleep(3)  # decision_wait is 2s: everything sent is decided by now
    found = _jaeger_request_ids(stack["jaeger"])
    assert fallback_ids <= found
    kept_plain = plain_ids & found
    # 10% probabilistic: expect ~5 of 50; P(>= 20 kept) is negligible
    assert len(kept_plain) < 20, f"{len(kept_plain)} of {PLAIN} plain decisions kept"
    # Tempo got the same sample
    expected = {d["trace_id"] for d in sent["fallback"]}
    query = '{ resource.service.name = "%s" && span."unhardcoded.fallback.triggered" = true }' % SENDER_SERVICE
    assert wait_for(
        "the fallback traces in Tempo", lambda: _tempo_trace_ids(stack["tempo"], query) >= expected, timeout=30
    )
    assert _tempo_trace_ids(stack["tempo"], query) == expected


def test_traceql_finds_exactly_the_fallback_traces(stack, demo, sent):
    expected = {d["trace_id"] for d in sent["fallback"]} | {demo["workflow"]["trace_id"]}
    query = '{ span."unhardcoded.fallback.triggered" = true }'
    got = wait_for(
        "the fallback traces in Tempo",
        lambda: (lambda s: s if s >= expected else None)(_tempo_trace_ids(stack["tempo"], query)),
        timeout=40,
    )
    assert got == expected
    # and no plain decision matches the negation's complement
    plain_traces = {d["trace_id"] for d in sent["plain"]}
    assert not (got & plain_traces)


def test_span_metrics_count_every_decision_before_sampling(stack, sent):
    def calls() -> dict[str, float]:
        status, body = http_get(stack["collector"]["metrics"])
        counts = {"true": 0.0, "false": 0.0}
        for line in body.decode().splitlines():
            if (
                line.startswith("traces_span_metrics_calls_total{")
                and f'service_name="{SENDER_SERVICE}"' in line
                and 'span_name="route triage"' in line
            ):
                flag = line.split('unhardcoded_fallback_triggered="')[1].split('"')[0]
                counts[flag] += float(line.rsplit(" ", 1)[1])
        return counts

    expected = {"true": FALLBACK, "false": PLAIN + 1}  # + the sender's probe decision
    try:
        wait_for("span metrics counting every decision", lambda: calls() == expected, timeout=30)
    finally:
        assert calls() == expected
    for name in (
        "unhardcoded_decisions_total",
        "unhardcoded_fallbacks_total",
        "unhardcoded_cost_USD_total",
        "unhardcoded_cost_baseline_USD_total",
    ):
        assert wait_for(name, lambda: name in http_get(stack["collector"]["metrics"])[1].decode(), timeout=15)
