"""Test your own policies: simulated providers on loopback and an in-memory capture of the telemetry they cause.

``unhardcoded.testing.capture()`` (or the ``unhardcoded_capture`` pytest fixture) gives a router whose
decision spans, receipts and metrics a test can read back; pytest itself is needed only for the fixture.
"""

from __future__ import annotations

from .capture import MetricPoint, TelemetryCapture, capture
from .simulator import (
    Behavior,
    CutAfterTokens,
    CutBeforeFirstToken,
    Error,
    FailTimes,
    Ok,
    RateLimit,
    Raw,
    RecordedRequest,
    SimulatedProvider,
    Timeout,
    cut_after_tokens,
    cut_before_first_token,
    error,
    fail_times,
    ok,
    rate_limit,
    raw,
    timeout,
)

__all__ = [
    "Behavior",
    "CutAfterTokens",
    "CutBeforeFirstToken",
    "Error",
    "FailTimes",
    "MetricPoint",
    "Ok",
    "RateLimit",
    "Raw",
    "RecordedRequest",
    "SimulatedProvider",
    "TelemetryCapture",
    "Timeout",
    "capture",
    "cut_after_tokens",
    "cut_before_first_token",
    "error",
    "fail_times",
    "ok",
    "rate_limit",
    "raw",
    "timeout",
]
