"""Relaying a streamed answer to the caller as server-sent events, in OpenAI's chunk format.

The response headers wait for the first token, so they name the model that
really answers; everything of one stream (cascade, spans, disconnect) runs in
the request's own task so span contexts open and close where they began.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable

import anyio

from ..router.decision import Decision
from ..router.providers import ProviderCallError
from .errors import APIError
from .keys import client_key, redact
from .streaming import StreamCascade

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def _event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"


class CascadeEventStream:
    """An ASGI response: open the cascade, then relay chunks, ending in ``[DONE]`` or an error event."""

    def __init__(
        self,
        cascade: StreamCascade,
        *,
        headers: Callable[[Decision], dict[str, str]],
        failure: Callable[[StreamCascade], APIError],
        done: Callable[[Decision], None],
        include_usage: bool,
        key: str | None = None,
        scope: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> None:
        self.cascade = cascade
        self.headers = headers
        self.failure = failure
        self.done = done
        self.include_usage = include_usage
        self.key = key
        self.scope = scope

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        token = client_key.set(self.key)
        try:
            with self.scope():
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_watch_disconnect, receive, tg.cancel_scope)
                    try:
                        await self._relay(send)
                    finally:
                        tg.cancel_scope.cancel()
        finally:
            client_key.reset(token)
            self.done(self.cascade.decision)

    async def _relay(self, send: Any) -> None:
        cascade = self.cascade
        opened = await cascade.open()
        if not opened:
            response = self.failure(cascade).response(self.headers(cascade.decision))
            await response({"type": "http"}, _no_receive, send)
            return
        model = cascade.model
        headers = SSE_HEADERS + [(k.lower().encode("latin-1"), v.encode("latin-1"))
                                 for k, v in self.headers(cascade.decision).items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            async for chunk in cascade.chunks():
                if not self.include_usage:
                    if not chunk.get("choices") and chunk.get("usage"):
                        continue  # asked for by the proxy (to count tokens), not by the caller
                    chunk.pop("usage", None)
                chunk["model"] = model
                await send({"type": "http.response.body", "body": _event(chunk), "more_body": True})
        except ProviderCallError as exc:
            error = {
                "message": redact(f"the answer from {model} broke off after it had started, so it cannot fall "
                                  f"back silently: {exc.message}"),
                "type": "api_error",
                "param": None,
                "code": exc.error_type,
            }
            await send({"type": "http.response.body", "body": _event({"error": error}), "more_body": False})
            return
        finally:
            await cascade.aclose()
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _watch_disconnect(receive: Any, cancel_scope: anyio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            cancel_scope.cancel()
            return


async def _no_receive() -> dict:
    return {"type": "http.disconnect"}
