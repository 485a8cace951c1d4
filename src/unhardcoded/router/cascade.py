"""Carrying a decision through the provider calls: the selected model, then the standby cascade."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, ContextManager, Iterator, Mapping

from .decision import Attempt, Decision, FallbackHop
from .engine import CompiledPolicy, estimate_cost, price

if TYPE_CHECKING:
    from .providers import ChatResult, ProviderCallError, ProviderClient

MAX_RETRY_AFTER_WAIT_S = 2.0
"""Longest wait honoured from a 429's Retry-After before hopping to a model on the same provider."""


@dataclass
class PlannedAttempt:
    index: int
    model: str
    provider: str
    role: str
    reason: str | None  # the failure that led here, on a fallback hop


def plan(decision: Decision, compiled: CompiledPolicy) -> Iterator[PlannedAttempt]:
    """The selected model, then each fallback of the chain."""
    if decision.selected is None:
        return
    models = [decision.selected.model, *decision.fallback_chain]
    for i, model in enumerate(models):
        yield PlannedAttempt(
            i, model, compiled.catalog.model(model).provider, "selected" if i == 0 else "fallback", None
        )


class AttemptObserver:
    """Hooks the telemetry layer uses to wrap each provider call in a span; the default does nothing.

    Per attempt: ``start``, then ``headers`` (sent with the call) and ``calling``
    (the context the call runs in), then ``answered`` if it succeeded, then ``end``.
    """

    def start(self, decision: Decision, planned: PlannedAttempt) -> Any:
        return None

    def end(self, token: Any, attempt: Attempt, error: BaseException | None) -> None:
        return None

    def headers(self, token: Any) -> dict[str, str]:
        return {}

    def calling(self, token: Any) -> ContextManager[Any]:
        """Entered around the provider call, e.g. to make the attempt's span current for instrumented HTTP clients."""
        return _NO_CONTEXT

    def answered(self, token: Any, result: "ChatResult") -> None:
        """The call succeeded with ``result``; called before ``end``."""
        return None


_NO_CONTEXT = contextlib.nullcontext()


NO_OBSERVER = AttemptObserver()


def _record(
    decision: Decision,
    planned: PlannedAttempt,
    started: float,
    result: "ChatResult | None",
    exc: "ProviderCallError | None",
) -> Attempt:
    duration = (time.perf_counter() - started) * 1000
    if exc is None and result is not None:
        return Attempt(
            index=planned.index,
            model=planned.model,
            provider=planned.provider,
            role=planned.role,  # type: ignore[arg-type]
            status="ok",
            duration_ms=duration,
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
        )
    return Attempt(
        index=planned.index,
        model=planned.model,
        provider=planned.provider,
        role=planned.role,  # type: ignore[arg-type]
        status="error",
        error_type=getattr(exc, "error_type", None) or type(exc).__name__,
        duration_ms=duration,
    )


def _finish(decision: Decision, compiled: CompiledPolicy, answered: Attempt | None, started: float) -> Decision:
    decision.latency_ms = (time.perf_counter() - started) * 1000
    if answered is None:
        decision.outcome = "failed"
        decision.answered_by = None
        # Nothing answered, so nothing was used: the baseline is priced on the same zero usage.
        decision.cost = price(0.0, compiled.catalog, compiled.policy.baseline, 0, 0)
        return decision
    decision.outcome = "answered"
    decision.answered_by = answered.model
    feats = decision.features
    in_tok = answered.input_tokens if answered.input_tokens is not None else feats.input_tokens
    out_tok = answered.output_tokens if answered.output_tokens is not None else feats.output_tokens
    usd = estimate_cost(compiled.catalog.model(answered.model), in_tok, out_tok)
    decision.cost = price(usd, compiled.catalog, compiled.policy.baseline, in_tok, out_tok)
    return decision


def _next_step(
    decision: Decision, compiled: CompiledPolicy, attempts: list[PlannedAttempt], i: int, exc: "ProviderCallError"
) -> tuple[bool, float]:
    """Whether to hop to attempts[i+1], and how long to wait first (Retry-After on the same provider)."""
    kind = getattr(exc, "kind", "error")
    if i + 1 >= len(attempts) or kind not in compiled.policy.fallback.on:
        return False, 0.0
    nxt = attempts[i + 1]
    nxt.reason = kind
    decision.hops.append(FallbackHop(from_=attempts[i].model, to=nxt.model, reason=kind))  # type: ignore[arg-type]
    wait = 0.0
    retry_after = getattr(exc, "retry_after_s", None)
    if kind == "rate_limit" and retry_after and nxt.provider == attempts[i].provider:
        wait = min(float(retry_after), MAX_RETRY_AFTER_WAIT_S)
    return True, wait


def execute(
    decision: Decision,
    compiled: CompiledPolicy,
    body: Mapping[str, Any],
    client: "ProviderClient",
    observer: AttemptObserver = NO_OBSERVER,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[Decision, "ChatResult | None", "ProviderCallError | None"]:
    """Call the selected model, hop along the cascade on failures the policy names; record every attempt."""
    from .providers import ProviderCallError

    started = time.perf_counter()
    attempts = list(plan(decision, compiled))
    answered: Attempt | None = None
    result = None
    last_error: ProviderCallError | None = None
    for i, planned in enumerate(attempts):
        token = observer.start(decision, planned)
        t0 = time.perf_counter()
        try:
            with observer.calling(token):
                result = client.chat(planned.provider, planned.model, dict(body), headers=observer.headers(token))
            exc = None
        except ProviderCallError as e:
            result, exc = None, e
        if result is not None:
            observer.answered(token, result)
        attempt = _record(decision, planned, t0, result, exc)
        decision.attempts.append(attempt)
        observer.end(token, attempt, exc)
        if exc is None:
            answered = attempt
            break
        last_error = exc
        go_on, wait = _next_step(decision, compiled, attempts, i, exc)
        if not go_on:
            break
        if wait:
            sleep(wait)
    _finish(decision, compiled, answered, started)
    return decision, result, (None if answered else last_error)


async def aexecute(
    decision: Decision,
    compiled: CompiledPolicy,
    body: Mapping[str, Any],
    client: "ProviderClient",
    observer: AttemptObserver = NO_OBSERVER,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> tuple[Decision, "ChatResult | None", "ProviderCallError | None"]:
    """The async form of :func:`execute`."""
    from .providers import ProviderCallError

    started = time.perf_counter()
    attempts = list(plan(decision, compiled))
    answered: Attempt | None = None
    result = None
    last_error: ProviderCallError | None = None
    for i, planned in enumerate(attempts):
        token = observer.start(decision, planned)
        t0 = time.perf_counter()
        try:
            with observer.calling(token):
                result = await client.achat(
                    planned.provider, planned.model, dict(body), headers=observer.headers(token)
                )
            exc = None
        except ProviderCallError as e:
            result, exc = None, e
        if result is not None:
            observer.answered(token, result)
        attempt = _record(decision, planned, t0, result, exc)
        decision.attempts.append(attempt)
        observer.end(token, attempt, exc)
        if exc is None:
            answered = attempt
            break
        last_error = exc
        go_on, wait = _next_step(decision, compiled, attempts, i, exc)
        if not go_on:
            break
        if wait:
            await sleep(wait)
    _finish(decision, compiled, answered, started)
    return decision, result, (None if answered else last_error)
