"""Where a recorded receipt is looked up: a receipt store, or the spans kept by a trace backend, rebuilt.

A source answers two questions, :meth:`ReceiptSource.receipt` and
:meth:`ReceiptSource.workflow`. Sources that fetch spans from a trace backend
(:mod:`.backends`: Jaeger, Tempo) subclass :class:`SpanSource` and only say how
to fetch; the rebuild is shared. The processor's query API is a source too
(:class:`unhardcoded.processor.client.ProcessorSource`), and so is a file (:class:`FileSource`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from ..errors import UnhardcodedError
from .model import RECEIPT_SCHEMA, WORKFLOW_RECEIPT_SCHEMA, Receipt, WorkflowReceipt
from .rebuild import rebuild_receipts, rebuild_spans
from .spans import SpanFormatError, read_spans
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


class FileSource(SpanSource):
    """A file: a receipt or workflow receipt as JSON (``unhardcoded receipt ID --json``), a list of them, or spans
    in any format :func:`~unhardcoded.receipts.spans.read_spans` reads (OTLP protobuf or JSON, Jaeger, Tempo)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.description = f"file {self.path}"
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise SourceError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        self._receipts: list[Receipt] = []
        self._workflows: list[WorkflowReceipt] = []
        self._spans: list[Any] = []
        doc: Any = None
        if data.lstrip()[:1] in (b"{", b"["):
            try:
                doc = json.loads(data)
            except (ValueError, RecursionError):
                doc = None  # several documents in a row (Jaeger's streamed answers): read_spans reads those
        docs = doc if isinstance(doc, list) else [doc]
        if doc is not None and all(isinstance(d, dict) and d.get("receipt") in _SCHEMAS for d in docs):
            for i, d in enumerate(docs):
                where = f"{self.path}" + (f": [{i}]" if isinstance(doc, list) else "")
                try:
                    if d["receipt"] == RECEIPT_SCHEMA:
                        self._receipts.append(Receipt.model_validate(d))
                    else:
                        self._workflows.append(WorkflowReceipt.model_validate(d))
                except ValidationError as exc:
                    first = exc.errors()[0]
                    path = ".".join(str(p) for p in first["loc"])
                    raise SourceError(f"{where}: {path}: {first['msg']}") from None
            return
        try:
            self._spans = read_spans(data)
        except SpanFormatError as exc:
            raise SourceError(f"{self.path}: neither a receipt nor spans: {exc}") from None

    def receipt(self, request_id: str) -> Receipt | None:
        if self._spans:
            return rebuild_spans(self._spans).receipt(request_id)
        found = next((r for r in self._receipts if r.request_id == request_id), None)
        if found is None:
            found = next((n for w in self._workflows for n in w.nodes if n.request_id == request_id), None)
        return found

    def workflow(self, workflow_id: str) -> WorkflowReceipt | None:
        if self._spans:
            return next((w for w in rebuild_spans(self._spans).workflows if w.workflow_id == workflow_id), None)
        return next((w for w in self._workflows if w.workflow_id == workflow_id), None)


class SourceError(UnhardcodedError):
    """A receipt source cannot be read (a file that is not there, or holds neither receipts nor spans)."""


_SCHEMAS = frozenset({RECEIPT_SCHEMA, WORKFLOW_RECEIPT_SCHEMA})
