"""Turning a policy document into a validated :class:`Policy`, with errors that name the path and the fix."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._documents import key_path, parse_document, read_document
from ..catalog.fields import describe_value, suggest, value_matches
from ..catalog.model import Catalog
from ..errors import PolicyError
from .model import FAILURE_KINDS, OPS, POLICY_SCHEMA, WINDOW_PATTERN, Policy

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_RULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TOP_KEYS = ("schema", "name", "rules", "rank", "select", "fallback", "baseline", "budget")
_WINDOW = re.compile(WINDOW_PATTERN)
NUMERIC_OPS = frozenset({"lt", "lte", "gt", "gte"})
FIELDS_HINT = " (run `unhardcoded fields` to list them)"


class _Errors:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, msg: str) -> None:
        self.items.append(f"{path}: {msg}")


def _check_keys(errs: _Errors, path: str, raw: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in raw:
        if key not in allowed:
            errs.add(
                key_path(path, key),
                f"unknown key{suggest(str(key), set(allowed))}; expected one of {', '.join(allowed)}",
            )


def _check_rule_value(errs: _Errors, path: str, op: str, ftype: str, field: str, value: Any) -> None:
    def want(desc: str) -> None:
        errs.add(f"{path}.value", f"{field} {op} needs {desc}, got {describe_value(value)}")

    if op in NUMERIC_OPS:
        if ftype not in ("number", "integer"):
            errs.add(f"{path}.op", f"{op!r} compares numbers but {field} is {ftype}; use eq, ne, in or not_in")
        elif not value_matches("number", value):
            want("a number")
    elif op in ("eq", "ne"):
        if not value_matches(ftype, value):
            want(f"a {ftype} value")
    elif op in ("in", "not_in"):
        if ftype == "string[]":
            errs.add(
                f"{path}.op", f"{op!r} needs a single-valued field but {field} is a list; use contains or intersects"
            )
        elif not isinstance(value, list) or not value:
            want(f"a non-empty list of {ftype} values")
        elif not all(value_matches(ftype, v) for v in value):
            want(f"a list of {ftype} values")
    elif op == "contains":
        if ftype not in ("string[]", "string"):
            errs.add(f"{path}.op", f"'contains' needs a list or string field but {field} is {ftype}")
        elif not isinstance(value, str):
            want("a string")
    elif op == "intersects":
        if ftype != "string[]":
            errs.add(f"{path}.op", f"'intersects' needs a list field but {field} is {ftype}; use in")
        elif not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            want("a non-empty list of strings")


def _numeric_field(errs: _Errors, path: str, name: Any, catalog: Catalog, allow_cost: bool) -> None:
    if allow_cost and name == "cost":
        return
    if not isinstance(name, str):
        errs.add(path, f"expected a field name, got {describe_value(name)}")
        return
    spec = catalog.fields.get(name)
    if spec is None:
        extra = "'cost' or " if allow_cost else ""
        errs.add(
            path,
            f"unknown field {name!r}{suggest(name, catalog.fields.keys())}; expected {extra}a numeric catalog field{FIELDS_HINT}",
        )
    elif not spec.numeric:
        errs.add(path, f"{name!r} is {spec.type}; ranking and scores need a numeric field")


def _check_order(errs: _Errors, path: str, order: Any) -> None:
    if order not in ("asc", "desc"):
        errs.add(path, f"{describe_value(order)} is not one of asc, desc")


def _check_model(errs: _Errors, path: str, model: Any, catalog: Catalog) -> None:
    if not isinstance(model, str):
        errs.add(path, f"expected a model id, got {describe_value(model)}")
    elif model not in catalog:
        errs.add(path, f"unknown model {model!r}{suggest(model, set(catalog.model_ids))}; it must be in the catalog")


def budget_problems(raw: Any, *, fallback: bool) -> list[tuple[str, str]]:
    """What is wrong with a ``budget`` mapping, as (sub-path, message) pairs; ``fallback``: whether it may name
    a ``fallback_policy`` (a policy's budget may, a client key's may not)."""
    keys = ("usd", "window", "fallback_policy") if fallback else ("usd", "window")
    if not isinstance(raw, Mapping):
        return [("", f"must be a mapping with {' and '.join(keys[:2])}, got {describe_value(raw)}")]
    problems: list[tuple[str, str]] = [
        (f".{key}", f"unknown key{suggest(str(key), set(keys))}; expected one of {', '.join(keys)}")
        for key in raw
        if key not in keys
    ]
    usd = raw.get("usd")
    if isinstance(usd, bool) or not isinstance(usd, (int, float)) or not 0 < usd < float("inf"):
        problems.append((".usd", f"must be a positive number of US dollars, got {describe_value(usd)}"))
    window = raw.get("window")
    if not isinstance(window, str) or not _WINDOW.match(window):
        problems.append(
            (
                ".window",
                f"must be a window like 1h, 24h or 30d (minutes m, hours h, days d), got {describe_value(window)}",
            )
        )
    other = raw.get("fallback_policy")
    if fallback and other is not None and (not isinstance(other, str) or not _NAME.match(other)):
        problems.append((".fallback_policy", f"{describe_value(other)} is not a policy name"))
    return problems


def validate_policy(doc: Any, catalog: Catalog | None = None, source: str = "<policy>") -> Policy:
    """Validate a parsed policy document against ``catalog`` (the built-in one by default)."""
    catalog = catalog if catalog is not None else Catalog.builtin()
    errs = _Errors()
    if not isinstance(doc, Mapping):
        raise PolicyError(f"{source}: a policy is a mapping with schema, name and rules; got {type(doc).__name__}")
    _check_keys(errs, "", doc, _TOP_KEYS)

    if doc.get("schema") != POLICY_SCHEMA:
        errs.add("schema", f"must be {POLICY_SCHEMA!r}, got {describe_value(doc.get('schema'))}")
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        errs.add(
            "name",
            f"{describe_value(name)} is not a policy name: lowercase letters, digits, '.', '_', '-', at most 64, starting with a letter or digit",
        )

    rules = doc.get("rules", [])
    if rules is None:
        rules = []
    if not isinstance(rules, list):
        errs.add("rules", "must be a list of rules")
        rules = []
    seen_ids: dict[str, int] = {}
    for i, rule in enumerate(rules):
        path = f"rules[{i}]"
        if not isinstance(rule, Mapping):
            errs.add(path, "a rule is a mapping with id, field, op and value")
            continue
        _check_keys(errs, path, rule, ("id", "field", "op", "value"))
        missing = [k for k in ("id", "field", "op", "value") if k not in rule]
        for key in missing:
            errs.add(f"{path}.{key}", "field required")
        if missing:
            continue
        rid, field, op, value = rule["id"], rule["field"], rule["op"], rule["value"]
        if not isinstance(rid, str) or not _RULE_ID.match(rid):
            errs.add(
                f"{path}.id", f"{describe_value(rid)} is not a rule id: letters, digits, '.', '_', '-', at most 64"
            )
        elif rid in seen_ids:
            errs.add(f"{path}.id", f"duplicate rule id {rid!r} (also rules[{seen_ids[rid]}]); rule ids must be unique")
        else:
            seen_ids[rid] = i
        if op not in OPS:
            errs.add(f"{path}.op", f"{describe_value(op)} is not one of {', '.join(OPS)}")
            continue
        if not isinstance(field, str):
            errs.add(f"{path}.field", f"expected a field name, got {describe_value(field)}")
            continue
        spec = catalog.fields.get(field)
        if spec is None:
            errs.add(f"{path}.field", f"unknown field {field!r}{suggest(field, catalog.fields.keys())}{FIELDS_HINT}")
            continue
        _check_rule_value(errs, path, op, spec.type, field, value)

    rank = doc.get("rank", {})
    if rank is None:
        rank = {}
    if not isinstance(rank, Mapping):
        errs.add("rank", "must be a mapping with by, order and then")
    else:
        _check_keys(errs, "rank", rank, ("by", "order", "then"))
        _numeric_field(errs, "rank.by", rank.get("by", "cost"), catalog, allow_cost=True)
        _check_order(errs, "rank.order", rank.get("order", "asc"))
        then = rank.get("then", [])
        if not isinstance(then, list):
            errs.add("rank.then", "must be a list of {by, order}")
        else:
            for j, key in enumerate(then):
                kpath = f"rank.then[{j}]"
                if not isinstance(key, Mapping) or "by" not in key:
                    errs.add(kpath, "a tie-breaker is a mapping with by and order")
                    continue
                _check_keys(errs, kpath, key, ("by", "order"))
                _numeric_field(errs, f"{kpath}.by", key["by"], catalog, allow_cost=True)
                _check_order(errs, f"{kpath}.order", key.get("order", "asc"))

    select = doc.get("select", {})
    if select is None:
        select = {}
    if not isinstance(select, Mapping):
        errs.add("select", "must be a mapping with score_field")
    else:
        _check_keys(errs, "select", select, ("score_field",))
        if select.get("score_field", "bench_intelligence") is not None:
            _numeric_field(
                errs, "select.score_field", select.get("score_field", "bench_intelligence"), catalog, allow_cost=False
            )

    fallback = doc.get("fallback", {})
    if fallback is None:
        fallback = {}
    if not isinstance(fallback, Mapping):
        errs.add("fallback", "must be a mapping with models, on and max_hops")
    else:
        _check_keys(errs, "fallback", fallback, ("models", "on", "max_hops"))
        models = fallback.get("models", [])
        if not isinstance(models, list):
            errs.add("fallback.models", "must be a list of model ids")
        else:
            for j, model in enumerate(models):
                _check_model(errs, f"fallback.models[{j}]", model, catalog)
            dupes = {m for m in models if isinstance(m, str) and models.count(m) > 1}
            for m in sorted(dupes):
                errs.add("fallback.models", f"{m!r} is listed twice")
        on = fallback.get("on", list(FAILURE_KINDS))
        if not isinstance(on, list):
            errs.add("fallback.on", f"must be a list of {', '.join(FAILURE_KINDS)}")
        else:
            for j, kind in enumerate(on):
                if kind not in FAILURE_KINDS:
                    errs.add(f"fallback.on[{j}]", f"{describe_value(kind)} is not one of {', '.join(FAILURE_KINDS)}")
        hops = fallback.get("max_hops", 2)
        if not isinstance(hops, int) or isinstance(hops, bool) or not 0 <= hops <= 16:
            errs.add("fallback.max_hops", f"must be a whole number from 0 to 16, got {describe_value(hops)}")

    if doc.get("baseline") is not None:
        _check_model(errs, "baseline", doc["baseline"], catalog)

    if doc.get("budget") is not None:
        for sub, message in budget_problems(doc["budget"], fallback=True):
            errs.add(f"budget{sub}", message)
        if isinstance(doc["budget"], Mapping) and doc["budget"].get("fallback_policy") == name:
            errs.add("budget.fallback_policy", "names this policy itself; name a cheaper policy to route under")

    if errs.items:
        shown = errs.items[:8]
        more = f" (and {len(errs.items) - 8} more)" if len(errs.items) > 8 else ""
        raise PolicyError(f"{source}: " + "; ".join(shown) + more)

    data = dict(doc)
    if isinstance(data.get("fallback"), Mapping) and "on" in data["fallback"]:
        # `on` is a set of failure kinds: its order carries no meaning, so it must not move the fingerprint.
        data["fallback"] = dict(data["fallback"], on=sorted(set(data["fallback"]["on"]), key=FAILURE_KINDS.index))
    for key in ("rules", "rank", "select", "fallback", "budget"):
        if data.get(key) is None:
            data.pop(key, None)
    return Policy.model_validate(data)


def load_policy(text: str, catalog: Catalog | None = None, source: str = "<policy>") -> Policy:
    """Parse and validate policy text (YAML or JSON)."""
    return validate_policy(parse_document(text, source, PolicyError), catalog, source)


def load_policy_file(path: str | Path, catalog: Catalog | None = None) -> Policy:
    return validate_policy(read_document(path, PolicyError), catalog, str(path))
