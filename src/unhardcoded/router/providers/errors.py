"""The one exception a provider call raises, with the fallback trigger (``kind``) the cascade acts on."""

from __future__ import annotations

from typing import Any, Literal

from ...errors import UnhardcodedError

__all__ = ["ErrorKind", "ProviderCallError"]

ErrorKind = Literal["error", "timeout", "rate_limit"]


class ProviderCallError(UnhardcodedError):
    """A provider call failed; ``kind`` says which fallback trigger it is.

    ``error_type`` is a short, low-cardinality class for the OpenTelemetry
    ``error.type`` attribute: the HTTP status as a string (``"500"``,
    ``"429"``) or one of ``timeout``, ``connect_error``, ``transport_error``,
    ``invalid_response``, ``missing_api_key``, ``unknown_provider``, ``tls_error`` (the
    provider's certificate refused, or no TLS spoken), ``response_too_large`` (a body over 32 MiB after
    decompression, a streamed line over 1 MiB, or a response header over 64 KiB),
    ``stream_interrupted``, ``stream_error``.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind,
        error_type: str,
        provider: str,
        model: str,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        ratelimit: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind: ErrorKind = kind
        self.error_type = error_type
        self.provider = provider
        self.model = model
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.ratelimit = ratelimit
        """The rate-limit headers of the failed answer, when it had any."""

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"ProviderCallError(kind={self.kind!r}, error_type={self.error_type!r}, "
            f"provider={self.provider!r}, model={self.model!r}, status_code={self.status_code!r}, "
            f"retry_after_s={self.retry_after_s!r}, message={self.message!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_call_error, (self.message, self._fields()))

    def _fields(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "error_type": self.error_type,
            "provider": self.provider,
            "model": self.model,
            "status_code": self.status_code,
            "retry_after_s": self.retry_after_s,
            "ratelimit": self.ratelimit,
        }


def _rebuild_call_error(message: str, fields: dict[str, Any]) -> ProviderCallError:
    return ProviderCallError(message, **fields)
