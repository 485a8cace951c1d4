"""The decision metrics: counters of decisions, fallbacks, rejections and cost, and the decision duration.

Attribute sets stay low-cardinality (policy name, model, rule, outcome,
fallback reason; never a request or workflow id), so that fallback rate per
policy is one PromQL division of two counters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import Meter, NoOpCounter

from ..semconv import attributes as A
from ..semconv import metrics as M

if TYPE_CHECKING:
    from ..router.decision import Decision
    from .layout import PolicyLayout

DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0)
"""Bucket bounds of ``unhardcoded.decision.duration``: a dry run takes microseconds, a cascade seconds."""

_DURATION_DESCRIPTION = "Wall time of a routing decision, provider calls included."


class DecisionMetrics:
    """The instruments of one meter, and the attribute sets they are recorded with, built once per combination."""

    def __init__(self, meter: Meter) -> None:
        self.decisions = M.create_unhardcoded_decisions(meter)
        self.fallbacks = M.create_unhardcoded_fallbacks(meter)
        self.rejections = M.create_unhardcoded_rejections(meter)
        self.cost = M.create_unhardcoded_cost(meter)
        self.cost_baseline = M.create_unhardcoded_cost_baseline(meter)
        try:
            self.duration = meter.create_histogram(
                M.UNHARDCODED_DECISION_DURATION,
                unit=M.UNHARDCODED_DECISION_DURATION_UNIT,
                description=_DURATION_DESCRIPTION,
                explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS_S),
            )
        except TypeError:  # an API older than the bucket advisory
            self.duration = M.create_unhardcoded_decision_duration(meter)
        self._sets: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._noop = isinstance(self.decisions, NoOpCounter)
        # The global proxy meter's instruments are no-ops until a meter provider is installed, then delegate.
        self._proxy = hasattr(self.decisions, "_real_instrument")

    def live(self) -> bool:
        """Whether recording can reach an SDK: False for the API's no-op meter, and for the global proxy
        while no meter provider is installed (it delegates as soon as one is)."""
        if self._proxy:
            return self.decisions._real_instrument is not None  # type: ignore[attr-defined]
        return not self._noop

    def _attributes(self, key: tuple[Any, ...]) -> dict[str, Any]:
        attrs = self._sets.get(key)
        if attrs is None:
            if len(self._sets) > 8192:  # bounded by policies x models x rules; a guard, not a working size
                self._sets.clear()
            attrs = {k: v for k, v in zip(key[1::2], key[2::2]) if v is not None}
            self._sets[key] = attrs
        return attrs

    def record(self, layout: PolicyLayout, d: Decision, outcome: str, duration_s: float) -> None:
        policy = layout.policy_name
        selected = d.selected.model if d.selected is not None else None
        answered = d.answered_by
        attrs = self._attributes(
            (
                "d",
                A.UNHARDCODED_POLICY_NAME,
                policy,
                A.UNHARDCODED_DECISION_OUTCOME,
                outcome,
                A.UNHARDCODED_SELECTED_MODEL,
                selected,
                A.UNHARDCODED_ANSWERED_MODEL,
                answered,
            )
        )
        self.decisions.add(1, attrs)
        self.duration.record(
            duration_s,
            self._attributes(
                (
                    "t",
                    A.UNHARDCODED_POLICY_NAME,
                    policy,
                    A.UNHARDCODED_DECISION_OUTCOME,
                    outcome,
                    A.UNHARDCODED_ANSWERED_MODEL,
                    answered,
                )
            ),
        )
        rejected = d.rejected
        if rejected:
            counts = layout.static_rule_counts
            if len(rejected) != layout.static_count:  # request rules rejected some too
                counts = {}
                for r in rejected:
                    counts[r.rule] = counts.get(r.rule, 0) + 1
            for rule, n in counts.items():
                self.rejections.add(
                    n, self._attributes(("r", A.UNHARDCODED_POLICY_NAME, policy, A.UNHARDCODED_REJECTION_RULE, rule))
                )
        for hop in d.hops:
            self.fallbacks.add(
                1,
                self._attributes(
                    (
                        "f",
                        A.UNHARDCODED_POLICY_NAME,
                        policy,
                        A.UNHARDCODED_FALLBACK_REASON,
                        hop.reason,
                        A.UNHARDCODED_SELECTED_MODEL,
                        selected,
                    )
                ),
            )
        if answered is not None:
            cost = d.cost
            by_model = self._attributes(
                ("c", A.UNHARDCODED_POLICY_NAME, policy, A.UNHARDCODED_ANSWERED_MODEL, answered)
            )
            if cost.usd is not None:
                self.cost.add(cost.usd, by_model)
            if cost.baseline_usd is not None:
                self.cost_baseline.add(cost.baseline_usd, by_model)
