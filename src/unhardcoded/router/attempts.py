"""The steps of the cascade that do not wait on anything: the plan, an attempt's record, the next hop, the outcome.

Both forms of the cascade (:mod:`unhardcoded.router._async.cascade` and its generated sync twin), plain and
streamed, are written over these, so a hop or a price is decided in one place.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..catalog.pricing import Usage, cost
from ..errors import NoCandidateError
from .decision import Attempt, AttemptUsage, Billing, CostBreakdown, Decision, FallbackHop, WorkflowRef
from .engine import CompiledPolicy, price_usage
from .features import RequestFeatures
from .live import DEFAULT_HEALTH, HealthSettings
from .providers.classify import usage_details

if TYPE_CHECKING:
    from .live import LiveState
    from .observe import DecisionObserver, ObservedDecision
    from .providers import ChatResult, ProviderCallError, ProviderClient

MAX_RETRY_AFTER_WAIT_S = 2.0
"""Longest wait honoured from a 429's Retry-After before hopping to a model on the same provider."""

CLIENT_DISCONNECTED = "client_disconnected"
"""``error_type`` of the attempt whose stream the caller walked away from."""

AsyncSleep = Callable[[float], Awaitable[None]]
"""How the async cascade waits out a Retry-After (``asyncio.sleep`` unless a test injects a clock)."""
Sleep = Callable[[float], None]
"""How the sync cascade waits out a Retry-After (``time.sleep`` unless a test injects a clock)."""


@dataclass
class PlannedAttempt:
    index: int
    model: str
    provider: str
    role: Literal["selected", "fallback"]
    reason: str | None  # the failure that led here, on a fallback hop
    key: str | None = None  # the name of the provider key the call goes out with (a provider with keys:)


def health_of(compiled: CompiledPolicy) -> HealthSettings:
    """The cooldown settings of the compiled policy (the router's defaults when it sets none)."""
    health = compiled.policy.health
    if health is None:
        return DEFAULT_HEALTH
    return HealthSettings(failures=health.failures, window_s=health.window, cooldown_s=health.cooldown)


def begin_attempt(live: LiveState | None, client: ProviderClient, planned: PlannedAttempt, decision: Decision) -> None:
    """Before a call: the provider key it goes out with (by weight, among the keys live state finds usable), and
    one more call in flight (after a cooldown, the probe)."""
    config = client.providers.get(planned.provider)
    if config is not None and config.keys:
        if live is None:
            planned.key = config.keys[0].name
        else:
            features = decision.features
            planned.key = live.pick_key(
                planned.model,
                [(k.name, k.weight) for k in config.keys],
                features.input_tokens + features.output_tokens,
            )
    if live is not None:
        live.begin_call(planned.model)


def observe_attempt(
    live: LiveState | None,
    compiled: CompiledPolicy,
    attempt: Attempt,
    result: ChatResult | None,
    exc: ProviderCallError | None,
) -> None:
    """After a call: what it showed goes into the live state (latency, failures, rate-limit headroom)."""
    if live is None:
        return
    live.end_call(attempt.model)
    if attempt.status == "ok":
        live.record_success(
            attempt.model, attempt.key, attempt.duration_ms, result.ratelimit if result is not None else None
        )
    elif attempt.error_type == CLIENT_DISCONNECTED:
        live.release_probe(attempt.model)
    else:
        live.record_failure(
            attempt.model,
            attempt.key,
            attempt.error_type or "error",
            exc.ratelimit if exc is not None else None,
            health_of(compiled),
        )


def plan(decision: Decision, compiled: CompiledPolicy) -> Iterator[PlannedAttempt]:
    """The selected model, then each fallback of the chain."""
    if decision.selected is None:
        return
    models = [decision.selected.model, *decision.fallback_chain]
    for i, model in enumerate(models):
        yield PlannedAttempt(
            i, model, compiled.catalog.model(model).provider, "selected" if i == 0 else "fallback", None
        )


def record(
    planned: PlannedAttempt,
    started: float,
    input_tokens: int | None,
    output_tokens: int | None,
    exc: ProviderCallError | None,
    error_type: str | None = None,
    cascade_started: float | None = None,
) -> Attempt:
    """The attempt as the Decision keeps it; failed when ``exc`` (or an ``error_type`` of our own) is given.
    ``cascade_started`` (``perf_counter``, where the decision's latency counts from) places it in time."""
    duration = (time.perf_counter() - started) * 1000
    start_ms = None if cascade_started is None else round(max(0.0, started - cascade_started) * 1000, 3)
    if exc is None and error_type is None:
        return Attempt(
            index=planned.index,
            model=planned.model,
            provider=planned.provider,
            role=planned.role,
            status="ok",
            duration_ms=duration,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            start_ms=start_ms,
            key=planned.key,
        )
    return Attempt(
        index=planned.index,
        model=planned.model,
        provider=planned.provider,
        role=planned.role,
        status="error",
        error_type=error_type or getattr(exc, "error_type", None) or type(exc).__name__,
        duration_ms=duration,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        start_ms=start_ms,
        key=planned.key,
    )


def note_usage(decision: Decision, compiled: CompiledPolicy, attempt: Attempt, usage: Any) -> None:
    """Bill ``attempt`` from the usage its provider reported (``usage`` as OpenAI shapes it: cached, cache-write
    and reasoning tokens in its details), at its model's prices. An attempt that reported no usage is not billed."""
    cached, written, reasoning = usage_details(usage)
    if attempt.input_tokens is None and attempt.output_tokens is None and cached is None and reasoning is None:
        return
    details = AttemptUsage(
        index=attempt.index, cached_input_tokens=cached, cache_write_tokens=written, reasoning_tokens=reasoning
    )
    details.cost_usd = cost(compiled.catalog.schedule(attempt.model), attempt_usage(attempt, details)).total
    _billing(decision).attempts.append(details)


def _billing(decision: Decision) -> Billing:
    """The decision's own billing record (a dry run's is shared by the decisions of its policy)."""
    billing = decision.billing
    if billing is None or billing.estimate_usd is None:
        billing = Billing(
            estimate_usd=decision.cost.usd if decision.cost.usd is not None else 0.0,
            prices=billing.prices if billing is not None else None,
        )
        decision.billing = billing
    return billing


def attempt_usage(attempt: Attempt, details: AttemptUsage | None) -> Usage:
    """The usage an attempt reported, as :func:`unhardcoded.catalog.pricing.cost` takes it."""
    if details is None:
        return Usage(attempt.input_tokens or 0, attempt.output_tokens or 0)
    return Usage(
        attempt.input_tokens or 0,
        attempt.output_tokens or 0,
        details.cached_input_tokens or 0,
        details.cache_write_tokens or 0,
        details.reasoning_tokens or 0,
    )


def finish(decision: Decision, compiled: CompiledPolicy, answered: Attempt | None, started: float) -> Decision:
    """The outcome, the answering model, the cost as billed against the baseline, the latency since ``started``.

    Every attempt that reported usage is billed at its model's prices (a failed one too); the baseline is the
    answering attempt's usage priced on the baseline model. An answer without usage is priced on the request's
    estimated tokens, as the router estimated it."""
    decision.latency_ms = (time.perf_counter() - started) * 1000
    catalog = compiled.catalog
    billing = _billing(decision)
    by_index = {a.index: a for a in decision.attempts}
    parts = [0.0, 0.0, 0.0, 0.0]
    billed: dict[int, AttemptUsage] = {}
    for details in billing.attempts:
        attempt = by_index.get(details.index)
        if attempt is None:
            continue
        c = cost(catalog.schedule(attempt.model), attempt_usage(attempt, details))
        parts[0] += c.input
        parts[1] += c.cached_input
        parts[2] += c.output
        parts[3] += c.other
        billed[details.index] = details
    if answered is None:
        decision.outcome = "failed"
        decision.answered_by = None
        # Nothing answered: the baseline is priced on zero usage.
        usage = Usage()
    else:
        decision.outcome = "answered"
        decision.answered_by = answered.model
        if answered.index in billed:
            usage = attempt_usage(answered, billed[answered.index])
        else:
            feats = decision.features
            usage = Usage(feats.input_tokens, feats.output_tokens)
            c = cost(catalog.schedule(answered.model), usage)
            parts = [parts[0] + c.input, parts[1] + c.cached_input, parts[2] + c.output, parts[3] + c.other]
    billing.breakdown = CostBreakdown(input=parts[0], cached_input=parts[1], output=parts[2], other=parts[3])
    decision.cost = price_usage(sum(parts), catalog, compiled.policy.baseline, usage)
    return decision


def next_step(
    decision: Decision, compiled: CompiledPolicy, attempts: list[PlannedAttempt], i: int, exc: ProviderCallError
) -> tuple[bool, float]:
    """Whether to hop to attempts[i+1], and how long to wait first (Retry-After on the same provider)."""
    kind = exc.kind
    if i + 1 >= len(attempts) or kind not in compiled.policy.fallback.on:
        return False, 0.0
    nxt = attempts[i + 1]
    nxt.reason = kind
    decision.hops.append(FallbackHop(from_=attempts[i].model, to=nxt.model, reason=kind))
    wait = 0.0
    retry_after = exc.retry_after_s
    if kind == "rate_limit" and retry_after and nxt.provider == attempts[i].provider:
        wait = min(float(retry_after), MAX_RETRY_AFTER_WAIT_S)
    return True, wait


_OUTPUT_EVENTS = frozenset(
    {
        # Responses API
        "response.output_text.delta",
        "response.function_call_arguments.delta",
        "response.output_item.added",
        "response.refusal.delta",
        "response.reasoning_summary_text.delta",
        "response.completed",
        "response.incomplete",
        # Anthropic Messages
        "content_block_start",
        "content_block_delta",
        "message_delta",
        "message_stop",
    }
)


def carries_output(chunk: Mapping[str, Any], api: str = "chat_completions") -> bool:
    """Whether a streamed chunk (or event, for the Responses and Messages APIs) gives the caller something of the
    answer (text, a tool call, a finish): the cascade falls back only before the first such chunk."""
    if api != "chat_completions":
        return chunk.get("type") in _OUTPUT_EVENTS
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


def decide_observed(
    observed: ObservedDecision,
    telemetry: DecisionObserver,
    compiled: CompiledPolicy,
    features: RequestFeatures,
    request_id: str | None,
    workflow: WorkflowRef | None,
    client_name: str | None = None,
    unservable: frozenset[str] = frozenset(),
    live: LiveState | None = None,
) -> Decision:
    """The decision for a call, made inside ``observed``; finished there at once when no model passes the policy."""
    decision = compiled.decide(
        features,
        request_id=request_id,
        workflow=workflow if workflow is not None else telemetry.current_workflow(),
        client_name=client_name,
        unservable=unservable,
        live=live,
    )
    observed.decision = decision
    if decision.selected is None:
        observed.finish(decision)
    return decision


def unservable_for(client: Any, features: RequestFeatures) -> frozenset[str]:
    """The providers of ``client`` that cannot serve the request's API (the implicit ``request:api`` rule)."""
    providers = getattr(client, "providers", None)
    if providers is None:
        return frozenset()
    return providers.unservable(features.api, features.stateful)  # type: ignore[no-any-return]


def no_candidate(decision: Decision, compiled: CompiledPolicy) -> NoCandidateError:
    """The error a routed call raises when no model passes the policy; it carries the decision."""
    return NoCandidateError(
        f"no model in catalog {compiled.catalog_version} passes policy {compiled.policy.name!r}", decision
    )
