"""Forwarding to a next hop (a Collector, Jaeger, Tempo): the accepted spans, unchanged, over OTLP.

It behaves as the Collector's own OTLP exporters do: exports wait in a bounded
queue, a send that fails in a way worth retrying is retried with exponential
backoff and jitter (honouring ``Retry-After`` and gRPC ``RetryInfo``) until a
time limit, and what cannot be delivered is dropped and counted, in spans, with
why. It runs on its own thread after the export is acknowledged, so a next hop
that is slow or down costs forwarded copies, never receipts, and never slows
ingestion.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .._wire import delimited_fields, retry_after_seconds
from ..errors import ConfigError, UnhardcodedError

if TYPE_CHECKING:
    from .metrics import ProcessorMetrics

logger = logging.getLogger(__name__)

DEFAULT_QUEUE_BYTES = 64 * 1024 * 1024
"""Exports held for the next hop, in bytes, the one being sent included."""

# What the Collector's OTLP exporters retry: HTTP 429/502/503/504 and these gRPC codes
# (RESOURCE_EXHAUSTED only when the server says when to come back).
_RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
_THROTTLING_HTTP = frozenset({429, 503})
_RETRYABLE_GRPC = frozenset({"CANCELLED", "DEADLINE_EXCEEDED", "ABORTED", "OUT_OF_RANGE", "UNAVAILABLE", "DATA_LOSS"})


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a failed send again; the defaults are the Collector's ``retry_on_failure`` defaults."""

    initial_interval_s: float = 5.0
    max_interval_s: float = 30.0
    max_elapsed_s: float = 300.0
    """Give up on an export this long after its first attempt; 0 retries for as long as it takes."""
    multiplier: float = 1.5
    randomization: float = 0.5

    def __post_init__(self) -> None:
        if not (
            self.initial_interval_s > 0 and self.max_interval_s >= self.initial_interval_s and self.max_elapsed_s >= 0
        ):
            raise ConfigError(
                f"--forward-retry-initial-interval {self.initial_interval_s} --forward-retry-max-interval "
                f"{self.max_interval_s} --forward-retry-max-elapsed {self.max_elapsed_s}: need 0 < initial <= max "
                "interval, and max elapsed 0 (no limit) or more"
            )

    def delays(self) -> Iterator[float]:
        """Exponential backoff with jitter: each delay is the current interval, randomized by +-``randomization``."""
        interval = self.initial_interval_s
        while True:
            spread = self.randomization * interval
            yield random.uniform(interval - spread, interval + spread)
            interval = min(self.max_interval_s, interval * self.multiplier)


class SendFailed(UnhardcodedError):
    """The next hop did not take an export; ``retryable`` says whether sending it again may work."""

    def __init__(self, message: str, retryable: bool, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


# --------------------------------------------------------------------------- counting spans on the wire


def count_spans(payload: bytes) -> int:
    """Spans in a serialized ``ExportTraceServiceRequest``, counted from the wire format without decoding them."""
    n = 0
    for resource_spans in delimited_fields(payload, 0, len(payload), 1):
        for scope_spans in delimited_fields(payload, *resource_spans, 2):
            n += len(delimited_fields(payload, *scope_spans, 2))
    return n


def _rejected_spans(response: bytes) -> tuple[int, str]:
    """``partial_success.rejected_spans`` and its message from a serialized ``ExportTraceServiceResponse``."""
    if not response:
        return 0, ""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    try:
        answer = ExportTraceServiceResponse.FromString(response)
    except Exception:  # noqa: BLE001 - a success with a body we cannot read is still a success
        return 0, ""
    return answer.partial_success.rejected_spans, answer.partial_success.error_message


# --------------------------------------------------------------------------- the forwarder


class Forwarder:
    """Sends serialized ``ExportTraceServiceRequest``s to ``url`` by OTLP/HTTP (protobuf) or OTLP/gRPC."""

    def __init__(
        self,
        url: str,
        protocol: str = "http",
        metrics: ProcessorMetrics | None = None,
        *,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        retry: RetryPolicy | None = None,
        timeout_s: float = 5.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        if protocol not in ("http", "grpc"):
            raise ConfigError(f"--forward-protocol {protocol!r}: expected grpc or http")
        parts = urlsplit(url if "://" in url else ("http://" + url))
        if not parts.hostname:
            raise ConfigError(f"--forward {url!r}: expected a URL such as http://collector:4318 or collector:4317")
        if queue_bytes < 1:
            raise ConfigError(f"--forward-queue-bytes {queue_bytes}: expected a positive number")
        if not timeout_s > 0:
            raise ConfigError(f"--forward-timeout {timeout_s}: expected seconds, more than 0")
        self.protocol = protocol
        self.metrics = metrics
        self.retry = retry or RetryPolicy()
        self.timeout_s = timeout_s
        self.queue_bytes = queue_bytes
        self.headers = dict(headers or {})
        if protocol == "http":
            path = parts.path.rstrip("/")
            self.url = f"{parts.scheme}://{parts.netloc}{path if path.endswith('/v1/traces') else path + '/v1/traces'}"
        else:
            self.url = parts.netloc
            self._tls = parts.scheme == "https"
        self._queue: deque[tuple[bytes, int | None]] = deque()
        self._bytes = 0
        """Bytes queued plus the export being sent."""
        self._sending = 0
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._deadline = float("inf")
        """Once stopping: when the last send may start."""
        self._down = False
        self.sent = 0
        """Spans the next hop accepted."""
        self.dropped = 0
        """Spans it never got."""
        self._thread = threading.Thread(target=self._run, name="unhardcoded-forward", daemon=True)
        self._thread.start()

    # -- the front doors call this -------------------------------------------------------------------

    def send(self, payload: bytes, spans: int | None = None) -> None:
        """Queue one export for the next hop (never blocks); when it does not fit, it is dropped and counted."""
        if not payload:
            return
        with self._cond:
            if self._stopping.is_set():
                reason = "shutdown"
            elif self._bytes and self._bytes + len(payload) > self.queue_bytes:
                reason = "queue_full"  # (an export bigger than the whole queue still goes when nothing else waits)
            else:
                self._queue.append((payload, spans))
                self._bytes += len(payload)
                self._report_queue()
                self._cond.notify()
                return
        self._drop(payload, spans, reason)

    # -- the worker ------------------------------------------------------------------------------------

    def _report_queue(self) -> None:
        if self.metrics is not None:
            self.metrics.forward_queue(len(self._queue) + self._sending, self._bytes)

    def _spans(self, payload: bytes, spans: int | None) -> int:
        if spans is not None:
            return spans
        try:
            return count_spans(payload)
        except (ValueError, IndexError):
            logger.debug("forward: could not count the spans of a %d-byte export", len(payload))
            return 0

    def _drop(self, payload: bytes, spans: int | None, reason: str) -> None:
        n = self._spans(payload, spans)
        with self._cond:
            self.dropped += n
        if self.metrics is not None:
            self.metrics.forward_dropped(n, reason)

    def _run(self) -> None:
        send, close = self._client()
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._stopping.is_set():
                        self._cond.wait()
                    if not self._queue:
                        return
                    payload, spans = self._queue.popleft()
                    self._sending = 1
                try:
                    self._deliver(send, payload, spans)
                except Exception:
                    logger.exception("forward: unexpected error; export dropped")
                    self._drop(payload, spans, "rejected")
                finally:
                    with self._cond:
                        self._sending = 0
                        self._bytes -= len(payload)
                        self._report_queue()
        finally:
            close()

    def _deliver(self, send: Callable[[bytes], bytes], payload: bytes, spans: int | None) -> None:
        started = time.monotonic()
        delays = self.retry.delays()
        while True:
            if time.monotonic() >= self._deadline:
                self._drop(payload, spans, "shutdown")
                return
            try:
                response = send(payload)
            except SendFailed as exc:
                if not exc.retryable:
                    logger.warning(
                        "forward to %s: the next hop refused an export for good (%s); dropped", self.url, exc
                    )
                    self._drop(payload, spans, "rejected")
                    return
                if not self._down:
                    logger.warning("forward to %s failed (%s); retrying with backoff", self.url, exc)
                    self._down = True
                delay = next(delays)
                if exc.retry_after_s is not None:
                    delay = max(delay, exc.retry_after_s)
                limit = self.retry.max_elapsed_s
                if limit and time.monotonic() - started + delay > limit:
                    logger.warning("forward to %s: no success in %.0f s; export dropped", self.url, limit)
                    self._drop(payload, spans, "retries_exhausted")
                    return
                if self._stopping.is_set():  # as the Collector does: no retrying once stopping
                    self._drop(payload, spans, "shutdown")
                    return
                if self.metrics is not None:
                    self.metrics.add(forward_retries=1)
                self._stopping.wait(delay)  # a stop cuts the wait short: one last try
                continue
            if self._down:
                logger.info("forward to %s: the next hop answers again", self.url)
                self._down = False
            n = self._spans(payload, spans)
            rejected, message = _rejected_spans(response)
            rejected = min(rejected, n)
            with self._cond:
                self.sent += n - rejected
            if self.metrics is not None:
                self.metrics.forward_sent(n - rejected)
            if rejected:
                logger.warning("forward to %s: the next hop rejected %d spans: %s", self.url, rejected, message[:300])
                self._drop(b"", rejected, "rejected")
            return

    # -- transports ------------------------------------------------------------------------------------

    def _client(self) -> tuple[Callable[[bytes], bytes], Callable[[], None]]:
        return self._http_client() if self.protocol == "http" else self._grpc_client()

    def _http_client(self) -> tuple[Callable[[bytes], bytes], Callable[[], None]]:
        import httpx

        client = httpx.Client(timeout=self.timeout_s)
        headers = {"Content-Type": "application/x-protobuf", **self.headers}

        def post(payload: bytes) -> bytes:
            try:
                r = client.post(self.url, content=payload, headers=headers)
            except httpx.HTTPError as exc:  # refused, reset, timed out: the Collector retries these too
                raise SendFailed(f"{type(exc).__name__}: {exc}", retryable=True) from None
            if 200 <= r.status_code < 300:
                return r.content
            retry_after = retry_after_seconds(r.headers) if r.status_code in _THROTTLING_HTTP else None
            raise SendFailed(
                f"next hop answered {r.status_code}",
                retryable=r.status_code in _RETRYABLE_HTTP,
                retry_after_s=retry_after,
            )

        return post, client.close

    def _grpc_client(self) -> tuple[Callable[[bytes], bytes], Callable[[], None]]:
        import grpc

        # A channel whose next hop was down reconnects on its own schedule; keep it near our retry pace.
        reconnect_ms = int(min(5.0, self.retry.max_interval_s) * 1000)
        options = [
            ("grpc.initial_reconnect_backoff_ms", int(min(1.0, self.retry.initial_interval_s) * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(min(1.0, self.retry.initial_interval_s) * 1000)),
            ("grpc.max_reconnect_backoff_ms", reconnect_ms),
        ]
        if self._tls:
            channel = grpc.secure_channel(self.url, grpc.ssl_channel_credentials(), options=options)
        else:
            channel = grpc.insecure_channel(self.url, options=options)
        export = channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=None,  # the payload is already serialized: send the bytes as they are
            response_deserializer=None,
        )
        metadata = tuple((k.lower(), v) for k, v in self.headers.items())

        def call(payload: bytes) -> bytes:
            try:
                answer: bytes = export(payload, timeout=self.timeout_s, metadata=metadata)
                return answer
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                name = code.name if code is not None else "UNKNOWN"
                delay = _retry_info(exc)
                retryable = name in _RETRYABLE_GRPC or (name == "RESOURCE_EXHAUSTED" and delay is not None)
                details = exc.details() if hasattr(exc, "details") else ""
                raise SendFailed(f"{name}: {details}", retryable=retryable, retry_after_s=delay) from None

        return call, channel.close

    # -- lifecycle -------------------------------------------------------------------------------------

    def stop(self, timeout_s: float = 5.0) -> None:
        """Take no more exports; try what is queued once each for up to ``timeout_s``, drop and count the rest."""
        with self._cond:
            self._deadline = time.monotonic() + timeout_s
            self._stopping.set()
            self._cond.notify_all()
        self._thread.join(timeout_s + self.timeout_s)
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
        for payload, spans in left:
            self._drop(payload, spans, "shutdown")


def _retry_info(exc: object) -> float | None:
    """The delay in a gRPC error's ``RetryInfo`` (status details), if the server sent one."""
    trailing = getattr(exc, "trailing_metadata", None)
    try:
        metadata = trailing() if callable(trailing) else None
    except Exception:  # noqa: BLE001
        metadata = None
    for key, value in metadata or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            try:
                from google.rpc import error_details_pb2, status_pb2

                status = status_pb2.Status.FromString(value)
                for detail in status.details:
                    if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                        info = error_details_pb2.RetryInfo()
                        detail.Unpack(info)
                        delay: float = info.retry_delay.ToNanoseconds() / 1e9
                        return delay
            except Exception:  # noqa: BLE001 - unreadable details: no delay given
                return None
    return None
