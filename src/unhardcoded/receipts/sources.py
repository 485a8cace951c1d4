"""Where `unhardcoded receipt` looks a receipt up: the local store today; a processor, Jaeger or Tempo next.

A source answers two questions, :meth:`ReceiptSource.receipt` and
:meth:`ReceiptSource.workflow`. Sources that fetch spans from a trace backend
subclass :class:`SpanSource` and only say how to fetch; the rebuild is shared.
The command line offers one flag per entry of :data:`SOURCES`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from .model import Receipt, WorkflowReceipt
from .rebuild import rebuild_receipts
from .stores import STORE_ENV, ReceiptStore, default_store_path, open_store


def store_help() -> str:
    return (
        f"receipt store: a SQLite file path or sqlite:///path URL (default: ${STORE_ENV}, else {default_store_path()})"
    )


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


@dataclass(frozen=True)
class SourceSpec:
    """One ``--flag URL`` of `unhardcoded receipt`, and how to build its source."""

    flag: str
    metavar: str
    help: Callable[[], str]
    build: Callable[[str], ReceiptSource]


def _store_source(url: str) -> ReceiptSource:
    return StoreSource(open_store(url, create=False))


# `--processor`, `--jaeger` and `--tempo` join here, each a SpanSource (or a client of the processor's HTTP API).
def _processor_source(url: str) -> ReceiptSource:
    from ..processor.client import ProcessorSource

    return ProcessorSource(url)


def _jaeger_source(url: str) -> ReceiptSource:
    from .backends import JaegerSource

    return JaegerSource(url)


def _tempo_source(url: str) -> ReceiptSource:
    from .backends import TempoSource

    return TempoSource(url)


SOURCES: dict[str, SourceSpec] = {
    "store": SourceSpec("--store", "URL", store_help, _store_source),
    "processor": SourceSpec(
        "--processor",
        "URL",
        lambda: (
            "a running `unhardcoded processor`'s query API, e.g. http://127.0.0.1:8318 "
            "(query token from $UNHARDCODED_PROCESSOR_TOKEN)"
        ),
        _processor_source,
    ),
    "jaeger": SourceSpec(
        "--jaeger",
        "URL",
        lambda: "Jaeger query service, e.g. http://127.0.0.1:16686 (searches the unhardcoded.request.id tag)",
        _jaeger_source,
    ),
    "tempo": SourceSpec(
        "--tempo", "URL", lambda: "Grafana Tempo HTTP API, e.g. http://127.0.0.1:3200 (TraceQL search)", _tempo_source
    ),
}


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    for name, spec in SOURCES.items():
        group.add_argument(spec.flag, dest=f"source_{name}", metavar=spec.metavar, help=spec.help())


def source_from_args(args: argparse.Namespace) -> ReceiptSource:
    """The source the flags name; the local store when none does."""
    for name, spec in SOURCES.items():
        value = getattr(args, f"source_{name}", None)
        if value:
            return spec.build(value)
    return StoreSource(open_store(None, create=False))
