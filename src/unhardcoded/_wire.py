"""Small readings of what comes over the wire, shared by the provider client, the forwarder, the stores and the
OTLP readers: ``Retry-After``, a URL fit to show, and the protobuf wire format's varints and fields."""

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


# --------------------------------------------------------------------------- protobuf wire format
#
# The OTLP readers look into serialized messages without parsing them: to count or slice the spans of an
# export (the processor's ingest path) and to read one attribute's key and value (the rebuild's). Both are
# measured paths: the varints most fields start with (a one-byte key, a length of one or two bytes) are read in
# place, the rest by varint().


def varint(buf: bytes, i: int) -> tuple[int, int]:
    """The base-128 varint at ``buf[i]`` and the index after it.

    ValueError when it runs over ten bytes (no varint does), IndexError when it runs past the end of ``buf``.
    """
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than ten bytes")


def delimited_fields(buf: bytes, start: int, end: int, number: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each length-delimited field numbered ``number`` in the message ``buf[start:end]``.

    Every other field is skipped. ValueError (an unknown wire type, a field running past the message) or
    IndexError (past the end of ``buf``) when the bytes are not a message.
    """
    out = []
    i = start
    while i < end:
        key = buf[i]
        if key < 0x80:
            i += 1
        else:
            key, i = varint(buf, i)
        wire = key & 7
        if wire == 2:
            n = buf[i]
            if n < 0x80:
                i += 1
            elif buf[i + 1] < 0x80:  # two bytes: a span's length, most often
                n = (n & 0x7F) | (buf[i + 1] << 7)
                i += 2
            else:
                n, i = varint(buf, i)
            if key >> 3 == number:
                out.append((i, i + n))
            i += n
        elif wire == 0:
            while buf[i] & 0x80:
                i += 1
            i += 1
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"wire type {wire}")
    if i != end:
        raise ValueError("field runs past its message")
    return out


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, or a name resolved here) is reached only from this machine."""
    import ipaddress
    import socket

    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.split("%", 1)[0]).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(name, None)
    except (OSError, UnicodeError):
        return False
    return bool(found) and all(ipaddress.ip_address(str(f[4][0]).split("%", 1)[0]).is_loopback for f in found)
