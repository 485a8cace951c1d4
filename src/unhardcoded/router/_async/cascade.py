"""Carrying a decision through the provider calls: the selected model, then the standby cascade, plain or streamed.

One source for both forms: ``scripts/unasync.py`` writes the synchronous module from the asynchronous one.
A streamed answer falls back only until a model sends its first token; after it the caller holds part
of an answer no other model can continue, so a break is recorded as a failed attempt (``error_type``
from the provider, e.g. ``stream_interrupted``) and a failed decision.
"""

from __future__ import annotations

import contextlib
import time
from asyncio import sleep as pause  # unasync: sync from time import sleep as pause
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from ..attempts import (
    CLIENT_DISCONNECTED,
    AsyncSleep,
    PlannedAttempt,
    begin_attempt,
    carries_output,
    decide_observed,
    finish,
    next_step,
    no_candidate,
    note_usage,
    observe_attempt,
    plan,
    record,
    unservable_for,
)
from ..decision import Attempt, Decision, WorkflowRef
from ..engine import CompiledPolicy
from ..features import RequestFeatures
from ..observe import NO_OBSERVER, AttemptObserver, DecisionObserver, ObservedDecision
from ..providers import ProviderCallError

if TYPE_CHECKING:
    from ..live import LiveState
    from ..providers import AsyncChatStream, ChatResult, ProviderClient


async def aexecute(
    decision: Decision,
    compiled: CompiledPolicy,
    body: Mapping[str, Any],
    client: ProviderClient,
    observer: AttemptObserver = NO_OBSERVER,
    sleep: AsyncSleep = pause,
    live: LiveState | None = None,
) -> tuple[Decision, ChatResult | None, ProviderCallError | None]:
    """Call the selected model, hop along the cascade on failures the policy names; record every attempt (and what
    it showed, in ``live``)."""
    started = time.perf_counter()
    attempts = list(plan(decision, compiled))
    api = decision.features.api
    answered: Attempt | None = None
    result = None
    last_error: ProviderCallError | None = None
    for i, planned in enumerate(attempts):
        begin_attempt(live, client, planned, decision)
        token = observer.start(decision, planned)
        t0 = time.perf_counter()
        try:
            with observer.calling(token):
                result = await client.achat(
                    planned.provider,
                    planned.model,
                    dict(body),
                    headers=observer.headers(token),
                    api=api,
                    key=planned.key,
                )
            exc = None
        except ProviderCallError as e:
            result, exc = None, e
        if result is not None:
            observer.answered(token, result)
            attempt = record(planned, t0, result.input_tokens, result.output_tokens, None, cascade_started=started)
            note_usage(decision, compiled, attempt, result.body.get("usage"))
        else:
            attempt = record(planned, t0, None, None, exc, cascade_started=started)
        decision.attempts.append(attempt)
        observe_attempt(live, compiled, attempt, result, exc)
        observer.end(token, attempt, exc)
        if exc is None:
            answered = attempt
            break
        last_error = exc
        go_on, wait = next_step(decision, compiled, attempts, i, exc)
        if not go_on:
            break
        if wait:
            await sleep(wait)
    finish(decision, compiled, answered, started)
    return decision, result, (None if answered else last_error)


async def aroute(
    telemetry: DecisionObserver,
    compiled: CompiledPolicy,
    features: RequestFeatures,
    body: Mapping[str, Any],
    client: ProviderClient,
    observer: AttemptObserver = NO_OBSERVER,
    *,
    request_id: str | None = None,
    workflow: WorkflowRef | None = None,
    client_name: str | None = None,
    later: list[Callable[[], None]] | None = None,
    live: LiveState | None = None,
) -> tuple[Decision, ChatResult | None, ProviderCallError | None]:
    """Decide, then call along the cascade, the decision observed by ``telemetry`` from start to finish.

    Raises NoCandidateError (carrying the decision, already recorded) when no model passes the policy.
    With ``later``, what the observer can record afterwards is left there (see ``ObservedDecision.finish``).
    """
    with telemetry.decision(compiled, activate=True, late=later is not None) as observed:
        decision = decide_observed(
            observed,
            telemetry,
            compiled,
            features,
            request_id,
            workflow,
            client_name,
            unservable_for(client, features),
            live,
        )
        if decision.selected is None:
            raise no_candidate(decision, compiled)
        out = await aexecute(decision, compiled, body, client, observed.attempts(observer), live=live)
        observed.finish(decision, later=later)
    return out


class AsyncStreamCascade:
    """One streamed decision: decide, find the model that answers (:meth:`aopen`), relay its stream (:meth:`chunks`).

    Use as ``with cascade:`` in the task that serves the request (the decision is current there). Inside,
    ``decision.selected`` is None when no model passed the policy (the decision is already recorded);
    otherwise ``aopen`` returns False when every attempt failed before its first token (``last_error`` says
    why). After ``chunks`` ends (normally, broken or closed early) the decision is settled: outcome,
    attempts, cost, latency; leaving the block records it.
    """

    decision: Decision

    def __init__(
        self,
        telemetry: DecisionObserver,
        compiled: CompiledPolicy,
        features: RequestFeatures,
        body: Mapping[str, Any],
        client: ProviderClient,
        observer: AttemptObserver = NO_OBSERVER,
        *,
        request_id: str | None = None,
        workflow: WorkflowRef | None = None,
        client_name: str | None = None,
        sleep: AsyncSleep = pause,
        live: LiveState | None = None,
    ) -> None:
        self.telemetry = telemetry
        self.live = live
        self.compiled = compiled
        self.features = features
        self.body = body
        self.client = client
        self.observer = observer
        self.request_id = request_id
        self.workflow = workflow
        self.client_name = client_name
        self.sleep = sleep
        self.last_error: ProviderCallError | None = None
        self.finished = False
        self._observed: ObservedDecision | None = None
        self._started = 0.0
        self._current: tuple[PlannedAttempt, Any, AsyncChatStream, float] | None = None
        self._held: list[dict[str, Any]] = []

    def __enter__(self) -> Self:
        observed = self._observed = self.telemetry.decision(self.compiled, activate=True)
        observed.__enter__()
        try:
            self.decision = decide_observed(
                observed,
                self.telemetry,
                self.compiled,
                self.features,
                self.request_id,
                self.workflow,
                self.client_name,
                unservable_for(self.client, self.features),
                self.live,
            )
        except BaseException as exc:
            observed.__exit__(type(exc), exc, exc.__traceback__)
            raise
        if self.decision.selected is not None:
            self.observer = observed.attempts(self.observer)
        # Latency counts from the decision, as the plain cascade's does.
        self._started = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        observed, self._observed = self._observed, None
        if observed is None:
            return
        if exc is None:
            observed.finish(self.decision)
        observed.__exit__(exc_type, exc, tb)

    @property
    def model(self) -> str | None:
        """The model whose stream is being relayed."""
        return self._current[0].model if self._current else None

    async def aopen(self) -> bool:
        """Call along the cascade until a model sends its first token; False when none did."""
        attempts = list(plan(self.decision, self.compiled))
        observer = self.observer
        api = self.features.api
        for i, planned in enumerate(attempts):
            begin_attempt(self.live, self.client, planned, self.decision)
            token = observer.start(self.decision, planned)
            t0 = time.perf_counter()
            held: list[dict[str, Any]] = []
            stream: AsyncChatStream | None = None
            try:
                # Inside the attempt's context, as the plain cascade's call: its headers, and the request that
                # goes out on the first read.
                with observer.calling(token):
                    stream = self.client.astream(
                        planned.provider,
                        planned.model,
                        self.body,
                        headers=observer.headers(token),
                        api=api,
                        key=planned.key,
                    )
                    async for chunk in stream:
                        held.append(chunk)
                        if carries_output(chunk, api):
                            break
            except ProviderCallError as exc:
                if stream is not None:  # None: refused before anything was sent (an unknown provider, a missing key)
                    await stream.aclose()
                self._end_attempt(planned, token, t0, stream, exc)
                self.last_error = exc
                go_on, wait = next_step(self.decision, self.compiled, attempts, i, exc)
                if not go_on:
                    break
                if wait:
                    await self.sleep(wait)
                continue
            except BaseException:
                if stream is not None:
                    await _aclose_quietly(stream)
                self._end_attempt(planned, token, t0, stream, None, error_type=CLIENT_DISCONNECTED)
                self._settle(None)
                raise
            assert stream is not None
            self._current = (planned, token, stream, t0)
            self._held = held
            return True
        self._settle(None)
        return False

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        """The answering stream's chunks; raises ProviderCallError when it breaks after the first token."""
        assert self._current is not None, "aopen() first"
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
            self._settle(None)
            raise
        except BaseException:
            # The caller went away (or the server is stopping) mid-answer.
            await _aclose_quietly(stream)
            self._end_attempt(planned, token, t0, stream, None, error_type=CLIENT_DISCONNECTED)
            self._settle(None)
            raise
        attempt = self._end_attempt(planned, token, t0, stream, None)
        self._settle(attempt)

    async def aclose(self) -> None:
        """Give up a stream that was opened but not relayed to its end."""
        if self._current is not None and not self.finished:
            planned, token, stream, t0 = self._current
            await _aclose_quietly(stream)
            self._end_attempt(planned, token, t0, stream, None, error_type=CLIENT_DISCONNECTED)
            self._settle(None)

    def _end_attempt(
        self,
        planned: PlannedAttempt,
        token: Any,
        t0: float,
        stream: AsyncChatStream | None,
        exc: ProviderCallError | None,
        *,
        error_type: str | None = None,
    ) -> Attempt:
        if stream is None:
            attempt = record(planned, t0, None, None, exc, error_type, self._started)
        else:
            attempt = record(planned, t0, stream.input_tokens, stream.output_tokens, exc, error_type, self._started)
            note_usage(self.decision, self.compiled, attempt, stream.usage)
        self.decision.attempts.append(attempt)
        observe_attempt(self.live, self.compiled, attempt, None, exc)
        try:
            if stream is not None and attempt.status == "ok":
                self.observer.answered(token, stream)  # it has the result's response_model
            self.observer.end(token, attempt, exc)
        except Exception:  # noqa: BLE001 - the answer (or what is left of it) still goes out
            self.telemetry.count_error("ending a streamed attempt")
        return attempt

    def _settle(self, answered: Attempt | None) -> None:
        if not self.finished:
            self.finished = True
            finish(self.decision, self.compiled, answered, self._started)


async def _aclose_quietly(stream: AsyncChatStream) -> None:
    """Close a stream whose outcome is already decided; a failure to close changes nothing of it."""
    with contextlib.suppress(Exception):
        await stream.aclose()
