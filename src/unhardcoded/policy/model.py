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


class Health(_Frozen):
    """When the router cools a model down: ``failures`` failures within ``window`` seconds, for ``cooldown`` seconds."""

    failures: int = Field(default=5, ge=1, le=1000)
    window: float = Field(default=60.0, gt=0)
    cooldown: float = Field(default=30.0, gt=0)


class Policy(_Frozen):
    """A validated policy. Build one with :func:`unhardcoded.policy.load_policy`."""

    schema_: Literal["sigma-pol/v1"] = Field(default=POLICY_SCHEMA, alias="schema")
    name: str
    rules: tuple[Rule, ...] = ()
    rank: Rank = Rank()
    select: Select = Select()
    fallback: Fallback = Fallback()
    baseline: str | None = None
    health: Health | None = None
    """None: the router's defaults (5 failures in 60 s, 30 s of cooldown), and no ``health`` in the canonical form."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_document(self) -> dict[str, Any]:
        """The policy with every default filled, as a plain document (``health`` only when the policy sets it, so a
        policy without it keeps the fingerprint it had before ``health`` existed)."""
        doc = self.model_dump(mode="json", by_alias=True)
        if doc.get("health") is None:
            doc.pop("health", None)
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


def fingerprint_of(canonical: str) -> str:
    """SHA-256 of the canonical form; the first two big-endian 32-bit words, each masked to 31 bits."""
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    a = int.from_bytes(digest[0:4], "big") & 0x7FFFFFFF
    b = int.from_bytes(digest[4:8], "big") & 0x7FFFFFFF
    return f"{a}-{b}"
