"""Forwarding to a next hop (a Collector, Jaeger, Tempo): the accepted spans, unchanged, over OTLP.

Forwarding runs on its own thread from a bounded queue, after the export is
acknowledged: a next hop that is slow or down costs forwarded copies (counted),
never receipts, and never slows ingestion.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..errors import ConfigError

if TYPE_CHECKING:
    from .metrics import ProcessorMetrics

logger = logging.getLogger(__name__)

_STOP = b""


class Forwarder:
    """Sends serialized ``ExportTraceServiceRequest``s to ``url`` by OTLP/HTTP (protobuf) or OTLP/gRPC."""

    def __init__(
        self,
        url: str,
        protocol: str = "http",
        metrics: "ProcessorMetrics | None" = None,
        *,
        max_queue: int = 1000,
        attempts: int = 3,
        timeout_s: float = 10.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        if protocol not in ("http", "grpc"):
            raise ConfigError(f"--forward-protocol {protocol!r}: expected grpc or http")
        parts = urlsplit(url if "://" in url else ("http://" + url))
        if not parts.hostname:
            raise ConfigError(f"--forward {url!r}: expected a URL such as http://collector:4318 or collector:4317")
        self.protocol = protocol
        self.metrics = metrics
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        if protocol == "http":
            path = parts.path.rstrip("/")
            self.url = f"{parts.scheme}://{parts.netloc}{path if path.endswith('/v1/traces') else path + '/v1/traces'}"
        else:
            self.url = parts.netloc
            self._tls = parts.scheme == "https"
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=max_queue)
        self.sent = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="unhardcoded-forward", daemon=True)
        self._thread.start()

    def send(self, payload: bytes) -> None:
        """Queue one export for the next hop; when the queue is full the copy is dropped and counted."""
        if not payload:
            return
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            self._failed(1)

    def _failed(self, n: int) -> None:
        self.failed += n
        if self.metrics is not None:
            self.metrics.forward_dropped(n, "retries_exhausted")

    def _client(self):  # type: ignore[no-untyped-def]
        if self.protocol == "http":
            import httpx

            client = httpx.Client(timeout=self.timeout_s)
            headers = {"Content-Type": "application/x-protobuf", **self.headers}

            def post(payload: bytes) -> None:
                r = client.post(self.url, content=payload, headers=headers)
                if r.status_code >= 300:
                    raise RuntimeError(f"next hop answered {r.status_code}")

            return post, client.close
        import grpc

        channel = grpc.secure_channel(self.url, grpc.ssl_channel_credentials()) if self._tls else grpc.insecure_channel(self.url)
        export = channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=None,  # the payload is already serialized: send the bytes as they are
            response_deserializer=None,
        )
        metadata = tuple((k.lower(), v) for k, v in self.headers.items())

        def call(payload: bytes) -> None:
            export(payload, timeout=self.timeout_s, metadata=metadata)

        return call, channel.close

    def _run(self) -> None:
        send, close = self._client()
        try:
            while True:
                payload = self._queue.get()
                if payload is _STOP:
                    return
                for attempt in range(self.attempts):
                    try:
                        send(payload)
                        self.sent += 1
                        if self.metrics is not None:
                            self.metrics.forward_sent(1)
                        break
                    except Exception as exc:  # noqa: BLE001 - a next hop that fails costs the copy, nothing else
                        if attempt + 1 == self.attempts:
                            logger.warning("forward to %s failed: %s", self.url, exc)
                            self._failed(1)
                        else:
                            time.sleep(min(2.0, 0.2 * 2**attempt))
        finally:
            close()

    def stop(self, timeout_s: float = 5.0) -> None:
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)
