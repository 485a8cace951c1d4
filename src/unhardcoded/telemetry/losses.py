"""What telemetry could not record, counted: telemetry never breaks a request, so its losses must be readable.

Read in process with :func:`losses`, and exported as the ``unhardcoded.telemetry.losses``
counter (by ``unhardcoded.telemetry.loss.kind``) through the global meter provider.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, fields
from typing import Any

from opentelemetry import metrics

from ..semconv import attributes as A
from ..semconv import metrics as M
from .scope import INSTRUMENTATION_SCOPE, VERSION

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TelemetryLosses:
    """Counts since the process started (or since :func:`reset_losses`).

    - ``unencodable``: values that could not be encoded as they are (a rejection
      threshold JSON cannot hold, an attribute of a type OpenTelemetry refuses);
    - ``truncated``: string attributes cut by an attribute length limit;
    - ``dropped_attributes`` / ``dropped_events``: what the SDK's span limits
      dropped from our spans;
    - ``spans_not_exported`` / ``metric_exports_failed``: spans an exporter
      installed by :func:`unhardcoded.telemetry.configure` failed to send, and
      failed metric exports;
    - ``errors``: unexpected exceptions inside the telemetry code (the request
      went on; the span or metric point they were building is partial or missing).
    """

    unencodable: int = 0
    truncated: int = 0
    dropped_attributes: int = 0
    dropped_events: int = 0
    spans_not_exported: int = 0
    metric_exports_failed: int = 0
    errors: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))


_NAMES = frozenset(f.name for f in fields(TelemetryLosses))
_counts: dict[str, int] = dict.fromkeys(_NAMES, 0)
_lock = threading.Lock()

# The global proxy meter: a no-op until an application installs a meter provider, then it delegates.
# A loss is counted from wherever it happens (an exporter's thread included), so the counter is global too.
_counter = M.create_unhardcoded_telemetry_losses(metrics.get_meter(INSTRUMENTATION_SCOPE, VERSION))
_kind_attributes: dict[str, dict[str, Any]] = {kind: {A.UNHARDCODED_TELEMETRY_LOSS_KIND: kind} for kind in _NAMES}


def count_loss(kind: str, n: int = 1) -> None:
    """Add ``n`` to one of the :class:`TelemetryLosses` counters (and to the ``unhardcoded.telemetry.losses`` metric)."""
    if n <= 0:
        return
    with _lock:
        _counts[kind] += n
    try:
        _counter.add(n, _kind_attributes[kind])
    except Exception:
        logger.debug("could not record a telemetry loss on the metric", exc_info=True)


def count_error(what: str) -> None:
    """An exception escaped telemetry code; it is swallowed here, counted and logged (with its traceback at DEBUG)."""
    count_loss("errors")
    # Called from the caller's `except` block, so the exception being handled is the one logged.
    logger.debug("telemetry error while %s; the request is unaffected", what, exc_info=True)  # noqa: LOG014


def losses() -> TelemetryLosses:
    """A snapshot of what telemetry lost so far in this process."""
    with _lock:
        return TelemetryLosses(**_counts)


def reset_losses() -> TelemetryLosses:
    """Zero the counters; returns what they held."""
    with _lock:
        snapshot = TelemetryLosses(**_counts)
        for name in _NAMES:
            _counts[name] = 0
    return snapshot
