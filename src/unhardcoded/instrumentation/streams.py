"""Streams handed back to the caller unchanged, ending the client span when they end."""

from __future__ import annotations

from typing import Any

import wrapt
from opentelemetry.trace import Span, Status, StatusCode

from ..semconv import gen_ai as G


class _Tally:
    def __init__(self, span: Span) -> None:
        self.span = span
        self.ended = False

    def chunk(self, chunk: Any) -> None:
        if not self.span.is_recording():
            return
        model = getattr(chunk, "model", None)
        if isinstance(model, str) and model:
            self.span.set_attribute(G.GEN_AI_RESPONSE_MODEL, model)
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            for name, key in (
                ("prompt_tokens", G.GEN_AI_USAGE_INPUT_TOKENS),
                ("completion_tokens", G.GEN_AI_USAGE_OUTPUT_TOKENS),
            ):
                value = getattr(usage, name, None)
                if isinstance(value, int):
                    self.span.set_attribute(key, value)

    def end(self, error: BaseException | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        if error is not None and self.span.is_recording():
            self.span.set_attribute(G.ERROR_TYPE, type(error).__qualname__)
            self.span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
        self.span.end()


class StreamWrapper(wrapt.ObjectProxy):  # type: ignore[misc]
    """An ``openai.Stream`` that ends the span on exhaustion, error or close."""

    def __init__(self, stream: Any, span: Span) -> None:
        super().__init__(stream)
        self._self_tally = _Tally(span)

    def __iter__(self) -> "StreamWrapper":
        return self

    def __next__(self) -> Any:
        try:
            chunk = next(self.__wrapped__)
        except StopIteration:
            self._self_tally.end()
            raise
        except BaseException as error:
            self._self_tally.end(error)
            raise
        self._self_tally.chunk(chunk)
        return chunk

    def __enter__(self) -> "StreamWrapper":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_tally.end(exc)

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_tally.end()


class AsyncStreamWrapper(wrapt.ObjectProxy):  # type: ignore[misc]
    """An ``openai.AsyncStream`` that ends the span on exhaustion, error or close."""

    def __init__(self, stream: Any, span: Span) -> None:
        super().__init__(stream)
        self._self_tally = _Tally(span)

    def __aiter__(self) -> "AsyncStreamWrapper":
        return self

    async def __anext__(self) -> Any:
        try:
            chunk = await self.__wrapped__.__anext__()
        except StopAsyncIteration:
            self._self_tally.end()
            raise
        except BaseException as error:
            self._self_tally.end(error)
            raise
        self._self_tally.chunk(chunk)
        return chunk

    async def __aenter__(self) -> "AsyncStreamWrapper":
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_tally.end(exc)

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_tally.end()
