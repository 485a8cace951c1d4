"""Budgets on the proxy: what a policy (``budget:`` in the policy) or a client key (``budget:`` in the keys file)
may spend per window, in USD of billed cost.

Before a request is sent to a provider, its decision's estimated cost is reserved against every budget it
falls under, in one round trip to the state (:mod:`unhardcoded.server.state`); a request that would go over is
refused (429 ``budget_exceeded``, never to be retried by the SDKs) or, when the policy names a
``fallback_policy``, routed under that one. Once answered, the reservation is settled with the decision's
actual cost, off the caller's path.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from ..policy.model import Budget, Policy
from ..router.decision import BudgetUse, Decision
from ..semconv import attributes as A
from ..semconv import metrics as M
from ..telemetry.scope import INSTRUMENTATION_SCOPE, VERSION
from .errors import APIError
from .state import Charge, SharedState, window_key

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

    from .auth import ClientKey

Scope = Literal["policy", "client"]

MAX_GAUGED = 1024
"""Budgets the gauges report at most (inline policies can name new budgets at will): the least recently used go."""

RETRY_AFTER_NEAR_S = 60
"""A refusal carries ``Retry-After`` only when its budget's window resets within this many seconds; later than
that, waiting is not what the caller should do."""


@dataclass(frozen=True)
class BudgetOwner:
    """A budget and whose it is."""

    scope: Scope
    name: str
    budget: Budget


@dataclass(frozen=True)
class Held:
    """A reservation made: the charges and the amount reserved on each."""

    charges: tuple[Charge, ...]
    amount_usd: float
    gauged: tuple[tuple[str, str, str], ...] = ()
    """The (scope, name, window) of each charge, as the gauges know it."""


@dataclass(frozen=True)
class Refusal:
    """A request a budget refuses: which budget, what it had spent, and when its window resets."""

    owner: BudgetOwner
    spent_usd: float
    amount_usd: float
    resets_at: float

    def use(self, action: Literal["refused", "fallback"]) -> BudgetUse:
        b = self.owner.budget
        return BudgetUse(
            scope=self.owner.scope,
            name=self.owner.name,
            window=b.window,
            limit_usd=b.usd,
            spent_usd=round(self.spent_usd, 9),
            action=action,
        )


def budget_owners(policy: Policy, client: ClientKey | None) -> list[BudgetOwner]:
    """The budgets a request under ``policy`` by ``client`` falls under: the client key's first, then the policy's."""
    owners = []
    if client is not None and client.budget is not None:
        owners.append(BudgetOwner("client", client.name, client.budget))
    if policy.budget is not None:
        owners.append(BudgetOwner("policy", policy.name, policy.budget))
    return owners


class Budgets:
    """The budgets a proxy enforces, over its shared state; also the ``unhardcoded.budget.*`` gauges."""

    def __init__(
        self,
        state: SharedState,
        *,
        meter_provider: MeterProvider | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.clock = clock
        # (scope, name, window) -> (limit, spent, window key): what this proxy last saw of each budget.
        self._seen: dict[tuple[str, str, str], tuple[float, float, str]] = {}
        _observe(self, meter_provider)

    @property
    def settling(self) -> int:
        """Settlements handed to the state and not yet applied there."""
        return self.state.settling

    def _charges(self, owners: Sequence[BudgetOwner], now: float) -> tuple[list[Charge], list[float]]:
        charges, resets = [], []
        for owner in owners:
            b = owner.budget
            key, ttl, resets_at = window_key(owner.scope, owner.name, b.window, b.window_s, now)
            charges.append(Charge(key, b.usd, ttl))
            resets.append(resets_at)
        return charges, resets

    async def reserve(self, owners: Sequence[BudgetOwner], amount_usd: float) -> Held | Refusal:
        """Reserve ``amount_usd`` on every budget of ``owners``, or on none when one of them would go over."""
        now = self.clock()
        amount = max(0.0, amount_usd)
        charges, resets = self._charges(owners, now)
        reservation = await self.state.reserve(charges, amount)
        seen = self._seen
        for owner, charge, spent in zip(owners, charges, reservation.spent, strict=False):
            key = (owner.scope, owner.name, owner.budget.window)
            seen.pop(key, None)
            seen[key] = (owner.budget.usd, spent, charge.key)
        while len(seen) > MAX_GAUGED:
            del seen[next(iter(seen))]
        if reservation.refused is None:
            return Held(tuple(charges), amount, tuple((o.scope, o.name, o.budget.window) for o in owners))
        i = reservation.refused
        return Refusal(owners[i], reservation.spent[i], amount, resets[i])

    def settle(self, held: Held, actual_usd: float | None) -> None:
        """Replace the reserved amount with what the request cost (nothing, when no model answered), in the
        background."""
        delta = (actual_usd or 0.0) - held.amount_usd
        if delta == 0:
            return
        for key, charge in zip(held.gauged, held.charges, strict=True):
            seen = self._seen.get(key)
            if seen is not None and seen[2] == charge.key:
                self._seen[key] = (seen[0], max(0.0, seen[1] + delta), seen[2])
        self.state.settle([(c, delta) for c in held.charges])

    def settle_decision(self, held: Held | None, decision: Decision | None) -> None:
        if held is not None:
            self.settle(held, decision.cost.usd if decision is not None and decision.outcome == "answered" else None)

    def remaining(self) -> Iterable[tuple[tuple[str, str, str], float, float]]:
        """Each budget seen: (scope, name, window), its limit, and what is left of it in the current window."""
        now = self.clock()
        for (scope, name, window), (limit, spent, key) in list(self._seen.items()):
            budget = Budget(usd=limit, window=window)
            current = window_key(scope, name, window, budget.window_s, now)[0]
            yield (scope, name, window), limit, (limit - spent) if key == current else limit


def budget_exceeded(refusal: Refusal, now: float) -> APIError:
    """429 ``budget_exceeded`` in OpenAI's error shape: which budget, its window, spent and limit.

    ``x-should-retry: false`` keeps the openai and anthropic SDKs from retrying it; ``Retry-After`` is sent only
    when the window resets soon (:data:`RETRY_AFTER_NEAR_S`).
    """
    owner, b = refusal.owner, refusal.owner.budget
    wait = max(1, int(refusal.resets_at - now + 0.999))
    resets = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(refusal.resets_at))
    message = (
        f"budget exceeded: {owner.scope} {owner.name!r} has spent ${refusal.spent_usd:.6f} of its ${b.usd:g} per "
        f"{b.window} (this request was estimated at ${refusal.amount_usd:.6f}); the window resets at {resets}"
    )
    headers = {"x-should-retry": "false"}
    if wait <= RETRY_AFTER_NEAR_S:
        headers["Retry-After"] = str(wait)
    return APIError(429, message, param="budget", code="budget_exceeded", type="insufficient_quota", headers=headers)


def _observe(budgets: Budgets, meter_provider: MeterProvider | None) -> None:
    """The ``unhardcoded.budget.remaining`` and ``.limit`` gauges, read at each collection (holding the
    budgets weakly)."""
    ref = weakref.ref(budgets)

    def observe(limit: bool) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            alive = ref()
            if alive is None:
                return []
            return [
                Observation(
                    lim if limit else left,
                    {
                        A.UNHARDCODED_BUDGET_SCOPE: scope,
                        A.UNHARDCODED_BUDGET_NAME: name,
                        A.UNHARDCODED_BUDGET_WINDOW: w,
                    },
                )
                for (scope, name, w), lim, left in alive.remaining()
            ]

        return callback

    meter = metrics.get_meter(INSTRUMENTATION_SCOPE, VERSION, meter_provider)
    M.create_unhardcoded_budget_remaining(meter, [observe(False)])
    M.create_unhardcoded_budget_limit(meter, [observe(True)])
    degraded = M.create_unhardcoded_state_degraded(meter)
    budgets.state.on_degraded = degraded.add
