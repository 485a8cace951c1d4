"""Small readings of what comes over the wire, shared by the provider client, the forwarder and the stores."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from datetime import UTC
from urllib.parse import urlsplit


def retry_after_seconds(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """How long a server asked us to wait: ``retry-after-ms`` (OpenAI's) first, then ``Retry-After``.

    ``Retry-After`` is a number of seconds or an HTTP-date (RFC 9110 §10.2.3); a date in the past is 0.
    Header names are looked up lower-case, as httpx and the HTTP/1.1 client both give them. None when
    neither header says anything usable.
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            value = float(raw_ms) / 1000
        except ValueError:
            value = -1.0
        if value >= 0:
            return value
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        pass
    else:
        return value if value >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT, even when it forgets to say so
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``, fit for a message, a log line or a ``location``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()
