"""Fingerprint properties: formatting never moves it, meaning always does; and it is what DESIGN.md defines."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from unhardcoded._canonical import normalize
from unhardcoded.catalog import Catalog
from unhardcoded.policy import fingerprint_of, load_policy, validate_policy

CATALOG = Catalog.builtin()
MODEL_IDS = CATALOG.model_ids
NUMBER_FIELDS = ["bench_intelligence", "price_input_per_mtok", "price_output_per_mtok", "latency_p50_ms"]
INTEGER_FIELDS = ["context_window", "max_output_tokens"]
BOOL_FIELDS = ["supports_tools", "supports_vision"]
STRING_FIELDS = ["id", "provider"]
RANK_FIELDS = ["cost", *NUMBER_FIELDS, *INTEGER_FIELDS]
KINDS = ["error", "timeout", "rate_limit"]
FINGERPRINT = re.compile(r"^(\d+)-(\d+)$")

SETTINGS = settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# -- valid policies ------------------------------------------------------------------------------

numbers = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12),
)
integers = st.integers(min_value=0, max_value=10**9)
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
nonempty = lambda s: st.lists(s, min_size=1, max_size=4)  # noqa: E731


def values_for(field: str, op: str) -> st.SearchStrategy[Any]:
    if field in NUMBER_FIELDS:
        return nonempty(numbers) if op in ("in", "not_in") else numbers
    if field in INTEGER_FIELDS:
        return nonempty(integers) if op in ("in", "not_in") else integers
    if field in BOOL_FIELDS:
        return nonempty(st.booleans()) if op in ("in", "not_in") else st.booleans()
    if field in STRING_FIELDS:
        return nonempty(texts) if op in ("in", "not_in") else texts
    # regions: string[]
    if op == "contains":
        return texts
    return nonempty(texts) if op == "intersects" else st.lists(texts, max_size=3)


def ops_for(field: str) -> list[str]:
    if field in NUMBER_FIELDS or field in INTEGER_FIELDS:
        return ["eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in"]
    if field in BOOL_FIELDS:
        return ["eq", "ne", "in", "not_in"]
    if field in STRING_FIELDS:
        return ["eq", "ne", "in", "not_in", "contains"]
    return ["eq", "ne", "contains", "intersects"]


@st.composite
def rules(draw: st.DrawFn, rule_id: str) -> dict[str, Any]:
    field = draw(st.sampled_from([*NUMBER_FIELDS, *INTEGER_FIELDS, *BOOL_FIELDS, *STRING_FIELDS, "regions"]))
    op = draw(st.sampled_from(ops_for(field)))
    return {"id": rule_id, "field": field, "op": op, "value": draw(values_for(field, op))}


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": "sigma-pol/v1",
        "name": draw(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)),
    }
    ids = draw(st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,10}", fullmatch=True), max_size=5, unique=True))
    if ids or draw(st.booleans()):
        doc["rules"] = [draw(rules(rid)) for rid in ids]
    if draw(st.booleans()):
        rank: dict[str, Any] = {"by": draw(st.sampled_from(RANK_FIELDS))}
        if draw(st.booleans()):
            rank["order"] = draw(st.sampled_from(["asc", "desc"]))
        if draw(st.booleans()):
            rank["then"] = draw(
                st.lists(
                    st.fixed_dictionaries(
                        {"by": st.sampled_from(RANK_FIELDS), "order": st.sampled_from(["asc", "desc"])}
                    ),
                    max_size=2,
                )
            )
        doc["rank"] = rank
    if draw(st.booleans()):
        doc["select"] = {"score_field": draw(st.sampled_from([None, *NUMBER_FIELDS, *INTEGER_FIELDS]))}
    if draw(st.booleans()):
        fallback: dict[str, Any] = {}
        if draw(st.booleans()):
            fallback["models"] = draw(st.lists(st.sampled_from(MODEL_IDS), max_size=4, unique=True))
        if draw(st.booleans()):
            fallback["on"] = draw(st.lists(st.sampled_from(KINDS), max_size=3, unique=True))
        if draw(st.booleans()):
            fallback["max_hops"] = draw(st.integers(0, 16))
        doc["fallback"] = fallback
    if draw(st.booleans()):
        doc["baseline"] = draw(st.sampled_from(MODEL_IDS))
    return doc


def fp(doc: Any) -> str:
    return validate_policy(doc, CATALOG).fingerprint


# -- ways of writing the same document --------------------------------------------------------------


def shuffled(value: Any, rnd) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: shuffled(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rnd) for v in value]
    return value


def float_ints(doc: dict[str, Any]) -> dict[str, Any]:
    """Rule values with integers written as floats (10 -> 10.0): the same numbers."""
    out = copy.deepcopy(doc)
    for rule in out.get("rules", []):
        v = rule["value"]
        if isinstance(v, int) and not isinstance(v, bool):
            rule["value"] = float(v)
        elif isinstance(v, list):
            rule["value"] = [float(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in v]
    return out


def with_defaults(doc: dict[str, Any]) -> dict[str, Any]:
    """Every default spelt out."""
    out = copy.deepcopy(doc)
    out.setdefault("rules", [])
    rank = out.setdefault("rank", {})
    rank.setdefault("by", "cost")
    rank.setdefault("order", "asc")
    rank.setdefault("then", [])
    for key in rank["then"]:
        key.setdefault("order", "asc")
    out.setdefault("select", {}).setdefault("score_field", "bench_intelligence")
    fallback = out.setdefault("fallback", {})
    fallback.setdefault("models", [])
    fallback.setdefault("on", list(KINDS))
    fallback.setdefault("max_hops", 2)
    out.setdefault("baseline", None)
    return out


def _yaml(value: Any, **options: Any) -> list[str]:
    """The YAML writing of ``value``, or none when PyYAML's emitter cannot write it back faithfully.

    PyYAML writes U+0085 (NEL) raw inside a quoted scalar, and its reader (rightly, YAML 1.1 counts NEL as
    a line break) folds it to a space: a different policy, so no test of the fingerprint.
    """
    text = yaml.safe_dump(value, **options)
    return [text] if yaml.safe_load(text) == value else []


def writings(doc: dict[str, Any], rnd) -> list[str]:
    mixed = shuffled(doc, rnd)
    return [
        json.dumps(doc),
        json.dumps(mixed, indent=4, ensure_ascii=True),
        "\n\n  " + json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n\n",
        *_yaml(doc, sort_keys=False, allow_unicode=True),
        *(
            "# the same policy, in YAML block style\n\n" + text
            for text in _yaml(mixed, sort_keys=True, indent=4, allow_unicode=False)
        ),
        *_yaml(mixed, default_flow_style=True, width=10**6, allow_unicode=True),
        json.dumps(float_ints(doc)),
        *_yaml(with_defaults(mixed), sort_keys=False, allow_unicode=True),
    ]


@SETTINGS
@given(doc=policies(), rnd=st.randoms(use_true_random=False))
def test_fingerprint_ignores_key_order_format_and_defaults(doc: dict[str, Any], rnd):
    expected = fp(doc)
    for text in writings(doc, rnd):
        assert load_policy(text, CATALOG).fingerprint == expected, text


@SETTINGS
@given(doc=policies())
def test_fingerprint_format(doc: dict[str, Any]):
    match = FINGERPRINT.match(fp(doc))
    assert match is not None
    a, b = int(match.group(1)), int(match.group(2))
    assert 0 <= a < 2**31 and 0 <= b < 2**31
    assert str(a) == match.group(1) and str(b) == match.group(2)  # no leading zeros


@settings(max_examples=200, deadline=None, database=None)
@given(text=st.text())
def test_fingerprint_of_any_canonical_text_has_the_format(text: str):
    a, b = map(int, FINGERPRINT.match(fingerprint_of(text)).groups())  # type: ignore[union-attr]
    assert a < 2**31 and b < 2**31


# -- semantic changes -------------------------------------------------------------------------------


def changed(doc: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """One semantic change to a valid policy, chosen by hypothesis."""
    out = with_defaults(doc)
    choices = ["name", "rank-order", "rank-by", "max-hops", "baseline", "add-rule", "on"]
    if out["rules"]:
        choices += ["rule-value", "rule-op", "rule-field", "drop-rule"]
    if len(out["rules"]) >= 2:
        choices.append("rule-order")
    if out["fallback"]["models"]:
        choices += ["fallback-model", "drop-fallback"]
    if len(out["fallback"]["models"]) >= 2:
        choices.append("fallback-order")
    if out["rank"]["then"]:
        choices.append("then-order")
    kind = data.draw(st.sampled_from(choices), label="change")
    rules_ = out["rules"]
    if kind == "name":
        out["name"] = out["name"] + "x" if len(out["name"]) < 64 else out["name"][:-1]
    elif kind == "rank-order":
        out["rank"]["order"] = "desc" if out["rank"]["order"] == "asc" else "asc"
    elif kind == "rank-by":
        out["rank"]["by"] = data.draw(st.sampled_from([f for f in RANK_FIELDS if f != out["rank"]["by"]]))
    elif kind == "then-order":
        key = out["rank"]["then"][0]
        key["order"] = "desc" if key["order"] == "asc" else "asc"
    elif kind == "max-hops":
        out["fallback"]["max_hops"] = (out["fallback"]["max_hops"] + 1) % 17
    elif kind == "baseline":
        out["baseline"] = data.draw(st.sampled_from([m for m in [None, *MODEL_IDS] if m != out["baseline"]]))
    elif kind == "on":
        on = out["fallback"]["on"]
        out["fallback"]["on"] = on[1:] if on else ["timeout"]
    elif kind == "fallback-model":
        i = data.draw(st.integers(0, len(out["fallback"]["models"]) - 1))
        unused = [m for m in MODEL_IDS if m not in out["fallback"]["models"]]
        out["fallback"]["models"][i] = data.draw(st.sampled_from(unused))
    elif kind == "drop-fallback":
        out["fallback"]["models"].pop()
    elif kind == "fallback-order":
        out["fallback"]["models"].reverse()
    elif kind == "add-rule":
        rules_.append(data.draw(rules("added-rule-" + str(len(rules_)))))
    elif kind == "drop-rule":
        rules_.pop(data.draw(st.integers(0, len(rules_) - 1)))
    elif kind == "rule-order":
        i = data.draw(st.integers(0, len(rules_) - 2))
        rules_[i], rules_[i + 1] = rules_[i + 1], rules_[i]
    else:
        i = data.draw(st.integers(0, len(rules_) - 1))
        rule = rules_[i]
        if kind == "rule-value":
            new = data.draw(values_for(rule["field"], rule["op"]))
            assume(normalize(new) != normalize(rule["value"]))
            rule["value"] = new
        elif kind == "rule-op":
            others = [o for o in ops_for(rule["field"]) if o != rule["op"]]
            # Swap within ops that take the same kind of value, so the policy stays valid.
            same_shape = [
                o
                for o in others
                if (o in ("in", "not_in", "intersects")) == (rule["op"] in ("in", "not_in", "intersects"))
                and (o == "contains") == (rule["op"] == "contains")
            ]
            assume(same_shape)
            rule["op"] = data.draw(st.sampled_from(same_shape))
        else:  # rule-field
            candidates = [f for f in NUMBER_FIELDS if f != rule["field"]] if rule["field"] in NUMBER_FIELDS else []
            assume(candidates)
            rule["field"] = data.draw(st.sampled_from(candidates))
    return out


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(doc=policies(), data=st.data())
def test_any_semantic_change_changes_the_fingerprint(doc: dict[str, Any], data: st.DataObject):
    mutated = changed(doc, data)
    assert fp(mutated) != fp(doc)


# -- the definition, computed independently --------------------------------------------------------

FIXED = """
schema: sigma-pol/v1
name: support
rules:
  - {id: tools, field: supports_tools, op: eq, value: true}
  - {id: quality-floor, field: bench_intelligence, op: gte, value: 0.5}
  - {id: price-ceiling, field: price_output_per_mtok, op: lte, value: 10}
  - {id: eu-region, field: regions, op: intersects, value: [eu, "zone-é"]}
rank: {by: cost, then: [{by: bench_intelligence, order: desc}]}
fallback: {models: [claude-sonnet-4-6, gpt-5.5]}
baseline: gpt-5.5
"""


def test_fingerprint_matches_the_design_definition():
    filled = {
        "schema": "sigma-pol/v1",
        "name": "support",
        "rules": [
            {"id": "tools", "field": "supports_tools", "op": "eq", "value": True},
            {"id": "quality-floor", "field": "bench_intelligence", "op": "gte", "value": 0.5},
            {"id": "price-ceiling", "field": "price_output_per_mtok", "op": "lte", "value": 10},
            {"id": "eu-region", "field": "regions", "op": "intersects", "value": ["eu", "zone-é"]},
        ],
        "rank": {"by": "cost", "order": "asc", "then": [{"by": "bench_intelligence", "order": "desc"}]},
        "select": {"score_field": "bench_intelligence"},
        "fallback": {
            "models": ["claude-sonnet-4-6", "gpt-5.5"],
            "on": ["error", "timeout", "rate_limit"],
            "max_hops": 2,
        },
        "baseline": "gpt-5.5",
    }
    canonical = json.dumps(filled, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert "zone-é".encode() in canonical  # UTF-8, not \\u escapes
    digest = hashlib.sha256(canonical).digest()
    a = int.from_bytes(digest[0:4], "big") & 0x7FFFFFFF
    b = int.from_bytes(digest[4:8], "big") & 0x7FFFFFFF
    policy = load_policy(FIXED)
    assert policy.canonical.encode("utf-8") == canonical
    assert policy.fingerprint == f"{a}-{b}"


def test_the_design_support_policy_fingerprint_is_pinned():
    # Receipts already written carry this value: a change to the canonical form must be deliberate.
    policy = load_policy(
        FIXED.replace('  - {id: eu-region, field: regions, op: intersects, value: [eu, "zone-é"]}\n', "")
    )
    assert policy.fingerprint == "1142614073-1132739033"


@pytest.mark.parametrize("spelling", ["10", "10.0", "1.0e+1", "10.000", "+10"])
def test_integral_number_spellings_share_a_fingerprint(spelling: str):
    text = FIXED.replace("value: 10}", f"value: {spelling}}}", 1)
    assert text != FIXED or spelling == "10"
    assert load_policy(text).fingerprint == load_policy(FIXED).fingerprint
