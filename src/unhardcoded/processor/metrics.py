"""The processor's own metrics (names from the semantic-convention registry), and the MeterProvider it sets up from ``OTEL_*``."""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass
from typing import Any, Final

from opentelemetry import metrics

from ..receipts.memo import sizes as cache_sizes
from ..semconv import attributes as A
from ..semconv import metrics as M

NAMES: Final = (
    M.UNHARDCODED_PROCESSOR_SPANS_RECEIVED,
    M.UNHARDCODED_PROCESSOR_SPANS_REJECTED,
    M.UNHARDCODED_PROCESSOR_PAYLOADS_REJECTED,
    M.UNHARDCODED_PROCESSOR_RECEIPTS_FINISHED,
    M.UNHARDCODED_PROCESSOR_RECEIPTS_INCOMPLETE,
    M.UNHARDCODED_PROCESSOR_RECEIPTS_CONFLICTS,
    M.UNHARDCODED_PROCESSOR_SPANS_ORPHANED,
    M.UNHARDCODED_PROCESSOR_QUEUE_DEPTH,
    M.UNHARDCODED_PROCESSOR_QUEUE_SIZE,
    M.UNHARDCODED_PROCESSOR_SPANS_PENDING,
    M.UNHARDCODED_PROCESSOR_PENDING_SIZE,
    M.UNHARDCODED_PROCESSOR_CACHE_SIZE,
    M.UNHARDCODED_PROCESSOR_FORWARD_SENT,
    M.UNHARDCODED_PROCESSOR_FORWARD_DROPPED,
    M.UNHARDCODED_PROCESSOR_FORWARD_QUEUE_SIZE,
)
"""Every metric the processor reports."""


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
    receipt_conflicts: int = 0
    """Receipts of another decision for a stored request id, kept aside (not merged)."""
    evicted_groups: int = 0
    spans_orphaned: int = 0
    malformed_decisions: int = 0
    store_errors: int = 0
    forwarded: int = 0
    """Spans the next hop accepted."""
    forward_dropped: int = 0
    """Spans meant for the next hop that it never got, whatever the reason."""
    forward_retries: int = 0
    """Sends to the next hop that failed and were tried again."""
    forward_queue_bytes: int = 0
    forward_queue_exports: int = 0
    queue_depth: int = 0
    queue_bytes: int = 0
    """Bytes of exports received and not yet spooled."""
    spans_pending: int = 0
    pending_bytes: int = 0
    """Bytes held in memory for pending spans."""
    cache_bytes: int = 0
    """Bytes held by the memos of decoded span values, all together (each one: ``GET /stats`` ``caches``)."""
    recovered_spans: int = 0

    def to_json_dict(self) -> dict[str, int]:
        self.cache_bytes = sum(cache_sizes().values())
        return asdict(self)


def _attrs(key: str, values: tuple[Any, ...]) -> dict[Any, dict[str, Any]]:
    return {v: {key: v} for v in values}


class ProcessorMetrics:
    """Counters updated together in :class:`Stats` and, when a MeterProvider is set, in OpenTelemetry."""

    def __init__(self, meter: metrics.Meter | None = None) -> None:
        self.stats = Stats()
        self._lock = threading.Lock()
        meter = meter or metrics.get_meter(__name__)
        self._received = M.create_unhardcoded_processor_spans_received(meter)
        self._rejected = M.create_unhardcoded_processor_spans_rejected(meter)
        self._payloads = M.create_unhardcoded_processor_payloads_rejected(meter)
        self._finished = M.create_unhardcoded_processor_receipts_finished(meter)
        self._incomplete = M.create_unhardcoded_processor_receipts_incomplete(meter)
        self._conflicts = M.create_unhardcoded_processor_receipts_conflicts(meter)
        self._orphaned = M.create_unhardcoded_processor_spans_orphaned(meter)
        self._forward_sent = M.create_unhardcoded_processor_forward_sent(meter)
        self._forward_dropped = M.create_unhardcoded_processor_forward_dropped(meter)
        M.create_unhardcoded_processor_queue_depth(meter, [self._observe_queue])
        M.create_unhardcoded_processor_spans_pending(meter, [self._observe_pending])
        M.create_unhardcoded_processor_forward_queue_size(meter, [self._observe_forward_queue])
        M.create_unhardcoded_processor_queue_size(meter, [self._observe_queue_bytes])
        M.create_unhardcoded_processor_pending_size(meter, [self._observe_pending_bytes])
        M.create_unhardcoded_processor_cache_size(meter, [self._observe_caches])
        # Attribute sets built once: they are the same few dicts on every export.
        self._by_transport = _attrs(A.UNHARDCODED_PROCESSOR_TRANSPORT, ("http", "grpc"))
        self._by_reason: dict[str, dict[str, Any]] = {}
        self._by_complete = _attrs(A.UNHARDCODED_PROCESSOR_RECEIPT_COMPLETE, (True, False))
        self._by_cause: dict[str, dict[str, Any]] = {}
        self._by_drop: dict[str, dict[str, Any]] = {}

    def _observe_queue(self, _options: metrics.CallbackOptions) -> list[metrics.Observation]:
        return [metrics.Observation(self.stats.queue_depth)]

    def _observe_pending(self, _options: metrics.CallbackOptions) -> list[metrics.Observation]:
        return [metrics.Observation(self.stats.spans_pending)]

    def _observe_forward_queue(self, _options: metrics.CallbackOptions) -> list[metrics.Observation]:
        return [metrics.Observation(self.stats.forward_queue_bytes)]

    def _observe_queue_bytes(self, _options: metrics.CallbackOptions) -> list[metrics.Observation]:
        return [metrics.Observation(self.stats.queue_bytes)]

    def _observe_pending_bytes(self, _options: metrics.CallbackOptions) -> list[metrics.Observation]:
        return [metrics.Observation(self.stats.pending_bytes)]

    def _observe_caches(self, _options: metrics.CallbackOptions) -> list[metrics.Observation]:
        return [
            metrics.Observation(size, {A.UNHARDCODED_PROCESSOR_CACHE_NAME: name})
            for name, size in cache_sizes().items()
        ]

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    def received(self, transport: str, spans: int, rejected: int, ignored: int) -> None:
        self.add(exports=1, spans_received=spans, spans_rejected=rejected, spans_ignored=ignored)
        attrs = self._by_transport.get(transport) or {A.UNHARDCODED_PROCESSOR_TRANSPORT: transport}
        self._received.add(spans, attrs)
        if rejected:
            self._rejected.add(rejected, attrs)

    def payload_rejected(self, reason: str) -> None:
        self.add(payloads_rejected=1)
        attrs = self._by_reason.get(reason)
        if attrs is None:
            attrs = self._by_reason.setdefault(reason, {A.UNHARDCODED_PROCESSOR_REJECTION_REASON: reason})
        self._payloads.add(1, attrs)

    def finished(self, complete: int, incomplete: dict[str, int], revised: int = 0) -> None:
        total_incomplete = sum(incomplete.values())
        self.add(
            receipts_finished=complete + total_incomplete,
            receipts_incomplete=total_incomplete,
            receipts_revised=revised,
        )
        if complete:
            self._finished.add(complete, self._by_complete[True])
        if total_incomplete:
            self._finished.add(total_incomplete, self._by_complete[False])
            for cause, n in incomplete.items():
                if n:
                    attrs = self._by_cause.get(cause)
                    if attrs is None:
                        attrs = self._by_cause.setdefault(cause, {A.UNHARDCODED_PROCESSOR_INCOMPLETE_CAUSE: cause})
                    self._incomplete.add(n, attrs)

    def conflicts(self, receipts: int) -> None:
        self.add(receipt_conflicts=receipts)
        self._conflicts.add(receipts)

    def orphaned(self, spans: int) -> None:
        self.add(spans_orphaned=spans)
        self._orphaned.add(spans)

    def forward_sent(self, spans: int) -> None:
        self.add(forwarded=spans)
        if spans:
            self._forward_sent.add(spans)

    def forward_dropped(self, spans: int, reason: str) -> None:
        """Spans the next hop will not get; ``reason`` is a ``unhardcoded.processor.forward.drop_reason`` value."""
        self.add(forward_dropped=spans)
        attrs = self._by_drop.get(reason)
        if attrs is None:
            attrs = self._by_drop.setdefault(reason, {A.UNHARDCODED_PROCESSOR_FORWARD_DROP_REASON: reason})
        self._forward_dropped.add(spans, attrs)

    def forward_queue(self, exports: int, size: int) -> None:
        with self._lock:
            self.stats.forward_queue_exports = exports
            self.stats.forward_queue_bytes = size


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
            protocol = os.environ.get(
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            )
            if protocol.startswith("http"):
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            else:
                from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter  # type: ignore[assignment]
            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    resource = Resource.create({"service.name": service_name}).merge(OTELResourceDetector().detect())
    provider = MeterProvider(resource=resource, metric_readers=readers)
    metrics.set_meter_provider(provider)
    return provider
