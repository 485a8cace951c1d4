"""The cascade for streamed answers: fall back until a model sends its first token, then commit to it.

Before the first token nothing has reached the caller, so a failure hops along
the cascade exactly as a non-streamed call would. After it the caller holds
part of an answer that no other model can continue: a break is recorded as a
failed attempt (``error_type`` from the provider, e.g. ``stream_interrupted``)
and a failed decision, and the caller gets an error event instead of more text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..router.cascade import NO_OBSERVER, AttemptObserver, PlannedAttempt, _finish, _next_step, plan
from ..router.decision import Attempt, Decision
from ..router.providers import ProviderCallError

if TYPE_CHECKING:
    from ..router.engine import CompiledPolicy
    from ..router.providers import AsyncChatStream, ProviderClient

CLIENT_DISCONNECTED = "client_disconnected"
"""``error_type`` of the attempt whose stream the caller walked away from."""


def carries_output(chunk: Mapping[str, Any]) -> bool:
    """Whether a chunk gives the caller something of the answer (text, a tool call, a finish)."""
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, Mapping):
            continue
        if choice.get("finish_reason"):
            return True
        delta = choice.get("delta")
        if isinstance(delta, Mapping) and (
            delta.get("content") or delta.get("tool_calls") or delta.get("refusal") or delta.get("function_call")
        ):
            return True
    return False


class StreamCascade:
    """One streamed decision: :meth:`open` finds the model that answers, :meth:`chunks` relays its stream.

    ``open`` returns False when every attempt failed before its first token;
    ``last_error`` then says why. After ``chunks`` ends (normally, broken or
    closed early) the decision is finished: outcome, attempts, cost, latency.
    """

    def __init__(
        self,
        decision: Decision,
        compiled: "CompiledPolicy",
        body: Mapping[str, Any],
        client: "ProviderClient",
        observer: AttemptObserver = NO_OBSERVER,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.decision = decision
        self.compiled = compiled
        self.body = body
        self.client = client
        self.observer = observer
        self.sleep = sleep
        self.last_error: ProviderCallError | None = None
        self.finished = False
        self._started = time.perf_counter()
        self._current: tuple[PlannedAttempt, Any, "AsyncChatStream", float] | None = None
        self._held: list[dict[str, Any]] = []

    @property
    def model(self) -> str | None:
        """The model whose stream is being relayed."""
        return self._current[0].model if self._current else None

    async def open(self) -> bool:
        attempts = list(plan(self.decision, self.compiled))
        observer = self.observer
        for i, planned in enumerate(attempts):
            token = observer.start(self.decision, planned)
            t0 = time.perf_counter()
            held: list[dict[str, Any]] = []
            stream: AsyncChatStream | None = None
            try:
                # Inside the attempt's context, as the plain cascade's call: its headers, and the request that
                # goes out on the first read.
                with observer.calling(token):
                    stream = self.client.astream(
                        planned.provider, planned.model, self.body, headers=observer.headers(token)
                    )
                    async for chunk in stream:
                        held.append(chunk)
                        if carries_output(chunk):
                            break
            except ProviderCallError as exc:
                if stream is None:  # refused before anything was sent (an unknown provider, a missing key)
                    self._end_attempt(planned, token, t0, None, exc)
                else:
                    await stream.aclose()
                    self._end_attempt(planned, token, t0, stream, exc)
                self.last_error = exc
                go_on, wait = _next_step(self.decision, self.compiled, attempts, i, exc)
                if not go_on:
                    break
                if wait:
                    await self.sleep(wait)
                continue
            except BaseException:
                if stream is not None:
                    await _quietly(stream.aclose())
                self._end_attempt(planned, token, t0, stream, None, error_type=CLIENT_DISCONNECTED)
                self._finish(None)
                raise
            assert stream is not None
            self._current = (planned, token, stream, t0)
            self._held = held
            return True
        self._finish(None)
        return False

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        """The answering stream's chunks; raises ProviderCallError when it breaks after the first token."""
        assert self._current is not None, "open() first"
        planned, token, stream, t0 = self._current
        calling = self.observer.calling
        try:
            for chunk in self._held:
                yield chunk
            self._held = []
            while True:
                # Every read from the provider happens with the attempt's span current, never the relay to the caller.
                with calling(token):
                    try:
                        chunk = await stream.__anext__()
                    except StopAsyncIteration:
                        break
                yield chunk
        except ProviderCallError as exc:
            self.last_error = exc
            self._end_attempt(planned, token, t0, stream, exc)
            self._finish(None)
            raise
        except BaseException:
            # The caller went away (or the server is stopping) mid-answer.
            await _quietly(stream.aclose())
            self._end_attempt(planned, token, t0, stream, None, error_type=CLIENT_DISCONNECTED)
            self._finish(None)
            raise
        attempt = self._end_attempt(planned, token, t0, stream, None)
        self._finish(attempt)

    async def aclose(self) -> None:
        """Give up a stream that was opened but not relayed to its end."""
        if self._current is not None and not self.finished:
            planned, token, stream, t0 = self._current
            await _quietly(stream.aclose())
            self._end_attempt(planned, token, t0, stream, None, error_type=CLIENT_DISCONNECTED)
            self._finish(None)

    def _end_attempt(
        self,
        planned: PlannedAttempt,
        token: Any,
        t0: float,
        stream: "AsyncChatStream | None",
        exc: ProviderCallError | None,
        *,
        error_type: str | None = None,
    ) -> Attempt:
        failed = exc is not None or error_type is not None
        attempt = Attempt(
            index=planned.index,
            model=planned.model,
            provider=planned.provider,
            role=planned.role,  # type: ignore[arg-type]
            status="error" if failed else "ok",
            error_type=(error_type or getattr(exc, "error_type", None) or type(exc).__name__) if failed else None,
            duration_ms=(time.perf_counter() - t0) * 1000,
            input_tokens=stream.input_tokens if stream is not None else None,
            output_tokens=stream.output_tokens if stream is not None else None,
        )
        self.decision.attempts.append(attempt)
        try:
            if not failed:
                self.observer.answered(token, stream)  # it has the result's response_model
            self.observer.end(token, attempt, exc)
        except Exception:  # telemetry never breaks a request
            pass
        return attempt

    def _finish(self, answered: Attempt | None) -> None:
        if self.finished:
            return
        self.finished = True
        # Latency counts from the decision's start, as the non-streamed cascade does.
        _finish(self.decision, self.compiled, answered, self._started)


async def _quietly(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:
        pass
