"""The query API against its OpenAPI 3.1 document, and the receipt pages in headless Chromium.

The document is validated with openapi-spec-validator, then every JSON answer
of the running processor is validated against the schema the document gives
for that operation and status. The page test renders /r/{id} and /w/{id} in
Debian's chromium and checks the text a support engineer sees; a screenshot is
saved under test-artifacts/. Without chromium the test fails and says so
(scripts/install-test-deps.sh installs it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource

from browser import render
from fixtures import span_layout as L
from processor_fixtures import ARTIFACTS, ProcessorProcess, decisions_with_spans, workflow_with_spans
from unhardcoded.processor import ProcessorSource
from unhardcoded.receipts import Receipt

PB = {"Content-Type": "application/x-protobuf"}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    p = ProcessorProcess(str(tmp / "receipts.db"), "--wait-window", "0.5", log=tmp / "processor.log").start()
    ds, spans = decisions_with_spans(30, seed=51)
    xss, xss_spans = decisions_with_spans(1, seed=52, prefix="<script>alert(1)</script>", hops=1)
    wds, wspans = workflow_with_spans("wf_refund_7", "refund-flow", ["classify", "draft", "review"])
    for batch in (spans, xss_spans, wspans):
        assert httpx.post(p.url + "/v1/traces", content=L.otlp_bytes(batch), headers=PB, timeout=10).status_code == 200
    everything = ds + xss + wds
    assert p.wait_for(lambda: all(p.receipt(d.request_id.replace("/", "%2F")) for d in everything[-5:]), 15)
    assert p.wait_for(lambda: p.get("/receipts", params={"limit": 1000}).json()["count"] == len(everything), 15)
    yield p, ds, xss[0], wds
    p.stop()


@pytest.fixture(scope="module")
def spec(loaded):
    p = loaded[0]
    doc = p.get("/openapi.json").json()
    validate(doc)
    return doc


def check(spec, path: str, status: int, body) -> None:
    schema = spec["paths"][path]["get"]["responses"][str(status)]["content"]["application/json"]["schema"]
    registry = Registry().with_resource(
        "urn:openapi",
        Resource.from_contents(
            spec,
            default_specification=Draft202012Validator.META_SCHEMA
            and __import__("referencing.jsonschema", fromlist=["DRAFT202012"]).DRAFT202012,
        ),
    )
    resolved = {"$ref": "urn:openapi#" + schema["$ref"][1:]} if "$ref" in schema else schema
    Draft202012Validator(resolved, registry=registry).validate(body)


def test_the_openapi_document_is_valid_3_1(spec):
    assert spec["openapi"].startswith("3.1")
    assert {"/receipts/{request_id}", "/receipts", "/workflows/{workflow_id}", "/rollups", "/r/{request_id}"} <= set(
        spec["paths"]
    )


def test_answers_match_the_document(loaded, spec):
    p, ds, _, wds = loaded
    r = p.get(f"/receipts/{ds[0].request_id}")
    check(spec, "/receipts/{request_id}", 200, r.json())
    check(spec, "/receipts/{request_id}", 404, p.get("/receipts/nope").json())
    r = p.get("/receipts", params={"limit": 7, "policy": "support"})
    check(spec, "/receipts", 200, r.json())
    check(spec, "/receipts", 400, p.get("/receipts", params={"limit": "0"}).json())
    check(spec, "/receipts", 400, p.get("/receipts", params={"since": "yesterday-ish"}).json())
    check(spec, "/workflows/{workflow_id}", 200, p.get("/workflows/wf_refund_7").json())
    check(spec, "/workflows/{workflow_id}", 404, p.get("/workflows/nope").json())
    for by in ("policy", "workflow", "model", "client"):
        check(spec, "/rollups", 200, p.get("/rollups", params={"by": by, "since": "3650d"}).json())
    check(spec, "/rollups", 400, p.get("/rollups", params={"by": "colour"}).json())


def test_paging_visits_every_receipt_once(loaded):
    p, ds, xss, wds = loaded
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 8, **({"cursor": cursor} if cursor else {})}
        doc = p.get("/receipts", params=params).json()
        seen += [i["receipt"]["request_id"] for i in doc["items"]]
        pages += 1
        cursor = doc["next_cursor"]
        if not cursor:
            break
        assert doc["links"]["next"].startswith("/receipts?")
    assert sorted(seen) == sorted(d.request_id for d in ds + [xss] + wds)
    assert pages == 5
    assert p.get("/receipts", params={"cursor": "garbage!"}).status_code == 400


def test_filters(loaded):
    p, ds, xss, wds = loaded
    everything = ds + [xss] + wds
    fb = p.get("/receipts", params={"fallback": "true", "limit": 1000}).json()["items"]
    assert fb and all(i["receipt"]["fallback"]["triggered"] for i in fb)
    assert {i["receipt"]["request_id"] for i in fb} >= {d.request_id for d in ds if d.hops}
    triage = p.get("/receipts", params={"policy": "triage", "limit": 1000}).json()["items"]
    assert {i["receipt"]["request_id"] for i in triage} == {
        d.request_id for d in everything if d.policy.name == "triage"
    }
    model = ds[0].answered_by
    by_model = p.get("/receipts", params={"model": model, "limit": 1000}).json()["items"]
    assert ds[0].request_id in {i["receipt"]["request_id"] for i in by_model}
    rows = p.get("/rollups", params={"by": "policy"}).json()["rows"]
    assert sum(r["decisions"] for r in rows) == len(ds) + 1 + 3


def test_the_processor_source_reads_what_the_cli_needs(loaded):
    p, ds, xss, wds = loaded
    source = ProcessorSource(p.url)
    assert source.get(ds[3].request_id) == Receipt.from_decision(ds[3])
    assert source.get("req_missing") is None
    assert [n.request_id for n in source.workflow("wf_refund_7").nodes] == [d.request_id for d in wds]
    support = {r.request_id for r in source.query(policy="support")}
    assert support == {d.request_id for d in ds + [xss] + wds if d.policy.name == "support"}


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href") and value and value.startswith(("http:", "https:", "//")):
                raise AssertionError(f"external asset {value}")


def test_pages_escape_everything_and_load_nothing_from_outside(loaded):
    p, _, xss, _ = loaded
    r = p.get("/receipts", params={"limit": 1000})
    rid = next(
        i["receipt"]["request_id"] for i in r.json()["items"] if i["receipt"]["request_id"].startswith("<script>")
    )
    from urllib.parse import quote

    page = p.get("/r/" + quote(rid, safe="")).text
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    parser = _Text()
    parser.feed(page)
    assert "script" not in parser.tags and "style" in parser.tags


def test_the_receipt_page_in_headless_chromium(loaded, tmp_path):
    p, ds, _, _ = loaded
    d = next(d for d in ds if d.hops)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "receipt-page.png"
    dom = render(f"{p.url}/r/{d.request_id}", shot, tmp_path)
    assert shot.exists() and shot.stat().st_size > 5000
    text = " ".join(dom.split())
    for expected in (
        d.request_id,
        "200 OK",
        d.selected.model,
        d.answered_by,
        "triggered",
        d.policy.fingerprint,
        d.policy.name,
        d.rejected[0].model if d.rejected else d.candidates[0],
    ):
        assert expected in text, expected
    shot = ARTIFACTS / "workflow-page.png"
    dom = render(f"{p.url}/w/wf_refund_7", shot, tmp_path)
    assert "refund-flow" in dom and "classify" in dom and "req_wf_refund_7_2" in dom
    assert shot.exists()


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unhardcoded.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_the_receipt_command_reads_from_a_running_processor(loaded):
    p, ds, _, wds = loaded
    d = ds[3]
    out = _cli("receipt", d.request_id, "--processor", p.url, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == Receipt.from_decision(d).to_json_dict()
    card = _cli("receipt", d.request_id, "--processor", p.url)
    assert card.returncode == 0 and d.request_id in card.stdout and d.policy.fingerprint in card.stdout
    flow = _cli("receipt", "wf_refund_7", "--processor", p.url, "--json")
    assert flow.returncode == 0, flow.stderr
    assert [n["request_id"] for n in json.loads(flow.stdout)["nodes"]] == [w.request_id for w in wds]
    missing = _cli("receipt", "req_nobody_sent", "--processor", p.url)
    assert missing.returncode != 0 and "req_nobody_sent" in missing.stderr
    down = _cli("receipt", d.request_id, "--processor", "http://127.0.0.1:9")
    assert down.returncode == 2 and "cannot reach the processor at http://127.0.0.1:9" in down.stderr


def test_the_receipt_command_sends_the_query_token(tmp_path):
    ds, spans = decisions_with_spans(2, seed=53)
    p = ProcessorProcess(
        str(tmp_path / "receipts.db"),
        "--wait-window",
        "0.5",
        "--query-token-env",
        "UH_TEST_QUERY_TOKEN",
        env={"UH_TEST_QUERY_TOKEN": "q-canary-7f3a"},
        log=tmp_path / "processor.log",
    ).start()
    try:
        assert httpx.post(p.url + "/v1/traces", content=L.otlp_bytes(spans), headers=PB, timeout=10).status_code == 200
        headers = {"Authorization": "Bearer q-canary-7f3a"}
        assert p.wait_for(
            lambda: httpx.get(f"{p.url}/receipts/{ds[0].request_id}", headers=headers, timeout=5).status_code == 200, 15
        )
        refused = _cli("receipt", ds[0].request_id, "--processor", p.url)
        assert (
            refused.returncode == 2
            and "UNHARDCODED_PROCESSOR_TOKEN" in refused.stderr
            and "q-canary" not in refused.stderr
        )
        ok = _cli(
            "receipt",
            ds[0].request_id,
            "--processor",
            p.url,
            "--json",
            env={"UNHARDCODED_PROCESSOR_TOKEN": "q-canary-7f3a"},
        )
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["request_id"] == ds[0].request_id
    finally:
        p.stop()


def test_revisions_and_conflicts_match_the_document_and_a_conflict_is_escaped_on_the_page(loaded, spec):
    """A forged decision for the ``<script>`` request id (which holds a ``/``), answered by a model named like markup."""
    import random
    from urllib.parse import quote

    from processor_fixtures import make_decision

    p, _, xss, _ = loaded
    forged = make_decision(random.Random(53), xss.request_id, called=False)
    forged.answered_by = "<img src=x onerror=alert(2)>"
    tp, exporter = L.provider()
    L.emit_decision(tp.get_tracer("unhardcoded"), forged)
    body = L.otlp_bytes(list(exporter.get_finished_spans()))
    assert httpx.post(p.url + "/v1/traces", content=body, headers=PB, timeout=10).status_code == 200
    rid = quote(xss.request_id, safe="")
    assert p.wait_for(lambda: p.get(f"/receipts/{rid}").json()["conflicts"] == 1, 15), p.tail()
    stored = p.get(f"/receipts/{rid}").json()
    check(spec, "/receipts/{request_id}", 200, stored)
    assert stored["receipt"] == Receipt.from_decision(xss).to_json_dict() and stored["revision"] == 1
    revisions = p.get(stored["links"]["revisions"]).json()
    check(spec, "/receipts/{request_id}/revisions", 200, revisions)
    assert revisions["request_id"] == xss.request_id and [r["revision"] for r in revisions["revisions"]] == [1]
    check(spec, "/receipts/{request_id}/revisions", 404, p.get("/receipts/nope/revisions").json())
    conflicts = p.get(stored["links"]["conflicts"]).json()
    check(spec, "/receipts/{request_id}/conflicts", 200, conflicts)
    assert [c["trace_id"] for c in conflicts["items"]] == [forged.trace_id]
    bad = p.get(stored["links"]["conflicts"], params={"limit": "0"})
    assert bad.status_code == 400
    check(spec, "/receipts/{request_id}/conflicts", 400, bad.json())
    first = p.get("/conflicts", params={"limit": 1}).json()
    check(spec, "/conflicts", 200, first)
    assert first["count"] == 1
    page = p.get(f"/r/{rid}").text
    assert "<img" not in page and "&lt;img src=x onerror=alert(2)&gt;" in page and forged.trace_id in page
    parser = _Text()
    parser.feed(page)
    assert "script" not in parser.tags and "img" not in parser.tags
    source = ProcessorSource(p.url)
    assert [r["revision"] for r in source.revisions(xss.request_id)] == [1]
    assert [c["span_id"] for c in source.conflicts(xss.request_id)] == [forged.span_id]
    assert forged.span_id in {c["span_id"] for c in source.conflicts()}
    assert source.revisions("req_missing") is None
