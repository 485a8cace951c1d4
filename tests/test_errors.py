"""Every exception the package raises on purpose derives from UnhardcodedError, keeping the bases callers catch."""

from __future__ import annotations

import pytest

from unhardcoded.errors import UnhardcodedError
from unhardcoded.processor.forward import SendFailed
from unhardcoded.processor.otlp import PayloadError, PayloadTooLarge, UnsupportedMediaType
from unhardcoded.processor.service import Backpressure
from unhardcoded.server.errors import APIError


@pytest.mark.parametrize(
    "error",
    [
        PayloadError("not OTLP"),
        PayloadTooLarge("too big"),
        UnsupportedMediaType("text/plain"),
        SendFailed("next hop answered 503", retryable=True),
        Backpressure("queue full", retry_after_s=1.0, busy=True),
        APIError(400, "bad request"),
    ],
)
def test_the_package_exceptions_have_one_root(error: Exception) -> None:
    assert isinstance(error, UnhardcodedError)


def test_a_bad_payload_is_still_a_value_error() -> None:
    # The processor's query API answers a ValueError with 400 before it answers an UnhardcodedError with 503.
    assert issubclass(PayloadError, ValueError)
