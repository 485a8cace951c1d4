"""Receipts: the model, rebuilt from spans or built from a Decision; store, render, replay, rollups."""

from typing import TYPE_CHECKING, Any

from .model import RECEIPT_SCHEMA, WORKFLOW_RECEIPT_SCHEMA, PolicyRef, Receipt, WorkflowReceipt
from .rebuild import Rebuilt, RebuiltDecision, rebuild_decision, rebuild_receipts, rebuild_spans
from .spans import SpanFormatError, SpanRecord, read_spans
from .stores import ReceiptQuery, ReceiptStore, RollupRow, SQLiteReceiptStore, StoredReceipt, StoreError, open_store
from .verify import PublicKeys, SignatureCheck, SigningKeyError, verify_receipt

if TYPE_CHECKING:
    from .span_processor import ProcessorStats, ReceiptSpanProcessor

__all__ = [
    "RECEIPT_SCHEMA",
    "WORKFLOW_RECEIPT_SCHEMA",
    "PolicyRef",
    "ProcessorStats",
    "PublicKeys",
    "Rebuilt",
    "RebuiltDecision",
    "Receipt",
    "ReceiptQuery",
    "ReceiptSpanProcessor",
    "ReceiptStore",
    "RollupRow",
    "SQLiteReceiptStore",
    "SignatureCheck",
    "SigningKeyError",
    "SpanFormatError",
    "SpanRecord",
    "StoreError",
    "StoredReceipt",
    "WorkflowReceipt",
    "open_store",
    "read_spans",
    "rebuild_decision",
    "rebuild_receipts",
    "rebuild_spans",
    "verify_receipt",
]


def __getattr__(name: str) -> Any:  # the span processor needs the OpenTelemetry SDK: imported only when asked for
    if name in ("ReceiptSpanProcessor", "ProcessorStats"):
        from . import span_processor

        return getattr(span_processor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
