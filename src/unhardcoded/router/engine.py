"""Filter -> rank -> select -> fallback plan. Policies compile once per (fingerprint, catalog version)."""

from __future__ import annotations

import os
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any

from ..catalog.model import Catalog, CatalogModel
from ..policy.model import Policy
from .decision import Cost, Decision, Rejection, Selection, WorkflowRef
from .features import RequestFeatures
from .rules import OP_FUNCS, pass_phrase, rank_phrase, rejection_message

_MISSING_LAST = float("inf")


class _Survivor:
    """A model that passed every policy rule, with what per-request work needs, read once."""

    __slots__ = ("model", "id", "pin", "pout", "tools", "vision", "context", "max_out", "score", "static_key")

    def __init__(self, model: CatalogModel, score_field: str | None, static_keys: list[tuple[str, str]]) -> None:
        v = model.values
        self.model = model
        self.id = model.id
        self.pin = float(v["price_input_per_mtok"])
        self.pout = float(v["price_output_per_mtok"])
        self.tools = v.get("supports_tools")
        self.vision = v.get("supports_vision")
        self.context = v.get("context_window")
        self.max_out = v.get("max_output_tokens")
        score = v.get(score_field) if score_field else None
        self.score = float(score) if score is not None else None
        key: list[float] = []
        for field, order in static_keys:
            value = v.get(field)
            if value is None:
                key.append(_MISSING_LAST)
            else:
                key.append(float(value) if order == "asc" else -float(value))
        self.static_key = tuple(key)

    def cost(self, features: RequestFeatures) -> float:
        return (features.input_tokens * self.pin + features.output_tokens * self.pout) / 1_000_000


def estimate_cost(model: CatalogModel, input_tokens: int, output_tokens: int) -> float:
    """USD for this usage at the model's catalog prices."""
    v = model.values
    return (input_tokens * float(v["price_input_per_mtok"]) + output_tokens * float(v["price_output_per_mtok"])) / 1_000_000


def price(usd: float | None, catalog: Catalog, baseline: str | None, input_tokens: int, output_tokens: int) -> Cost:
    """The cost record: what was paid and what the same usage would cost on the baseline."""
    if baseline is None or baseline not in catalog:
        return Cost(usd=usd)
    base = estimate_cost(catalog.model(baseline), input_tokens, output_tokens)
    ratio = (1 - usd / base) if (usd is not None and base > 0) else None
    return Cost(usd=usd, baseline_model=baseline, baseline_usd=base, savings_ratio=ratio)


class CompiledPolicy:
    """A policy evaluated against one catalog version: static rejections and survivors, computed once."""

    def __init__(self, policy: Policy, catalog: Catalog) -> None:
        self.policy = policy
        self.catalog = catalog
        self.catalog_version = catalog.version
        rank = policy.rank
        keys = [(rank.by, rank.order)] + [(k.by, k.order) for k in rank.then]
        # Keys before the first `cost` are static; cost and what follows are computed per request.
        self.cost_position = next((i for i, (by, _) in enumerate(keys) if by == "cost"), None)
        self.keys = keys
        static_keys = [k for k in keys if k[0] != "cost"]
        self.cost_sign = 1.0
        if self.cost_position is not None:
            self.cost_sign = 1.0 if keys[self.cost_position][1] == "asc" else -1.0
        self.static_rejections: list[Rejection | None] = []
        self.survivors: list[_Survivor | None] = []
        rules = [(r.id, r.field, r.op, r.value, OP_FUNCS[r.op]) for r in policy.rules]
        for model in catalog.models:
            rejection = None
            for rid, field, op, value, fn in rules:
                observed = model.values.get(field)
                if observed is None or not fn(observed, value):
                    rejection = Rejection(
                        model=model.id, rule=rid, field=field, op=op, threshold=value, observed=observed,
                        message=rejection_message(rid, field, op, value, observed),
                    )
                    break
            self.static_rejections.append(rejection)
            self.survivors.append(None if rejection else _Survivor(model, policy.select.score_field, static_keys))
        self.rules_reason = [pass_phrase(r.id, r.op, r.value) for r in policy.rules]
        self.baseline = catalog.model(policy.baseline) if policy.baseline else None

    def _sort_key(self, s: _Survivor, features: RequestFeatures) -> tuple[Any, ...]:
        if self.cost_position is None:
            return (*s.static_key, s.id)
        cost = self.cost_sign * s.cost(features)
        sk = s.static_key
        p = self.cost_position
        return (*sk[:p], cost, *sk[p:], s.id)

    def decide(
        self,
        features: RequestFeatures,
        *,
        request_id: str | None = None,
        workflow: WorkflowRef | None = None,
    ) -> Decision:
        """The would-be decision for ``features``: no provider is called."""
        rejected: list[Rejection] = []
        survivors: list[_Survivor] = []
        needed = features.input_tokens + (features.max_tokens or 0)
        uses_tools, has_images, max_tokens = features.uses_tools, features.has_images, features.max_tokens
        for static, survivor in zip(self.static_rejections, self.survivors):
            if survivor is None:
                rejected.append(static)  # type: ignore[arg-type]
                continue
            failed = None
            if uses_tools and survivor.tools is not True:
                failed = ("request:tools", "supports_tools", "eq", True, survivor.tools)
            elif has_images and survivor.vision is not True:
                failed = ("request:vision", "supports_vision", "eq", True, survivor.vision)
            elif survivor.context is not None and survivor.context < needed:
                failed = ("request:context", "context_window", "gte", needed, survivor.context)
            elif max_tokens is not None and survivor.max_out is not None and survivor.max_out < max_tokens:
                failed = ("request:max-tokens", "max_output_tokens", "gte", max_tokens, survivor.max_out)
            if failed is None:
                survivors.append(survivor)
            else:
                rid, field, op, thr, obs = failed
                rejected.append(Rejection(
                    model=survivor.id, rule=rid, field=field, op=op, threshold=thr, observed=obs,
                    message=rejection_message(rid, field, op, thr, obs),
                ))
        survivors.sort(key=lambda s: self._sort_key(s, features))
        candidates = [s.id for s in survivors]
        policy = self.policy
        selected = None
        chain: list[str] = []
        cost = Cost()
        if survivors:
            winner = survivors[0]
            reason = ", ".join([*self.rules_reason, rank_phrase(policy.rank.by, policy.rank.order, len(survivors))])
            selected = Selection(model=winner.id, score=winner.score, reason=reason)
            passing = set(candidates)
            chain = [m for m in policy.fallback.models if m != winner.id and m in passing][: policy.fallback.max_hops]
            cost = price(winner.cost(features), self.catalog, policy.baseline, features.input_tokens, features.output_tokens)
        return Decision.model_construct(
            request_id=request_id or new_request_id(),
            timestamp=utc_now(),
            policy=policy,
            catalog_version=self.catalog_version,
            features=features,
            candidates=candidates,
            rejected=rejected,
            selected=selected,
            fallback_chain=chain,
            hops=[],
            attempts=[],
            answered_by=None,
            outcome="dry_run" if selected else "no_candidate",
            cost=cost,
            latency_ms=0.0,
            workflow=workflow,
            trace_id=None,
            span_id=None,
        )


def new_request_id() -> str:
    return "req_" + os.urandom(8).hex()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class PolicyCompiler:
    """Compiled policies, reused per (fingerprint, catalog version); least recently used go first."""

    def __init__(self, max_entries: int = 256) -> None:
        self._cache: OrderedDict[tuple[str, str], CompiledPolicy] = OrderedDict()
        self.max_entries = max_entries

    def compile(self, policy: Policy, catalog: Catalog) -> CompiledPolicy:
        key = (policy.fingerprint, catalog.version)
        compiled = self._cache.get(key)
        if compiled is not None:
            self._cache.move_to_end(key)
            return compiled
        compiled = CompiledPolicy(policy, catalog)
        self._cache[key] = compiled
        if len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return compiled
