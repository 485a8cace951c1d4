"""Rule evaluation and the words a receipt uses for a passed or failed rule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

OpFn = Callable[[Any, Any], bool]


# The comparison ops apply only to number and integer fields (policy loading checks it).
def _lt(a: float, b: float) -> bool:
    return a < b


def _lte(a: float, b: float) -> bool:
    return a <= b


def _gt(a: float, b: float) -> bool:
    return a > b


def _gte(a: float, b: float) -> bool:
    return a >= b


def _contains(a: Any, b: Any) -> bool:
    return b in a


def _intersects(a: Any, b: Any) -> bool:
    return not set(a).isdisjoint(b)


OP_FUNCS: dict[str, OpFn] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "lt": _lt,
    "lte": _lte,
    "gt": _gt,
    "gte": _gte,
    "in": lambda a, b: a in b,
    "not_in": lambda a, b: a not in b,
    "contains": _contains,
    "intersects": _intersects,
}


def passes(op: str, observed: Any, threshold: Any) -> bool:
    """A model with no value for the field never passes: the rule cannot be shown to hold."""
    if observed is None:
        return False
    return OP_FUNCS[op](observed, threshold)


def _num(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(_num(v) for v in value) + "]"
    return str(value)


def phrase(name: str) -> str:
    """``quality-floor`` -> ``quality floor``."""
    return name.replace("-", " ").replace("_", " ")


def field_phrase(field: str) -> str:
    """``supports_tools`` -> ``tools``."""
    return phrase(field.removeprefix("supports_"))


def rejection_message(rule_id: str, field: str, op: str, threshold: Any, observed: Any) -> str:
    """Words for a failed rule, e.g. ``below quality floor (0.42 < 0.5)`` or ``no tools``."""
    what = phrase(rule_id.removeprefix("request:"))
    if observed is None:
        return f"{field} not set in the catalog ({what})"
    obs, thr = _num(observed), _num(threshold)
    if op == "gte":
        return f"below {what} ({obs} < {thr})"
    if op == "gt":
        return f"not above {what} ({obs} ≤ {thr})"
    if op == "lte":
        return f"over {what} ({obs} > {thr})"
    if op == "lt":
        return f"not under {what} ({obs} ≥ {thr})"
    if op == "eq" and threshold is True:
        return f"no {field_phrase(field)}"
    if op == "eq" and threshold is False:
        return f"has {field_phrase(field)}"
    if op == "eq":
        return f"{field} is {obs}, {what} needs {thr}"
    if op == "ne":
        return f"{field} is {obs}, excluded by {what}"
    if op == "in":
        return f"{field} {obs} not in {thr} ({what})"
    if op == "not_in":
        return f"{field} {obs} excluded by {what}"
    if op == "contains":
        return f"{field} {obs} lacks {thr} ({what})"
    return f"{field} {obs} has none of {thr} ({what})"


def pass_phrase(rule_id: str, op: str, threshold: Any) -> str:
    """Words for a passed rule, e.g. ``tools ✓``, ``over quality floor``, ``price ceiling passed``."""
    what = phrase(rule_id)
    if op in ("gte", "gt"):
        return f"over {what}"
    if op in ("lte", "lt"):
        return f"{what} passed"
    return f"{what} ✓"


def rank_phrase(by: str, order: str, survivors: int) -> str:
    if survivors == 1:
        return "only survivor"
    if by == "cost":
        return "cheapest survivor" if order == "asc" else "most expensive survivor"
    return f"{'lowest' if order == 'asc' else 'highest'} {phrase(by)}"
