"""The receipt (`unhardcoded.receipt/v1`): the Decision as a reader sees it, built from a Decision or from spans."""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..router.decision import (
    Attempt,
    Billing,
    BudgetUse,
    Cost,
    Decision,
    FallbackHop,
    Rejection,
    Selection,
    Signature,
    WorkflowRef,
)
from ..router.features import RequestFeatures

RECEIPT_SCHEMA: Final = "unhardcoded.receipt/v1"
WORKFLOW_RECEIPT_SCHEMA: Final = "unhardcoded.workflow-receipt/v1"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class PolicyRef(_Model):
    name: str
    fingerprint: str
    schema_: str = Field(alias="schema")


class FallbackRecord(_Model):
    chain: list[str] = []
    triggered: bool = False
    hops: list[FallbackHop] = []


class Receipt(_Model):
    """One request's routing decision. ``features`` and ``outcome`` extend the DESIGN shape so a receipt replays."""

    receipt: Literal["unhardcoded.receipt/v1"] = RECEIPT_SCHEMA
    request_id: str
    trace_id: str | None = None
    span_id: str | None = None
    timestamp: str
    policy: PolicyRef
    catalog_version: str
    candidates: list[str] = []
    rejected: list[Rejection] = []
    selected: Selection | None = None
    fallback: FallbackRecord = FallbackRecord()
    attempts: list[Attempt] = []
    answered_by: str | None = None
    latency_ms: float = 0.0
    cost: Cost = Cost()
    workflow: WorkflowRef | None = None
    client: str | None = None
    """The name of the client key the request came with, on a proxy started with ``--keys``; never the key."""
    budget: BudgetUse | None = None
    """The spent budget (policy or client key: window, spent, limit) that refused the request or sent it to the
    policy's fallback policy; absent otherwise."""
    outcome: Literal["dry_run", "answered", "failed", "no_candidate", "over_budget"] = "dry_run"
    features: RequestFeatures | None = None
    billing: Billing | None = None
    """The cost as billed (breakdown, estimate, per-attempt usage) and the source of the catalog's prices."""
    complete: bool = True
    signature: Signature | None = None
    """The router's signature over the receipt content, from the decision span; whether it verifies is the
    verifier's answer (``unhardcoded.receipts.verify_receipt``), not part of the receipt."""
    live: dict[str, Any] | None = Field(default=None, exclude_if=lambda v: v is None)
    """The live state the decision read (``at``, ``fields``, ``models``: per model the ``live.`` values read and the
    findings of ``live:cooldown`` / ``live:rate_limit``); what ``replay --live recorded`` decides from."""

    @classmethod
    def from_decision(cls, decision: Decision) -> Receipt:
        # One mapping from a decision to its receipt fields: the one its signature covers.
        return cls(**decision.receipt_fields(), signature=decision.signature, complete=True)

    def signed_fields(self) -> dict[str, Any]:
        """The receipt's fields by name (its own objects), for ``unhardcoded._signature.signed_content``."""
        return self.__dict__

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def to_json_text(self) -> str:
        """The receipt as compact JSON, fields in the model's order: the body a store keeps."""
        return self.model_dump_json(by_alias=True)

    def to_json_bytes(self) -> bytes:
        """:meth:`to_json_text` in UTF-8, as pydantic writes it before making it a str: what a store that takes
        UTF-8 (SQLite) binds, without decoding and encoding the text once more."""
        return self.__pydantic_serializer__.to_json(self, by_alias=True)


def same_receipt_text(a: str | bytes, b: str | bytes) -> bool:
    """Two stored bodies of one receipt (text, or UTF-8 bytes) say the same, whatever their key order or spacing."""
    if isinstance(a, bytes) != isinstance(b, bytes):
        a = a.decode() if isinstance(a, bytes) else a
        b = b.decode() if isinstance(b, bytes) else b
    if a == b:
        return True
    import json

    try:
        return bool(json.loads(a) == json.loads(b))
    except ValueError:
        return False


class WorkflowTotals(_Model):
    decisions: int = 0
    fallbacks: int = 0
    failed: int = 0
    cost_usd: float = 0.0
    baseline_usd: float = 0.0
    savings_ratio: float | None = None
    latency_ms: float = 0.0


class WorkflowReceipt(_Model):
    """The node receipts of one workflow, in order, with totals."""

    receipt: Literal["unhardcoded.workflow-receipt/v1"] = WORKFLOW_RECEIPT_SCHEMA
    workflow_id: str
    name: str
    trace_id: str | None = None
    nodes: list[Receipt] = []
    totals: WorkflowTotals = WorkflowTotals()
    complete: bool = Field(
        True,
        description=(
            "The workflow's root span was seen (it ends after every node in it, so the run is over; a receipts processor "
            "also wrote the nodes that had arrived) and every node receipt is complete. False while the run is still open "
            "or its root span was lost, and when any node's telemetry is missing."
        ),
    )

    @property
    def still_open(self) -> bool:
        """Not complete only for want of its root span: the run is still going, its root is on its way, or it was lost."""
        return not self.complete and all(r.complete for r in self.nodes)

    @classmethod
    def from_receipts(
        cls,
        workflow_id: str,
        name: str,
        receipts: list[Receipt],
        trace_id: str | None = None,
        *,
        finished: bool = True,
    ) -> WorkflowReceipt:
        """``finished``: the workflow's root span was seen (in a receipts processor: and the workflow was finished)."""
        ordered = sorted(
            receipts,
            key=lambda r: ((r.workflow.step if r.workflow and r.workflow.step is not None else 1 << 30), r.timestamp),
        )
        cost = sum(r.cost.usd or 0.0 for r in ordered)
        base = sum(r.cost.baseline_usd or 0.0 for r in ordered)
        totals = WorkflowTotals(
            decisions=len(ordered),
            fallbacks=sum(1 for r in ordered if r.fallback.triggered),
            failed=sum(1 for r in ordered if r.outcome == "failed"),
            cost_usd=cost,
            baseline_usd=base,
            savings_ratio=(1 - cost / base) if base > 0 else None,
            latency_ms=sum(r.latency_ms for r in ordered),
        )
        return cls(
            workflow_id=workflow_id,
            name=name,
            trace_id=trace_id or (ordered[0].trace_id if ordered else None),
            nodes=ordered,
            totals=totals,
            complete=finished and all(r.complete for r in ordered),
        )
