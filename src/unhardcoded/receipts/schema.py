"""JSON Schemas of `unhardcoded.receipt/v1`, `unhardcoded.workflow-receipt/v1` and `unhardcoded.impact/v1` (the
impact report), generated from the models.

``python -m unhardcoded.receipts.schema [DIR]`` writes them (default ``docs/``);
a test fails when the files in docs/ and the models disagree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .impact import IMPACT_SCHEMA, ImpactReport
from .model import RECEIPT_SCHEMA, WORKFLOW_RECEIPT_SCHEMA, Receipt, WorkflowReceipt

DRAFT = "https://json-schema.org/draft/2020-12/schema"
FILES = {
    "receipt.schema.json": RECEIPT_SCHEMA,
    "workflow-receipt.schema.json": WORKFLOW_RECEIPT_SCHEMA,
    "impact.schema.json": IMPACT_SCHEMA,
}


def _schema(model: type, schema_id: str, title: str, description: str) -> dict[str, Any]:
    body = model.model_json_schema(by_alias=True, mode="validation")  # type: ignore[attr-defined]
    head = {"$schema": DRAFT, "$id": "urn:unhardcoded:schema:" + schema_id, "title": title, "description": description}
    body.pop("title", None)
    body.pop("description", None)
    return {**head, **body}


def receipt_schema() -> dict[str, Any]:
    return _schema(
        Receipt,
        RECEIPT_SCHEMA,
        RECEIPT_SCHEMA,
        "One request's routing decision: policy and fingerprint, candidates, rejections with the rule that "
        "rejected each, the winner and why, fallback hops, attempts, cost against a baseline, latency.",
    )


def workflow_receipt_schema() -> dict[str, Any]:
    return _schema(
        WorkflowReceipt,
        WORKFLOW_RECEIPT_SCHEMA,
        WORKFLOW_RECEIPT_SCHEMA,
        "The node receipts of one workflow run, in step order, with totals.",
    )


def impact_schema() -> dict[str, Any]:
    return _schema(
        ImpactReport,
        IMPACT_SCHEMA,
        IMPACT_SCHEMA,
        "Every stored decision of a window decided again under a policy and/or catalog: the decisions that keep "
        "their model, change (with the rule that now rejects the old winner) or have no candidate left, and the "
        "cost at the usage each answer reported, before and after, per policy and per model.",
    )


def schema_texts() -> dict[str, str]:
    """File name -> file content, exactly as written to docs/."""
    schemas = {
        "receipt.schema.json": receipt_schema(),
        "workflow-receipt.schema.json": workflow_receipt_schema(),
        "impact.schema.json": impact_schema(),
    }
    return {name: json.dumps(s, indent=2, ensure_ascii=False) + "\n" for name, s in schemas.items()}


def write_schemas(directory: str | Path) -> list[Path]:
    out = []
    for name, text in schema_texts().items():
        path = Path(directory) / name
        path.write_text(text, encoding="utf-8")
        out.append(path)
    return out


if __name__ == "__main__":
    for written in write_schemas(sys.argv[1] if len(sys.argv) > 1 else "docs"):
        print(written)
