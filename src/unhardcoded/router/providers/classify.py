"""What a failed provider call was (status, transport failure), its provider's own error message, and key scrubbing."""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx

from ..._wire import retry_after_seconds
from .errors import ErrorKind, ProviderCallError
from .http11 import ResponseTooLarge

if TYPE_CHECKING:
    from .calls import HttpReply, PreparedCall

__all__ = ["error_detail", "int_or_none", "json_or_none", "scrub", "scrub_json", "status_failure", "transport_failure"]

_REDACTED = "[REDACTED]"
_BEARER = re.compile(r"(?i)(bearer\s+)(\[REDACTED\]|[^\s\"',;}\]]+)")
_DETAIL_LIMIT = 300


def status_failure(call: PreparedCall, response: HttpReply, text: str) -> ProviderCallError:
    status = response.status_code
    retry_after = retry_after_seconds(response.headers)
    kind: ErrorKind
    if status == 429:
        kind = "rate_limit"
    elif status in (408, 504):
        kind = "timeout"
    else:
        kind = "error"
    detail = error_detail(json_or_none(text), text, call.secret)
    message = f"HTTP {status}" + (f": {detail}" if detail else "")
    if retry_after is not None:
        message += f" (retry after {retry_after:g} s)"
    return call.failure(
        message,
        kind=kind,
        error_type=str(status),
        status_code=status,
        retry_after_s=retry_after,
        ratelimit=ratelimit_headers(response.headers),
    )


def transport_failure(call: PreparedCall, exc: httpx.HTTPError) -> ProviderCallError:
    name = exc.__class__.__name__
    if isinstance(exc, httpx.TimeoutException):
        return call.failure(f"timed out ({name}, timeout {call.timeout_s:g} s)", kind="timeout", error_type="timeout")
    if isinstance(exc, ResponseTooLarge) or _header_too_large(exc):
        return too_large(call, exc)
    if isinstance(exc, httpx.DecodingError):
        return undecodable(call, exc)
    if isinstance(exc, httpx.ConnectError) and (tls := _tls_cause(exc)) is not None:
        reason = getattr(tls, "verify_message", None) or tls.reason or tls.__class__.__name__
        return call.failure(f"TLS handshake with {call.url} failed ({reason})", kind="error", error_type="tls_error")
    if isinstance(exc, httpx.ConnectError):
        return call.failure(f"cannot connect to {call.url} ({name}: {exc})", kind="error", error_type="connect_error")
    return call.failure(f"transport failure ({name}: {exc})", kind="error", error_type="transport_error")


def _header_too_large(exc: httpx.HTTPError) -> bool:
    """h11 (the httpx path) refuses a response head over 100 KiB; it says so only in its message."""
    return isinstance(exc, httpx.RemoteProtocolError) and "Receive buffer too long" in str(exc)


def too_large(call: PreparedCall, exc: httpx.HTTPError, status_code: int | None = None) -> ProviderCallError:
    """The provider sent more than the client reads: a failed call the cascade may fall back from."""
    return call.failure(
        f"answer refused: {exc}", kind="error", error_type="response_too_large", status_code=status_code
    )


def undecodable(call: PreparedCall, exc: httpx.DecodingError, status_code: int | None = None) -> ProviderCallError:
    """An answer that cannot be read as text (a bad gzip stream, a charset that is no text encoding)."""
    return call.failure(
        f"answer cannot be decoded: {exc}", kind="error", error_type="invalid_response", status_code=status_code
    )


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error under a connect failure: httpx chains it two deep (via httpcore), the lean client one."""
    cause: BaseException | None = exc
    for _ in range(4):
        if cause is None or isinstance(cause, ssl.SSLError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def error_detail(parsed: Any, text: str, secret: str | None) -> str:
    """The provider's own error message, scrubbed of the key BEFORE it is cut, so no part of a key survives."""
    detail = ""
    if isinstance(parsed, Mapping):
        error = parsed.get("error")
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            detail = error["message"]
        elif isinstance(error, str):
            detail = error
        elif isinstance(parsed.get("message"), str):
            detail = parsed["message"]
    if not detail:
        # The provider's JSON as decoded, not as sent: an escape (\u0073k-...) must not hide a key from the scrub.
        detail = text.strip() if parsed is None else _decoded_text(parsed)
    detail = scrub(" ".join(detail.split()), secret)
    if len(detail) > _DETAIL_LIMIT:
        detail = detail[:_DETAIL_LIMIT] + "..."
    return detail


def json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; nesting past the recursion limit is not
        return None


def int_or_none(usage: Mapping[str, Any] | None, key: str) -> int | None:
    if not usage:
        return None
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def usage_details(usage: Any) -> tuple[int | None, int | None, int | None]:
    """Cached input, cache-write and reasoning tokens of an OpenAI-shaped ``usage``: ``prompt_tokens_details``
    ``cached_tokens`` and ``cache_write_tokens``, ``completion_tokens_details.reasoning_tokens``."""
    if not isinstance(usage, Mapping):
        return None, None, None
    prompt = usage.get("prompt_tokens_details")
    completion = usage.get("completion_tokens_details")
    prompt = prompt if isinstance(prompt, Mapping) else None
    completion = completion if isinstance(completion, Mapping) else None
    return (
        int_or_none(prompt, "cached_tokens"),
        int_or_none(prompt, "cache_write_tokens"),
        int_or_none(completion, "reasoning_tokens"),
    )


def _decoded_text(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (ValueError, RecursionError):
        return "(a JSON body that cannot be shown)"


def scrub(text: str, secret: str | None) -> str:
    """``text`` (decoded text, never raw JSON) with ``secret`` and every ``Bearer`` credential replaced.

    The marker itself is never rewritten, so a secret that is part of it cannot turn it into ``[REDACTED]]]``.
    """
    if secret and secret in text:
        text = replace_outside_marker(text, secret)
    return _BEARER.sub(_bearer_redacted, text)


def _bearer_redacted(match: re.Match[str]) -> str:
    return match.group(0) if match.group(2) == _REDACTED else match.group(1) + _REDACTED


def replace_outside_marker(text: str, secret: str) -> str:
    """``text`` with ``secret`` replaced by the marker, leaving markers already there as they are."""
    return _REDACTED.join(part.replace(secret, _REDACTED) for part in text.split(_REDACTED))


def scrub_json(value: Any, secret: str) -> Any:
    """A decoded JSON value with ``secret`` replaced in every string, key or value; the value itself if none held it.

    Walks the decoded value, never the text it came from: a provider can spell the key with escapes.
    """
    if isinstance(value, str):
        return replace_outside_marker(value, secret) if secret in value else value
    if isinstance(value, list):
        items = [scrub_json(v, secret) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    if isinstance(value, dict):
        pairs = [(scrub_json(k, secret), scrub_json(v, secret)) for k, v in value.items()]
        if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(pairs, value.items(), strict=True)):
            return value
        return dict(pairs)
    return value


_RATELIMIT_HEADERS = (
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-reset",
)


def ratelimit_headers(headers: Mapping[str, str]) -> dict[str, str] | None:
    """The rate-limit headers of an answer, or None (most answers of most providers: no dict is made)."""
    out = None
    for name in _RATELIMIT_HEADERS:
        value = headers.get(name)
        if value is not None:
            if out is None:
                out = {}
            out[name] = value
    return out
