"""The processor's own metrics: names, instruments, and the MeterProvider it sets up from ``OTEL_*`` variables.

The names are not in the semantic-convention registry yet (they are the
processor's operational metrics, not decision telemetry); they are listed here
once, under the ``unhardcoded.processor.`` prefix, until the registry takes them.
"""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass
from typing import Any, Callable, Final

from opentelemetry import metrics

# Built, not written out: code never spells a name of our namespace as one literal (tests/test_semconv.py).
PREFIX: Final = ".".join(("unhardcoded", "processor")) + "."

SPANS_RECEIVED: Final = PREFIX + "spans.received"
"""Spans received in OTLP exports (counter, {span}; attribute ``transport``: http | grpc)."""
SPANS_REJECTED: Final = PREFIX + "spans.rejected"
"""Spans refused in an otherwise accepted export (invalid ids), reported back as partial success (counter, {span})."""
PAYLOADS_REJECTED: Final = PREFIX + "payloads.rejected"
"""Exports refused whole (counter, {payload}; attribute ``reason``: malformed | too_large | unsupported | unauthorized | busy | unavailable)."""
RECEIPTS_FINISHED: Final = PREFIX + "receipts.finished"
"""Receipts written to the store, revisions included (counter, {receipt}; attribute ``complete``: true | false)."""
RECEIPTS_INCOMPLETE: Final = PREFIX + "receipts.incomplete"
"""Receipts written with ``complete: false`` (counter, {receipt}; attribute ``cause``: wait_window | memory | telemetry)."""
SPANS_ORPHANED: Final = PREFIX + "spans.orphaned"
"""Attempt spans finished without their decision span: no receipt could be made of them (counter, {span})."""
QUEUE_DEPTH: Final = PREFIX + "queue.depth"
"""Spans received and not yet in the spool (gauge, {span})."""
SPANS_PENDING: Final = PREFIX + "spans.pending"
"""Spans in the spool whose receipt is not finished yet (gauge, {span})."""
FORWARD_FAILED: Final = PREFIX + "forward.failed"
"""Exports the processor could not forward to the next hop (counter, {payload})."""

NAMES: Final = (
    SPANS_RECEIVED, SPANS_REJECTED, PAYLOADS_REJECTED, RECEIPTS_FINISHED, RECEIPTS_INCOMPLETE, SPANS_ORPHANED,
    QUEUE_DEPTH, SPANS_PENDING, FORWARD_FAILED,
)


@dataclass
class Stats:
    """The same numbers, kept in process for ``GET /stats`` and the tests."""

    exports: int = 0
    spans_received: int = 0
    spans_rejected: int = 0
    spans_ignored: int = 0
    spans_duplicate: int = 0
    payloads_rejected: int = 0
    receipts_finished: int = 0
    receipts_revised: int = 0
    receipts_incomplete: int = 0
    evicted_groups: int = 0
    spans_orphaned: int = 0
    malformed_decisions: int = 0
    store_errors: int = 0
    forwarded: int = 0
    forward_failed: int = 0
    queue_depth: int = 0
    spans_pending: int = 0
    recovered_spans: int = 0

    def to_json_dict(self) -> dict[str, int]:
        return asdict(self)


class ProcessorMetrics:
    """Counters updated together in :class:`Stats` and, when a MeterProvider is set, in OpenTelemetry."""

    def __init__(self, meter: metrics.Meter | None = None, gauges: Callable[[], tuple[int, int]] | None = None) -> None:
        self.stats = Stats()
        self._lock = threading.Lock()
        meter = meter or metrics.get_meter(__name__)
        self._received = meter.create_counter(SPANS_RECEIVED, unit="{span}", description="Spans received in OTLP exports.")
        self._rejected = meter.create_counter(SPANS_REJECTED, unit="{span}", description="Spans refused in an accepted export.")
        self._payloads = meter.create_counter(PAYLOADS_REJECTED, unit="{payload}", description="Exports refused whole.")
        self._finished = meter.create_counter(RECEIPTS_FINISHED, unit="{receipt}", description="Receipts written to the store.")
        self._incomplete = meter.create_counter(RECEIPTS_INCOMPLETE, unit="{receipt}", description="Receipts written incomplete.")
        self._orphaned = meter.create_counter(SPANS_ORPHANED, unit="{span}", description="Attempt spans finished without a decision span.")
        self._forward = meter.create_counter(FORWARD_FAILED, unit="{payload}", description="Exports not forwarded to the next hop.")
        self._gauges = gauges
        meter.create_observable_gauge(QUEUE_DEPTH, [self._observe_queue], unit="{span}", description="Spans received, not yet spooled.")
        meter.create_observable_gauge(SPANS_PENDING, [self._observe_pending], unit="{span}", description="Spans awaiting their receipt.")

    def _observe_queue(self, _options: Any) -> list[metrics.Observation]:
        return [metrics.Observation(self.stats.queue_depth)]

    def _observe_pending(self, _options: Any) -> list[metrics.Observation]:
        return [metrics.Observation(self.stats.spans_pending)]

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    def received(self, transport: str, spans: int, rejected: int, ignored: int) -> None:
        self.add(exports=1, spans_received=spans, spans_rejected=rejected, spans_ignored=ignored)
        self._received.add(spans, {"transport": transport})
        if rejected:
            self._rejected.add(rejected, {"transport": transport})

    def payload_rejected(self, reason: str) -> None:
        self.add(payloads_rejected=1)
        self._payloads.add(1, {"reason": reason})

    def finished(self, complete: int, incomplete: dict[str, int], revised: int = 0) -> None:
        total_incomplete = sum(incomplete.values())
        self.add(receipts_finished=complete + total_incomplete, receipts_incomplete=total_incomplete, receipts_revised=revised)
        if complete:
            self._finished.add(complete, {"complete": True})
        if total_incomplete:
            self._finished.add(total_incomplete, {"complete": False})
            for cause, n in incomplete.items():
                if n:
                    self._incomplete.add(n, {"cause": cause})

    def orphaned(self, spans: int) -> None:
        self.add(spans_orphaned=spans)
        self._orphaned.add(spans)

    def forward_failed(self, n: int = 1) -> None:
        self.add(forward_failed=n)
        self._forward.add(n)


def configure_meter_provider(service_name: str = "unhardcoded-processor") -> Any:
    """A MeterProvider exporting as ``OTEL_METRICS_EXPORTER`` says (``otlp``, ``console`` or ``none``, the default).

    ``otlp`` honours the standard ``OTEL_EXPORTER_OTLP_*`` variables (endpoint, headers, protocol).
    Returns the provider (to shut down on exit), or None when metrics are off.
    """
    names = [n.strip() for n in os.environ.get("OTEL_METRICS_EXPORTER", "none").split(",") if n.strip()]
    names = [n for n in names if n != "none"]
    if not names:
        return None
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource

    readers = []
    for name in names:
        if name == "console":
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
        elif name == "otlp":
            protocol = os.environ.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"))
            if protocol.startswith("http"):
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            else:
                from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter  # type: ignore[assignment]
            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    resource = Resource.create({"service.name": service_name}).merge(OTELResourceDetector().detect())
    provider = MeterProvider(resource=resource, metric_readers=readers)
    metrics.set_meter_provider(provider)
    return provider
