"""A lean HTTP/1.1 client for provider calls made on an event loop: pooled keep-alive connections, parsed by httptools.

The proxy makes one provider call per request, and httpx's layers cost more CPU
per call than routing and telemetry together. This client does only what a
chat-completions call needs: POST a body and read the answer whole or as a
stream of lines. It fails with the httpx exception each failure corresponds to
(``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``, ``WriteTimeout``,
``PoolTimeout``, ``RemoteProtocolError``, ``LocalProtocolError``), so the one
classification in :mod:`unhardcoded.router.providers.classify` serves both clients, and a
timeout means what it means there: no progress for that long.

:func:`lean_client_available` says when it is used: httptools is installed and
no proxy is set in the environment (httpx honours ``HTTP(S)_PROXY``; this does
not speak to proxies).
"""

from __future__ import annotations

import asyncio
import codecs
import select
import ssl
import urllib.request
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

try:
    import httptools
except ImportError:  # pragma: no cover - uvicorn[standard] brings it on CPython
    httptools = None  # type: ignore[assignment]  # the module or None, checked before use

__all__ = [
    "MAX_BODY",
    "MAX_LINE",
    "ConnectionPool",
    "Inflater",
    "LineSplitter",
    "Reply",
    "ResponseTooLarge",
    "Target",
    "lean_client_available",
    "target_of",
    "text_encoding",
]

MAX_CONNECTIONS = 100
"""Requests in flight at once; more wait for a slot (``PoolTimeout`` after the call's timeout), as with httpx."""
MAX_IDLE = 20
"""Idle keep-alive connections kept open, over every origin."""
KEEPALIVE_EXPIRY_S = 5.0
"""An idle connection older than this is closed rather than reused (servers often drop them at 5 s)."""
MAX_BODY = 32 * 1024 * 1024
"""The longest whole response body read (after decompression): a provider cannot make the proxy hold more."""
MAX_LINE = 1024 * 1024
"""The longest line of a streamed body, in characters: an SSE line that never ends must not grow without bound."""
MAX_HEADER = 64 * 1024
"""The most bytes of response header (names and values of every line) read before the answer is refused."""
_INFLATE_PIECE = 256 * 1024
"""The most bytes one call to a decompressor may produce: a small compressed body can inflate to gigabytes."""
_HIGH_WATER = 256 * 1024
"""Buffered body bytes at which reading pauses until the consumer catches up."""
_HAS_POLL = hasattr(select, "poll")
_NEWLINES = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines splits on, as httpx's line decoder


class ResponseTooLarge(httpx.RemoteProtocolError):
    """A response body over :data:`MAX_BODY` (after decompression), a streamed line over :data:`MAX_LINE`, or a
    response header over :data:`MAX_HEADER`; raised by both HTTP paths."""


def body_too_large() -> ResponseTooLarge:
    limit = f"{MAX_BODY // 1048576} MiB" if MAX_BODY % 1048576 == 0 else f"{MAX_BODY} bytes"
    return ResponseTooLarge(f"response body over {limit}")


def lean_client_available() -> bool:
    """httptools is importable and no HTTP proxy is configured in the environment."""
    if httptools is None:
        return False
    proxies = urllib.request.getproxies()
    return not any(proxies.get(scheme) for scheme in ("http", "https", "all"))


@dataclass(frozen=True)
class Target:
    """Where a request goes: the origin to connect to, and the request line and Host header, encoded once."""

    scheme: str
    host: str
    port: int
    origin: tuple[str, str, int]
    head: bytes  # b"POST /v1/chat/completions HTTP/1.1\r\nhost: ...\r\n"


def target_of(url: str, method: str = "POST") -> Target | None:
    """The target of ``url``, or None when this client cannot send there (user info in the URL, say)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    host = parts.hostname
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    netloc = f"[{host}]" if ":" in host else host
    default_port = (parts.scheme == "https" and port == 443) or (parts.scheme == "http" and port == 80)
    host_header = netloc if default_port else f"{netloc}:{port}"
    try:
        head = f"{method} {path} HTTP/1.1\r\nhost: {host_header}\r\n".encode("ascii")
    except UnicodeEncodeError:
        return None  # an IDN host or a raw non-ASCII path: httpx knows how to encode those
    if any(c in path for c in " \r\n"):
        return None
    return Target(parts.scheme, host, port, (parts.scheme, host, port), head)


def encode_headers(headers: dict[str, str]) -> bytes:
    """``name: value\\r\\n`` lines; a name or value that could end the head early or is not ASCII is refused."""
    out = []
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\0" in value or not name or any(c in name for c in ":\r\n\0 "):
            raise httpx.LocalProtocolError(f"header {name!r}: illegal character in the name or value")
        out.append(f"{name}: {value}\r\n")
    try:
        return "".join(out).encode("ascii")
    except UnicodeEncodeError:
        raise httpx.LocalProtocolError("a header name or value is not ASCII") from None


class Reply:
    """One response: status and headers once :meth:`ConnectionPool.request` returns, the body read or streamed.

    The parts of ``httpx.Response`` the provider client reads: ``status_code``,
    ``is_success``, ``headers`` (lower-case names; repeated ones joined with
    ``", "``), ``content`` / ``text`` after :meth:`aread`, :meth:`aiter_lines`,
    :meth:`aclose`.
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_complete",
        "_conn",
        "_content",
        "_error",
        "_head_done",
        "_header_bytes",
        "_informational",
        "_keep_alive",
        "_pool",
        "_raw_headers",
        "_released",
        "_text",
        "_timeout",
        "_timer",
        "_until_eof",
        "_waiter",
        "headers",
        "status_code",
    )

    def __init__(self, pool: ConnectionPool, conn: _Connection, timeout: float) -> None:
        self.status_code = 0
        self.headers: dict[str, str] = {}
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._conn: _Connection | None = conn
        self._pool = pool
        self._timeout = timeout
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._head_done = False
        self._complete = False
        self._until_eof = False
        self._informational = False
        self._keep_alive = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._released = False
        self._content: bytes | None = None
        self._text: str | None = None

    # ---- what the caller reads

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def content(self) -> bytes:
        if self._content is None:
            raise RuntimeError("the body has not been read: await aread() first")
        return self._content

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self.content.decode(self._charset(), errors="replace")
        return self._text

    def _read_text(self) -> None:
        """Decode the body now, so a charset that is no text encoding fails the call where failures are caught."""
        try:
            self.text  # noqa: B018 - read for its check (and kept: the caller reads it next)
        except httpx.DecodingError:
            self._release(reuse=False)
            raise

    async def aread(self) -> bytes:
        """The whole body (decoded if the server compressed it); the connection goes back to the pool."""
        if self._content is None:
            parts: list[bytes] = []
            size = 0
            if self.headers.get("content-encoding"):
                async for decoded in self._aiter_raw():
                    size += len(decoded)
                    if size > MAX_BODY:
                        self._too_large()
                    parts.append(decoded)
            else:  # the usual case, without a generator per call
                while (chunk := await self._next_chunk()) is not None:
                    size += len(chunk)
                    if size > MAX_BODY:
                        self._too_large()
                    parts.append(chunk)
            self._content = b"".join(parts)
        return self._content

    async def aiter_lines(self) -> AsyncIterator[str]:
        """The body as text lines, split as ``str.splitlines`` splits (httpx's ``aiter_lines`` does the same)."""
        decoder = codecs.getincrementaldecoder(self._charset())(errors="replace")
        lines = LineSplitter()
        try:
            async for chunk in self._aiter_raw():
                text = decoder.decode(chunk)
                if text:
                    for line in lines.feed(text):
                        yield line
            text = decoder.decode(b"", final=True)
            if text:
                for line in lines.feed(text):
                    yield line
        except ResponseTooLarge:
            self._release(reuse=False)
            raise
        for line in lines.flush():
            yield line

    def _too_large(self) -> None:
        self._release(reuse=False)
        raise body_too_large()

    async def aclose(self) -> None:
        """Done with the reply: a connection whose body came in whole is reused, any other is closed."""
        self._release(reuse=self._error is None and not self._chunks)

    # ---- reading

    def _charset(self) -> str:
        return text_encoding(self.headers.get("content-type"))

    async def _aiter_raw(self) -> AsyncIterator[bytes]:
        inflater = Inflater.of(self.headers.get("content-encoding"))
        try:
            while True:
                chunk = await self._next_chunk()
                if chunk is None:
                    break
                if inflater is None:
                    yield chunk
                else:
                    for piece in inflater.feed(chunk):
                        yield piece
        except zlib.error as exc:
            self._release(reuse=False)
            raise httpx.DecodingError(f"cannot decode the response body: {exc}") from None

    async def _next_chunk(self) -> bytes | None:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                conn = self._conn
                if conn is not None and conn.reading_paused and self._buffered < _HIGH_WATER // 4:
                    conn.resume_reading()
                return chunk
            if self._error is not None:
                self._release(reuse=False)
                raise self._error
            if self._complete:
                self._release(reuse=True)
                return None
            await self._progress()

    async def _progress(self) -> None:
        """Wait until the connection brings something (bytes, an end, an error); ReadTimeout after ``timeout`` of nothing."""
        conn = self._conn
        if conn is None:  # released: nothing more will come
            self._error = self._error or httpx.ReadError("the response was closed")
            return
        loop = conn.loop
        self._waiter = loop.create_future()
        self._timer = loop.call_at(conn.last_activity + self._timeout, self._check_timeout)
        try:
            await self._waiter
        finally:
            self._waiter = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _check_timeout(self) -> None:
        conn = self._conn
        if conn is None or self._waiter is None:
            return
        due = conn.last_activity + self._timeout
        if conn.loop.time() < due:  # bytes came meanwhile: the clock restarted then
            self._timer = conn.loop.call_at(due, self._check_timeout)
            return
        self._timer = None
        self._fail(httpx.ReadTimeout(f"no data from the server for {self._timeout:g} s"))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self._complete:
            self._error = error
        self._wake()

    def _release(self, *, reuse: bool) -> None:
        if self._released:
            return
        self._released = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.reply = None
            if reuse and self._complete and self._keep_alive and not self._until_eof and not conn.closed:
                self._pool._put_idle(conn)
            else:
                conn.close()
        self._pool._release_slot()

    # ---- fed by the connection (httptools callbacks)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._complete:
            self._keep_alive = False  # a second answer to one request: see on_message_complete
            return
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER:
            if self._error is None:
                self._fail(ResponseTooLarge(f"response header over {MAX_HEADER // 1024} KiB"))
                conn = self._conn
                if conn is not None:
                    conn.close()
            return
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        conn = self._conn
        assert conn is not None
        if self._complete:
            return
        status = conn.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._informational = True  # 100 Continue, 103 Early Hints: the real answer follows
            self._raw_headers = []
            return
        self.status_code = status
        headers: dict[str, str] = {}
        for raw_name, raw_value in self._raw_headers:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.headers = headers
        self._raw_headers = []
        self._until_eof = (
            "content-length" not in headers
            and "chunked" not in headers.get("transfer-encoding", "").lower()
            and status not in (204, 304)
        )
        self._head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._complete:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        conn = self._conn
        if self._buffered > _HIGH_WATER and conn is not None and not conn.reading_paused:
            conn.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._complete:
            # More bytes came after this reply's end in the same read: an answer nobody asked for. It must not join
            # this reply's body, and the connection cannot be trusted with the next request.
            self._keep_alive = False
            return
        conn = self._conn
        self._keep_alive = conn is not None and conn.parser.should_keep_alive()
        self._complete = True
        self._wake()

    def connection_lost(self) -> None:
        if self._complete:
            return
        if self._head_done and self._until_eof:
            self._complete = True  # the body ran to the end of the connection, as it said it would
            self._wake()
        elif self._head_done:
            self._fail(httpx.RemoteProtocolError("peer closed connection without sending complete message body"))
        else:
            self._fail(httpx.RemoteProtocolError("Server disconnected without sending a response."))


class LineSplitter:
    """Text in, whole lines out, with the line breaks of ``str.splitlines``; a ``\\r`` waits to see if ``\\n`` follows.

    A line longer than ``max_line`` characters raises :class:`ResponseTooLarge`. Both HTTP paths split streams here.
    """

    __slots__ = ("_buffer", "_buffered", "_trailing_cr", "max_line")

    def __init__(self, max_line: int | None = None) -> None:
        self._buffer: list[str] = []
        self._buffered = 0
        self._trailing_cr = False
        self.max_line = MAX_LINE if max_line is None else max_line

    def _too_long(self) -> None:
        raise ResponseTooLarge(f"a streamed line over {self.max_line} characters")

    def feed(self, text: str) -> list[str]:
        if self._trailing_cr:
            text = "\r" + text
            self._trailing_cr = False
        if text.endswith("\r"):
            self._trailing_cr = True
            text = text[:-1]
        if not text:
            return []
        ends_line = text[-1] in _NEWLINES
        lines = text.splitlines()
        if len(lines) == 1 and not ends_line:
            self._buffer.append(lines[0])
            self._buffered += len(lines[0])
            if self._buffered > self.max_line:
                self._too_long()
            return []
        if self._buffer:
            lines[0] = "".join(self._buffer) + lines[0]
            self._buffer = []
            self._buffered = 0
        if not ends_line:
            last = lines.pop()
            self._buffer = [last]
            self._buffered = len(last)
            if self._buffered > self.max_line:
                self._too_long()
        if lines and max(map(len, lines)) > self.max_line:
            self._too_long()
        return lines

    def flush(self) -> list[str]:
        if not self._buffer and not self._trailing_cr:
            return []
        line = "".join(self._buffer)
        self._buffer = []
        self._buffered = 0
        self._trailing_cr = False
        return [line]


def _expire(waiter: asyncio.Future[None], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.PoolTimeout(f"no connection free within {timeout:g} s"))


def text_encoding(content_type: str | None) -> str:
    """The text encoding a ``Content-Type`` names; UTF-8 when it names none, or one Python does not know.

    ``charset=zlib_codec``, ``rot13`` or ``base64`` name codecs Python has that do not turn bytes into text: such an
    answer is refused with ``httpx.DecodingError``, a failed call the cascade falls back from.
    """
    for param in (content_type or "").split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "charset" and value:
            name = value.strip().strip('"')
            try:
                info = codecs.lookup(name)
            except (LookupError, ValueError):
                break
            if not getattr(info, "_is_text_encoding", True) or not _decodes_json(info):
                raise httpx.DecodingError(f"charset {name[:40]!r} is not a text encoding")
            return info.name
    return "utf-8"


def _decodes_json(info: codecs.CodecInfo) -> bool:
    """Whether a codec that calls itself a text encoding turns JSON's bytes into text (``undefined`` refuses all)."""
    try:
        return bool(info.decode(b'{"a": 1}')[0])
    except (UnicodeError, ValueError, TypeError):
        return False


class Inflater:
    """A body the server compressed (gzip, deflate) inflated in pieces of at most 256 KiB, whatever it holds.

    A few kilobytes of gzip can hold a gigabyte of zeros: the reader counts the pieces as they come and stops at its
    limit, so no more than one piece past it is ever held.
    """

    __slots__ = ("_obj",)

    def __init__(self, encoding: str) -> None:
        self._obj: Any = zlib.decompressobj(zlib.MAX_WBITS | 16) if encoding == "gzip" else None

    @classmethod
    def of(cls, encoding: str | None) -> Inflater | None:
        """An inflater for ``encoding``, or None for identity (or an encoding httpx would not decode either)."""
        name = (encoding or "").strip().lower()
        return cls(name) if name in ("gzip", "deflate") else None

    def feed(self, data: bytes) -> Iterator[bytes]:
        obj = self._obj
        if obj is None:  # deflate: zlib-wrapped as the RFC says, or raw as some servers send it
            try:
                obj = zlib.decompressobj()
                out = obj.decompress(data, _INFLATE_PIECE)
            except zlib.error:
                obj = zlib.decompressobj(-zlib.MAX_WBITS)
                out = obj.decompress(data, _INFLATE_PIECE)
            self._obj = obj
        else:
            out = obj.decompress(data, _INFLATE_PIECE)
        if out:
            yield out
        while obj.unconsumed_tail:
            out = obj.decompress(obj.unconsumed_tail, _INFLATE_PIECE)
            if not out:
                break
            yield out


class _Connection(asyncio.Protocol):
    """One keep-alive connection; the reply it is reading gets the parser's callbacks."""

    def __init__(self, pool: ConnectionPool, origin: tuple[str, str, int], loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.reply: Reply | None = None
        self.closed = False
        self.idle_since = 0.0
        self.last_activity = 0.0
        self.reading_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._write_paused = False
        self.fd = -1

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # create_connection gives a stream transport
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1

    def data_received(self, data: bytes) -> None:
        reply = self.reply
        if reply is None:  # bytes while idle: the server is not speaking HTTP/1.1 keep-alive as we do
            self.close()
            return
        self.last_activity = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            reply._fail(httpx.RemoteProtocolError(f"malformed HTTP response: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)
        reply = self.reply
        if reply is not None:
            reply.connection_lost()
        self.pool._forget(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    # ---- httptools callbacks, passed to the reply being read

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.reply is not None:
            self.reply.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.reply is not None:
            self.reply.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self.reply is not None:
            self.reply.on_body(body)

    def on_message_complete(self) -> None:
        if self.reply is not None:
            self.reply.on_message_complete()

    # ---- used by the pool and the reply

    async def write(self, data: bytes, timeout: float) -> None:
        transport = self.transport
        assert transport is not None
        transport.write(data)
        if self._write_paused and not self.closed:
            self._drained = self.loop.create_future()
            try:
                await asyncio.wait_for(self._drained, timeout)
            except TimeoutError:
                raise httpx.WriteTimeout(f"could not send the request within {timeout:g} s") from None
            finally:
                self._drained = None
        if self.closed and self.reply is not None and self.reply._error is None:
            self.reply._fail(httpx.RemoteProtocolError("Server disconnected without sending a response."))

    def readable(self) -> bool:
        """Whether an idle connection has something to read: a close (or bytes) the loop has not handled yet."""
        if self.fd < 0:
            return False
        try:
            if _HAS_POLL:
                poll = select.poll()
                poll.register(self.fd, select.POLLIN)
                return bool(poll.poll(0))
            return bool(select.select([self.fd], [], [], 0)[0])
        except (OSError, ValueError):
            return True

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close now, without TLS's close_notify exchange: a closed pool's loop may end before it would finish,
        leaving the socket open."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class ConnectionPool:
    """Keep-alive connections by origin, for the event loop that made them.

    :meth:`request` sends one request and returns its :class:`Reply` once the
    status and headers are in (with ``read=True``, once the whole body is in);
    a streamed reply holds its connection until it is read to the end or closed.
    """

    def __init__(
        self,
        *,
        max_connections: int = MAX_CONNECTIONS,
        max_idle: int = MAX_IDLE,
        keepalive_expiry_s: float = KEEPALIVE_EXPIRY_S,
        ssl_context: Callable[[], Any] = httpx.create_ssl_context,
    ) -> None:
        if httptools is None:
            raise RuntimeError("httptools is not installed")
        self.max_idle = max_idle
        self.keepalive_expiry_s = keepalive_expiry_s
        self._make_ssl_context = ssl_context
        self._ssl: Any = None
        self._slots = max_connections
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._idle: dict[tuple[str, str, int], deque[_Connection]] = {}
        self._idle_count = 0
        self._closed = False

    async def request(self, target: Target, headers: bytes, body: bytes, timeout: float, *, read: bool) -> Reply:
        """Send ``target.head + headers`` and ``body``; the reply with its head (and its body when ``read``)."""
        if self._closed:
            raise httpx.LocalProtocolError("the connection pool is closed")
        await self._take_slot(timeout)
        conn: _Connection | None = None
        reply: Reply | None = None
        try:
            conn = self._take_idle(target.origin)
            if conn is None:
                conn = await self._connect(target, timeout)
            reply = Reply(self, conn, timeout)
            conn.reply = reply
            conn.last_activity = conn.loop.time()
            await conn.write(b"".join((target.head, headers, b"content-length: %d\r\n\r\n" % len(body), body)), timeout)
            conn.last_activity = conn.loop.time()  # the read timeout runs from here, as httpx's does
            while not reply._head_done:
                if reply._error is not None:
                    raise reply._error
                await reply._progress()
            if read:
                await reply.aread()
                reply._read_text()
            return reply
        except BaseException:
            if reply is not None:
                reply._release(reuse=False)
            else:
                if conn is not None:
                    conn.close()
                self._release_slot()
            raise

    async def aclose(self) -> None:
        """Close every idle connection; replies still open close theirs when released."""
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.abort()
        self._idle.clear()
        self._idle_count = 0
        for waiter in self._slot_waiters:
            if not waiter.done():
                waiter.set_exception(httpx.LocalProtocolError("the connection pool is closed"))
        await asyncio.sleep(0)  # the transports close their sockets on the loop's next turn

    # ---- slots (requests in flight)

    async def _take_slot(self, timeout: float) -> None:
        if self._slots > 0 and not self._slot_waiters:
            self._slots -= 1
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._slot_waiters.append(waiter)
        timer = loop.call_later(timeout, _expire, waiter, timeout)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release_slot()  # handed a slot just as the caller gave up: pass it on
            raise
        finally:
            timer.cancel()
            try:
                self._slot_waiters.remove(waiter)
            except ValueError:
                pass

    def _release_slot(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the next in line
                return
        self._slots += 1

    # ---- connections

    def _take_idle(self, origin: tuple[str, str, int]) -> _Connection | None:
        conns = self._idle.get(origin)
        if not conns:
            return None
        now = None
        while conns:
            conn = conns.pop()  # the most recently used: the least likely to have been dropped by the server
            self._idle_count -= 1
            if conn.closed:
                continue
            if now is None:
                now = conn.loop.time()
            if now - conn.idle_since > self.keepalive_expiry_s or conn.readable():
                conn.close()  # expired, or the server closed it (or spoke out of turn) and the loop has not seen it yet
                continue
            return conn
        return None

    def _put_idle(self, conn: _Connection) -> None:
        if self._closed:
            conn.close()
            return
        if self._idle_count >= self.max_idle:
            self._close_oldest_idle()
        conn.idle_since = conn.loop.time()
        self._idle.setdefault(conn.origin, deque()).append(conn)
        self._idle_count += 1

    def _close_oldest_idle(self) -> None:
        oldest: _Connection | None = None
        for conns in self._idle.values():
            if conns and (oldest is None or conns[0].idle_since < oldest.idle_since):
                oldest = conns[0]
        if oldest is not None:
            self._idle[oldest.origin].popleft()
            self._idle_count -= 1
            oldest.close()

    def _forget(self, conn: _Connection) -> None:
        conns = self._idle.get(conn.origin)
        if conns:
            try:
                conns.remove(conn)
            except ValueError:
                return
            self._idle_count -= 1

    async def _connect(self, target: Target, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        ssl_context = None
        if target.scheme == "https":
            if self._ssl is None:
                self._ssl = self._make_ssl_context()
            ssl_context = self._ssl
        failure: Exception | None = None
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(self, target.origin, loop),
                    target.host,
                    target.port,
                    ssl=ssl_context,
                    server_hostname=target.host if ssl_context is not None else None,
                ),
                timeout,
            )
        except TimeoutError:
            failure = httpx.ConnectTimeout(f"could not connect within {timeout:g} s")
        except ssl.SSLError as exc:  # the certificate refused, or no TLS spoken: the cause says which
            failure = httpx.ConnectError(str(exc) or exc.__class__.__name__)
            failure.__cause__ = exc
        except OSError as exc:  # refused, unreachable, DNS
            failure = httpx.ConnectError(str(exc) or exc.__class__.__name__)
        if failure is not None:
            raise failure
        return conn
