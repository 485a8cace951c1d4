"""The streamed-decision ASGI app: the router's streamed cascade relayed to the caller as server-sent events.

The chunks keep OpenAI's format. The response headers wait for the first token,
so they name the model that really answers; everything of one stream (cascade,
spans, disconnect) runs in the request's own task so span contexts open and
close where they began.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from starlette.types import Message, Receive, Scope, Send

from ..router.decision import BudgetUse, Decision
from ..router.providers import ProviderCallError
from .errors import APIError
from .keys import client_key, redact

if TYPE_CHECKING:
    from ..router import Router
    from ..router.cascade import AsyncStreamCascade
    from ..router.engine import CompiledPolicy
    from ..router.features import RequestFeatures

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def _event(payload: Any) -> bytes:
    try:
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # a provider's lone surrogate ("\\ud800"): sent on escaped, as it came
        data = json.dumps(payload, separators=(",", ":")).encode("ascii")
    return b"data: " + data + b"\n\n"


class StreamedDecision:
    """An ASGI response: the router decides and opens its cascade; this relays the chunks, then ``[DONE]`` or an error.

    The decision (its span, when the router has telemetry) is entered here, in
    the task that serves the request, and spans the whole stream.
    """

    def __init__(
        self,
        router: Router,
        compiled: CompiledPolicy,
        features: RequestFeatures,
        body: dict[str, Any],
        request_id: str,
        *,
        headers: Callable[[Decision, str | None], dict[str, str]],
        no_candidate: Callable[[Decision], APIError],
        failure: Callable[[Decision, ProviderCallError | None], APIError],
        done: Callable[[Decision], None],
        include_usage: bool,
        key: str | None = None,
        client_name: str | None = None,
        budget: BudgetUse | None = None,
    ) -> None:
        self.router = router
        self.compiled = compiled
        self.features = features
        self.body = body
        self.request_id = request_id
        self.headers = headers
        self.no_candidate = no_candidate
        self.failure = failure
        self.done = done
        self.include_usage = include_usage
        self.key = key
        self.client_name = client_name
        self.budget = budget
        """The spent budget that sent the request to this (fallback) policy, for its receipt."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = client_key.set(self.key)
        decision: Decision | None = None
        try:
            with self.router.streamed(
                self.compiled, self.features, self.body, request_id=self.request_id, client_name=self.client_name
            ) as cascade:
                decision = cascade.decision
                if self.budget is not None:
                    decision.budget = self.budget  # recorded with the span as the cascade ends
                if decision.selected is None:
                    await self._respond(self.no_candidate(decision), decision, send)
                    return
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_watch_disconnect, receive, tg.cancel_scope)
                    try:
                        await self._relay(cascade, send)
                    finally:
                        tg.cancel_scope.cancel()
        finally:
            client_key.reset(token)
            if decision is not None:
                self.done(decision)

    async def _respond(self, error: APIError, decision: Decision, send: Send) -> None:
        await error.response(self.headers(decision, None))({"type": "http"}, _no_receive, send)

    async def _relay(self, cascade: AsyncStreamCascade, send: Send) -> None:
        if not await cascade.aopen():
            await self._respond(self.failure(cascade.decision, cascade.last_error), cascade.decision, send)
            return
        model = cascade.model
        headers = SSE_HEADERS + [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers(cascade.decision, model).items()
        ]
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
                "message": redact(
                    f"the answer from {model} broke off after it had started, so it cannot fall "
                    f"back silently: {exc.message}"
                ),
                "type": "api_error",
                "param": None,
                "code": exc.error_type,
            }
            await send({"type": "http.response.body", "body": _event({"error": error}), "more_body": False})
            return
        finally:
            await cascade.aclose()
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _watch_disconnect(receive: Receive, cancel_scope: anyio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            cancel_scope.cancel()
            return


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
