"""``POST /x/impact`` on the receipts processor (the real `unhardcoded processor` process on loopback) over a store
holding a recorded history of demo decisions: answers validated against the processor's OpenAPI document, bad bodies
400 naming the field, the query token respected, and `replay --since --processor URL` printing the same report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from impact_history import (
    CATALOG,
    POLICIES,
    catalog_document,
    history_db_fixture,  # noqa: F401  (fixture: history_db)
    history_fixture,  # noqa: F401  (fixture: history)
    triage_document,
)
from processor_fixtures import ProcessorProcess
from unhardcoded.policy import validate_policy
from unhardcoded.receipts import open_store
from unhardcoded.receipts.impact import measure_impact
from unhardcoded.receipts.replay import parse_since

SINCE = "2026-05-24T12:00:00Z"
TOKEN = "q-canary-impact-5e6f"


@pytest.fixture
def processor(history_db, tmp_path):
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(catalog_document()), encoding="utf-8")
    p = ProcessorProcess(
        str(history_db),
        "--catalog",
        str(catalog),
        "--query-token-env",
        "UH_TEST_IMPACT_TOKEN",
        env={"UH_TEST_IMPACT_TOKEN": TOKEN},
        log=tmp_path / "processor.log",
    ).start()
    yield p
    p.stop()


def post(p: ProcessorProcess, body, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(p.url + "/x/impact", json=body, headers=headers, timeout=120)


def check(spec: dict, status: int, body: dict) -> None:
    schema = spec["paths"]["/x/impact"]["post"]["responses"][str(status)]["content"]["application/json"]["schema"]
    registry = Registry().with_resource("urn:openapi", Resource.from_contents(spec, default_specification=DRAFT202012))
    Draft202012Validator({"$ref": "urn:openapi#" + schema["$ref"][1:]}, registry=registry).validate(body)


def without_until(doc: dict) -> dict:
    """The report without the end of its window (now, when it was measured) and where its catalog was read from."""
    return {k: v if k != "catalog" else v["version"] for k, v in doc.items() if k != "until"}


def test_answers_match_the_document_and_the_report_measured_in_process(processor, history_db):
    spec = httpx.get(processor.url + "/openapi.json", timeout=10).json()
    validate(spec)
    assert spec["paths"]["/x/impact"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ImpactRequest"
    }
    tight = triage_document(ceiling=0.35)
    with open_store(str(history_db), create=False) as store:
        expected = measure_impact(store, CATALOG, parse_since(SINCE), policy=validate_policy(tight, CATALOG))

    r = post(processor, {"since": SINCE, "policy": tight})
    assert r.status_code == 200, r.text
    check(spec, 200, r.json())
    assert without_until(r.json()) == without_until(expected.to_json_dict())

    # By name: the newest policy recorded under it. With no catalog, the processor's (--catalog).
    named = post(processor, {"since": "3650d", "policy": "triage"}).json()
    check(spec, 200, named)
    assert named["policy"]["fingerprint"] == POLICIES["triage"].fingerprint and named["differ"] == 0
    assert named["catalog"]["version"] == CATALOG.version

    for body, param in [
        ({"policy": "triage"}, "since"),
        ({"since": "7d", "policy": {"schema": "sigma-pol/v1", "name": "x", "rules": [{"id": 1}]}}, "policy"),
        ({"since": "7d", "policy": "nobody-recorded-this"}, "policy"),
        ({"since": "7d", "catalog": {"schema": "unhardcoded-catalog/v1", "models": []}}, "catalog"),
        ({"since": "7d", "until": "now"}, "until"),
    ]:
        r = post(processor, body)
        assert r.status_code == 400, (body, r.text)
        check(spec, 400, r.json())
        assert r.json()["error"]["param"] == param, r.json()
    not_json = httpx.post(
        processor.url + "/x/impact", content=b"[", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    assert not_json.status_code == 400
    check(spec, 400, not_json.json())


def test_the_query_token_is_required_and_the_cli_sends_it(processor, history_db, tmp_path):
    refused = post(processor, {"since": SINCE}, token=None)
    assert refused.status_code == 401
    assert post(processor, {"since": SINCE}, token="wrong").status_code == 401

    policy = tmp_path / "tight.json"
    policy.write_text(json.dumps(triage_document(ceiling=0.35)), encoding="utf-8")
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(catalog_document()), encoding="utf-8")
    base = [sys.executable, "-m", "unhardcoded.cli", "replay", "--since", SINCE, "--processor", processor.url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNHARDCODED_")}
    no_token = subprocess.run([*base, "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert no_token.returncode == 2 and "UNHARDCODED_PROCESSOR_TOKEN" in no_token.stderr
    assert TOKEN not in no_token.stderr

    env["UNHARDCODED_PROCESSOR_TOKEN"] = TOKEN
    out = subprocess.run(
        [*base, "--policy", str(policy), "--catalog", str(catalog), "--json", "--fail-on-change"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 1, out.stderr  # decisions change, and --fail-on-change says so
    with open_store(str(history_db), create=False) as store:
        expected = measure_impact(
            store, CATALOG, parse_since(SINCE), policy=validate_policy(triage_document(ceiling=0.35), CATALOG)
        )
    assert without_until(json.loads(out.stdout)) == without_until(expected.to_json_dict())
    table = subprocess.run(
        [*base, "--policy", str(policy), "--catalog", str(catalog)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert table.returncode == 0 and "gpt-5.5-nano → mistral-small-4" in table.stdout, table.stderr
