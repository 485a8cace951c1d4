"""Capture the spans and metrics unhardcoded emits, in memory, so a test can assert on decisions and receipts.

A :class:`TelemetryCapture` is a fresh SDK tracer provider and meter provider
(never installed globally) with an in-memory span exporter and metric reader.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, Self

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler

from ..semconv import attributes as A

if TYPE_CHECKING:
    from ..catalog import Catalog
    from ..receipts import Receipt
    from ..router import ProviderClient, Router

__all__ = ["MetricPoint", "TelemetryCapture", "capture"]


class MetricPoint(NamedTuple):
    """One data point: the metric's name, its attributes, and its value (``(count, sum)`` for a histogram)."""

    name: str
    attributes: dict[str, Any]
    value: Any


class TelemetryCapture:
    """Fresh SDK providers whose spans and metrics stay in memory; hand them to a :class:`Router` (see :meth:`router`).

    Read what was emitted with :meth:`spans`, :meth:`decisions`, :meth:`attempts`,
    :meth:`receipts` and :meth:`metrics`; each call reads what has finished so far.
    """

    def __init__(
        self,
        *,
        service_name: str = "tests",
        span_limits: SpanLimits | None = None,
        sampler: Sampler | None = None,
    ) -> None:
        resource = Resource.create({"service.name": service_name})
        self.exporter = InMemorySpanExporter()
        # Shut down by the test (or the fixture), not at exit: a suite makes thousands of these.
        self.tracer_provider = TracerProvider(
            sampler=sampler, resource=resource, span_limits=span_limits, shutdown_on_exit=False
        )
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(resource=resource, metric_readers=[self.reader], shutdown_on_exit=False)

    def router(self, catalog: Catalog | None = None, client: ProviderClient | None = None, **kwargs: Any) -> Router:
        """A :class:`~unhardcoded.router.Router` that reports to this capture; ``kwargs`` go to the Router."""
        from ..router import Router

        return Router(
            catalog, client, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **kwargs
        )

    # ---- spans

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        """Every finished span, in the order they ended; only those called ``name`` if given."""
        finished = self.exporter.get_finished_spans()
        return [s for s in finished if s.name == name] if name is not None else list(finished)

    def decisions(self) -> list[ReadableSpan]:
        """The decision spans (``route {policy}``), one per routed or dry-run request."""
        return [s for s in self.spans() if _is_decision(s.attributes)]

    def attempts(self) -> list[ReadableSpan]:
        """The attempt spans (one per provider call), by attempt index."""
        indexed = [(s.attributes.get(A.UNHARDCODED_ATTEMPT_INDEX), s) for s in self.spans() if s.attributes]
        return [s for index, s in sorted(indexed, key=_by_index) if isinstance(index, int)]

    def receipts(self) -> list[Receipt]:
        """The receipts rebuilt from the captured spans, as the receipts processor would store them."""
        from ..receipts import rebuild_receipts

        return rebuild_receipts(self.spans()).receipts

    def clear(self) -> None:
        """Forget the spans captured so far (metrics are cumulative and stay)."""
        self.exporter.clear()

    # ---- metrics

    def metrics(self, name: str | None = None) -> list[MetricPoint]:
        """Every metric data point collected now; only those of metric ``name`` if given."""
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        return [
            MetricPoint(m.name, dict(p.attributes or {}), _value(p))
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if name is None or m.name == name
            for p in m.data.data_points
        ]

    def metric(self, name: str) -> dict[frozenset[tuple[str, Any]], Any]:
        """Metric ``name``'s values keyed by attribute set (a frozenset of items), for exact comparisons."""
        return {frozenset(p.attributes.items()): p.value for p in self.metrics(name)}

    # ---- lifetime

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()


def capture(
    *, service_name: str = "tests", span_limits: SpanLimits | None = None, sampler: Sampler | None = None
) -> TelemetryCapture:
    """A new :class:`TelemetryCapture`; use it as a context manager (or call ``shutdown()``) to release it."""
    return TelemetryCapture(service_name=service_name, span_limits=span_limits, sampler=sampler)


def _is_decision(attributes: Mapping[str, Any] | None) -> bool:
    return (
        attributes is not None
        and A.UNHARDCODED_REQUEST_ID in attributes
        and A.UNHARDCODED_ATTEMPT_INDEX not in attributes
    )


def _by_index(pair: tuple[object, ReadableSpan]) -> int:
    return pair[0] if isinstance(pair[0], int) else -1


def _value(point: object) -> Any:
    if isinstance(point, HistogramDataPoint):
        return (point.count, point.sum)
    return getattr(point, "value", None)
