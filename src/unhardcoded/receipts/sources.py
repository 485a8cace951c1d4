"""Where a recorded receipt is looked up: a receipt store, or the spans kept by a trace backend, rebuilt.

A source answers two questions, :meth:`ReceiptSource.receipt` and
:meth:`ReceiptSource.workflow`. Sources that fetch spans from a trace backend
(:mod:`.backends`: Jaeger, Tempo) subclass :class:`SpanSource` and only say how
to fetch; the rebuild is shared. The processor's query API is a source too
(:class:`unhardcoded.processor.client.ProcessorSource`).
"""

from __future__ import annotations

from typing import Any, Protocol

from .model import Receipt, WorkflowReceipt
from .rebuild import rebuild_receipts
from .stores import ReceiptStore


class ReceiptSource(Protocol):
    description: str

    def receipt(self, request_id: str) -> Receipt | None: ...

    def workflow(self, workflow_id: str) -> WorkflowReceipt | None: ...


class StoreSource:
    """Receipts from a :class:`ReceiptStore` (the local SQLite file by default)."""

    def __init__(self, store: ReceiptStore) -> None:
        self.store = store
        self.description = f"store {store.location}"

    def receipt(self, request_id: str) -> Receipt | None:
        stored = self.store.get(request_id)
        return stored.receipt if stored else None

    def workflow(self, workflow_id: str) -> WorkflowReceipt | None:
        return self.store.workflow(workflow_id)


class SpanSource:
    """A source that fetches spans (any format :func:`read_spans` reads) and rebuilds receipts from them."""

    description = "spans"

    def fetch_request(self, request_id: str) -> list[Any]:
        """Span payloads holding the decision of ``request_id``; empty when not found."""
        raise NotImplementedError

    def fetch_workflow(self, workflow_id: str) -> list[Any]:
        raise NotImplementedError

    def receipt(self, request_id: str) -> Receipt | None:
        payloads = self.fetch_request(request_id)
        return rebuild_receipts(*payloads).receipt(request_id) if payloads else None

    def workflow(self, workflow_id: str) -> WorkflowReceipt | None:
        payloads = self.fetch_workflow(workflow_id)
        if not payloads:
            return None
        return next((w for w in rebuild_receipts(*payloads).workflows if w.workflow_id == workflow_id), None)
