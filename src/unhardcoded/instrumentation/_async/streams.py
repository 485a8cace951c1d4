"""An ``openai.AsyncStream`` handed back to the caller unchanged, ending the client span when it ends."""

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


class AsyncStreamWrapper(_Proxy):
    """An ``openai.AsyncStream`` that ends the span on exhaustion, error or close."""

    def __init__(self, stream: Any, span: Span) -> None:
        super().__init__(stream)
        self._self_tally = Tally(span)

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
