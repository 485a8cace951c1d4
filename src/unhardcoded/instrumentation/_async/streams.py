"""An ``AsyncStream`` (``openai`` or ``anthropic``) handed back to the caller unchanged, ending the client span when it
ends: read to the end, failed, closed, or its HTTP response closed (what the ``stream()`` helpers do on exit)."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import wrapt
from opentelemetry.trace import Span

from ..client_span import Tally

if TYPE_CHECKING:
    _Proxy = wrapt.ObjectProxy[Any]
else:  # wrapt before 2.0 (allowed by pyproject) cannot be subscripted at run time
    _Proxy = wrapt.ObjectProxy


class AsyncClosingResponse(_Proxy):
    """The stream's HTTP response, ending the span when closed."""

    def __init__(self, response: Any, tally: Tally) -> None:
        super().__init__(response)
        self._self_tally = tally

    async def aclose(self) -> None:
        try:
            await self.__wrapped__.aclose()
        finally:
            self._self_tally.end()


class AsyncStreamWrapper(_Proxy):
    """An ``AsyncStream`` that ends the span on exhaustion, error or close."""

    def __init__(self, stream: Any, span: Span) -> None:
        super().__init__(stream)
        self._self_tally = Tally(span)

    @property
    def response(self) -> Any:
        # chat.completions.stream(), responses.stream() and messages.stream() close this, not the stream, on exit.
        return AsyncClosingResponse(self.__wrapped__.response, self._self_tally)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Any:
        try:
            chunk = await anext(self.__wrapped__)
        except StopAsyncIteration:
            self._self_tally.end()
            raise
        except BaseException as error:
            self._self_tally.end(error)
            raise
        self._self_tally.chunk(chunk)
        return chunk

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_tally.end(exc)

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_tally.end()
