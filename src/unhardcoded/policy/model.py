"""The policy model (`sigma-pol/v1`): filter rules, ranking, selection, fallback cascade, baseline."""

from __future__ import annotations

import hashlib
from functools import cached_property
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from .._canonical import canonical_json

POLICY_SCHEMA: Final = "sigma-pol/v1"
Op = Literal["eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "contains", "intersects"]
FailureKind = Literal["error", "timeout", "rate_limit"]

OPS: tuple[str, ...] = ("eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "contains", "intersects")
FAILURE_KINDS: tuple[FailureKind, ...] = ("error", "timeout", "rate_limit")
Order = Literal["asc", "desc"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(_Frozen):
    """One filter rule: the catalog ``field`` compared with ``value`` by ``op``."""

    id: str
    field: str
    op: Op
    value: Any


class RankKey(_Frozen):
    by: str
    order: Order = "asc"


class Rank(_Frozen):
    """How survivors are ordered: ``cost`` (estimated request cost) or a numeric field, then tie-breakers."""

    by: str = "cost"
    order: Order = "asc"
    then: tuple[RankKey, ...] = ()


class Select(_Frozen):
    score_field: str | None = "bench_intelligence"


class Fallback(_Frozen):
    """The standby cascade walked, in order, when the selected model fails."""

    models: tuple[str, ...] = ()
    on: tuple[FailureKind, ...] = FAILURE_KINDS
    max_hops: int = Field(default=2, ge=0, le=16)


WINDOW_UNITS: Final = {"m": 60, "h": 3600, "d": 86400}
WINDOW_PATTERN: Final = r"^[1-9][0-9]{0,5}[mhd]$"


def window_seconds(window: str) -> int:
    """A budget window (``90m``, ``1h``, ``24h``, ``30d``) in seconds."""
    return int(window[:-1]) * WINDOW_UNITS[window[-1]]


class Budget(_Frozen):
    """What a policy (or a client key) may spend, in USD of billed cost, per fixed window.

    Windows are aligned to the Unix epoch (a ``24h`` budget resets at 00:00 UTC), so every proxy sharing
    state counts the same window. ``fallback_policy`` (policies only) names the policy routed under instead
    of refusing once the budget is spent.
    """

    usd: float = Field(gt=0)
    window: str = Field(pattern=WINDOW_PATTERN)
    fallback_policy: str | None = None

    @property
    def window_s(self) -> int:
        return window_seconds(self.window)


class Policy(_Frozen):
    """A validated policy. Build one with :func:`unhardcoded.policy.load_policy`."""

    schema_: Literal["sigma-pol/v1"] = Field(default=POLICY_SCHEMA, alias="schema")
    name: str
    rules: tuple[Rule, ...] = ()
    rank: Rank = Rank()
    select: Select = Select()
    fallback: Fallback = Fallback()
    baseline: str | None = None
    budget: Budget | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_document(self) -> dict[str, Any]:
        """The policy with every default filled, as a plain document.

        Fields added after the first policies were fingerprinted (``budget``) are written only when set, so a
        policy that does not use them keeps its fingerprint.
        """
        doc = self.model_dump(mode="json", by_alias=True)
        for key in _OMITTED_WHEN_UNSET:
            if doc.get(key) is None:
                doc.pop(key, None)
        budget = doc.get("budget")
        if budget is not None and budget.get("fallback_policy") is None:
            budget.pop("fallback_policy", None)
        return doc

    @cached_property
    def canonical(self) -> str:
        """Canonical JSON: sorted keys, no whitespace, UTF-8, integral numbers folded."""
        return canonical_json(self.to_document())

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint_of(self.canonical)

    @property
    def schema_id(self) -> str:
        return self.schema_


_OMITTED_WHEN_UNSET: Final = ("budget",)


def fingerprint_of(canonical: str) -> str:
    """SHA-256 of the canonical form; the first two big-endian 32-bit words, each masked to 31 bits."""
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    a = int.from_bytes(digest[0:4], "big") & 0x7FFFFFFF
    b = int.from_bytes(digest[4:8], "big") & 0x7FFFFFFF
    return f"{a}-{b}"
