"""Decision telemetry: each routing decision as a span with events and metrics; workflows stitched into one trace.

The library uses only the OpenTelemetry API. Applications with no SDK yet call
:func:`configure`; :func:`losses` says what telemetry could not record.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .decision import AttemptSpans, DecisionScope, RouterTelemetry
from .layout import REJECTION_EVENT_LIMIT
from .losses import TelemetryLosses, losses, reset_losses
from .propagation import continue_from, extract_context, inject_headers
from .signing import SIGNING_KEY_ENV, DecisionSigner, use_signing_key
from .workflows import Node, current_workflow, workflow

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace.export import SpanExporter

    from .._signature import SigningKey
    from .setup import TelemetryConfigError, TelemetrySetup

__all__ = [
    "REJECTION_EVENT_LIMIT",
    "SIGNING_KEY_ENV",
    "AttemptSpans",
    "DecisionScope",
    "DecisionSigner",
    "Node",
    "RouterTelemetry",
    "TelemetryConfigError",
    "TelemetryLosses",
    "TelemetrySetup",
    "configure",
    "continue_from",
    "current_workflow",
    "extract_context",
    "inject_headers",
    "losses",
    "reset_losses",
    "use_signing_key",
    "workflow",
]


def configure(
    service_name: str | None = None,
    *,
    endpoint: str | None = None,
    protocol: str | None = None,
    resource_attributes: Mapping[str, Any] | None = None,
    traces: bool = True,
    metrics: bool = True,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
    metric_export_interval_ms: float | None = None,
    set_global: bool = True,
    signing_key: SigningKey | str | os.PathLike[str] | None = None,
) -> TelemetrySetup:
    """Install a TracerProvider and MeterProvider exporting over OTLP (per ``OTEL_*``) unless the app has its own.

    See :func:`unhardcoded.telemetry.setup.configure` for every option.
    """
    from .setup import configure as _configure  # the SDK is imported only by applications that ask for it

    return _configure(
        service_name,
        endpoint=endpoint,
        protocol=protocol,
        resource_attributes=resource_attributes,
        traces=traces,
        metrics=metrics,
        span_exporter=span_exporter,
        metric_reader=metric_reader,
        metric_export_interval_ms=metric_export_interval_ms,
        set_global=set_global,
        signing_key=signing_key,
    )


def __getattr__(name: str) -> Any:
    if name in ("TelemetrySetup", "TelemetryConfigError"):
        from . import setup

        return getattr(setup, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
