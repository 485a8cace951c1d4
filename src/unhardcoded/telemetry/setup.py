"""``configure()``: an OpenTelemetry SDK for applications that have none yet, chosen from the standard ``OTEL_*`` variables.

An application that already installed a tracer or meter provider keeps it:
library code only ever uses the API, and ``configure`` forces nothing on a
provider someone else set. Exporters it installs count what they fail to send
in :func:`unhardcoded.telemetry.losses`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from .._signature import SigningKey
from ..errors import ConfigError
from .losses import count_loss
from .signing import configured_signer, use_signing_key

logger = logging.getLogger(__name__)

PROTOCOLS = ("grpc", "http/protobuf")
"""OTLP protocols the Python exporters speak; ``OTEL_EXPORTER_OTLP_PROTOCOL`` picks one (the Python SDK's default: grpc)."""


class TelemetryConfigError(ConfigError):
    """An ``OTEL_*`` setting or a ``configure()`` argument names something that cannot be set up."""


# --------------------------------------------------------------------------- exporters that count their failures


class _CountingSpanExporter(SpanExporter):
    """Passes spans to ``inner`` and counts those it could not send (a collector down, a closed port)."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:
            logger.debug("span export failed", exc_info=True)
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            count_loss("spans_not_exported", len(spans))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class _CountingMetricExporter(MetricExporter):
    """Passes metrics to ``inner`` and counts failed exports."""

    def __init__(self, inner: MetricExporter) -> None:
        super().__init__(
            preferred_temporality=getattr(inner, "_preferred_temporality", None),
            preferred_aggregation=getattr(inner, "_preferred_aggregation", None),
        )
        self.inner = inner

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        try:
            result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception:
            logger.debug("metric export failed", exc_info=True)
            result = MetricExportResult.FAILURE
        if result is not MetricExportResult.SUCCESS:
            count_loss("metric_exports_failed")
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)


# --------------------------------------------------------------------------- choosing exporters from OTEL_*


def sdk_disabled(environ: Mapping[str, str] = os.environ) -> bool:
    """``OTEL_SDK_DISABLED=true``, the standard OpenTelemetry switch: no span or metric is recorded."""
    return (_env(environ, "OTEL_SDK_DISABLED") or "").lower() == "true"


def _env(environ: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


def _protocol(signal: str, protocol: str | None, environ: Mapping[str, str]) -> str:
    chosen = (
        protocol
        or _env(environ, f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    )
    if chosen not in PROTOCOLS:
        raise TelemetryConfigError(
            f"OTLP protocol {chosen!r} is not supported here; use one of {', '.join(PROTOCOLS)} "
            "(OTEL_EXPORTER_OTLP_PROTOCOL or configure(protocol=...))"
        )
    return chosen


def _otlp_exporter(signal: str, protocol: str, endpoint: str | None) -> Any:
    kwargs: dict[str, Any] = {}
    if protocol == "grpc":
        if endpoint:
            kwargs["endpoint"] = endpoint
        if signal == "traces":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter(**kwargs)
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(**kwargs)
    if endpoint:  # OTLP/HTTP: the base endpoint gets the signal path, as OTEL_EXPORTER_OTLP_ENDPOINT does
        kwargs["endpoint"] = endpoint.rstrip("/") + ("/v1/traces" if signal == "traces" else "/v1/metrics")
    if signal == "traces":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPSpanExporter

        return HTTPSpanExporter(**kwargs)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HTTPMetricExporter

    return HTTPMetricExporter(**kwargs)


def _exporters(
    signal: str, endpoint: str | None, protocol: str | None, environ: Mapping[str, str]
) -> list[tuple[str, Any]]:
    """The exporters ``OTEL_{TRACES,METRICS}_EXPORTER`` names (default ``otlp``), built."""
    names = _env(environ, f"OTEL_{signal.upper()}_EXPORTER") or "otlp"
    out: list[tuple[str, Any]] = []
    for name in (n.strip() for n in names.split(",")):
        if not name or name == "none":
            continue
        if name == "otlp":
            chosen = _protocol(signal, protocol, environ)
            out.append((f"otlp ({chosen})", _otlp_exporter(signal, chosen, endpoint)))
        elif name in ("otlp_proto_grpc", "otlp_proto_http"):
            chosen = "grpc" if name.endswith("grpc") else "http/protobuf"
            out.append((f"otlp ({chosen})", _otlp_exporter(signal, chosen, endpoint)))
        elif name == "console":
            if signal == "traces":
                from opentelemetry.sdk.trace.export import ConsoleSpanExporter

                out.append((name, ConsoleSpanExporter()))
            else:
                from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

                out.append((name, ConsoleMetricExporter()))
        else:
            out.append((name, _entry_point_exporter(signal, name)))
    return out


def _entry_point_exporter(signal: str, name: str) -> Any:
    """Any other exporter an installed package registers, as the SDK's auto-configuration finds it."""
    from importlib.metadata import entry_points

    group = f"opentelemetry_{signal}_exporter"
    for ep in entry_points(group=group):
        if ep.name == name:
            return ep.load()()
    raise TelemetryConfigError(
        f"OTEL_{signal.upper()}_EXPORTER names {name!r}, but no installed package provides it ({group})"
    )


# --------------------------------------------------------------------------- configure()


@dataclass
class TelemetrySetup:
    """What :func:`configure` found or installed.

    ``tracer_provider`` / ``meter_provider`` are the providers in effect (the
    ones it built, or the application's own it left alone).
    """

    tracer_provider: trace.TracerProvider
    meter_provider: otel_metrics.MeterProvider
    traces_installed: bool = False
    metrics_installed: bool = False
    span_exporters: list[str] = field(default_factory=list)
    metric_exporters: list[str] = field(default_factory=list)
    signing_key_id: str | None = None
    """The id of the key decisions are signed with (``signing_key`` or ``UNHARDCODED_SIGNING_KEY``), if any."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Send what is buffered now (only through providers ``configure`` installed)."""
        ok = True
        if self.traces_installed:  # then the SDK's own providers, built by configure
            ok = cast(TracerProvider, self.tracer_provider).force_flush(timeout_millis) and ok
        if self.metrics_installed:
            ok = cast(MeterProvider, self.meter_provider).force_flush(timeout_millis) and ok
        return ok

    def shutdown(self) -> None:
        """Flush and stop the providers ``configure`` installed; the application's own are left running."""
        if self.traces_installed:
            cast(TracerProvider, self.tracer_provider).shutdown()
        if self.metrics_installed:
            cast(MeterProvider, self.meter_provider).shutdown()


def _is_real_meter_provider(provider: otel_metrics.MeterProvider) -> bool:
    if isinstance(provider, otel_metrics.NoOpMeterProvider):
        return False
    try:
        from opentelemetry.metrics._internal import _ProxyMeterProvider
    except ImportError:  # an API that moved it: judge by name
        return type(provider).__name__ != "_ProxyMeterProvider"
    return not isinstance(provider, _ProxyMeterProvider)


def _is_real_tracer_provider(provider: trace.TracerProvider) -> bool:
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def _resource(
    service_name: str | None, resource_attributes: Mapping[str, Any] | None, environ: Mapping[str, str]
) -> Resource:
    attrs = dict(resource_attributes or {})
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are the operator's word: the name in code is only a default.
    env_names_service = _env(environ, "OTEL_SERVICE_NAME") or any(
        part.split("=", 1)[0].strip() == SERVICE_NAME for part in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(",")
    )
    if service_name and not env_names_service:
        attrs[SERVICE_NAME] = service_name
    elif env_names_service:
        attrs.pop(SERVICE_NAME, None)
    return Resource.create(attrs)


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
    """Install a TracerProvider and a MeterProvider exporting over OTLP, unless the application already has its own.

    - ``service_name``: used when ``OTEL_SERVICE_NAME`` (or ``service.name`` in
      ``OTEL_RESOURCE_ATTRIBUTES``) does not name the service;
    - ``endpoint`` / ``protocol`` (``grpc`` or ``http/protobuf``): override
      ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_PROTOCOL``; an
      OTLP/HTTP endpoint is the base URL (``/v1/traces`` is appended);
    - ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` choose the
      exporters (default ``otlp``; ``none``, ``console``, ``otlp_proto_grpc``,
      ``otlp_proto_http`` or any installed exporter's entry point name);
      ``span_exporter`` / ``metric_reader`` add one of your own;
    - ``OTEL_SDK_DISABLED=true`` installs nothing;
    - ``set_global=False`` builds the providers and returns them without
      installing them globally (then pass them to ``Router(tracer_provider=...,
      meter_provider=...)``);
    - ``signing_key`` (a PEM Ed25519 private key's path, or a loaded
      ``SigningKey``): every decision span ends signed (docs/signing.md);
      without it, the key file ``UNHARDCODED_SIGNING_KEY`` names, if set. A key
      that cannot be read raises ``SigningKeyError`` (a ``ConfigError``).

    A global provider the application already set is kept and returned with
    ``*_installed`` False. Raises :class:`TelemetryConfigError` for an
    unsupported protocol or an exporter name nothing provides.
    """
    env = os.environ
    current_tp = trace.get_tracer_provider()
    current_mp = otel_metrics.get_meter_provider()
    setup = TelemetrySetup(tracer_provider=current_tp, meter_provider=current_mp)
    signer = use_signing_key(signing_key) if signing_key is not None else configured_signer()
    setup.signing_key_id = signer.key_id if signer is not None else None
    if sdk_disabled(env):
        logger.info("OTEL_SDK_DISABLED is set: no OpenTelemetry SDK installed")
        return setup
    resource: Resource | None = None
    if traces and not (set_global and _is_real_tracer_provider(current_tp)):
        resource = _resource(service_name, resource_attributes, env)
        tp = TracerProvider(resource=resource)
        for name, exporter in _exporters("traces", endpoint, protocol, env):
            tp.add_span_processor(BatchSpanProcessor(_CountingSpanExporter(exporter)))
            setup.span_exporters.append(name)
        if span_exporter is not None:
            tp.add_span_processor(BatchSpanProcessor(_CountingSpanExporter(span_exporter)))
            setup.span_exporters.append(type(span_exporter).__name__)
        if set_global:
            trace.set_tracer_provider(tp)
        setup.tracer_provider, setup.traces_installed = tp, True
    elif traces:
        logger.info("a tracer provider is already installed (%s): left as it is", type(current_tp).__name__)
    if metrics and not (set_global and _is_real_meter_provider(current_mp)):
        resource = resource or _resource(service_name, resource_attributes, env)
        readers: list[MetricReader] = []
        for name, exporter in _exporters("metrics", endpoint, protocol, env):
            readers.append(
                PeriodicExportingMetricReader(
                    _CountingMetricExporter(exporter), export_interval_millis=metric_export_interval_ms
                )
            )
            setup.metric_exporters.append(name)
        if metric_reader is not None:
            readers.append(metric_reader)
            setup.metric_exporters.append(type(metric_reader).__name__)
        mp = MeterProvider(resource=resource, metric_readers=readers)
        if set_global:
            otel_metrics.set_meter_provider(mp)
        setup.meter_provider, setup.metrics_installed = mp, True
    elif metrics:
        logger.info("a meter provider is already installed (%s): left as it is", type(current_mp).__name__)
    return setup
