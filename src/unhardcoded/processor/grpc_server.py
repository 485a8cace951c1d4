"""OTLP/gRPC ingest: ``TraceService/Export`` (and empty ``MetricsService`` / ``LogsService`` answers).

Every service asks for the ingest token when one is set (``UNAUTHENTICATED``
without it), as ``/v1/traces``, ``/v1/metrics`` and ``/v1/logs`` answer 401.

The trace handler takes the request as bytes and hands them to the processor's
worker, which decodes them, so a payload that is not OTLP is
``INVALID_ARGUMENT`` (grpcio's own decoding would answer ``INTERNAL``, which
exporters do not treat as the sender's fault).
Backpressure is ``RESOURCE_EXHAUSTED`` (too much queued) or ``UNAVAILABLE``
(store failing, stopping), each with ``RetryInfo`` in the status details and
in ``google.rpc.retryinfo-bin``, which the Python SDK's exporter reads.
"""

from __future__ import annotations

import logging
from concurrent import futures
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from . import otlp
from .api import token_matches
from .service import Backpressure

if TYPE_CHECKING:
    from .service import ProcessorEngine

logger = logging.getLogger(__name__)

_TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
_METRICS_SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"
_LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"


def _abort(
    context: grpc.ServicerContext, code: grpc.StatusCode, message: str, retry_after_s: float | None = None
) -> None:
    if retry_after_s is not None:
        from google.rpc import error_details_pb2, status_pb2

        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromNanoseconds(int(retry_after_s * 1e9))
        status = status_pb2.Status(code=code.value[0], message=message)
        status.details.add().Pack(info)
        context.set_trailing_metadata(
            (
                ("grpc-status-details-bin", status.SerializeToString()),
                ("google.rpc.retryinfo-bin", info.SerializeToString()),
            )
        )
    context.abort(code, message)


def _authorized(context: grpc.ServicerContext, token: str | None) -> bool:
    if token is None:
        return True
    header = next((v for k, v in context.invocation_metadata() if k == "authorization"), None)
    return token_matches(header if isinstance(header, str) else None, token)


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, processor: ProcessorEngine, token: str | None, ack_timeout_s: float) -> None:
        self.processor = processor
        self.token = token
        self.ack_timeout_s = ack_timeout_s

    def _authorized(self, context: grpc.ServicerContext) -> bool:
        return _authorized(context, self.token)

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        metrics = self.processor.metrics
        if not self._authorized(context):
            metrics.payload_rejected("unauthorized")
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        raw = request if isinstance(request, bytes) else request.SerializeToString()
        try:
            decoded = self.processor.submit_export(raw, "protobuf", "grpc").result(self.ack_timeout_s)
        except otlp.PayloadError as exc:
            metrics.payload_rejected("malformed")
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc)[:500])
        except Backpressure as exc:
            metrics.payload_rejected("busy" if exc.busy else "unavailable")
            code = grpc.StatusCode.RESOURCE_EXHAUSTED if exc.busy else grpc.StatusCode.UNAVAILABLE
            _abort(context, code, str(exc), exc.retry_after_s)
        except futures.TimeoutError:
            metrics.payload_rejected("unavailable")
            _abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "the spool did not answer in time",
                self.processor.config.retry_after_s,
            )
        forwarder = self.processor.forwarder
        if forwarder is not None and decoded.accepted:
            message = decoded.message  # None only when the body was read through the bytes view, untouched
            forwarder.send(raw if decoded.untouched or message is None else message.SerializeToString())
        return otlp.response_message(decoded)


class _OtherSignal:
    """Metrics or logs: not ours, taken (a Collector sending everything here sees no errors) and dropped unread,
    behind the same token as traces."""

    def __init__(self, token: str | None, response: Any) -> None:
        self.token = token
        self.response = response

    def Export(self, request: bytes, context: grpc.ServicerContext) -> Any:
        if not _authorized(context, self.token):
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        return self.response


def start_grpc_server(
    processor: ProcessorEngine,
    host: str,
    port: int,
    *,
    token: str | None = None,
    max_message_bytes: int = 16 * 1024 * 1024,
    ack_timeout_s: float = 30.0,
    workers: int = 8,
) -> tuple[grpc.Server, int]:
    """Start the OTLP/gRPC receiver; returns the server and the port it is bound to (``port`` 0 picks one)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="unhardcoded-grpc"),
        options=[("grpc.max_receive_message_length", max_message_bytes), ("grpc.so_reuseport", 0)],
    )
    service = TraceService(processor, token, ack_timeout_s)
    handler = grpc.method_handlers_generic_handler(
        _TRACE_SERVICE,
        {
            "Export": grpc.unary_unary_rpc_method_handler(
                service.Export,
                request_deserializer=None,  # bytes in: decoded (and refused as INVALID_ARGUMENT) by us
                response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString,
            ),
        },
    )
    others = [
        grpc.method_handlers_generic_handler(
            name,
            {
                "Export": grpc.unary_unary_rpc_method_handler(
                    _OtherSignal(token, response).Export,
                    request_deserializer=None,  # never parsed: what is dropped cannot fail to decode
                    response_serializer=type(response).SerializeToString,
                )
            },
        )
        for name, response in (
            (_METRICS_SERVICE, metrics_service_pb2.ExportMetricsServiceResponse()),
            (_LOGS_SERVICE, logs_service_pb2.ExportLogsServiceResponse()),
        )
    ]
    server.add_generic_rpc_handlers((handler, *others))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_insecure_port(address)
    if bound == 0:
        from ..errors import ConfigError

        raise ConfigError(f"--grpc-port: cannot listen on {address}")
    server.start()
    return server, bound
