"""Policy loading and validation: every error names the path and the fix; YAML and JSON mean the same."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from unhardcoded.catalog import Catalog
from unhardcoded.errors import PolicyError, UnhardcodedError
from unhardcoded.policy import (
    OPS,
    POLICY_SCHEMA,
    Policy,
    fingerprint_of,
    load_policy,
    load_policy_file,
    validate_policy,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

CUSTOM_CATALOG = """
schema: unhardcoded-catalog/v1
fields:
  - {name: soc2, type: bool, description: SOC 2 report on file}
  - {name: tier, type: string}
models:
  - {id: alpha, provider: p, price_input_per_mtok: 1, price_output_per_mtok: 2, soc2: true, tier: gold}
  - {id: beta, provider: p, price_input_per_mtok: 0.5, price_output_per_mtok: 1, soc2: false, tier: silver}
"""


def support_doc() -> dict[str, Any]:
    return {
        "schema": "sigma-pol/v1",
        "name": "support",
        "rules": [
            {"id": "tools", "field": "supports_tools", "op": "eq", "value": True},
            {"id": "quality-floor", "field": "bench_intelligence", "op": "gte", "value": 0.5},
            {"id": "price-ceiling", "field": "price_output_per_mtok", "op": "lte", "value": 10},
        ],
        "rank": {"by": "cost", "order": "asc", "then": [{"by": "bench_intelligence", "order": "desc"}]},
        "select": {"score_field": "bench_intelligence"},
        "fallback": {
            "models": ["mistral-large-2512", "gpt-4.1"],
            "on": ["error", "timeout", "rate_limit"],
            "max_hops": 2,
        },
        "baseline": "gpt-5.5",
    }


def error_of(doc: Any, catalog: Catalog | None = None) -> str:
    with pytest.raises(PolicyError) as info:
        validate_policy(doc, catalog, source="p.yaml")
    return str(info.value)


def with_rule(index: int, **changes: Any) -> dict[str, Any]:
    doc = support_doc()
    doc["rules"][index] = {**doc["rules"][index], **changes}
    return doc


# -- a valid policy ------------------------------------------------------------------------


def test_example_support_policy_loads_with_every_part():
    policy = load_policy_file(EXAMPLES / "policies" / "support.yaml")
    assert policy.name == "support"
    assert policy.schema_id == POLICY_SCHEMA
    assert [(r.id, r.field, r.op, r.value) for r in policy.rules] == [
        ("tools", "supports_tools", "eq", True),
        ("quality-floor", "bench_intelligence", "gte", 0.5),
        ("price-ceiling", "price_output_per_mtok", "lte", 10),
    ]
    assert (policy.rank.by, policy.rank.order) == ("cost", "asc")
    assert [(k.by, k.order) for k in policy.rank.then] == [("bench_intelligence", "desc")]
    assert policy.select.score_field == "bench_intelligence"
    assert policy.fallback.models == ("mistral-large-2512", "gpt-4.1")
    assert policy.fallback.on == ("error", "timeout", "rate_limit")
    assert policy.fallback.max_hops == 2
    assert policy.baseline == "gpt-5.5"
    # The example file is the DESIGN document's policy, its standby models ones the price ceiling keeps.
    assert policy.fingerprint == validate_policy(support_doc()).fingerprint


def test_example_eu_only_policy_requires_the_eu_region():
    policy = load_policy_file(EXAMPLES / "policies" / "eu-only.yaml")
    assert policy.name == "eu-only"
    assert [(r.field, r.op, r.value) for r in policy.rules if r.field == "regions"] == [("regions", "contains", "eu")]


def test_minimal_policy_gets_every_default():
    policy = load_policy("schema: sigma-pol/v1\nname: minimal\n")
    assert policy.rules == ()
    assert (policy.rank.by, policy.rank.order, policy.rank.then) == ("cost", "asc", ())
    assert policy.select.score_field == "bench_intelligence"
    assert policy.fallback.models == ()
    assert policy.fallback.on == ("error", "timeout", "rate_limit")
    assert policy.fallback.max_hops == 2
    assert policy.baseline is None
    assert policy.to_document() == {
        "schema": "sigma-pol/v1",
        "name": "minimal",
        "rules": [],
        "rank": {"by": "cost", "order": "asc", "then": []},
        "select": {"score_field": "bench_intelligence"},
        "fallback": {"models": [], "on": ["error", "timeout", "rate_limit"], "max_hops": 2},
        "baseline": None,
    }


def test_null_sections_mean_the_defaults():
    spelled = load_policy("schema: sigma-pol/v1\nname: minimal\nrules:\nrank:\nselect:\nfallback:\n")
    assert spelled.fingerprint == load_policy("schema: sigma-pol/v1\nname: minimal\n").fingerprint


def test_select_score_field_may_be_null():
    doc = support_doc()
    doc["select"] = {"score_field": None}
    assert validate_policy(doc).select.score_field is None


def test_canonical_form_is_sorted_compact_json_of_the_filled_policy():
    policy = validate_policy(support_doc())
    canonical = policy.canonical
    assert " " not in canonical.replace("sigma-pol/v1", "")
    parsed = json.loads(canonical)
    assert parsed == policy.to_document()
    assert canonical == json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # Integral floats fold into integers: `10` and `10.0` are the same policy.
    assert '"value":10}' in canonical


def test_fingerprint_is_sha256_words_masked_to_31_bits():
    policy = validate_policy(support_doc())
    digest = hashlib.sha256(policy.canonical.encode("utf-8")).digest()
    a = int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
    b = int.from_bytes(digest[4:8], "big") & 0x7FFFFFFF
    assert policy.fingerprint == f"{a}-{b}" == fingerprint_of(policy.canonical)


def test_integral_float_and_integer_values_share_a_fingerprint():
    as_float = with_rule(2, value=10.0)
    assert validate_policy(as_float).fingerprint == validate_policy(support_doc()).fingerprint
    assert validate_policy(with_rule(2, value=10.5)).fingerprint != validate_policy(support_doc()).fingerprint


def test_failure_kinds_are_a_set_so_their_order_is_not_semantic():
    doc = support_doc()
    doc["fallback"]["on"] = ["rate_limit", "error", "timeout", "error"]
    policy = validate_policy(doc)
    assert policy.fallback.on == ("error", "timeout", "rate_limit")
    assert policy.fingerprint == validate_policy(support_doc()).fingerprint


def test_policy_is_frozen():
    policy = validate_policy(support_doc())
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        policy.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("op", OPS)
def test_every_op_is_accepted_on_a_field_it_fits(op: str):
    field, value = {
        "eq": ("provider", "openai"),
        "ne": ("provider", "openai"),
        "lt": ("latency_p50_ms", 900),
        "lte": ("context_window", 200000),
        "gt": ("bench_intelligence", 0.5),
        "gte": ("max_output_tokens", 32768),
        "in": ("provider", ["openai", "google"]),
        "not_in": ("provider", ["deepseek"]),
        "contains": ("regions", "eu"),
        "intersects": ("regions", ["eu", "asia"]),
    }[op]
    policy = validate_policy(
        {"schema": "sigma-pol/v1", "name": "ops", "rules": [{"id": "r", "field": field, "op": op, "value": value}]}
    )
    assert policy.rules[0].op == op
    assert policy.rules[0].value == value


def test_custom_catalog_fields_are_valid_rule_fields():
    catalog = Catalog.from_text(CUSTOM_CATALOG)
    doc = {
        "schema": "sigma-pol/v1",
        "name": "audited",
        "rules": [
            {"id": "soc2", "field": "soc2", "op": "eq", "value": True},
            {"id": "tier", "field": "tier", "op": "in", "value": ["gold", "platinum"]},
        ],
        "baseline": "alpha",
    }
    policy = validate_policy(doc, catalog)
    assert [r.field for r in policy.rules] == ["soc2", "tier"]
    # The built-in catalog has no such fields.
    message = error_of(doc)
    assert "rules[0].field: unknown field 'soc2'" in message
    assert "baseline: unknown model 'alpha'" in message


# -- errors name the path and the fix ----------------------------------------------------------


def test_unknown_op_lists_every_op_exactly():
    message = error_of(with_rule(2, op="gte2"))
    assert (
        message
        == "p.yaml: rules[2].op: 'gte2' is not one of eq, ne, lt, lte, gt, gte, in, not_in, contains, intersects"
    )


def test_unknown_field_suggests_nearest_names_and_the_fields_command():
    message = error_of(with_rule(1, field="bench_inteligence"))
    assert message.startswith(
        "p.yaml: rules[1].field: unknown field 'bench_inteligence'; did you mean bench_intelligence"
    )
    assert "`unhardcoded fields`" in message


def test_unknown_field_with_nothing_close_still_points_at_the_fields_command():
    message = error_of(with_rule(0, field="zzzz"))
    assert message == "p.yaml: rules[0].field: unknown field 'zzzz' (run `unhardcoded fields` to list them)"


def test_wrong_value_type_names_field_op_and_value():
    message = error_of(with_rule(1, value="high"))
    assert message == "p.yaml: rules[1].value: bench_intelligence gte needs a number, got 'high'"


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            {"field": "supports_tools", "op": "eq", "value": "yes"},
            "rules[0].value: supports_tools eq needs a bool value, got 'yes'",
        ),
        (
            {"field": "context_window", "op": "eq", "value": 1.5},
            "rules[0].value: context_window eq needs a integer value, got 1.5",
        ),
        ({"field": "provider", "op": "ne", "value": 3}, "rules[0].value: provider ne needs a string value, got 3"),
        (
            {"field": "bench_intelligence", "op": "lt", "value": True},
            "rules[0].value: bench_intelligence lt needs a number, got true",
        ),
        (
            {"field": "supports_tools", "op": "gt", "value": 1},
            "rules[0].op: 'gt' compares numbers but supports_tools is bool; use eq, ne, in or not_in",
        ),
        (
            {"field": "regions", "op": "in", "value": ["eu"]},
            "rules[0].op: 'in' needs a single-valued field but regions is a list; use contains or intersects",
        ),
        (
            {"field": "provider", "op": "in", "value": []},
            "rules[0].value: provider in needs a non-empty list of string values, got []",
        ),
        (
            {"field": "provider", "op": "not_in", "value": "openai"},
            "rules[0].value: provider not_in needs a non-empty list of string values, got 'openai'",
        ),
        (
            {"field": "provider", "op": "in", "value": ["openai", 3]},
            "rules[0].value: provider in needs a list of string values, got ['openai', 3]",
        ),
        (
            {"field": "supports_tools", "op": "contains", "value": "x"},
            "rules[0].op: 'contains' needs a list or string field but supports_tools is bool",
        ),
        (
            {"field": "regions", "op": "contains", "value": ["eu"]},
            "rules[0].value: regions contains needs a string, got ['eu']",
        ),
        (
            {"field": "provider", "op": "intersects", "value": ["a"]},
            "rules[0].op: 'intersects' needs a list field but provider is string; use in",
        ),
        (
            {"field": "regions", "op": "intersects", "value": []},
            "rules[0].value: regions intersects needs a non-empty list of strings, got []",
        ),
        (
            {"field": "regions", "op": "eq", "value": "eu"},
            "rules[0].value: regions eq needs a string[] value, got 'eu'",
        ),
        (
            {"field": "bench_intelligence", "op": "gte", "value": float("nan")},
            "rules[0].value: bench_intelligence gte needs a number, got nan",
        ),
        (
            {"field": "bench_intelligence", "op": "lte", "value": float("inf")},
            "rules[0].value: bench_intelligence lte needs a number, got inf",
        ),
    ],
)
def test_value_and_op_must_fit_the_field_type(rule: dict[str, Any], expected: str):
    doc = {"schema": "sigma-pol/v1", "name": "t", "rules": [{"id": "r", **rule}]}
    assert error_of(doc) == f"p.yaml: {expected}"


def test_duplicate_rule_ids_name_both_rules():
    message = error_of(with_rule(2, id="tools"))
    assert message == "p.yaml: rules[2].id: duplicate rule id 'tools' (also rules[0]); rule ids must be unique"


def test_missing_rule_keys_are_each_required():
    doc = {"schema": "sigma-pol/v1", "name": "t", "rules": [{"id": "r", "field": "provider"}]}
    assert error_of(doc) == "p.yaml: rules[0].op: field required; rules[0].value: field required"


def test_unknown_rule_key_suggests_the_right_one():
    doc = {
        "schema": "sigma-pol/v1",
        "name": "t",
        "rules": [{"id": "r", "field": "provider", "op": "eq", "value": "x", "vaule": 1}],
    }
    assert (
        error_of(doc)
        == "p.yaml: rules[0].vaule: unknown key; did you mean value?; expected one of id, field, op, value"
    )


def test_bad_rule_id_and_bad_name():
    doc = with_rule(0, id="has space")
    doc["name"] = "Support"
    message = error_of(doc)
    assert "name: 'Support' is not a policy name" in message
    assert "rules[0].id: 'has space' is not a rule id" in message


def test_unknown_baseline_suggests_catalog_models():
    doc = support_doc()
    doc["baseline"] = "gpt-5"
    message = error_of(doc)
    assert message.startswith("p.yaml: baseline: unknown model 'gpt-5'; did you mean gpt-5.5")
    assert message.endswith("it must be in the catalog")


def test_unknown_fallback_model_names_its_index():
    doc = support_doc()
    doc["fallback"]["models"] = ["gpt-5.5", "claude-sonet-4-6"]
    message = error_of(doc)
    assert message.startswith(
        "p.yaml: fallback.models[1]: unknown model 'claude-sonet-4-6'; did you mean claude-sonnet-4-6"
    )


def test_fallback_model_listed_twice():
    doc = support_doc()
    doc["fallback"]["models"] = ["gpt-5.5", "gpt-5.5"]
    assert error_of(doc) == "p.yaml: fallback.models: 'gpt-5.5' is listed twice"


@pytest.mark.parametrize(
    ("fallback", "expected"),
    [
        ({"on": ["timeout", "boom"]}, "fallback.on[1]: 'boom' is not one of error, timeout, rate_limit"),
        ({"on": "timeout"}, "fallback.on: must be a list of error, timeout, rate_limit"),
        ({"max_hops": 17}, "fallback.max_hops: must be a whole number from 0 to 16, got 17"),
        ({"max_hops": -1}, "fallback.max_hops: must be a whole number from 0 to 16, got -1"),
        ({"max_hops": True}, "fallback.max_hops: must be a whole number from 0 to 16, got true"),
        ({"models": "gpt-5.5"}, "fallback.models: must be a list of model ids"),
        ({"model": []}, "fallback.model: unknown key; did you mean models?; expected one of models, on, max_hops"),
    ],
)
def test_fallback_errors(fallback: dict[str, Any], expected: str):
    doc = support_doc()
    doc["fallback"] = fallback
    assert error_of(doc) == f"p.yaml: {expected}"


@pytest.mark.parametrize(
    ("rank", "expected"),
    [
        ({"by": "regions"}, "rank.by: 'regions' is string[]; ranking and scores need a numeric field"),
        (
            {"by": "speed"},
            "rank.by: unknown field 'speed'; expected 'cost' or a numeric catalog field (run `unhardcoded fields` to list them)",
        ),
        ({"order": "up"}, "rank.order: 'up' is not one of asc, desc"),
        ({"then": [{"by": "latency_p50_ms", "order": "down"}]}, "rank.then[0].order: 'down' is not one of asc, desc"),
        ({"then": [{"order": "asc"}]}, "rank.then[0]: a tie-breaker is a mapping with by and order"),
        ({"then": {"by": "cost"}}, "rank.then: must be a list of {by, order}"),
    ],
)
def test_rank_errors(rank: dict[str, Any], expected: str):
    doc = support_doc()
    doc["rank"] = rank
    assert error_of(doc) == f"p.yaml: {expected}"


def test_score_field_must_be_numeric_and_cannot_be_cost():
    doc = support_doc()
    doc["select"] = {"score_field": "provider"}
    assert error_of(doc) == "p.yaml: select.score_field: 'provider' is string; ranking and scores need a numeric field"
    doc["select"] = {"score_field": "cost"}
    assert error_of(doc) == (
        "p.yaml: select.score_field: unknown field 'cost'; expected a numeric catalog field (run `unhardcoded fields` to list them)"
    )


def test_schema_must_be_sigma_pol_v1():
    doc = support_doc()
    doc["schema"] = "sigma-pol/v2"
    assert error_of(doc) == "p.yaml: schema: must be 'sigma-pol/v1', got 'sigma-pol/v2'"
    del doc["schema"]
    assert error_of(doc) == "p.yaml: schema: must be 'sigma-pol/v1', got null"


def test_unknown_top_level_key_suggests_the_right_one():
    doc = support_doc()
    doc["rule"] = []
    assert error_of(doc) == (
        "p.yaml: rule: unknown key; did you mean rules?; expected one of schema, name, rules, rank, select, fallback, baseline, budget, health"
    )


@pytest.mark.parametrize(("doc", "kind"), [([1, 2], "list"), (None, "NoneType"), ("text", "str")])
def test_a_policy_must_be_a_mapping(doc: Any, kind: str):
    assert error_of(doc) == f"p.yaml: a policy is a mapping with schema, name and rules; got {kind}"


def test_every_error_is_reported_at_once_up_to_eight():
    doc = {
        "schema": "sigma-pol/v1",
        "name": "t",
        "rules": [{"id": f"r{i}", "field": "nope", "op": "eq", "value": 1} for i in range(11)],
    }
    message = error_of(doc)
    assert message.count("unknown field 'nope'") == 8
    assert message.endswith("(and 3 more)")
    assert message.index("rules[0].field") < message.index("rules[7].field")


# -- parsing: YAML 1.2 booleans, syntax errors with lines, files ---------------------------------


def test_yaml_on_key_is_a_string_not_a_boolean():
    text = "schema: sigma-pol/v1\nname: t\nfallback:\n  on: [timeout]\n  max_hops: 1\n"
    # PyYAML's default YAML 1.1 rules would have read `on` as True.
    assert True in yaml.safe_load(text)["fallback"]
    policy = load_policy(text)
    assert policy.fallback.on == ("timeout",)
    assert policy.fallback.max_hops == 1


def test_yaml_yes_is_a_string_so_a_bool_rule_rejects_it():
    text = "schema: sigma-pol/v1\nname: t\nrules:\n  - {id: tools, field: supports_tools, op: eq, value: yes}\n"
    with pytest.raises(PolicyError) as info:
        load_policy(text, source="p.yaml")
    assert str(info.value) == "p.yaml: rules[0].value: supports_tools eq needs a bool value, got 'yes'"


def test_yaml_syntax_error_names_the_line():
    text = "schema: sigma-pol/v1\nname: t\nrules:\n  - id: a\n   field: x\n"
    with pytest.raises(PolicyError) as info:
        load_policy(text, source="p.yaml")
    assert str(info.value).startswith("p.yaml: line 5, column 4: invalid YAML: ")


def test_json_syntax_error_names_the_line():
    text = '{"schema": "sigma-pol/v1",\n "name": "t",\n "rules": [}'
    with pytest.raises(PolicyError) as info:
        load_policy(text, source="p.json")
    assert str(info.value) == "p.json: line 3: invalid JSON: Expecting value"


def test_json_and_yaml_texts_are_the_same_policy():
    doc = support_doc()
    from_json = load_policy(json.dumps(doc, indent=2))
    from_yaml = load_policy(yaml.safe_dump(doc, sort_keys=False))
    assert from_json == from_yaml
    assert from_json.fingerprint == from_yaml.fingerprint


def test_deeply_nested_document_is_a_policy_error():
    for text in ("[" * 5_000, "a: " + "[" * 3_000, "- " * 3_000):
        with pytest.raises(PolicyError) as info:
            load_policy(text, source="deep.yaml")
        assert str(info.value).startswith("deep.yaml: invalid ")
        assert "nested too deeply" in str(info.value)


def test_policy_file_errors_name_the_file(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError) as info:
        load_policy_file(missing)
    assert str(info.value) == f"{missing}: no such file"

    bad = tmp_path / "bad.yaml"
    bad.write_text("schema: sigma-pol/v1\nname: t\nrules:\n  - {id: a, field: supports_tools, op: gte2, value: 1}\n")
    with pytest.raises(PolicyError) as info:
        load_policy_file(bad)
    assert str(info.value).startswith(f"{bad}: rules[0].op: 'gte2' is not one of")

    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PolicyError) as info:
        load_policy_file(binary)
    assert str(info.value) == f"{binary}: cannot read: UnicodeDecodeError"


def test_policy_errors_are_unhardcoded_errors():
    assert issubclass(PolicyError, UnhardcodedError)
    assert isinstance(validate_policy(support_doc()), Policy)


def test_flow_style_yaml_is_yaml_not_broken_json():
    policy = load_policy("{schema: sigma-pol/v1, name: flow, fallback: {on: [timeout], max_hops: 1}}")
    assert (policy.name, policy.fallback.on, policy.fallback.max_hops) == ("flow", ("timeout",), 1)
    with pytest.raises(PolicyError) as info:
        load_policy('{"schema": "sigma-pol/v1", "name": [}', source="p.json")
    assert str(info.value) == "p.json: line 1: invalid JSON: Expecting value"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "schema: sigma-pol/v1\nname: 2024-13-45\n",
            "p.yaml: line 2, column 7: invalid YAML: cannot read !!timestamp value '2024-13-45'",
        ),
        (
            "schema: sigma-pol/v1\nname: t\nfallback: {max_hops: !!int two}\n",
            "p.yaml: line 3, column 22: invalid YAML: cannot read !!int value 'two'",
        ),
        (
            "schema: sigma-pol/v1\nname: !!bool maybe\n",
            "p.yaml: line 2, column 7: invalid YAML: cannot read !!bool value 'maybe'",
        ),
    ],
)
def test_yaml_values_that_cannot_be_constructed_name_the_line(text: str, expected: str):
    with pytest.raises(PolicyError) as info:
        load_policy(text, source="p.yaml")
    assert str(info.value) == expected


def test_odd_unknown_keys_are_quoted_in_the_path():
    doc = support_doc()
    doc[""] = 1
    doc["rules"][0]["a b"] = 2
    message = error_of(doc)
    assert '[""]: unknown key' in message
    assert 'rules[0]["a b"]: unknown key' in message
