"""The JSON Schemas in docs/ are generated from the models, and receipts (built or rebuilt) validate against them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings

from fixtures import span_layout as L
from fixtures.decisions import decisions, workflows
from unhardcoded.receipts import Receipt, WorkflowReceipt, rebuild_receipts
from unhardcoded.receipts.schema import schema_texts

DOCS = Path(__file__).resolve().parents[2] / "docs"
RECEIPT = json.loads((DOCS / "receipt.schema.json").read_text(encoding="utf-8"))
WORKFLOW = json.loads((DOCS / "workflow-receipt.schema.json").read_text(encoding="utf-8"))


def test_schema_files_are_current():
    for name, text in schema_texts().items():
        assert (DOCS / name).read_text(encoding="utf-8") == text, (
            f"docs/{name} is stale: run python -m unhardcoded.receipts.schema docs"
        )


def test_schemas_are_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(RECEIPT)
    jsonschema.Draft202012Validator.check_schema(WORKFLOW)
    assert RECEIPT["properties"]["receipt"]["const"] == "unhardcoded.receipt/v1"
    assert WORKFLOW["properties"]["receipt"]["const"] == "unhardcoded.workflow-receipt/v1"


def test_the_schema_module_writes_the_files(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "unhardcoded.receipts.schema", str(tmp_path)], check=True, capture_output=True
    )
    for name, text in schema_texts().items():
        assert (tmp_path / name).read_text(encoding="utf-8") == text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(decisions())
def test_receipts_validate_built_and_rebuilt(decision):
    tp, exporter = L.provider()
    L.emit_decision(tp.get_tracer("t"), decision)
    built = Receipt.from_decision(decision).to_json_dict()
    rebuilt = rebuild_receipts(L.otlp_json(exporter.get_finished_spans())).receipts[0].to_json_dict()
    jsonschema.validate(built, RECEIPT, cls=jsonschema.Draft202012Validator)
    jsonschema.validate(rebuilt, RECEIPT, cls=jsonschema.Draft202012Validator)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workflows())
def test_workflow_receipts_validate(run):
    workflow_id, name, ds = run
    w = WorkflowReceipt.from_receipts(workflow_id, name, [Receipt.from_decision(d) for d in ds])
    jsonschema.validate(w.model_dump(mode="json", by_alias=True), WORKFLOW, cls=jsonschema.Draft202012Validator)


@pytest.mark.parametrize(
    "broken",
    [
        {"receipt": "unhardcoded.receipt/v2"},
        {"fallback": {"chain": [], "triggered": False, "hops": [{"from": "a", "to": "b", "reason": "bored"}]}},
        {"surprise": 1},
        {"policy": {"name": "support", "fingerprint": "1-2"}},
    ],
)
def test_a_receipt_that_breaks_the_contract_does_not_validate(broken):
    from fixtures.generate import decisions as fixed

    good = Receipt.from_decision(fixed()[0]).to_json_dict()
    jsonschema.validate(good, RECEIPT, cls=jsonschema.Draft202012Validator)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**good, **broken}, RECEIPT, cls=jsonschema.Draft202012Validator)
