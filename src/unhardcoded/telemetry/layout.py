"""A Decision laid out as span attributes and rejection events, exactly as docs/span-layout.md fixes it.

What every decision under one compiled policy shares (the policy attributes,
the span name, the events of the catalog models the policy's own rules reject)
is laid out once per compiled policy in a :class:`PolicyLayout`; per decision
only what differs is built.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..router.live import compact_snapshot
from ..semconv import attributes as A
from ..semconv import gen_ai as G
from ..semconv import spans as S

if TYPE_CHECKING:
    from ..router.decision import Billing, BudgetUse, Decision, Rejection, WorkflowRef
    from ..router.engine import CompiledPolicy
    from ..router.features import RequestFeatures

REJECTION_EVENT_LIMIT = 64
"""Rejections recorded as events; the rest go to ``unhardcoded.rejections_json``. The SDK keeps 128 events per
span by default: 64 leaves room for other instrumentation."""

_CACHE_MAX = 4096
_ERROR_OUTCOMES = frozenset({"failed", "no_candidate", "over_budget"})


def json_text(value: Any) -> tuple[str, bool]:
    """``json.dumps(value)``, and whether it is exact; a value JSON cannot hold is written as its repr (a loss)."""
    try:
        return json.dumps(value), True
    except (TypeError, ValueError):
        return json.dumps(repr(value)), False


def _event_attributes(r: Rejection) -> tuple[dict[str, str], int]:
    threshold, ok_t = json_text(r.threshold)
    observed, ok_o = json_text(r.observed)
    return {
        A.UNHARDCODED_REJECTION_MODEL: r.model,
        A.UNHARDCODED_REJECTION_RULE: r.rule,
        A.UNHARDCODED_REJECTION_FIELD: r.field,
        A.UNHARDCODED_REJECTION_OP: r.op,
        A.UNHARDCODED_REJECTION_THRESHOLD: threshold,
        A.UNHARDCODED_REJECTION_OBSERVED: observed,
        A.UNHARDCODED_REJECTION_MESSAGE: r.message,
    }, (not ok_t) + (not ok_o)


def _record_json(r: Rejection) -> tuple[str, int]:
    record = {
        "model": r.model,
        "rule": r.rule,
        "field": r.field,
        "op": r.op,
        "threshold": r.threshold,
        "observed": r.observed,
        "message": r.message,
    }
    try:
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False), 0
    except (TypeError, ValueError):
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=repr), 1


def workflow_attributes(w: WorkflowRef) -> dict[str, Any]:
    attrs: dict[str, Any] = {A.UNHARDCODED_WORKFLOW_ID: w.id, A.UNHARDCODED_WORKFLOW_NAME: w.name}
    if w.node is not None:
        attrs[A.UNHARDCODED_WORKFLOW_NODE] = w.node
    if w.step is not None:
        attrs[A.UNHARDCODED_WORKFLOW_STEP] = w.step
    return attrs


def budget_attributes(b: BudgetUse) -> dict[str, Any]:
    return {
        A.UNHARDCODED_BUDGET_SCOPE: b.scope,
        A.UNHARDCODED_BUDGET_NAME: b.name,
        A.UNHARDCODED_BUDGET_WINDOW: b.window,
        A.UNHARDCODED_BUDGET_LIMIT_USD: float(b.limit_usd),
        A.UNHARDCODED_BUDGET_SPENT_USD: float(b.spent_usd),
        A.UNHARDCODED_BUDGET_ACTION: b.action,
    }


class _Laid:
    """One rejection laid out: event attributes, JSON record, and how many of its values were not exact."""

    __slots__ = ("_r", "_record", "_record_lost", "event", "event_lost")

    def __init__(self, r: Rejection) -> None:
        self._r = r
        self.event, self.event_lost = _event_attributes(r)
        self._record: str | None = None
        self._record_lost = 0

    def record(self) -> tuple[str, int]:
        if self._record is None:
            self._record, self._record_lost = _record_json(self._r)
        return self._record, self._record_lost


class PolicyLayout:
    """What every decision span of one compiled policy shares, laid out once."""

    def __init__(self, compiled: CompiledPolicy) -> None:
        policy = compiled.policy
        self.compiled = compiled  # keeps the static rejections alive, so their ids stay theirs
        self.policy_name = policy.name
        self.span_name = S.DECISION_SPAN_NAME.format(policy=policy.name)
        # Set last, the identifying attributes go last: a span over its attribute count limit loses its oldest
        # attributes first, and a reader can still tell whose decision it was, and that it is incomplete.
        self.static_attributes: dict[str, Any] = {
            A.UNHARDCODED_POLICY_BODY: policy.canonical,
            A.UNHARDCODED_CATALOG_VERSION: compiled.catalog_version,
            A.UNHARDCODED_POLICY_SCHEMA: policy.schema_id,
            A.UNHARDCODED_POLICY_NAME: policy.name,
            A.UNHARDCODED_POLICY_FINGERPRINT: policy.fingerprint,
        }
        self.body_length = len(policy.canonical)
        # Rejections by the policy's own rules are the same objects in every decision: laid out once, by identity.
        static = [r for r in getattr(compiled, "static_rejections", ()) if r is not None]
        self.static_count = len(static)
        self._static_ids = frozenset(id(r) for r in static)
        self._static: dict[int, _Laid] = {}
        self._dynamic: dict[tuple[Any, ...], _Laid] = {}
        self._features: dict[tuple[Any, ...], str] = {}
        rule_counts: dict[str, int] = {}
        for r in static:
            rule_counts[r.rule] = rule_counts.get(r.rule, 0) + 1
        self.static_rule_counts = rule_counts

    # ---- rejections

    def laid(self, r: Rejection) -> _Laid:
        key = id(r)
        hit = self._static.get(key)
        if hit is not None:
            return hit
        if key in self._static_ids:
            hit = self._static[key] = _Laid(r)
            return hit
        # Request rules reject with new objects each time, but with the same few values.
        try:
            vkey = (r.model, r.rule, r.field, r.op, r.threshold, r.observed, r.message)
            hit = self._dynamic.get(vkey)
        except TypeError:  # an unhashable value: lay it out every time
            return _Laid(r)
        if hit is None:
            if len(self._dynamic) >= _CACHE_MAX:
                self._dynamic.clear()
            hit = self._dynamic[vkey] = _Laid(r)
        return hit

    def features_json(self, features: RequestFeatures) -> str:
        key = tuple(features.__dict__.values())
        text = self._features.get(key)
        if text is None:
            if len(self._features) >= _CACHE_MAX:
                self._features.clear()
            text = self._features[key] = features.canonical()
        return text

    # ---- the decision span

    def decision_attributes(self, d: Decision, outcome: str) -> tuple[dict[str, Any], list[dict[str, str]], int]:
        """Span attributes, rejection event attributes, and how many values could not be recorded exactly."""
        attrs: dict[str, Any] = {A.UNHARDCODED_REQUEST_FEATURES: self.features_json(d.features)}
        candidates = d.candidates
        attrs[A.UNHARDCODED_CANDIDATES] = candidates
        attrs[A.UNHARDCODED_CANDIDATES_COUNT] = len(candidates)
        rejected = d.rejected
        laid = self.laid
        rows = [laid(r) for r in rejected]
        attrs[A.UNHARDCODED_REJECTED] = [r.model for r in rejected]
        attrs[A.UNHARDCODED_REJECTED_COUNT] = len(rejected)
        selected = d.selected
        if selected is not None:
            attrs[A.UNHARDCODED_SELECTED_MODEL] = selected.model
            if selected.score is not None:
                attrs[A.UNHARDCODED_SELECTED_SCORE] = selected.score
            attrs[A.UNHARDCODED_SELECTED_REASON] = selected.reason
        hops = d.hops
        attrs[A.UNHARDCODED_FALLBACK_CHAIN] = d.fallback_chain
        attrs[A.UNHARDCODED_FALLBACK_TRIGGERED] = bool(hops)
        attrs[A.UNHARDCODED_FALLBACK_HOPS] = len(hops)
        if d.answered_by is not None:
            attrs[A.UNHARDCODED_ANSWERED_MODEL] = d.answered_by
        cost = d.cost
        if cost.usd is not None:
            attrs[A.UNHARDCODED_COST_USD] = cost.usd
        if cost.baseline_model is not None:
            attrs[A.UNHARDCODED_COST_BASELINE_MODEL] = cost.baseline_model
        if cost.baseline_usd is not None:
            attrs[A.UNHARDCODED_COST_BASELINE_USD] = cost.baseline_usd
        if cost.savings_ratio is not None:
            attrs[A.UNHARDCODED_COST_SAVINGS_RATIO] = cost.savings_ratio
        billing = d.billing
        if billing is not None:
            attrs.update(billing_attributes(billing))
        attrs[A.UNHARDCODED_LATENCY_MS] = float(d.latency_ms)
        if d.workflow is not None:
            attrs.update(workflow_attributes(d.workflow))
        if d.client is not None:
            attrs[A.UNHARDCODED_CLIENT_NAME] = d.client
        if d.budget is not None:
            attrs.update(budget_attributes(d.budget))
        lost = 0
        if d.live is not None:
            try:
                attrs[A.UNHARDCODED_LIVE_SNAPSHOT] = json.dumps(compact_snapshot(d.live), separators=(",", ":"))
            except (TypeError, ValueError):
                lost += 1
        if len(rows) > REJECTION_EVENT_LIMIT:
            rest = rows[REJECTION_EVENT_LIMIT:]
            rows = rows[:REJECTION_EVENT_LIMIT]
            parts = []
            for row in rest:
                text, n = row.record()
                parts.append(text)
                lost += n
            attrs[A.UNHARDCODED_REJECTIONS_JSON] = "[" + ",".join(parts) + "]"
            attrs[A.UNHARDCODED_REJECTIONS_SUMMARIZED] = len(rest)
        events = []
        for row in rows:
            events.append(row.event)
            lost += row.event_lost
        if outcome in _ERROR_OUTCOMES:
            attrs[G.ERROR_TYPE] = outcome
        attrs[A.UNHARDCODED_DECISION_OUTCOME] = outcome
        attrs.update(self.static_attributes)
        attrs[A.UNHARDCODED_REQUEST_ID] = d.request_id
        return attrs, events, lost


def billing_attributes(billing: Billing) -> dict[str, Any]:
    """The decision span's attributes of the cost as billed and of the source of the catalog's prices."""
    attrs: dict[str, Any] = {}
    prices = billing.prices
    if prices is not None:
        attrs[A.UNHARDCODED_CATALOG_PRICE_SOURCE] = prices.source
        attrs[A.UNHARDCODED_CATALOG_PRICE_DATA_VERSION] = prices.data_version
        if prices.snapshot_date is not None:
            attrs[A.UNHARDCODED_CATALOG_PRICE_SNAPSHOT_DATE] = prices.snapshot_date
    if billing.estimate_usd is not None:
        attrs[A.UNHARDCODED_COST_ESTIMATE_USD] = billing.estimate_usd
    parts = billing.breakdown
    if parts is not None:
        attrs[A.UNHARDCODED_COST_INPUT_USD] = parts.input
        attrs[A.UNHARDCODED_COST_CACHED_INPUT_USD] = parts.cached_input
        attrs[A.UNHARDCODED_COST_OUTPUT_USD] = parts.output
        attrs[A.UNHARDCODED_COST_OTHER_USD] = parts.other
    return attrs
