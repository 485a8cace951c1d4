"""Receipts: the model, rebuilt from spans or built from a Decision; store, render, replay, rollups."""

from .model import RECEIPT_SCHEMA, WORKFLOW_RECEIPT_SCHEMA, PolicyRef, Receipt, WorkflowReceipt

__all__ = ["RECEIPT_SCHEMA", "WORKFLOW_RECEIPT_SCHEMA", "PolicyRef", "Receipt", "WorkflowReceipt"]
