"""Replaying a recorded decision: its policy and request features, against the catalog then and the catalog now.

The policy comes from the store by fingerprint, the recorded catalog version
from the store or the :class:`~unhardcoded.catalog.CatalogArchive`; the answer
says whether routing the same request today picks the same model, rejects the
same models for the same rules and keeps the same standby cascade.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..catalog.archive import CatalogArchive
from ..catalog.model import Catalog
from ..errors import CatalogError, UnhardcodedError
from ..policy.model import Policy
from ..router.decision import Decision, Rejection
from ..router.engine import CompiledPolicy
from ..router.live import LiveView, RecordedLive
from .model import Receipt
from .stores import ReceiptStore

LIVE_MODES = ("recorded", "now", "ignore")
"""``replay --live``: the live snapshot recorded on the decision (default), today's live state, or none at all."""


class ReplayError(UnhardcodedError):
    """A recorded decision cannot be replayed (policy or catalog not kept); the message says which is missing."""


@dataclass
class RejectionChange:
    """A model rejected then and not now, now and not then, or by another rule.

    ``material`` is false for a model in only one of the two catalogs: a model
    added since and rejected, or removed since, changes the receipt but not the route.
    """

    model: str
    then: Rejection | None
    now: Rejection | None
    material: bool = True

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "material": self.material,
            "recorded": self.then.model_dump(mode="json") if self.then else None,
            "today": self.now.model_dump(mode="json") if self.now else None,
        }


@dataclass
class ReplayResult:
    """A recorded decision next to the same request decided on today's catalog."""

    receipt: Receipt
    policy: Policy
    recorded_catalog: str
    today_catalog: str
    then: Decision
    """The decision re-run on the recorded catalog (should reproduce the receipt)."""
    now: Decision
    rejection_changes: list[RejectionChange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def winner_then(self) -> str | None:
        return self.receipt.selected.model if self.receipt.selected else None

    @property
    def winner_now(self) -> str | None:
        return self.now.selected.model if self.now.selected else None

    @property
    def reproduces(self) -> bool:
        """Whether re-running on the recorded catalog gives the recorded winner, candidates and rejections."""
        r = self.receipt
        return (
            (self.then.selected.model if self.then.selected else None) == self.winner_then
            and self.then.candidates == r.candidates
            and _rules(self.then.rejected) == _rules(r.rejected)
        )

    @property
    def winner_changed(self) -> bool:
        return self.winner_then != self.winner_now

    @property
    def candidates_changed(self) -> bool:
        return self.receipt.candidates != self.now.candidates

    @property
    def chain_changed(self) -> bool:
        return self.receipt.fallback.chain != self.now.fallback_chain

    @property
    def same(self) -> bool:
        """Same winner, same candidates in the same order, same cascade, and every model in both catalogs
        rejected (or not) by the same rule."""
        material = any(c.material for c in self.rejection_changes)
        return not (self.winner_changed or self.candidates_changed or self.chain_changed or material)

    @property
    def cost_then(self) -> float | None:
        return self.then.cost.usd

    @property
    def cost_now(self) -> float | None:
        return self.now.cost.usd

    def to_json_dict(self) -> dict[str, Any]:
        r = self.receipt
        return {
            "request_id": r.request_id,
            "same": self.same,
            "policy": {"name": r.policy.name, "fingerprint": r.policy.fingerprint, "schema": r.policy.schema_},
            "catalog": {"recorded": self.recorded_catalog, "today": self.today_catalog},
            "winner": {"recorded": self.winner_then, "today": self.winner_now, "changed": self.winner_changed},
            "candidates": {"recorded": r.candidates, "today": self.now.candidates, "changed": self.candidates_changed},
            "fallback_chain": {
                "recorded": r.fallback.chain,
                "today": self.now.fallback_chain,
                "changed": self.chain_changed,
            },
            "rejections": [c.to_json_dict() for c in self.rejection_changes],
            "cost": {
                "recorded_estimate_usd": self.cost_then,
                "today_estimate_usd": self.cost_now,
                "recorded_baseline_usd": self.then.cost.baseline_usd,
                "today_baseline_usd": self.now.cost.baseline_usd,
                "recorded_usd": r.cost.usd,
            },
            "reproduces": self.reproduces,
            "notes": self.notes,
        }


def _rules(rejected: list[Rejection]) -> dict[str, str]:
    return {j.model: j.rule for j in rejected}


def _recorded_live(policy: Policy, receipt: Receipt, notes: list[str]) -> RecordedLive:
    fields = frozenset(r.field for r in policy.rules if r.field.startswith("live."))
    rank = [policy.rank.by, *(k.by for k in policy.rank.then)]
    fields |= {by for by in rank if by.startswith("live.")}
    live = RecordedLive(receipt.live, fields)
    for name in sorted(live.unknown_fields):
        rules = [r.id for r in policy.rules if r.field == name] or ["rank"]
        notes.append(
            f"{name} was never recorded on this decision: {', '.join(rules)} evaluated as unknown (not applied)"
        )
    return live


def _decide(
    policy: Policy, catalog: Catalog, receipt: Receipt, notes: list[str], when: str, live: LiveView | None = None
) -> Decision:
    if policy.baseline is not None and policy.baseline not in catalog:
        notes.append(f"baseline {policy.baseline} is not in the {when} catalog; costs are not compared to it")
    try:
        compiled = CompiledPolicy(policy, catalog)
    except CatalogError:
        # An engine that insists on the baseline: decide without it rather than refuse to replay.
        compiled = CompiledPolicy(policy.model_copy(update={"baseline": None}), catalog)
    assert receipt.features is not None
    return compiled.decide(
        receipt.features,
        request_id=receipt.request_id,
        workflow=receipt.workflow,
        client_name=receipt.client,
        live=live,
    )


def replay(
    receipt: Receipt,
    policy_body: str,
    recorded: Catalog,
    today: Catalog,
    *,
    live: str = "recorded",
    live_now: LiveView | None = None,
) -> ReplayResult:
    """Decide ``receipt``'s request again under its recorded policy, on the recorded and on today's catalog.

    ``live`` says what today's decision reads of the live state: the snapshot recorded on the decision
    (``recorded``), ``live_now`` (``now``), or nothing (``ignore``); the recorded catalog is always
    decided on the snapshot, to check the decision reproduces."""
    if live not in LIVE_MODES:
        raise ReplayError(f"--live {live!r}: expected one of {', '.join(LIVE_MODES)}")
    if receipt.features is None:
        raise ReplayError(f"receipt {receipt.request_id} has no request features recorded; it cannot be replayed")
    try:
        policy = Policy.model_validate(json.loads(policy_body))
    except ValueError as exc:
        raise ReplayError(f"policy {receipt.policy.fingerprint} kept in the store does not load: {exc}") from None
    if policy.fingerprint != receipt.policy.fingerprint:
        raise ReplayError(
            f"policy kept for fingerprint {receipt.policy.fingerprint} hashes to {policy.fingerprint}; the store was altered"
        )
    notes: list[str] = []
    then = _decide(policy, recorded, receipt, notes, "recorded", _recorded_live(policy, receipt, []))
    if live == "recorded":
        today_live: LiveView | None = _recorded_live(policy, receipt, notes)
    elif live == "now":
        today_live = live_now
        notes.append("live state: today's, as this process sees it")
    else:
        today_live = None
        if receipt.live is not None:
            notes.append("live state ignored: decided as if nothing had been observed")
    now = _decide(policy, today, receipt, notes, "today's", today_live)
    old, new = _rules(receipt.rejected), _rules(now.rejected)
    by_model_then = {j.model: j for j in receipt.rejected}
    by_model_now = {j.model: j for j in now.rejected}
    changes = [
        RejectionChange(m, by_model_then.get(m), by_model_now.get(m), material=m in recorded and m in today)
        for m in [*by_model_then, *(m for m in by_model_now if m not in by_model_then)]
        if old.get(m) != new.get(m)
    ]
    gone = [m for m in receipt.candidates if m not in today]
    if gone:
        notes.append(f"no longer in today's catalog: {', '.join(gone)}")
    result = ReplayResult(receipt, policy, recorded.version, today.version, then, now, changes, notes)
    if not result.reproduces:
        notes.append(
            "re-running on the recorded catalog does not reproduce the recorded decision (the router changed since)"
        )
    return result


def recorded_catalog(version: str, store: ReceiptStore, archive: CatalogArchive | None = None) -> Catalog:
    """The catalog as it stood: from the store, else the archive, else the built-in one if it is that version."""
    text = store.catalog(version)
    if text is not None:
        catalog = Catalog.from_text(text, source=f"<catalog {version} from {store.location}>")
        if catalog.version == version:
            return catalog
    archive = archive if archive is not None else CatalogArchive()
    if version in archive.versions():
        return archive.load(version)
    builtin = Catalog.builtin()
    if builtin.version == version:
        return builtin
    raise ReplayError(
        f"catalog version {version} is neither in the store {store.location} nor in the archive {archive.directory}; "
        "the decision cannot be replayed against the catalog it was made on"
    )


def replay_from_store(
    store: ReceiptStore,
    request_id: str,
    today: Catalog,
    archive: CatalogArchive | None = None,
    *,
    live: str = "recorded",
    live_now: LiveView | None = None,
) -> ReplayResult:
    stored = store.get(request_id)
    if stored is None:
        raise ReplayError(f"no receipt {request_id!r} in {store.location}")
    return replay_receipt(store, stored.receipt, today, archive, live=live, live_now=live_now)


def replay_receipt(
    store: ReceiptStore,
    receipt: Receipt,
    today: Catalog,
    archive: CatalogArchive | None = None,
    *,
    live: str = "recorded",
    live_now: LiveView | None = None,
) -> ReplayResult:
    body = store.policy(receipt.policy.fingerprint)
    if body is None:
        raise ReplayError(
            f"policy {receipt.policy.name} ({receipt.policy.fingerprint}) is not kept in {store.location}"
        )
    return replay(
        receipt, body, recorded_catalog(receipt.catalog_version, store, archive), today, live=live, live_now=live_now
    )


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``7d``, ``24h``, ``30m``, ``90s``, ``2w`` before now, or an ISO 8601 date or timestamp (UTC if no zone)."""
    now = now or datetime.now(UTC)
    match = _DURATION.match(text)
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    try:
        # Not FURB162: Python 3.11 reads a trailing Z itself, but not after a bare date (2024-01-01Z).
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))  # noqa: FURB162
    except ValueError:
        raise UnhardcodedError(
            f"--since {text!r}: expected a duration like 7d, 24h, 30m or an ISO 8601 date/time"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
