"""Filter -> rank -> select -> fallback plan. Policies compile once per (fingerprint, catalog version)."""

from __future__ import annotations

import functools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from .._construct import construct, plain_fields
from ..catalog.model import Catalog, CatalogModel, schedule_from_fields
from ..catalog.pricing import PriceSchedule, Usage
from ..catalog.pricing import cost as _cost
from ..policy.model import Policy
from .decision import Billing, Cost, Decision, PriceSource, Rejection, Selection, WorkflowRef, iso_ms
from .features import RequestFeatures
from .live import COOLDOWN_RULE, DYNAMIC_FIELDS, RATE_LIMIT_RULE, UNKNOWN, LiveView
from .rules import OP_FUNCS, pass_phrase, rank_phrase, rejection_message

_MISSING_LAST = float("inf")
_LIVE_PREFIX = "live."
_UNOBSERVED: dict[str, Any] = {
    "live.error_rate": 0.0,
    "live.consecutive_failures": 0,
    "live.in_flight": 0,
    "live.cooldown": False,
    "live.ratelimit_remaining_requests": None,
    "live.ratelimit_remaining_tokens": None,
}
"""A live field's value for a model nothing was observed of (``live.latency_p50_ms``: the catalog's figure)."""
_PASS_WHEN_UNSET = frozenset({"live.ratelimit_remaining_requests", "live.ratelimit_remaining_tokens"})
"""Live fields a rule does not hold against a model whose provider never reported them."""


def unobserved_value(field: str, model: CatalogModel) -> Any:
    if field == "live.latency_p50_ms":
        return model.values.get("latency_p50_ms")
    return _UNOBSERVED.get(field)


class _Survivor:
    """A model that passed every policy rule, with what per-request work needs, read once."""

    __slots__ = (
        "context",
        "head_rank",
        "id",
        "kind",
        "live_default",
        "max_out",
        "model",
        "pin",
        "pout",
        "provider",
        "schedule",
        "score",
        "static_key",
        "tail_rank",
        "tools",
        "tools_rejection",
        "vision",
        "vision_rejection",
    )

    def __init__(
        self,
        model: CatalogModel,
        score_field: str | None,
        static_keys: Sequence[tuple[str, str]],
        schedule: PriceSchedule | None = None,
    ) -> None:
        v = model.values
        self.model = model
        self.id = model.id
        self.provider = model.provider
        self.kind = v.get("kind") or "chat"
        self.pin = float(v["price_input_per_mtok"])
        self.pout = float(v["price_output_per_mtok"])
        # Tiers, dated prices or a per-request fee: the estimate goes through the pricing function.
        self.schedule = schedule if schedule is not None and not _is_simple(schedule) else None
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
        # Ranks among the policy's survivors, set by CompiledPolicy: the static keys before `cost`
        # (ties share a rank), and the static keys after it with the id (unique).
        self.head_rank = 0
        self.tail_rank = 0
        # The first live rule this model fails while nothing is observed of it (set by CompiledPolicy).
        self.live_default: Rejection | None = None
        # The request rejections that never change: built once, shared by every decision (they are frozen).
        self.tools_rejection = (
            None
            if self.tools is True
            else _rejection(self.id, "request:tools", "supports_tools", "eq", True, self.tools)
        )
        self.vision_rejection = (
            None
            if self.vision is True
            else _rejection(self.id, "request:vision", "supports_vision", "eq", True, self.vision)
        )

    def cost(self, features: RequestFeatures) -> float:
        if self.schedule is not None:
            return _cost(self.schedule, Usage(features.input_tokens, features.output_tokens)).total
        return (features.input_tokens * self.pin + features.output_tokens * self.pout) / 1_000_000


def _is_simple(schedule: PriceSchedule) -> bool:
    """One untiered input and output price and no fee: the estimate is two products."""
    p = schedule.flat
    return p is not None and not p.input.tiers and not p.output.tiers and p.per_request is None


def _rejection(
    model: str, rule: str, field: str, op: str, threshold: Any, observed: Any, message: str | None = None
) -> Rejection:
    """A request-rule rejection (validated: pydantic-core builds one faster than model_construct does)."""
    return Rejection(
        model=model,
        rule=rule,
        field=field,
        op=op,
        threshold=threshold,
        observed=observed,
        message=rejection_message(rule, field, op, threshold, observed) if message is None else message,
    )


class _Slate:
    """The survivors for one mix of request capabilities (kind, tools? images?), and the rejections so far.

    ``rejected`` is every model rejected by a policy rule or by the request's kind/tools/vision rule, in
    catalog order; ``positions[k]`` is how many of them come before ``survivors[k]`` in the catalog,
    so per-request rejections can be merged in without walking the whole catalog.
    """

    __slots__ = ("ids", "min_context", "min_max_out", "positions", "providers", "rejected", "survivors")

    def __init__(
        self,
        static_rejections: list[Rejection | None],
        all_survivors: list[_Survivor | None],
        kind: str,
        tools: bool,
        images: bool,
    ) -> None:
        self.survivors: list[_Survivor] = []
        self.rejected: list[Rejection] = []
        self.positions: list[int] = []
        for static, survivor in zip(static_rejections, all_survivors):
            if survivor is None:
                self.rejected.append(static)  # type: ignore[arg-type]
            elif survivor.kind != kind:
                self.rejected.append(_kind_rejection(survivor.id, survivor.kind))
            elif tools and survivor.tools_rejection is not None:
                self.rejected.append(survivor.tools_rejection)
            elif images and survivor.vision_rejection is not None:
                self.rejected.append(survivor.vision_rejection)
            else:
                self.positions.append(len(self.rejected))
                self.survivors.append(survivor)
        self.ids = frozenset(s.id for s in self.survivors)
        self.providers = frozenset(s.provider for s in self.survivors)
        self.min_context = min((s.context for s in self.survivors if s.context is not None), default=None)
        self.min_max_out = min((s.max_out for s in self.survivors if s.max_out is not None), default=None)


@functools.lru_cache(maxsize=4096)
def _kind_rejection(model: str, kind: str) -> Rejection:
    """A model of one kind rejected for a request of the other; shared by every policy (it depends on neither)."""
    wanted = "chat" if kind == "embedding" else "embedding"
    return _rejection(
        model,
        "request:kind",
        "kind",
        "eq",
        wanted,
        kind,
        f"{'an embedding' if kind == 'embedding' else 'a chat'} model, the request is "
        f"{'a chat' if wanted == 'chat' else 'an embeddings'} request",
    )


def estimate_cost(model: CatalogModel, input_tokens: int, output_tokens: int) -> float:
    """USD for this many tokens at the model's headline (untiered, undated) prices."""
    return _cost(schedule_from_fields(model.values), Usage(input_tokens, output_tokens)).total


def price(usd: float | None, catalog: Catalog, baseline: str | None, input_tokens: int, output_tokens: int) -> Cost:
    """The cost record of an estimate: ``usd``, and what the same usage would cost on the baseline."""
    return price_usage(usd, catalog, baseline, Usage(input_tokens, output_tokens))


def price_usage(usd: float | None, catalog: Catalog, baseline: str | None, usage: Usage, when: Any = None) -> Cost:
    """The cost record: ``usd`` paid, and ``usage`` priced on the baseline model at ``when``."""
    if baseline is None or baseline not in catalog:
        return Cost(usd=usd)
    base = _cost(catalog.schedule(baseline), usage, when).total
    ratio = (1 - usd / base) if (usd is not None and base > 0) else None
    return Cost(usd=usd, baseline_model=baseline, baseline_usd=base, savings_ratio=ratio)


def price_source(catalog: Catalog) -> PriceSource | None:
    p = catalog.prices
    return (
        None if p is None else PriceSource(source=p.source, data_version=p.data_version, snapshot_date=p.snapshot_date)
    )


class CompiledPolicy:
    """A policy evaluated against one catalog version: static rejections and survivors, computed once."""

    def __init__(self, policy: Policy, catalog: Catalog) -> None:
        self.policy = policy
        self.catalog = catalog
        self.catalog_version = catalog.version
        self.price_source = price_source(catalog)
        # A dry run's billing: the prices' source only. Shared by the decisions of this policy (never changed: an
        # attempt's billing is a new object).
        self.dry_billing = Billing(prices=self.price_source) if self.price_source is not None else None
        rank = policy.rank
        keys = [(rank.by, rank.order)] + [(k.by, k.order) for k in rank.then]
        # Keys before the first `cost` are static; cost and what follows are computed per request.
        self.cost_position = next((i for i, (by, _) in enumerate(keys) if by == "cost"), None)
        self.keys = keys
        self.live_rank = any(by.startswith(_LIVE_PREFIX) for by, _ in keys)
        static_keys = [k for k in keys if k[0] != "cost"]
        self.cost_sign = 1.0
        if self.cost_position is not None:
            self.cost_sign = 1.0 if keys[self.cost_position][1] == "asc" else -1.0
        self.static_rejections: list[Rejection | None] = []
        self.survivors: list[_Survivor | None] = []
        rules = [
            (r.id, r.field, r.op, r.value, OP_FUNCS[r.op]) for r in policy.rules if not r.field.startswith("live.")
        ]
        # Live rules are applied at decide time, to the models every other rule let through.
        self.live_rules = [
            (r.id, r.field, r.op, r.value, OP_FUNCS[r.op], r.field in DYNAMIC_FIELDS)
            for r in policy.rules
            if r.field.startswith(_LIVE_PREFIX)
        ]
        self.live_fields = sorted(
            {r[1] for r in self.live_rules} | {by for by, _ in keys if by.startswith(_LIVE_PREFIX)}
        )
        for model in catalog.models:
            rejection = None
            for rid, field, op, value, fn in rules:
                observed = model.values.get(field)
                if observed is None or not fn(observed, value):
                    rejection = Rejection(
                        model=model.id,
                        rule=rid,
                        field=field,
                        op=op,
                        threshold=value,
                        observed=observed,
                        message=rejection_message(rid, field, op, value, observed),
                    )
                    break
            self.static_rejections.append(rejection)
            self.survivors.append(
                None
                if rejection
                else _Survivor(model, policy.select.score_field, static_keys, catalog.schedules.get(model.id))
            )
        for survivor in self.survivors:
            if survivor is not None:
                survivor.live_default = self._live_rejection(survivor, None)
        self.rules_reason = [pass_phrase(r.id, r.op, r.value) for r in policy.rules]
        self._rank_survivors(len(static_keys))
        self._reasons = {
            one: ", ".join([*self.rules_reason, rank_phrase(rank.by, rank.order, 1 if one else 2)])
            for one in (True, False)
        }
        # Indexed by 4 * (kind is embedding) + 2 * uses_tools + has_images; the embedding ones are made on the first
        # embeddings request (most policies never see one, and each slate holds a list per catalog model).
        self._slates: list[_Slate | None] = [
            _Slate(self.static_rejections, self.survivors, "chat", tools, images)
            for tools in (False, True)
            for images in (False, True)
        ] + [None] * 4

    def _slate(self, index: int) -> _Slate:
        slate = self._slates[index]
        if slate is None:
            slate = self._slates[index] = _Slate(
                self.static_rejections, self.survivors, "embedding", bool(index & 2), bool(index & 1)
            )
        return slate

    def _rank_survivors(self, n_static: int) -> None:
        """Turn each survivor's static sort key into two integers, so a request sorts (head, cost, tail)."""
        p = self.cost_position if self.cost_position is not None else n_static
        survivors = [s for s in self.survivors if s is not None]
        heads = sorted({s.static_key[:p] for s in survivors})
        head_rank = {h: i for i, h in enumerate(heads)}
        for s in survivors:
            s.head_rank = head_rank[s.static_key[:p]]
        for i, s in enumerate(sorted(survivors, key=lambda s: (*s.static_key[p:], s.id))):
            s.tail_rank = i

    def _ranked(self, survivors: list[_Survivor], features: RequestFeatures) -> list[_Survivor]:
        """Survivors best first: the static keys before cost, the request's cost, the keys after it, the id."""
        keyed: list[tuple[float, int, _Survivor]]
        if self.cost_position is None:
            keyed = [(s.head_rank, s.tail_rank, s) for s in survivors]
        else:
            it, ot = features.input_tokens, features.output_tokens
            sign = self.cost_sign
            if self.cost_position == 0:
                if sign == 1.0:
                    keyed = [((it * s.pin + ot * s.pout) / 1_000_000, s.tail_rank, s) for s in survivors]
                else:
                    keyed = [(sign * ((it * s.pin + ot * s.pout) / 1_000_000), s.tail_rank, s) for s in survivors]
            else:
                # (head, cost, tail): one element longer than the keys above, so a list of its own type.
                keyed_by_head = [
                    (s.head_rank, sign * ((it * s.pin + ot * s.pout) / 1_000_000), s.tail_rank, s) for s in survivors
                ]
                keyed_by_head.sort()  # tail_rank is unique, so a survivor itself is never compared
                return [k[-1] for k in keyed_by_head]
        keyed.sort()  # tail_rank is unique, so a survivor itself is never compared
        return [k[-1] for k in keyed]

    def decide(
        self,
        features: RequestFeatures,
        *,
        request_id: str | None = None,
        workflow: WorkflowRef | None = None,
        client_name: str | None = None,
        unservable: frozenset[str] = frozenset(),
        live: LiveView | None = None,
    ) -> Decision:
        """The would-be decision for ``features``: no provider is called.

        ``unservable`` names the providers that cannot serve the request's API (the router reads them from its
        providers file); their models are rejected by the implicit ``request:api`` rule. ``live``: what the router
        observes (the ``live.`` fields, cooldowns, rate-limit headroom); None decides as if nothing were observed.
        """
        needed = features.input_tokens + (features.max_tokens or 0)
        max_tokens = features.max_tokens
        index = (2 if features.uses_tools else 0) + (1 if features.has_images else 0)
        slate = self._slates[index] if features.kind == "chat" else self._slate(4 + index)
        assert slate is not None
        check_context = slate.min_context is not None and slate.min_context < needed
        check_max = max_tokens is not None and slate.min_max_out is not None and slate.min_max_out < max_tokens
        check_api = bool(unservable) and not unservable.isdisjoint(slate.providers)
        dropped: set[str] = set()
        if not (check_context or check_max or check_api):
            survivors = slate.survivors
            rejected = slate.rejected.copy()
        else:
            survivors = []
            rejected = []
            template = slate.rejected
            done = 0
            messages: dict[tuple[str, Any], str] = {}
            for position, survivor in zip(slate.positions, slate.survivors):
                context = survivor.context
                if check_api and survivor.provider in unservable:
                    rejected += template[done:position]
                    rejected.append(_api_rejection(survivor, features, unservable))
                    done = position
                    dropped.add(survivor.id)
                    continue
                if context is not None and context < needed:
                    rule, field, threshold, observed = "request:context", "context_window", needed, context
                elif max_tokens is not None and survivor.max_out is not None and survivor.max_out < max_tokens:
                    rule, field, threshold, observed = (
                        "request:max-tokens",
                        "max_output_tokens",
                        max_tokens,
                        survivor.max_out,
                    )
                else:
                    survivors.append(survivor)
                    continue
                message = messages.get((rule, observed))
                if message is None:
                    message = messages[(rule, observed)] = rejection_message(rule, field, "gte", threshold, observed)
                rejected += template[done:position]
                rejected.append(_rejection(survivor.id, rule, field, "gte", threshold, observed, message))
                done = position
                dropped.add(survivor.id)
            rejected += template[done:]
        snapshot = None
        if self.live_fields or (live is not None and live.blocked):
            survivors, snapshot = self._live_pass(survivors, rejected, features, live, dropped)
        if self.live_rank:
            ranked = self._ranked_live(survivors, features, snapshot, live)
        else:
            ranked = self._ranked(survivors, features)
        candidates = [s.id for s in ranked]
        policy = self.policy
        selected = None
        chain: list[str] = []
        cost = Cost()
        if ranked:
            winner = ranked[0]
            selected = Selection(model=winner.id, score=winner.score, reason=self._reasons[len(ranked) == 1])
            passing = slate.ids
            chain = [m for m in policy.fallback.models if m != winner.id and m in passing and m not in dropped]
            if features.stateful:  # the state lives with one provider: never fall back to another
                chain = [m for m in chain if self.catalog.model(m).provider == winner.provider]
            chain = chain[: policy.fallback.max_hops]
            cost = price(
                winner.cost(features), self.catalog, policy.baseline, features.input_tokens, features.output_tokens
            )
        return _construct_decision(
            {
                "request_id": request_id or new_request_id(),
                "timestamp": utc_now(),
                "policy": policy,
                "catalog_version": self.catalog_version,
                "features": features,
                "candidates": candidates,
                "rejected": rejected,
                "selected": selected,
                "fallback_chain": chain,
                "hops": [],
                "attempts": [],
                "answered_by": None,
                "outcome": "dry_run" if selected else "no_candidate",
                "cost": cost,
                "latency_ms": 0.0,
                "workflow": workflow,
                "client": client_name,
                "billing": self.dry_billing,
                "budget": None,
                "trace_id": None,
                "span_id": None,
                "signature": None,
                "live": snapshot,
            }
        )

    # ---- live fields

    def _live_rejection(
        self,
        s: _Survivor,
        row: dict[str, Any] | None,
        live: LiveView | None = None,
        now: float = 0.0,
        entry: dict[str, Any] | None = None,
    ) -> Rejection | None:
        """The first live rule ``s`` fails on ``row`` (None: nothing observed, so the documented values)."""
        for rid, field, op, value, fn, dynamic in self.live_rules:
            if row is None:
                observed = unobserved_value(field, s.model)
            elif dynamic or (live is not None and live.all_dynamic):
                observed = live.value(s.id, field, now) if live is not None else None
                if entry is not None:
                    entry[field] = observed
                if observed is UNKNOWN:
                    continue
                if observed is None:
                    observed = unobserved_value(field, s.model)
            else:
                observed = row.get(field)
                if observed is None:
                    observed = unobserved_value(field, s.model)
            if observed is None and field in _PASS_WHEN_UNSET:
                continue
            if observed is None or not fn(observed, value):
                return _rejection(s.id, rid, field, op, value, observed)
        return None

    def _live_pass(
        self,
        survivors: list[_Survivor],
        rejected: list[Rejection],
        features: RequestFeatures,
        live: LiveView | None,
        dropped: set[str],
    ) -> tuple[list[_Survivor], dict[str, Any] | None]:
        """Apply the implicit live rules and the policy's live rules; the snapshot of what was read."""
        models: dict[str, dict[str, Any]] = {}
        kept: list[_Survivor] = []
        if live is None:
            for s in survivors:
                if s.live_default is None:
                    kept.append(s)
                else:
                    rejected.append(s.live_default)
                    dropped.add(s.id)
            return kept, {"fields": self.live_fields, "models": models}
        now = live.clock()
        blocked = live.blocked
        rows = live.rows
        live_rules = self.live_rules
        static_only = not live.all_dynamic and not any(rule[5] for rule in live_rules)
        needed = features.input_tokens + features.output_tokens
        for s in survivors:
            sid = s.id
            if sid in blocked:
                observed = live.cooldown_of(sid, now)
                if observed is not None:
                    models[sid] = {COOLDOWN_RULE: observed}
                    rejected.append(_cooldown_rejection(sid, observed))
                    dropped.add(sid)
                    continue
                observed = live.rate_limit_of(sid, now, needed)
                if observed is not None:
                    models[sid] = {RATE_LIMIT_RULE: observed}
                    rejected.append(_rate_limit_rejection(sid, observed))
                    dropped.add(sid)
                    continue
            if live_rules:
                row = rows.get(sid)
                if row is None:
                    rejection = s.live_default
                elif static_only:
                    # Rows are replaced, never changed, when the live state moves on: kept as they were read.
                    models[sid] = row
                    rejection = None
                    for rid, field, op, value, fn, _ in live_rules:
                        observed = row.get(field)
                        if observed is None:
                            observed = unobserved_value(field, s.model)
                            if observed is None and field in _PASS_WHEN_UNSET:
                                continue
                        if observed is None or not fn(observed, value):
                            rejection = _rejection(sid, rid, field, op, value, observed)
                            break
                else:
                    entry = models[sid] = dict(row)
                    rejection = self._live_rejection(s, row, live, now, entry)
                if rejection is not None:
                    rejected.append(rejection)
                    dropped.add(sid)
                    continue
            elif self.live_rank:
                row = rows.get(sid)
                if row is not None:
                    models[sid] = row
            kept.append(s)
        if not models and not self.live_fields:
            return kept, None  # nothing read that could change the decision: nothing to record
        return kept, {"at": iso_ms(int(now * 1e9)), "fields": self.live_fields, "models": models}

    def _ranked_live(
        self,
        survivors: list[_Survivor],
        features: RequestFeatures,
        snapshot: dict[str, Any] | None,
        live: LiveView | None,
    ) -> list[_Survivor]:
        """Survivors best first when a rank key is a live field: every key read per request."""
        models = snapshot["models"] if snapshot is not None else {}
        now = live.clock() if live is not None else 0.0
        it, ot = features.input_tokens, features.output_tokens

        def key(s: _Survivor) -> tuple[Any, ...]:
            out: list[float] = []
            for by, order in self.keys:
                if by == "cost":
                    value: Any = (it * s.pin + ot * s.pout) / 1_000_000
                elif by.startswith(_LIVE_PREFIX):
                    entry = models.get(s.id)
                    if entry is not None and by in entry:
                        value = entry[by]
                    elif live is not None and s.id in live.rows:
                        value = live.value(s.id, by, now)
                        models.setdefault(s.id, {})[by] = value
                    else:
                        value = unobserved_value(by, s.model)
                    if value is UNKNOWN:
                        value = None
                else:
                    value = s.model.values.get(by)
                if value is None:
                    out.append(_MISSING_LAST)
                else:
                    out.append(float(value) if order == "asc" else -float(value))
            return (*out, s.id)

        return sorted(survivors, key=key)


def _cooldown_rejection(model: str, observed: dict[str, Any]) -> Rejection:
    what = "probe under way" if observed.get("probing") else f"until {observed.get('until')}"
    return _rejection(
        model,
        COOLDOWN_RULE,
        "live.cooldown",
        "eq",
        False,
        observed,
        f"cooling down after {observed.get('failures')} failures ({what})",
    )


def _rate_limit_rejection(model: str, observed: dict[str, Any]) -> Rejection:
    threshold: Any
    if "remaining_requests" in observed:
        field, threshold, left = "live.ratelimit_remaining_requests", 1, f"{observed['remaining_requests']} requests"
    else:
        field, threshold = "live.ratelimit_remaining_tokens", observed.get("needed_tokens")
        left = f"{observed.get('remaining_tokens')} tokens for {threshold}"
    return _rejection(
        model,
        RATE_LIMIT_RULE,
        field,
        "gte",
        threshold,
        observed,
        f"out of rate-limit headroom ({left} left, resets {observed.get('reset')})",
    )


API_NAMES = {
    "chat_completions": "chat completions",
    "responses": "Responses",
    "messages": "Anthropic Messages",
    "embeddings": "embeddings",
}


def _api_rejection(survivor: _Survivor, features: RequestFeatures, unservable: frozenset[str]) -> Rejection:
    api = API_NAMES.get(features.api, features.api)
    if features.stateful:
        message = (
            f"provider {survivor.provider} does not speak the Responses API itself, and the request relies on "
            "state a Responses provider holds (previous_response_id)"
        )
    else:
        message = f"provider {survivor.provider} cannot serve the {api} API (its apis in the providers file)"
    return _rejection(survivor.id, "request:api", "provider", "not_in", sorted(unservable), survivor.provider, message)


_DECISION_FIELDS = plain_fields(Decision)


def _construct_decision(values: dict[str, Any]) -> Decision:
    """``Decision.model_construct(**values)`` without its per-field Python loop, when every field is given in order.

    If ``Decision`` ever gains what :func:`construct` cannot build, or ``values`` lacks a field,
    ``model_construct`` is called instead.
    """
    if _DECISION_FIELDS is None or list(values) != _DECISION_FIELDS:
        return Decision.model_construct(**values)
    return construct(Decision, values)


def new_request_id() -> str:
    return "req_" + os.urandom(8).hex()


def utc_now() -> str:
    """Now, as a decision timestamp: ISO 8601 UTC, milliseconds (truncated), ``Z``."""
    return iso_ms(time.time_ns())


DEFAULT_COMPILED_BYTES = 48 * 1024 * 1024
"""The memory the compiled policies kept may take, estimated as :data:`COMPILED_WEIGHT` times their canonical JSON."""
COMPILED_WEIGHT = 12
"""A validated policy takes about 8 times the length of its canonical JSON in memory and its compiled form about 4
more (measured with tracemalloc on 200-rule policies)."""


class PolicyCompiler:
    """Compiled policies, reused per (fingerprint, catalog version); least recently used go first.

    Bounded in entries and in bytes (:data:`COMPILED_WEIGHT` times each policy's canonical JSON, an estimate of
    the memory it holds): requests may each carry a policy of their own, and a cache bounded only by count would keep
    hundreds of the largest.
    """

    def __init__(self, max_entries: int = 256, max_bytes: int = DEFAULT_COMPILED_BYTES) -> None:
        self._cache: OrderedDict[tuple[str, str], CompiledPolicy] = OrderedDict()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size_bytes = 0
        """The estimated memory of the policies kept, in bytes."""
        self._lock = threading.Lock()

    def compile(self, policy: Policy, catalog: Catalog) -> CompiledPolicy:
        key = (policy.fingerprint, catalog.version)
        compiled = self._cache.get(key)
        if compiled is not None:
            with self._lock:
                if key in self._cache:
                    self._cache.move_to_end(key)
            return compiled
        compiled = CompiledPolicy(policy, catalog)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = compiled
                self.size_bytes += COMPILED_WEIGHT * len(policy.canonical)
            while len(self._cache) > 1 and (len(self._cache) > self.max_entries or self.size_bytes > self.max_bytes):
                _, evicted = self._cache.popitem(last=False)
                self.size_bytes -= COMPILED_WEIGHT * len(evicted.policy.canonical)
        return compiled
        compiled = CompiledPolicy(policy, catalog)
        self._cache[key] = compiled
        if len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return compiled
