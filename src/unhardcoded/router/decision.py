"""The Decision: everything a receipt shows about how one request was routed."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..policy.model import Policy
from .features import RequestFeatures
from .live import compact_snapshot


def iso_ms(ns: int) -> str:
    """Span time (ns since the epoch) as a decision timestamp: ISO 8601 UTC, milliseconds (truncated), ``Z``."""
    secs, rem = divmod(ns, 1_000_000_000)
    prefix = _SECONDS.get(secs)
    if prefix is None:
        # Decisions come many per second: the date and time part is formatted once per second.
        if len(_SECONDS) > 64:
            _SECONDS.clear()
        prefix = _SECONDS[secs] = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(secs))
    return f"{prefix}{rem // 1_000_000:03d}Z"


_SECONDS: dict[int, str] = {}

Outcome = Literal["dry_run", "answered", "failed", "no_candidate", "over_budget"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Rejection(_Model):
    """A model filtered out, with the first rule (in policy order) it failed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    rule: str
    field: str
    op: str
    threshold: Any = None
    observed: Any = None
    message: str


class Selection(_Model):
    model: str
    score: float | None = None
    reason: str


class FallbackHop(_Model):
    from_: str = Field(alias="from")
    to: str
    reason: Literal["error", "timeout", "rate_limit"]


class Attempt(_Model):
    """One provider call of the cascade."""

    index: int
    model: str
    provider: str
    role: Literal["selected", "fallback"]
    status: Literal["ok", "error"]
    error_type: str | None = None
    duration_ms: float = 0.0
    input_tokens: int | None = None
    output_tokens: int | None = None
    start_ms: float | None = Field(None, exclude_if=lambda v: v is None)
    """When the call started, in ms after the cascade started (where ``latency_ms`` counts from): the attempt's place
    on the decision's time axis. None for attempts recorded before it was kept (left out of their JSON, so their
    stored and signed bytes stay as they were); not covered by a v1 signature."""
    # Left out of the receipt's JSON when None, so receipts (and signatures) of calls with a single key read as before.
    key: str | None = Field(default=None, exclude_if=lambda v: v is None)
    """The name of the provider key the call went out with (a provider with several ``keys``); never the key."""


class Cost(_Model):
    """The request priced on the model that answered and, for the same usage, on the baseline."""

    usd: float | None = None
    baseline_model: str | None = None
    baseline_usd: float | None = None
    savings_ratio: float | None = None


class CostBreakdown(_Model):
    """The billed cost by what was billed, in USD (see ``unhardcoded.catalog.pricing.cost``)."""

    input: float = 0.0
    """Uncached input tokens."""
    cached_input: float = 0.0
    """Input tokens read from the provider's prompt cache."""
    output: float = 0.0
    """Output tokens, reasoning tokens included."""
    other: float = 0.0
    """Cache writes and per-request fees."""


class AttemptUsage(_Model):
    """What one attempt's provider reported beyond input and output tokens, and what the call cost."""

    index: int
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost_usd: float | None = None
    """The call's cost as billed; set when the provider reported usage, for a failed call too."""


class PriceSource(_Model):
    """Where the catalog's maintained prices come from."""

    source: str
    data_version: str
    snapshot_date: str | None = None


class Billing(_Model):
    """The cost as the provider bills it, beside the decision-time estimate; the prices' source.

    ``cost.usd`` is then the sum of every billed attempt (failed ones that returned usage too), and
    ``cost.baseline_usd`` the answering attempt's usage priced on the baseline model."""

    estimate_usd: float | None = None
    """The router's estimate when it decided, from the request's estimated tokens."""
    breakdown: CostBreakdown | None = None
    attempts: list[AttemptUsage] = []
    prices: PriceSource | None = None


class WorkflowRef(_Model):
    id: str
    name: str
    node: str | None = None
    step: int | None = None


class BudgetUse(_Model):
    """A spent budget met by a request: whose (a policy's or a client key's), its window, what was spent
    (reserved requests in flight included) against its limit, and what the proxy did: refused the request
    (429 ``budget_exceeded``) or routed it under the policy's fallback policy."""

    scope: Literal["policy", "client"]
    name: str
    window: str
    limit_usd: float
    spent_usd: float
    action: Literal["refused", "fallback"] = "refused"


class Signature(_Model):
    """An Ed25519 signature over the decision's receipt content (see docs/signing.md)."""

    version: int
    key_id: str
    value: str


class Decision(_Model):
    """How one request was routed: policy, candidates, rejections, winner, cascade, attempts, cost."""

    request_id: str
    timestamp: str
    policy: Policy
    catalog_version: str
    features: RequestFeatures
    candidates: list[str]
    rejected: list[Rejection]
    selected: Selection | None = None
    fallback_chain: list[str] = []
    hops: list[FallbackHop] = []
    attempts: list[Attempt] = []
    answered_by: str | None = None
    outcome: Outcome = "dry_run"
    cost: Cost = Cost()
    latency_ms: float = 0.0
    workflow: WorkflowRef | None = None
    client: str | None = None
    """The name of the client key the request came with (a proxy started with ``--keys``)."""
    billing: Billing | None = None
    """The cost as billed and the prices' source (signature v2 and later)."""
    budget: BudgetUse | None = None
    """The spent budget that refused this request or sent it to a fallback policy; None otherwise."""
    trace_id: str | None = None
    span_id: str | None = None
    signature: Signature | None = None
    """Set by telemetry when it signs the decision, as the decision span ends."""
    live: dict[str, Any] | None = None
    """What the decision read of the live state (``{"at", "fields", "models": {model: {field: value}}}``), as the
    engine kept it; :meth:`receipt_fields` gives the compact form the span and receipt carry."""

    @property
    def fingerprint(self) -> str:
        return self.policy.fingerprint

    @property
    def fallback_triggered(self) -> bool:
        return bool(self.hops)

    def receipt_fields(self, outcome: str | None = None) -> dict[str, Any]:
        """The decision's receipt fields by name, as ``Receipt.from_decision`` maps them (values are this
        decision's own objects, not copies): what a signature covers (``unhardcoded._signature.signed_content``),
        without building a Receipt. ``outcome``: the one recorded, when it differs from the decision's."""
        policy = self.policy
        return {
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "timestamp": self.timestamp,
            "policy": {"name": policy.name, "fingerprint": policy.fingerprint, "schema": policy.schema_id},
            "catalog_version": self.catalog_version,
            "candidates": self.candidates,
            "rejected": self.rejected,
            "selected": self.selected,
            "fallback": {"chain": self.fallback_chain, "triggered": bool(self.hops), "hops": self.hops},
            "attempts": self.attempts,
            "answered_by": self.answered_by,
            "latency_ms": self.latency_ms,
            "cost": self.cost,
            "workflow": self.workflow,
            "client": self.client,
            "budget": self.budget,
            "outcome": self.outcome if outcome is None else outcome,
            "features": self.features,
            "live": compact_snapshot(self.live),
            "billing": self.billing,
        }
