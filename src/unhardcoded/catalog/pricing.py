"""Price tables and the one pricing function: what a usage costs on a model, as the provider bills it.

A model's prices are a :class:`PriceSchedule`: price sets in order, each active from a date or
within a daily time window (the last active one applies, as in ``genai-prices``), each rate flat or
tiered on the request's input tokens (crossing a tier prices every token at the tier's rate).
:func:`cost` is the only place a usage becomes dollars: the router's estimate, the billed cost of
an attempt, receipts rebuilt from spans and replays all call it. Tables are precomputed, so pricing
a usage is a few float operations (``genai_prices.calc_price`` is ~44 µs a call).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from ..errors import CatalogError

#: Rate keys of a price set, with the unit each is in.
RATE_KEYS: tuple[str, ...] = ("input", "cached_input", "cache_write", "output", "reasoning", "per_request")
_PER_MTOK = 1_000_000.0


class Rate(NamedTuple):
    """USD per 1M tokens (or per request for ``per_request``), and ``tiers``: (input tokens above, price)."""

    base: float
    tiers: tuple[tuple[int, float], ...] = ()

    def at(self, total_input: int) -> float:
        for start, price in reversed(self.tiers):
            if total_input > start:
                return price
        return self.base

    def to_json(self) -> Any:
        if not self.tiers:
            return self.base
        return {"base": self.base, "tiers": [[s, p] for s, p in self.tiers]}


class PriceSet(NamedTuple):
    """One set of rates; ``None`` where the model has no separate price (see :func:`cost`)."""

    input: Rate
    output: Rate
    cached_input: Rate | None = None
    cache_write: Rate | None = None
    reasoning: Rate | None = None
    per_request: Rate | None = None


class Usage(NamedTuple):
    """Tokens of one provider call. ``input_tokens`` includes cached and cache-write tokens and
    ``output_tokens`` includes reasoning tokens, as OpenAI and ``genai-prices`` count them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


class CostParts(NamedTuple):
    """USD by what was billed: uncached input, cached input, output (reasoning included), other
    (cache writes and per-request fees)."""

    input: float
    cached_input: float
    output: float
    other: float

    @property
    def total(self) -> float:
        return self.input + self.cached_input + self.output + self.other


class PriceSchedule:
    """A model's price sets with the condition under which each applies, in data order."""

    __slots__ = ("entries", "flat")

    def __init__(self, entries: Sequence[tuple[Mapping[str, Any] | None, PriceSet]]) -> None:
        if not entries:
            raise CatalogError("a price schedule needs at least one price set")
        self.entries: tuple[tuple[Mapping[str, Any] | None, PriceSet], ...] = tuple(entries)
        # The common case, one unconditional set: no clock is read.
        self.flat: PriceSet | None = self.entries[0][1] if len(self.entries) == 1 else None

    def at(self, when: _dt.datetime | None) -> PriceSet:
        """The price set in force at ``when`` (UTC; ``None`` is now): the last one whose condition holds."""
        if self.flat is not None:
            return self.flat
        if when is None:
            when = _dt.datetime.now(_dt.UTC)
        elif when.tzinfo is None:
            when = when.replace(tzinfo=_dt.UTC)
        else:
            when = when.astimezone(_dt.UTC)
        for cond, prices in reversed(self.entries):
            if cond is None or _active(cond, when):
                found: PriceSet = prices
                return found
        first: PriceSet = self.entries[0][1]
        return first

    @property
    def current(self) -> PriceSet:
        """The unconditional (first) price set: the catalog's headline prices."""
        return self.entries[0][1]

    def to_json(self) -> list[dict[str, Any]]:
        out = []
        for cond, prices in self.entries:
            entry: dict[str, Any] = {}
            if cond is not None:
                entry["when"] = dict(cond)
            for key in RATE_KEYS:
                rate = getattr(prices, key)
                if rate is not None:
                    entry[key] = rate.to_json()
            out.append(entry)
        return out

    @classmethod
    def from_json(cls, raw: Any, where: str) -> PriceSchedule:
        if not isinstance(raw, list) or not raw:
            raise CatalogError(f"{where}: a price schedule is a non-empty list of price sets")
        entries: list[tuple[Mapping[str, Any] | None, PriceSet]] = []
        for i, item in enumerate(raw):
            path = f"{where}[{i}]"
            if not isinstance(item, Mapping):
                raise CatalogError(f"{path}: a price set is a mapping of rates")
            unknown = set(item) - set(RATE_KEYS) - {"when"}
            if unknown:
                raise CatalogError(f"{path}.{min(unknown)}: unknown rate; rates are {', '.join(RATE_KEYS)}")
            rates = {k: _rate(item[k], f"{path}.{k}") for k in RATE_KEYS if item.get(k) is not None}
            for k in ("input", "output"):
                if k not in rates:
                    raise CatalogError(f"{path}.{k}: required")
            cond = item.get("when")
            if cond is not None:
                _check_condition(cond, f"{path}.when")
            entries.append((cond, PriceSet(**rates)))
        return cls(entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PriceSchedule) and other.to_json() == self.to_json()

    def __hash__(self) -> int:
        return hash(repr(self.to_json()))


def flat_schedule(
    input: float,
    output: float,
    cached_input: float | None = None,
    cache_write: float | None = None,
    reasoning: float | None = None,
    per_request: float | None = None,
) -> PriceSchedule:
    """A schedule of one untiered price set (a catalog's own prices)."""

    def r(v: float | None) -> Rate | None:
        return None if v is None else Rate(float(v))

    return PriceSchedule(
        [
            (
                None,
                PriceSet(
                    input=Rate(float(input)),
                    output=Rate(float(output)),
                    cached_input=r(cached_input),
                    cache_write=r(cache_write),
                    reasoning=r(reasoning),
                    per_request=r(per_request),
                ),
            )
        ]
    )


def cost(schedule: PriceSchedule, usage: Usage, when: _dt.datetime | None = None) -> CostParts:
    """What ``usage`` costs on a model with ``schedule`` at ``when``, part by part, in USD.

    The rules are ``genai-prices``': cached input and cache writes are priced at their own rates
    where the model has them and at the input rate where it does not; reasoning tokens are output
    unless the model prices them apart; a tier applies when the request's input tokens (cached
    included) exceed its start, to every token of that rate; a per-request fee is charged once.
    """
    p = schedule.flat if schedule.flat is not None else schedule.at(when)
    total_in = usage.input_tokens
    cached = usage.cached_input_tokens
    written = usage.cache_write_tokens
    in_rate = p.input.at(total_in) if p.input.tiers else p.input.base
    uncached = total_in - cached
    other = 0.0
    if p.cache_write is not None and written:
        uncached -= written
        other += written * p.cache_write.at(total_in) / _PER_MTOK
    cached_usd = 0.0
    if cached:
        rate = p.cached_input.at(total_in) if p.cached_input is not None else in_rate
        cached_usd = cached * rate / _PER_MTOK
    out_tokens = usage.output_tokens
    out_usd = 0.0
    if p.reasoning is not None and usage.reasoning_tokens:
        out_tokens -= usage.reasoning_tokens
        out_usd += usage.reasoning_tokens * p.reasoning.at(total_in) / _PER_MTOK
    out_rate = p.output.at(total_in) if p.output.tiers else p.output.base
    out_usd += out_tokens * out_rate / _PER_MTOK
    if p.per_request is not None:
        other += p.per_request.at(total_in)
    return CostParts(uncached * in_rate / _PER_MTOK, cached_usd, out_usd, other)


def _rate(raw: Any, where: str) -> Rate:
    if isinstance(raw, bool):
        raise CatalogError(f"{where}: expected a price, got {raw!r}")
    if isinstance(raw, (int, float)):
        if raw < 0:
            raise CatalogError(f"{where}: a price cannot be negative")
        return Rate(float(raw))
    if isinstance(raw, Mapping) and set(raw) <= {"base", "tiers"} and "base" in raw:
        base = _rate(raw["base"], f"{where}.base").base
        tiers = raw.get("tiers") or []
        if not isinstance(tiers, list):
            raise CatalogError(f"{where}.tiers: a list of [input tokens above, price]")
        out: list[tuple[int, float]] = []
        for i, t in enumerate(tiers):
            if (
                not isinstance(t, (list, tuple))
                or len(t) != 2
                or not isinstance(t[0], int)
                or isinstance(t[0], bool)
                or t[0] < 0
            ):
                raise CatalogError(f"{where}.tiers[{i}]: expected [input tokens above, price]")
            out.append((int(t[0]), _rate(t[1], f"{where}.tiers[{i}]").base))
        out.sort()
        return Rate(base, tuple(out))
    raise CatalogError(f"{where}: expected a price or {{base, tiers}}, got {raw!r}")


def _check_condition(cond: Any, where: str) -> None:
    if not isinstance(cond, Mapping):
        raise CatalogError(f"{where}: expected {{from_date}} or {{from_time, to_time}}")
    if set(cond) == {"from_date"}:
        try:
            _dt.date.fromisoformat(cond["from_date"])
        except (TypeError, ValueError):
            raise CatalogError(f"{where}.from_date: expected YYYY-MM-DD") from None
        return
    if set(cond) == {"from_time", "to_time"}:
        for k in ("from_time", "to_time"):
            try:
                _dt.time.fromisoformat(cond[k])
            except (TypeError, ValueError):
                raise CatalogError(f"{where}.{k}: expected HH:MM[:SS] (UTC)") from None
        return
    raise CatalogError(f"{where}: expected {{from_date}} or {{from_time, to_time}}")


def _active(cond: Mapping[str, Any], when: _dt.datetime) -> bool:
    if "from_date" in cond:
        return when.date() >= _dt.date.fromisoformat(cond["from_date"])
    start = _dt.time.fromisoformat(cond["from_time"])
    end = _dt.time.fromisoformat(cond["to_time"])
    t = when.time()
    if end < start:
        return t >= start or t < end
    return start <= t < end
