"""Receipts rebuilt from spans: the one path from a decision's telemetry back to the Receipt that produced it.

Whatever the spans came from, they are first read into :class:`SpanRecord`s
(:mod:`.spans`), then rebuilt here, following docs/span-layout.md. Spans of
other services in the trace are ignored; duplicates count once; order does not
matter; what is missing makes the receipt ``complete: false``.
"""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .._construct import construct as _construct
from ..policy.model import fingerprint_of
from ..router.decision import (
    Attempt,
    AttemptUsage,
    Billing,
    BudgetUse,
    Cost,
    CostBreakdown,
    FallbackHop,
    PriceSource,
    Rejection,
    Selection,
    Signature,
    WorkflowRef,
    iso_ms,
)
from ..router.features import RequestFeatures
from ..semconv import attributes as A
from ..semconv import gen_ai as G
from ..semconv import spans as S
from .memo import Memo, memo
from .model import RECEIPT_SCHEMA, FallbackRecord, PolicyRef, Receipt, WorkflowReceipt
from .spans import STATUS_ERROR, SharedAttributes, SpanRecord, read_spans

_OUTCOMES = frozenset({"dry_run", "answered", "failed", "no_candidate", "over_budget"})
_ROLES = frozenset({"selected", "fallback"})
_REASONS = frozenset({"error", "timeout", "rate_limit"})
_CALLED = frozenset({"answered", "failed"})
_STATUSES = frozenset({"ok", "error"})


@dataclass(frozen=True)
class RebuiltDecision:
    """A receipt and what replaying it needs: the canonical policy body and the request features."""

    receipt: Receipt
    policy_body: str | None
    features: RequestFeatures | None

    @property
    def fingerprint(self) -> str:
        return self.receipt.policy.fingerprint


@dataclass
class Rebuilt:
    """Everything a set of spans rebuilds to."""

    decisions: list[RebuiltDecision] = field(default_factory=list)
    workflows: list[WorkflowReceipt] = field(default_factory=list)
    spans: int = 0
    """Distinct spans read (duplicates counted once)."""
    ignored: int = 0
    """Spans that are not ours: other services, other instrumentation."""
    orphans: int = 0
    """Attempt spans whose decision span was not among the spans."""
    malformed: int = 0
    """Decision spans too damaged to rebuild (wrong types where the layout fixes them)."""

    @property
    def receipts(self) -> list[Receipt]:
        return [d.receipt for d in self.decisions]

    def receipt(self, request_id: str) -> Receipt | None:
        return next((d.receipt for d in self.decisions if d.receipt.request_id == request_id), None)

    def policies(self) -> dict[str, str]:
        """Canonical policy bodies by fingerprint."""
        return {d.fingerprint: d.policy_body for d in self.decisions if d.policy_body is not None}


# --------------------------------------------------------------------------- values


class _Malformed(ValueError):
    pass


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _Malformed(f"{what}: expected a string, got {type(value).__name__}")
    return value


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _opt_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _opt_int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return None


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() == "true"
    return bool(value)


_ONLY_STR = {str}


def _str_list(value: Any) -> list[str] | None:
    """A string[] attribute; Jaeger's legacy API carries arrays as JSON text."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, (list, tuple)) and (not value or set(map(type, value)) == _ONLY_STR):
        return value if value.__class__ is list else list(value)
    return None


_MISS = object()
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)((?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)").fullmatch
_JSON_SCALARS: Memo[str, Any] = memo("json_scalars", 0.03)
_SCALAR_TYPES = frozenset({str, int, float, bool})


def _json_text(value: Any) -> Any:
    """Rejection thresholds and observed values travel as JSON text so every type round-trips."""
    if not isinstance(value, str):
        return value
    # The same few texts ("true", "0.5", "10") come back on every decision: scalars are parsed once.
    hit = _JSON_SCALARS.get(value, _MISS)
    if hit is not _MISS:
        return list(hit) if hit.__class__ is tuple else hit
    # Observed values are mostly numbers that differ per request (token counts, prices): read those
    # without the JSON decoder. The pattern is JSON's number grammar, so the result is what json.loads gives.
    number = _JSON_NUMBER(value)
    if number is not None:
        return float(value) if number.group(1) else int(value)
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    if not isinstance(parsed, (list, dict)):
        _JSON_SCALARS.put(value, parsed, len(value))
    elif parsed.__class__ is list and all(x is None or x.__class__ in _SCALAR_TYPES for x in parsed):
        # Allowed regions and the like ('["eu"]'): kept as a tuple, handed out as a fresh list each time.
        _JSON_SCALARS.put(value, tuple(parsed), len(value))
    return parsed


_FINGERPRINTS: Memo[str, str] = memo("fingerprints", 0.01)


def _fingerprint(body: str) -> str:
    """The fingerprint of a policy body; the same few policies come back on every decision."""
    hit = _FINGERPRINTS.get(body)
    if hit is None:
        hit = fingerprint_of(body)
        _FINGERPRINTS.put(body, hit, len(body))
    return hit


# --------------------------------------------------------------------------- one decision


_R_MODEL, _R_RULE, _R_FIELD, _R_OP = (
    A.UNHARDCODED_REJECTION_MODEL,
    A.UNHARDCODED_REJECTION_RULE,
    A.UNHARDCODED_REJECTION_FIELD,
    A.UNHARDCODED_REJECTION_OP,
)
_R_THRESHOLD, _R_OBSERVED, _R_MESSAGE = (
    A.UNHARDCODED_REJECTION_THRESHOLD,
    A.UNHARDCODED_REJECTION_OBSERVED,
    A.UNHARDCODED_REJECTION_MESSAGE,
)
# Rejections repeat across decisions (same policy, same catalog): a frozen Rejection with scalar values is
# built once and shared. List values are never shared, so no receipt can change another's.
_REJECTIONS: Memo[tuple[Any, ...], Rejection] = memo("rejections", 0.38)


def _rejection(ea: dict[str, Any]) -> Rejection | None:
    if ea.__class__ is SharedAttributes:  # the same event seen before: its rejection too
        try:
            memo = ea.memo  # type: ignore[attr-defined]
        except AttributeError:
            rejection = _read_rejection(ea)
            if rejection is None:
                return None
            kinds = {rejection.threshold.__class__, rejection.observed.__class__}
            if dict in kinds or (
                list in kinds and not all(_flat(v) for v in (rejection.threshold, rejection.observed))
            ):
                return rejection  # nested values: read again next time
            ea.memo = (rejection,) if list in kinds else rejection  # type: ignore[attr-defined]
            return rejection
        if memo.__class__ is tuple:  # list values are never shared: each receipt gets its own copy
            return _copy_lists(memo[0])
        return memo  # type: ignore[no-any-return]
    return _read_rejection(ea)


def _flat(value: Any) -> bool:
    return value.__class__ is not list or all(x is None or x.__class__ in _SCALAR_TYPES for x in value)


def _copy_lists(rejection: Rejection) -> Rejection:
    fields = rejection.__dict__.copy()
    threshold, observed = fields["threshold"], fields["observed"]
    if threshold.__class__ is list:
        fields["threshold"] = threshold[:]
    if observed.__class__ is list:
        fields["observed"] = observed[:]
    return _construct(Rejection, fields)


def _read_rejection(ea: dict[str, Any]) -> Rejection | None:
    model, rule = ea.get(_R_MODEL), ea.get(_R_RULE)
    if model.__class__ is not str or rule.__class__ is not str:
        return None
    field, op, thr, obs, msg = (
        ea.get(_R_FIELD, ""),
        ea.get(_R_OP, ""),
        ea.get(_R_THRESHOLD),
        ea.get(_R_OBSERVED),
        ea.get(_R_MESSAGE, ""),
    )
    key = (model, rule, field, op, thr, obs, msg)
    try:
        hit = _REJECTIONS.get(key)
    except TypeError:  # an unhashable value where the layout puts JSON text
        hit = None
        key = None  # type: ignore[assignment]
    if hit is not None:
        return hit
    threshold, observed = _json_text(thr), _json_text(obs)
    rejection = _construct(
        Rejection,
        {
            "model": model,
            "rule": rule,
            "field": str(field),
            "op": str(op),
            "threshold": threshold,
            "observed": observed,
            "message": str(msg),
        },
    )
    if key is not None and not isinstance(threshold, (list, dict)) and not isinstance(observed, (list, dict)):
        _REJECTIONS.put(key, rejection, sum(len(x) if isinstance(x, str) else 16 for x in key))
    return rejection


# A decision's rejections as a whole: the same events (their shared attributes, by identity) under the same
# rejected list make the same rejections, so the list is worked out once. Each entry holds the attributes its
# key names by id, so no id in a key can be reused while the entry lives.
_REJECTION_LISTS: Memo[tuple[Any, ...], tuple[tuple[Any, ...], list[tuple[Rejection, bool]], bool]] = memo(
    "rejection_lists", 0.03
)
_REJECTIONS_JSON = A.UNHARDCODED_REJECTIONS_JSON


def _rejections(span: SpanRecord, rejected: list[str] | None) -> tuple[list[Rejection], bool]:
    if rejected is None or _REJECTIONS_JSON in span.attributes:
        return _read_rejections(span, rejected)
    events = span.events
    key = (tuple(rejected), *[(e.name, id(e.attributes)) for e in events])
    hit = _REJECTION_LISTS.get(key)
    if hit is not None:  # list values are never shared: each receipt gets its own copy
        return [_copy_lists(r) if copy else r for r, copy in hit[1]], hit[2]
    ordered, ok = _read_rejections(span, rejected)
    plan = _plan(events, ordered)
    if plan is not None:
        # It holds its events' attributes: their bytes count, as the attributes memo may have let them go.
        size = sum(len(x) for x in rejected) + sum(
            len(v) if isinstance(v, str) else 16 for e in events for v in e.attributes.values()
        )
        _REJECTION_LISTS.put(key, (tuple(e.attributes for e in events), plan, ok), size)
    return ordered, ok


def _plan(events: list[Any], ordered: list[Rejection]) -> list[tuple[Rejection, bool]] | None:
    """``ordered`` as the rejections kept with its events (and whether each is copied), or None when one of its
    events keeps none (read anew every time: see :func:`_rejection`)."""
    kept: dict[str, tuple[Rejection, bool]] = {}
    for event in events:
        if event.name != S.REJECTION_EVENT:
            continue
        ea = event.attributes
        memo = getattr(ea, "memo", None) if ea.__class__ is SharedAttributes else None
        if memo is None:
            return None
        template, copy = (memo[0], True) if memo.__class__ is tuple else (memo, False)
        kept.setdefault(template.model, (template, copy))
    try:
        return [kept[r.model] for r in ordered]
    except KeyError:
        return None


def _read_rejections(span: SpanRecord, rejected: list[str] | None) -> tuple[list[Rejection], bool]:
    found: dict[str, Rejection] = {}
    event_name = S.REJECTION_EVENT
    for event in span.events:
        if event.name != event_name:
            continue
        rejection = _rejection(event.attributes)
        if rejection is not None and rejection.model not in found:
            found[rejection.model] = rejection
    summarized = span.attributes.get(A.UNHARDCODED_REJECTIONS_JSON)
    ok = True
    if summarized is not None:
        try:
            records = json.loads(summarized) if isinstance(summarized, str) else None
        except ValueError:
            records = None
        if not isinstance(records, list):
            ok = False
            records = []
        for r in records:
            if not isinstance(r, dict) or not isinstance(r.get("model"), str) or not isinstance(r.get("rule"), str):
                ok = False
                continue
            if r["model"] in found:
                continue
            found[r["model"]] = _construct(
                Rejection,
                {
                    "model": r["model"],
                    "rule": r["rule"],
                    "field": str(r.get("field", "")),
                    "op": str(r.get("op", "")),
                    "threshold": r.get("threshold"),
                    "observed": r.get("observed"),
                    "message": str(r.get("message", "")),
                },
            )
    if rejected is None:
        return list(found.values()), False
    ordered = [found[m] for m in rejected if m in found]
    every_one = len(ordered) == len(rejected)  # every model the list names has its record
    if len(ordered) < len(found):  # records for models the rejected list does not name: keep them, last
        named = set(rejected)
        ordered.extend(r for m, r in found.items() if m not in named)
    return ordered, ok and every_one


# Attribute names as module constants: the rebuild reads some forty per decision.
_K = A
_REQUEST, _POLICY_NAME, _POLICY_FP, _POLICY_SCHEMA, _POLICY_BODY = (
    _K.UNHARDCODED_REQUEST_ID,
    _K.UNHARDCODED_POLICY_NAME,
    _K.UNHARDCODED_POLICY_FINGERPRINT,
    _K.UNHARDCODED_POLICY_SCHEMA,
    _K.UNHARDCODED_POLICY_BODY,
)
_CATALOG, _FEATURES, _OUTCOME = (
    _K.UNHARDCODED_CATALOG_VERSION,
    _K.UNHARDCODED_REQUEST_FEATURES,
    _K.UNHARDCODED_DECISION_OUTCOME,
)
_CANDIDATES, _CANDIDATES_COUNT, _REJECTED, _REJECTED_COUNT = (
    _K.UNHARDCODED_CANDIDATES,
    _K.UNHARDCODED_CANDIDATES_COUNT,
    _K.UNHARDCODED_REJECTED,
    _K.UNHARDCODED_REJECTED_COUNT,
)
_SEL_MODEL, _SEL_SCORE, _SEL_REASON = (
    _K.UNHARDCODED_SELECTED_MODEL,
    _K.UNHARDCODED_SELECTED_SCORE,
    _K.UNHARDCODED_SELECTED_REASON,
)
_CHAIN, _TRIGGERED, _HOPS, _REASON = (
    _K.UNHARDCODED_FALLBACK_CHAIN,
    _K.UNHARDCODED_FALLBACK_TRIGGERED,
    _K.UNHARDCODED_FALLBACK_HOPS,
    _K.UNHARDCODED_FALLBACK_REASON,
)
_ANSWERED, _LATENCY, _DROPPED = (
    _K.UNHARDCODED_ANSWERED_MODEL,
    _K.UNHARDCODED_LATENCY_MS,
    _K.UNHARDCODED_TELEMETRY_DROPPED,
)
_COST, _BASE_MODEL, _BASE_USD, _SAVINGS = (
    _K.UNHARDCODED_COST_USD,
    _K.UNHARDCODED_COST_BASELINE_MODEL,
    _K.UNHARDCODED_COST_BASELINE_USD,
    _K.UNHARDCODED_COST_SAVINGS_RATIO,
)
_WF_ID, _WF_NAME, _WF_NODE, _WF_STEP = (
    _K.UNHARDCODED_WORKFLOW_ID,
    _K.UNHARDCODED_WORKFLOW_NAME,
    _K.UNHARDCODED_WORKFLOW_NODE,
    _K.UNHARDCODED_WORKFLOW_STEP,
)
_CLIENT = _K.UNHARDCODED_CLIENT_NAME
_BUDGET_SCOPE, _BUDGET_NAME, _BUDGET_WINDOW, _BUDGET_LIMIT, _BUDGET_SPENT, _BUDGET_ACTION = (
    _K.UNHARDCODED_BUDGET_SCOPE,
    _K.UNHARDCODED_BUDGET_NAME,
    _K.UNHARDCODED_BUDGET_WINDOW,
    _K.UNHARDCODED_BUDGET_LIMIT_USD,
    _K.UNHARDCODED_BUDGET_SPENT_USD,
    _K.UNHARDCODED_BUDGET_ACTION,
)
_LIVE = _K.UNHARDCODED_LIVE_SNAPSHOT
_AT_KEY = _K.UNHARDCODED_ATTEMPT_KEY
_SIG_VALUE, _SIG_KEY_ID, _SIG_VERSION = (
    _K.UNHARDCODED_SIGNATURE_VALUE,
    _K.UNHARDCODED_SIGNATURE_KEY_ID,
    _K.UNHARDCODED_SIGNATURE_VERSION,
)
_AT_INDEX, _AT_ROLE, _AT_STATUS, _AT_DURATION, _AT_START = (
    _K.UNHARDCODED_ATTEMPT_INDEX,
    _K.UNHARDCODED_ATTEMPT_ROLE,
    _K.UNHARDCODED_ATTEMPT_STATUS,
    _K.UNHARDCODED_ATTEMPT_DURATION_MS,
    _K.UNHARDCODED_ATTEMPT_START_MS,
)
_GEN_MODEL, _GEN_PROVIDER, _GEN_IN, _GEN_OUT, _ERROR_TYPE = (
    G.GEN_AI_REQUEST_MODEL,
    G.GEN_AI_PROVIDER_NAME,
    G.GEN_AI_USAGE_INPUT_TOKENS,
    G.GEN_AI_USAGE_OUTPUT_TOKENS,
    G.ERROR_TYPE,
)


def _attempt(span: SpanRecord) -> Attempt | None:
    get = span.attributes.get
    index = _opt_int(get(_AT_INDEX))
    model = get(_GEN_MODEL)
    role = get(_AT_ROLE)
    if index is None or index < 0 or model.__class__ is not str or role not in _ROLES:
        return None
    status = get(_AT_STATUS)
    if status not in _STATUSES:
        status = "error" if span.status_code == STATUS_ERROR else "ok"
    duration = _opt_float(get(_AT_DURATION))
    if duration is None:
        duration = max(0, span.end_ns - span.start_ns) / 1e6
    provider = get(_GEN_PROVIDER, "")
    return _construct(
        Attempt,
        {
            "index": index,
            "model": model,
            "provider": provider if provider.__class__ is str else str(provider),
            "role": role,
            "status": status,
            "error_type": _opt_str(get(_ERROR_TYPE)),
            "duration_ms": duration,
            "input_tokens": _opt_int(get(_GEN_IN)),
            "output_tokens": _opt_int(get(_GEN_OUT)),
            "start_ms": _opt_float(get(_AT_START)),
            "key": _opt_str(get(_AT_KEY)),
        },
    )


_AT_COST, _AT_CACHED, _AT_WRITTEN, _AT_REASONING = (
    G.GEN_AI_USAGE_COST,
    G.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
    G.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
    _K.UNHARDCODED_ATTEMPT_USAGE_REASONING_TOKENS,
)


def _attempt_usage(index: int, get: Any) -> AttemptUsage | None:
    """What a billed attempt's span says beyond input and output tokens (a billed attempt carries its cost)."""
    usd = _opt_float(get(_AT_COST))
    if usd is None:
        return None
    return _construct(
        AttemptUsage,
        {
            "index": index,
            "cached_input_tokens": _opt_int(get(_AT_CACHED)),
            "cache_write_tokens": _opt_int(get(_AT_WRITTEN)),
            "reasoning_tokens": _opt_int(get(_AT_REASONING)),
            "cost_usd": usd,
        },
    )


def _attempts(
    attempt_spans: Iterable[SpanRecord],
) -> tuple[list[Attempt], list[FallbackHop], set[int], bool, list[AttemptUsage]]:
    """Attempts in index order, the hops between them, the indices seen, whether every span was readable, and
    the usage of the billed ones."""
    ok = True
    by_index: dict[int, Attempt] = {}
    reasons: dict[int, Any] = {}
    usages: dict[int, AttemptUsage] = {}
    for attempt_span in attempt_spans:
        attempt = _attempt(attempt_span)
        if attempt is None:
            ok = False
            continue
        if attempt.index not in by_index:
            by_index[attempt.index] = attempt
            get = attempt_span.attributes.get
            reasons[attempt.index] = get(_REASON)
            if _AT_COST in attempt_span.attributes:
                usage = _attempt_usage(attempt.index, get)
                if usage is not None:
                    usages[attempt.index] = usage
    attempts = [by_index[i] for i in sorted(by_index)]
    hops = []
    for attempt in attempts:
        previous = by_index.get(attempt.index - 1)
        if attempt.index == 0 or previous is None:
            continue
        reason = reasons[attempt.index]
        if reason not in _REASONS:
            ok = False
            continue
        hops.append(_construct(FallbackHop, {"from_": previous.model, "to": attempt.model, "reason": reason}))
    return attempts, hops, set(by_index), ok, [usages[i] for i in sorted(usages)]


_PRICE_SOURCE, _PRICE_VERSION, _PRICE_DATE = (
    _K.UNHARDCODED_CATALOG_PRICE_SOURCE,
    _K.UNHARDCODED_CATALOG_PRICE_DATA_VERSION,
    _K.UNHARDCODED_CATALOG_PRICE_SNAPSHOT_DATE,
)
_ESTIMATE, _PART_IN, _PART_CACHED, _PART_OUT, _PART_OTHER = (
    _K.UNHARDCODED_COST_ESTIMATE_USD,
    _K.UNHARDCODED_COST_INPUT_USD,
    _K.UNHARDCODED_COST_CACHED_INPUT_USD,
    _K.UNHARDCODED_COST_OUTPUT_USD,
    _K.UNHARDCODED_COST_OTHER_USD,
)


_SOURCES: dict[tuple[Any, Any, Any], tuple[PriceSource, Billing]] = {}
"""Price sources seen, each with the billing of a dry run on it: a catalog's decisions all name the same one, so
they share these objects (never changed once built), as the router's dry runs do."""


def _billing(get: Any, usages: list[AttemptUsage]) -> Billing | None:
    """The receipt's billing from the decision span (and its billed attempts), or None when the span has none."""
    source = get(_PRICE_SOURCE)
    estimate = _opt_float(get(_ESTIMATE))
    part_in = _opt_float(get(_PART_IN))
    if source is None and estimate is None and part_in is None and not usages:
        return None
    prices = None
    if source is not None:
        key = (source, get(_PRICE_VERSION), get(_PRICE_DATE))
        known = _SOURCES.get(key)
        if known is None:
            prices = _construct(
                PriceSource,
                {
                    "source": source if source.__class__ is str else str(source),
                    "data_version": _opt_str(key[1]) or "",
                    "snapshot_date": _opt_str(key[2]),
                },
            )
            if len(_SOURCES) > 64:
                _SOURCES.clear()
            known = _SOURCES[key] = (
                prices,
                _construct(Billing, {"estimate_usd": None, "breakdown": None, "attempts": [], "prices": prices}),
            )
        if estimate is None and part_in is None and not usages:
            return known[1]
        prices = known[0]
    breakdown = None
    if part_in is not None:
        breakdown = _construct(
            CostBreakdown,
            {
                "input": part_in,
                "cached_input": _opt_float(get(_PART_CACHED)) or 0.0,
                "output": _opt_float(get(_PART_OUT)) or 0.0,
                "other": _opt_float(get(_PART_OTHER)) or 0.0,
            },
        )
    return _construct(Billing, {"estimate_usd": estimate, "breakdown": breakdown, "attempts": usages, "prices": prices})


def rebuild_decision(span: SpanRecord, attempt_spans: Iterable[SpanRecord] = ()) -> RebuiltDecision:
    """The receipt of one decision span and its attempt spans. Raises ValueError on a span too damaged to read."""
    a = span.attributes
    get = a.get
    request_id = _str(get(_REQUEST), "request id")
    fingerprint = _str(get(_POLICY_FP), "policy fingerprint")
    policy_name = _str(get(_POLICY_NAME), "policy name")
    policy_schema = _str(get(_POLICY_SCHEMA), "policy schema")
    catalog_version = _str(get(_CATALOG), "catalog version")
    complete = True

    candidates = _str_list(get(_CANDIDATES))
    if candidates is None:
        candidates, complete = [], False
    elif _opt_int(get(_CANDIDATES_COUNT)) not in (None, len(candidates)):
        complete = False
    rejected, rejections_ok = _rejections(span, _str_list(get(_REJECTED)))
    expected_rejections = _opt_int(get(_REJECTED_COUNT))
    if not rejections_ok or (expected_rejections is not None and len(rejected) < expected_rejections):
        complete = False

    selected = None
    model = get(_SEL_MODEL)
    if model.__class__ is str:
        reason = get(_SEL_REASON, "")
        selected = _construct(
            Selection,
            {
                "model": model,
                "score": _opt_float(get(_SEL_SCORE)),
                "reason": reason if reason.__class__ is str else str(reason),
            },
        )

    attempts, hops, indices, attempts_ok, usages = _attempts(attempt_spans)
    if not attempts_ok:
        complete = False
    answered_by = _opt_str(get(_ANSWERED))
    outcome = get(_OUTCOME)
    if outcome not in _OUTCOMES:
        complete = False
        outcome = "answered" if answered_by is not None else ("dry_run" if selected else "no_candidate")
    if outcome in _CALLED:
        # A decision that called a provider made one attempt more than it took hops.
        expected = (_opt_int(get(_HOPS)) or 0) + 1
        if len(indices) < expected or not indices.issuperset(range(expected)):
            complete = False
    if (_opt_int(get(_DROPPED)) or 0) > 0 or span.dropped_attributes or span.dropped_events:
        complete = False

    features = None
    raw_features = get(_FEATURES)
    if raw_features.__class__ is str:
        try:
            features = RequestFeatures.model_validate_json(raw_features)
        except ValueError:
            features = None
    if features is None:
        complete = False

    body = get(_POLICY_BODY)
    # A body cut by an attribute length limit no longer hashes to the fingerprint: useless for replay.
    if body.__class__ is not str or _fingerprint(body) != fingerprint:
        body, complete = None, False

    workflow = None
    workflow_id = get(_WF_ID)
    if workflow_id.__class__ is str:
        name = get(_WF_NAME, "")
        workflow = _construct(
            WorkflowRef,
            {
                "id": workflow_id,
                "name": name if name.__class__ is str else str(name),
                "node": _opt_str(get(_WF_NODE)),
                "step": _opt_int(get(_WF_STEP)),
            },
        )

    signature = None
    value = get(_SIG_VALUE)
    if value is not None:
        # What the span says, as it says it: whether it verifies is the verifier's question (a wrong type there
        # leaves a signature that cannot verify rather than none, so it reads "invalid", not "unsigned").
        key_id, version = get(_SIG_KEY_ID), _opt_int(get(_SIG_VERSION))
        signature = _construct(
            Signature,
            {
                "version": version if version is not None else -1,
                "key_id": key_id if key_id.__class__ is str else "",
                "value": value if value.__class__ is str else "",
            },
        )

    live = None
    raw_live = get(_LIVE)
    if raw_live is not None:
        try:
            live = json.loads(raw_live) if raw_live.__class__ is str else None
        except ValueError:
            live = None
        if not isinstance(live, dict):
            live, complete = None, False

    latency = _opt_float(get(_LATENCY))
    receipt = _construct(
        Receipt,
        {
            "receipt": RECEIPT_SCHEMA,
            "request_id": request_id,
            "trace_id": span.trace_id,
            "span_id": span.span_id,
            "timestamp": iso_ms(span.start_ns),
            "policy": _construct(
                PolicyRef, {"name": policy_name, "fingerprint": fingerprint, "schema_": policy_schema}
            ),
            "catalog_version": catalog_version,
            "candidates": candidates,
            "rejected": rejected,
            "selected": selected,
            "fallback": _construct(
                FallbackRecord,
                {
                    "chain": _str_list(get(_CHAIN)) or [],
                    "triggered": _bool(get(_TRIGGERED, bool(hops))),
                    "hops": hops,
                },
            ),
            "attempts": attempts,
            "answered_by": answered_by,
            "latency_ms": latency if latency is not None else max(0, span.end_ns - span.start_ns) / 1e6,
            "cost": _construct(
                Cost,
                {
                    "usd": _opt_float(get(_COST)),
                    "baseline_model": _opt_str(get(_BASE_MODEL)),
                    "baseline_usd": _opt_float(get(_BASE_USD)),
                    "savings_ratio": _opt_float(get(_SAVINGS)),
                },
            ),
            "workflow": workflow,
            "client": _opt_str(get(_CLIENT)),
            "budget": _budget(get) if get(_BUDGET_SCOPE) is not None else None,
            "outcome": outcome,
            "features": features,
            "billing": _billing(get, usages),
            "complete": complete,
            "signature": signature,
            "live": live,
        },
    )
    return RebuiltDecision(receipt, body, features)


def _budget(get: Any) -> BudgetUse | None:
    """The spent budget a decision span names, or None when what it recorded is not one."""
    try:
        return BudgetUse(
            scope=get(_BUDGET_SCOPE),
            name=get(_BUDGET_NAME),
            window=get(_BUDGET_WINDOW),
            limit_usd=get(_BUDGET_LIMIT),
            spent_usd=get(_BUDGET_SPENT),
            action=get(_BUDGET_ACTION, "refused"),
        )
    except ValueError:
        return None


# --------------------------------------------------------------------------- a whole set of spans


_ATTEMPT_INDEX, _REQUEST_ID, _FINGERPRINT = (
    A.UNHARDCODED_ATTEMPT_INDEX,
    A.UNHARDCODED_REQUEST_ID,
    A.UNHARDCODED_POLICY_FINGERPRINT,
)
_WORKFLOW_ID, _WORKFLOW_NODE = A.UNHARDCODED_WORKFLOW_ID, A.UNHARDCODED_WORKFLOW_NODE


def rebuild_spans(spans: Iterable[SpanRecord]) -> Rebuilt:
    """Rebuild every decision and workflow in ``spans`` (any order, duplicates allowed, other services ignored)."""
    seen: dict[tuple[str, str], SpanRecord] = {}
    for span in spans:
        key = (span.trace_id, span.span_id)
        if key not in seen:
            seen[key] = span
    out = Rebuilt(spans=len(seen))
    decisions: list[SpanRecord] = []
    by_parent: dict[tuple[str, str | None], list[SpanRecord]] = {}
    workflow_spans: dict[str, SpanRecord] = {}
    for span in seen.values():
        a = span.attributes
        if _ATTEMPT_INDEX in a:
            by_parent.setdefault((span.trace_id, span.parent_span_id), []).append(span)
        elif _REQUEST_ID in a and _FINGERPRINT in a:
            decisions.append(span)
        elif _WORKFLOW_ID in a:
            if _WORKFLOW_NODE not in a and isinstance(a[_WORKFLOW_ID], str):
                workflow_spans.setdefault(a[_WORKFLOW_ID], span)
        else:
            out.ignored += 1
    mine: dict[int, list[SpanRecord]] = {}
    for span in decisions:  # attempts are children of their decision span
        mine[id(span)] = by_parent.pop((span.trace_id, span.span_id), [])
    if by_parent:
        # An attempt whose parent is not its decision span (another instrumentation's span in between):
        # it names its request, and the decision with that request id in the same trace claims it.
        owners = {(s.trace_id, s.attributes.get(_REQUEST_ID)): s for s in decisions}
        for parent in list(by_parent):
            left = []
            for attempt in by_parent.pop(parent):
                owner = owners.get((attempt.trace_id, attempt.attributes.get(_REQUEST_ID)))
                if owner is None:
                    left.append(attempt)
                else:
                    mine[id(owner)].append(attempt)
            out.orphans += len(left)
    for span in decisions:
        try:
            out.decisions.append(rebuild_decision(span, mine[id(span)]))
        except (ValueError, TypeError):
            out.malformed += 1
    out.decisions.sort(key=lambda d: (d.receipt.timestamp, d.receipt.request_id))
    out.workflows = workflows_from(out.receipts, workflow_spans)
    return out


def workflows_from(
    receipts: Iterable[Receipt], workflow_spans: dict[str, SpanRecord] | None = None
) -> list[WorkflowReceipt]:
    """Workflow receipts: the decisions that carry a workflow id, grouped, named by the workflow span when seen.

    A workflow whose root span is not among the spans is not complete: the run may still be going, or the root was lost.
    """
    groups: dict[str, list[Receipt]] = {}
    for r in receipts:
        if r.workflow is not None:
            groups.setdefault(r.workflow.id, []).append(r)
    workflow_spans = workflow_spans or {}
    out = []
    for wid in sorted(set(groups) | set(workflow_spans)):
        members = groups.get(wid, [])
        span = workflow_spans.get(wid)
        name = span.attributes.get(A.UNHARDCODED_WORKFLOW_NAME) if span is not None else None
        if not isinstance(name, str):
            name = next((r.workflow.name for r in members if r.workflow and r.workflow.name), "")
        trace_id = span.trace_id if span is not None else None
        out.append(WorkflowReceipt.from_receipts(wid, name, members, trace_id=trace_id, finished=span is not None))
    return out


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for one bulk rebuild.

    Reading a payload allocates many small dicts and records with no reference
    cycles; collections triggered in the middle only re-scan the caller's heap
    (in a long-running processor, a large one) and find nothing. Paused here, the
    collector runs as usual once the payload is done. A caller that turned the
    collector off keeps it off.
    """
    was_enabled = gc.isenabled()
    if was_enabled:
        gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def rebuild_receipts(*payloads: Any) -> Rebuilt:
    """Read each payload (any supported format; a trace split across batches is several payloads), rebuild once."""
    with _collector_paused():
        spans: list[SpanRecord] = []
        for payload in payloads:
            spans.extend(read_spans(payload))
        return rebuild_spans(spans)
