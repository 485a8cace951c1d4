"""The receipt-source flags of `unhardcoded receipt` (``--store``, ``--processor``, ``--jaeger``, ``--tempo``,
``--file``).

:data:`SOURCES` holds one flag per source and how to build it; the source's client is imported only when its
flag is given.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from ..receipts.sources import ReceiptSource, StoreSource
from ..receipts.stores import STORE_ENV, default_store_path, open_store


def store_help() -> str:
    return (
        f"receipt store: a SQLite file path or sqlite:///path URL (default: ${STORE_ENV}, else {default_store_path()})"
    )


@dataclass(frozen=True)
class SourceSpec:
    """One ``--flag URL`` of `unhardcoded receipt`, and how to build its source."""

    flag: str
    metavar: str
    help: Callable[[], str]
    build: Callable[[str], ReceiptSource]


def _store_source(url: str) -> ReceiptSource:
    return StoreSource(open_store(url, create=False))


def _file_source(path: str) -> ReceiptSource:
    from ..receipts.sources import FileSource

    return FileSource(path)


def _processor_source(url: str) -> ReceiptSource:
    from ..processor.client import ProcessorSource

    return ProcessorSource(url)


def _jaeger_source(url: str) -> ReceiptSource:
    from ..receipts.backends import JaegerSource

    return JaegerSource(url)


def _tempo_source(url: str) -> ReceiptSource:
    from ..receipts.backends import TempoSource

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
    "file": SourceSpec(
        "--file",
        "PATH",
        lambda: (
            "a file: a receipt or workflow receipt as JSON (`receipt ID --json`), or spans (OTLP protobuf or JSON, "
            "a Jaeger or Tempo trace as their APIs answer)"
        ),
        _file_source,
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
