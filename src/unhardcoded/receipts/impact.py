"""The impact of a policy or catalog change on history: every stored decision in a window decided again, and its
cost at the usage the provider reported, before and after.

`unhardcoded replay --since 7d`, the proxy's and the processor's ``POST /x/impact`` all call
:func:`measure_impact`. Receipts are read a page at a time as the few values a replay needs
(:meth:`~unhardcoded.receipts.stores.ReceiptStore.history`), never built as models; each policy is compiled once
per catalog version; every price goes through :func:`_cost_at`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..catalog.archive import CatalogArchive
from ..catalog.model import Catalog
from ..catalog.pricing import Usage, cost
from ..errors import CatalogError, PolicyError, UnhardcodedError
from ..policy import validate_policy
from ..policy.model import Policy
from ..router.decision import Decision
from ..router.engine import CompiledPolicy, PolicyCompiler
from ..router.features import RequestFeatures
from .replay import ReplayError, parse_since, recorded_catalog
from .stores import HistoryQuery, ReceiptQuery, ReceiptStore

IMPACT_SCHEMA: Final = "unhardcoded.impact/v1"
PAGE = 2000
"""Receipts read per page: small enough to hold, large enough that a page's query costs nothing per receipt."""
EXAMPLES = 3
"""Request ids kept as examples of each change."""
_FEATURES_KEPT = 65536


class ImpactError(UnhardcodedError):
    """An impact request that cannot be measured; ``field`` names the part of the request that is wrong."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# --------------------------------------------------------------------------- the report


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ImpactCost(_Model):
    """Cost at the usage each answer reported, of the decisions that can be priced on both sides."""

    priced: int = Field(description="Decisions with reported usage and a model before and after.")
    before_usd: float = Field(description="On the model that answered, at the prices of the catalog it was decided on.")
    after_usd: float = Field(description="On the model the new decision picks, at the new catalog's prices.")
    delta_usd: float
    delta_ratio: float | None = Field(description="delta_usd / before_usd; null when before_usd is 0.")


class ImpactPolicyRow(_Model):
    policy: str
    decisions: int
    kept: int
    changed: int
    no_candidate: int
    priced: int
    before_usd: float
    after_usd: float
    delta_usd: float


class ImpactModelRow(_Model):
    model: str
    before_decisions: int = Field(description="Priced decisions this model answered.")
    after_decisions: int = Field(description="Priced decisions this model would answer.")
    before_usd: float
    after_usd: float
    delta_usd: float


class ImpactChange(_Model):
    """Decisions of one policy that move from one model to another (``to`` null: no candidate left)."""

    policy: str
    from_: str | None = Field(alias="from")
    to: str | None
    rule: str | None = Field(description="The rule that now rejects the old winner; null when it is outranked.")
    reason: str
    decisions: int
    priced: int
    before_usd: float
    after_usd: float
    examples: list[str] = Field(description="Request ids of a few of these decisions.")


class ImpactPolicy(_Model):
    name: str
    fingerprint: str


class ImpactCatalog(_Model):
    version: str
    source: str


class ImpactReport(_Model):
    """Every decision of a window decided again under a policy and/or catalog, and what it would have cost."""

    report: Literal["unhardcoded.impact/v1"] = IMPACT_SCHEMA
    since: str
    until: str
    policy: ImpactPolicy | None = Field(
        description="The policy every decision of its name was decided under; null: each under its recorded policy."
    )
    catalog: ImpactCatalog
    in_window: int = Field(description="Receipts in the window (before leaving out other policies and skipped ones).")
    decisions: int = Field(description="Decisions decided again.")
    kept: int = Field(description="Decisions that keep their model.")
    changed: int = Field(description="Decisions that pick another model.")
    no_candidate: int = Field(description="Decisions left with no candidate.")
    differ: int = Field(description="Decisions whose model differs from the recorded one (`--fail-on-change`).")
    skipped: int
    skipped_reasons: dict[str, int]
    cost: ImpactCost
    no_candidate_before_usd: float = Field(
        description="What the decisions now left with no candidate cost as recorded (not in `cost`)."
    )
    by_policy: list[ImpactPolicyRow]
    by_model: list[ImpactModelRow]
    changes: list[ImpactChange]
    notes: list[str]

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


# --------------------------------------------------------------------------- pricing


def _cost_at(catalog: Catalog, model_id: str, usage: Mapping[str, Any]) -> float:
    """USD for one answer's reported usage (the receipt's attempt, as JSON: cached, cache-write and reasoning
    tokens included when the provider reported them) at ``model_id``'s prices in ``catalog``, tiers and all, by the
    catalog's one pricing function. The impact report prices nothing anywhere else.
    """
    used = Usage(
        usage["input_tokens"],
        usage["output_tokens"],
        usage.get("cached_input_tokens") or 0,
        usage.get("cache_write_tokens") or 0,
        usage.get("reasoning_tokens") or 0,
    )
    return cost(catalog.schedule(model_id), used).total


def _usage(attempt: str | None, features: RequestFeatures) -> dict[str, Any] | None:
    """The answering attempt's usage; tokens it did not report are the request's estimate, as the router prices it."""
    if attempt is None:
        return None
    doc: dict[str, Any] = json.loads(attempt)
    if doc.get("status") != "ok":
        return None
    if doc.get("input_tokens") is None:
        doc["input_tokens"] = features.input_tokens
    if doc.get("output_tokens") is None:
        doc["output_tokens"] = features.output_tokens
    return doc


# --------------------------------------------------------------------------- measuring


class _Tally:
    """Counts and money of one policy, or one change."""

    __slots__ = ("after", "before", "changed", "decisions", "examples", "kept", "no_candidate", "priced")

    def __init__(self) -> None:
        self.decisions = self.kept = self.changed = self.no_candidate = self.priced = 0
        self.before = self.after = 0.0
        self.examples: list[str] = []


@dataclass
class _Change:
    rule: str | None
    reason: str


def _why(compiled: CompiledPolicy, decision: Decision, old: str | None, new: str | None) -> _Change:
    """Why a decision no longer picks ``old``: the rule that now rejects it, or that another model ranks first."""
    if old is None:
        return _Change(None, "had no candidate")
    if old not in compiled.catalog:
        return _Change(None, f"{old} is not in the catalog")
    for rejection in decision.rejected:
        if rejection.model == old:
            return _Change(rejection.rule, rejection.message)
    return _Change(None, f"{old} still passes; {new} ranks first")


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def measure_impact(
    store: ReceiptStore,
    catalog: Catalog,
    since: datetime,
    *,
    policy: Policy | None = None,
    until: datetime | None = None,
    client: str | None = None,
    archive: CatalogArchive | None = None,
    compiler: PolicyCompiler | None = None,
    page: int = PAGE,
) -> ImpactReport:
    """Decide again every decision stored from ``since`` to ``until`` (now), on ``catalog``.

    With ``policy``, the decisions recorded under a policy of its name are decided under it and the others are left
    out; without, each decision is decided under the policy it recorded. ``client``: only that client key's
    decisions. Dry runs, receipts without request features and receipts whose policy the store does not keep are
    skipped, and counted by reason.

    A decision that keeps its model is taken to play out as recorded: one that fell back falls back again, to the
    model that answered if the new cascade holds it, else to the cascade's first model (with no cascade left it
    would fail, and is not priced). One that changes is priced on its new winner. Before is priced on the model that answered at the prices of the catalog the
    decision was made on, after at ``catalog``'s, both at the usage the answer reported.
    """
    until = until if until is not None else datetime.now(UTC)
    compiler = compiler if compiler is not None else PolicyCompiler()
    notes: list[str] = []
    skipped: dict[str, int] = {}
    by_fingerprint: dict[str, CompiledPolicy | str] = {}
    recorded: dict[str, Catalog | None] = {catalog.version: catalog}
    features_of: dict[str, RequestFeatures] = {}
    policies: dict[str, _Tally] = {}
    changes: dict[tuple[str, str | None, str | None, str | None], tuple[_Tally, str]] = {}
    before_by: dict[str, list[float]] = {}
    after_by: dict[str, list[float]] = {}
    no_candidate_before = 0.0
    rerouted = stranded = 0
    unpriced_catalogs: dict[str, int] = {}
    given = compiler.compile(policy, catalog) if policy is not None else None
    models = {m.id: m for m in catalog.models}

    def compiled_for(fingerprint: str) -> CompiledPolicy | str:
        body = store.policy(fingerprint)
        if body is None:
            return "policy not kept in the store"
        try:
            recorded_policy = Policy.model_validate(json.loads(body))
        except ValueError:
            return "policy kept in the store does not load"
        return compiler.compile(recorded_policy, catalog)

    def recorded_catalog_of(version: str) -> Catalog | None:
        try:
            return recorded_catalog(version, store, archive)
        except (ReplayError, CatalogError):
            return None

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    query = HistoryQuery(since=since, until=until, policy=policy.name if policy else None, client=client, limit=page)
    while True:
        rows = store.history(query)
        if not rows:
            break
        last = rows[-1]
        query = HistoryQuery(
            since=since,
            until=until,
            policy=query.policy,
            client=client,
            after=(last[0], last[1]),
            limit=page,
        )
        for _, request_id, policy_name, fingerprint, version, outcome, old, answered, features_text, attempt in rows:
            if outcome == "dry_run":
                skip("dry run (no provider called)")
                continue
            if features_text is None:
                skip("no request features recorded")
                continue
            compiled = given
            if compiled is None:
                found = by_fingerprint.get(fingerprint)
                if found is None:
                    found = by_fingerprint[fingerprint] = compiled_for(fingerprint)
                if isinstance(found, str):
                    skip(found)
                    continue
                compiled = found
            features = features_of.get(features_text)
            if features is None:
                if len(features_of) >= _FEATURES_KEPT:
                    features_of.clear()
                features = features_of[features_text] = RequestFeatures.model_validate_json(features_text)
            decision = compiled.decide(features, request_id=request_id)
            new = decision.selected.model if decision.selected is not None else None

            tally = policies.get(policy_name)
            if tally is None:
                tally = policies[policy_name] = _Tally()
            tally.decisions += 1
            if new is None:
                tally.no_candidate += 1
            elif new == old:
                tally.kept += 1
            else:
                tally.changed += 1
            change: _Tally | None = None
            if new != old:
                why = _why(compiled, decision, old, new)
                key = (policy_name, old, new, why.rule)
                entry = changes.get(key)
                if entry is None:
                    entry = changes[key] = (_Tally(), why.reason)
                change = entry[0]
                change.decisions += 1
                if len(change.examples) < EXAMPLES:
                    change.examples.append(request_id)

            if outcome != "answered" or answered is None:
                continue
            usage = _usage(attempt, features)
            if usage is None:
                continue
            if version in recorded:
                then = recorded[version]
            else:
                then = recorded[version] = recorded_catalog_of(version)
            if then is None or answered not in then:
                unpriced_catalogs[version] = unpriced_catalogs.get(version, 0) + 1
                then = catalog
                if answered not in models:
                    continue
            before = _cost_at(then, answered, usage)
            if new is None:
                no_candidate_before += before
                continue
            after_id: str | None = new
            if new == old and answered != old:
                # It fell back, and would again: to the model that answered if the new cascade still holds it,
                # else to the new cascade's first model; with no cascade left it would fail.
                chain = decision.fallback_chain
                if answered in chain:
                    after_id = answered
                elif chain:
                    after_id = chain[0]
                    rerouted += 1
                else:
                    after_id = None
                    stranded += 1
            after_model = models.get(after_id) if after_id is not None else None
            if after_model is None:
                continue
            after = _cost_at(catalog, after_model.id, usage)
            tally.priced += 1
            tally.before += before
            tally.after += after
            if change is not None:
                change.priced += 1
                change.before += before
                change.after += after
            row = before_by.get(answered)
            if row is None:
                row = before_by[answered] = [0, 0.0]
            row[0] += 1
            row[1] += before
            row = after_by.get(after_model.id)
            if row is None:
                row = after_by[after_model.id] = [0, 0.0]
            row[0] += 1
            row[1] += after

    for version, n in sorted(unpriced_catalogs.items()):
        notes.append(
            f"{n} decisions made on catalog {version}, which is neither in the store nor in the catalog archive: "
            "their cost before is priced on the new catalog"
        )
    if rerouted:
        notes.append(
            f"{rerouted} decisions fell back to a model the new cascade no longer holds: priced on the new "
            "cascade's first model"
        )
    if stranded:
        notes.append(
            f"{stranded} decisions fell back, and the new policy leaves them no cascade: they would fail, "
            "and are left out of the cost"
        )
    if policy is not None:
        notes.append(f"only decisions recorded under a policy named {policy.name} are decided again")
    return _report(
        store,
        catalog,
        since,
        until,
        policy,
        client,
        policies,
        changes,
        before_by,
        after_by,
        skipped,
        notes,
        no_candidate_before,
    )


def _report(
    store: ReceiptStore,
    catalog: Catalog,
    since: datetime,
    until: datetime,
    policy: Policy | None,
    client: str | None,
    policies: dict[str, _Tally],
    changes: dict[tuple[str, str | None, str | None, str | None], tuple[_Tally, str]],
    before_by: dict[str, list[float]],
    after_by: dict[str, list[float]],
    skipped: dict[str, int],
    notes: list[str],
    no_candidate_before: float,
) -> ImpactReport:
    tallies = policies.values()
    before = sum(t.before for t in tallies)
    after = sum(t.after for t in tallies)
    kept = sum(t.kept for t in tallies)
    changed = sum(t.changed for t in tallies)
    no_candidate = sum(t.no_candidate for t in tallies)
    models = sorted(set(before_by) | set(after_by))
    return ImpactReport(
        since=_iso(since),
        until=_iso(until),
        policy=ImpactPolicy(name=policy.name, fingerprint=policy.fingerprint) if policy is not None else None,
        catalog=ImpactCatalog(version=catalog.version, source=catalog.source),
        in_window=store.count(ReceiptQuery(since=since, until=until, client=client, limit=None)),
        decisions=kept + changed + no_candidate,
        kept=kept,
        changed=changed,
        no_candidate=no_candidate,
        differ=sum(t.decisions for t, _ in changes.values()),
        skipped=sum(skipped.values()),
        skipped_reasons=dict(sorted(skipped.items())),
        cost=ImpactCost(
            priced=sum(t.priced for t in tallies),
            before_usd=before,
            after_usd=after,
            delta_usd=after - before,
            delta_ratio=(after - before) / before if before > 0 else None,
        ),
        no_candidate_before_usd=no_candidate_before,
        by_policy=[
            ImpactPolicyRow(
                policy=name,
                decisions=t.decisions,
                kept=t.kept,
                changed=t.changed,
                no_candidate=t.no_candidate,
                priced=t.priced,
                before_usd=t.before,
                after_usd=t.after,
                delta_usd=t.after - t.before,
            )
            for name, t in sorted(policies.items())
        ],
        by_model=sorted(
            (
                ImpactModelRow(
                    model=m,
                    before_decisions=int(before_by.get(m, [0, 0.0])[0]),
                    after_decisions=int(after_by.get(m, [0, 0.0])[0]),
                    before_usd=before_by.get(m, [0, 0.0])[1],
                    after_usd=after_by.get(m, [0, 0.0])[1],
                    delta_usd=after_by.get(m, [0, 0.0])[1] - before_by.get(m, [0, 0.0])[1],
                )
                for m in models
            ),
            key=lambda r: (-max(r.before_decisions, r.after_decisions), r.model),
        ),
        changes=sorted(
            (
                ImpactChange(
                    policy=name,
                    from_=old,
                    to=new,
                    rule=rule,
                    reason=reason,
                    decisions=t.decisions,
                    priced=t.priced,
                    before_usd=t.before,
                    after_usd=t.after,
                    examples=t.examples,
                )
                for (name, old, new, rule), (t, reason) in changes.items()
            ),
            key=lambda c: (-c.decisions, c.policy, c.from_ or "", c.to or ""),
        ),
        notes=notes,
    )


# --------------------------------------------------------------------------- the HTTP request


@dataclass(frozen=True)
class ImpactRequest:
    """``POST /x/impact``'s body, checked: ``{"since": "7d", "policy": {...} | "name", "catalog": {...} | "version"}``."""

    since: datetime
    policy: dict[str, Any] | str | None = None
    catalog: dict[str, Any] | str | None = None


_KEYS = ("since", "policy", "catalog")


def impact_request(body: Any) -> ImpactRequest:
    """Check an impact request's body; every error names the field it is about."""
    if not isinstance(body, Mapping):
        raise ImpactError("the body must be a JSON object: {since, policy?, catalog?}")
    for key in body:
        if key not in _KEYS:
            raise ImpactError(f"{str(key)[:80]}: unknown field (expected {', '.join(_KEYS)})", str(key)[:80])
    since_text = body.get("since")
    if not isinstance(since_text, str) or not since_text.strip():
        raise ImpactError("since: required, a duration like 7d, 24h, 30m or an ISO 8601 date/time", "since")
    try:
        since = parse_since(since_text)
        since.timestamp()
    except UnhardcodedError:
        raise ImpactError(
            f"since: {since_text[:80]!r} is not a duration like 7d, 24h, 30m or an ISO 8601 date/time", "since"
        ) from None
    except (OverflowError, ValueError):
        raise ImpactError(f"since: {since_text[:80]!r} is outside the years 1 to 9999", "since") from None
    policy = body.get("policy")
    if policy is not None and not isinstance(policy, (dict, str)):
        raise ImpactError("policy: must be a policy object (sigma-pol/v1) or a policy name", "policy")
    catalog = body.get("catalog")
    if catalog is not None and not isinstance(catalog, (dict, str)):
        raise ImpactError("catalog: must be a catalog object (unhardcoded-catalog/v1) or a catalog version", "catalog")
    return ImpactRequest(since, policy, catalog)


def resolve_catalog(
    value: dict[str, Any] | str | None, store: ReceiptStore, default: Catalog, archive: CatalogArchive | None = None
) -> Catalog:
    """An impact request's catalog: inline, a version the store or the archive keeps, or ``default``."""
    if value is None:
        return default
    if isinstance(value, str):
        try:
            return recorded_catalog(value, store, archive)
        except (ReplayError, CatalogError) as exc:
            raise ImpactError(f"catalog: {exc}", "catalog") from None
    try:
        return Catalog.from_document(value, source="catalog")
    except CatalogError as exc:
        raise ImpactError(str(exc), "catalog") from None


def resolve_policy(
    value: dict[str, Any] | str | None, catalog: Catalog, named: Callable[[str], Policy | None]
) -> Policy | None:
    """An impact request's policy: inline (validated against ``catalog``), by name (``named``), or none."""
    if value is None:
        return None
    if isinstance(value, str):
        policy = named(value)
        if policy is None:
            raise ImpactError(f"policy: no policy {value[:80]!r}", "policy")
        return policy
    try:
        return validate_policy(value, catalog, source="policy")
    except PolicyError as exc:
        raise ImpactError(str(exc), "policy") from None


def newest_recorded_policy(store: ReceiptStore, name: str) -> Policy | None:
    """The policy of the newest decision recorded under ``name`` (a policy name or fingerprint), as the store keeps
    it: what "policy by name" means where no policy directory is at hand (the processor)."""
    newest = store.query(ReceiptQuery(policy=name, limit=1))
    if not newest:
        return None
    body = store.policy(newest[0].policy.fingerprint)
    if body is None:
        return None
    try:
        return Policy.model_validate(json.loads(body))
    except ValueError:
        return None
