"""Deadlines for a slow client: its request head and its body must each arrive in time, or the connection is closed.

uvicorn closes a keep-alive connection that stays idle, but waits for ever on one that sends half a request head, or
a head and half its body: two hundred such connections cost the proxy two hundred open sockets and request states.
This is uvicorn's httptools protocol with two timers: from the connection (or the request's first byte) to the end of
its head, and from there to the end of its body. A late client gets ``408 Request Timeout`` and the connection is
closed; a request whose body was being read sees its caller disconnect (logged as 499 by the access log).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .access import SERVER_LOGGER_NAME

__all__ = ["DEFAULT_BODY_TIMEOUT_S", "DEFAULT_HEADER_TIMEOUT_S", "DEFAULT_LIMIT_CONCURRENCY", "deadline_protocol"]

DEFAULT_HEADER_TIMEOUT_S = 10.0
"""From a connection's first byte (or its opening) to the end of the request head."""
DEFAULT_BODY_TIMEOUT_S = 30.0
"""From the end of the request head to the end of its body."""
DEFAULT_LIMIT_CONCURRENCY = 1000
"""Connections and requests in flight at once; uvicorn answers 503 to more."""

logger = logging.getLogger(SERVER_LOGGER_NAME)

_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n"
)


def _body_408(message: str) -> bytes:
    error = (
        '{"error":{"message":"' + message + '","type":"invalid_request_error","param":null,"code":"request_timeout"}}'
    ).encode("ascii")
    return _TIMEOUT_408 % len(error) + error


class _DeadlineProtocol(HttpToolsProtocol):
    header_timeout_s = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s = DEFAULT_BODY_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float, what: str) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(seconds, self._expired, what, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, what: str, seconds: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        client = self.client
        logger.info(
            "client %s sent no complete request %s within %g s; connection closed (408)",
            f"{client[0]}:{client[1]}" if client else "?",
            what,
            seconds,
        )
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(_body_408(f"request {what} not received within {seconds:g} s"))
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout_s, "head")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._arm(self.header_timeout_s, "head")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(self.body_timeout_s, "body")

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()


def deadline_protocol(header_timeout_s: float, body_timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol (pass it as ``uvicorn.Config(http=...)``) with these two deadlines."""
    return type(
        "DeadlineProtocol",
        (_DeadlineProtocol,),
        {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s},
    )
