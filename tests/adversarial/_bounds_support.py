"""Hand-built OTLP exports for the processor's hostile-input tests: spans of ours and of others, any size.

Kept apart from the shared fixtures so the adversarial modules of each area stay independent.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from unhardcoded.semconv import attributes as A

CANARY = "sk-CANARY-" + "7" * 24
"""A key-shaped string sent in hostile payloads: it must never come back in an answer or a log."""


def kv(key: str, value: object) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def span(
    name: str = "GET /", attributes: dict[str, object] | None = None, events: list[Span.Event] | None = None
) -> Span:
    return Span(
        trace_id=secrets.token_bytes(16),
        span_id=secrets.token_bytes(8),
        name=name,
        kind=Span.SPAN_KIND_INTERNAL,
        start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_000_100_000_000,
        attributes=[kv(k, v) for k, v in (attributes or {}).items()],
        events=events or [],
    )


def decision_span(request_id: str, **extra: object) -> Span:
    """A decision span as a forger would write it: enough for the processor to file and rebuild it."""
    attributes: dict[str, object] = {
        A.UNHARDCODED_REQUEST_ID: request_id,
        A.UNHARDCODED_POLICY_NAME: "support",
        A.UNHARDCODED_POLICY_FINGERPRINT: "sha256:" + "0" * 64,
        A.UNHARDCODED_DECISION_OUTCOME: "dry_run",
    }
    attributes.update(extra)
    return span("unhardcoded.decision", attributes)


def export(*spans: Span, service: str = "hostile") -> bytes:
    message = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource={"attributes": [kv("service.name", service)]},
                scope_spans=[ScopeSpans(spans=list(spans))],
            )
        ]
    )
    return message.SerializeToString()


def huge(n: int, tag: int) -> str:
    """``n`` characters, different for each ``tag`` (so no cache can share two of them)."""
    head = f"{tag:08d}-{os.getpid()}-"
    return head + "x" * (n - len(head))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")
