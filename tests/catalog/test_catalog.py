"""The catalog: fields, validation errors with paths, content versions, and the archive of versions."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from unhardcoded.catalog import BUILTIN_FIELDS, CATALOG_SCHEMA, Catalog, CatalogArchive
from unhardcoded.errors import CatalogError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BUILTIN_NAMES = [
    "id",
    "provider",
    "price_input_per_mtok",
    "price_output_per_mtok",
    "price_cached_input_per_mtok",
    "price_cache_write_per_mtok",
    "price_reasoning_per_mtok",
    "price_per_request",
    "price",
    "price_model",
    "price_overrides",
    "kind",
    "bench_intelligence",
    "supports_tools",
    "supports_vision",
    "context_window",
    "max_output_tokens",
    "regions",
    "latency_p50_ms",
]
# Observed by the router, listed with the catalog's fields (docs/live.md).
LIVE_NAMES = [
    "live.latency_p50_ms",
    "live.error_rate",
    "live.consecutive_failures",
    "live.cooldown",
    "live.in_flight",
    "live.ratelimit_remaining_requests",
    "live.ratelimit_remaining_tokens",
]


def catalog_doc() -> dict[str, Any]:
    return {
        "schema": "unhardcoded-catalog/v1",
        "fields": [
            {"name": "soc2", "type": "bool", "description": "SOC 2 report on file"},
            {"name": "retention_days", "type": "integer", "unit": "days", "description": "prompt retention"},
        ],
        "models": [
            {
                "id": "alpha",
                "provider": "acme",
                "price_input_per_mtok": 1.0,
                "price_output_per_mtok": 4.0,
                "bench_intelligence": 0.7,
                "supports_tools": True,
                "regions": ["eu", "us"],
                "soc2": True,
                "retention_days": 30,
            },
            {
                "id": "beta",
                "provider": "acme",
                "price_input_per_mtok": 0.2,
                "price_output_per_mtok": 0.8,
                "context_window": 8000.0,
                "soc2": False,
            },
        ],
    }


def error_of(doc: Any) -> str:
    with pytest.raises(CatalogError) as info:
        Catalog.from_document(doc, source="c.yaml")
    return str(info.value)


def model_doc(**values: Any) -> dict[str, Any]:
    doc = catalog_doc()
    doc["models"] = [{"id": "m", "provider": "p", "price_input_per_mtok": 1, "price_output_per_mtok": 1, **values}]
    return doc


# -- the built-in catalog and fields --------------------------------------------------------------


def test_builtin_catalog_loads_and_is_cached():
    catalog = Catalog.builtin()
    assert catalog is Catalog.builtin()
    assert len(catalog) == 35
    assert "gemini-3.5-flash" in catalog and "gpt-5" not in catalog
    assert catalog.custom_fields == ()
    assert list(catalog.fields) == [*BUILTIN_NAMES, *LIVE_NAMES]
    assert re.fullmatch(r"[0-9a-f]{16}", catalog.version)
    flash = catalog.model("gemini-3.5-flash")
    assert (flash.provider, flash.get("price_input_per_mtok"), flash.get("regions")) == (
        "google",
        1.5,
        ["us", "eu", "asia"],
    )


def test_builtin_field_specs():
    specs = {f.name: f for f in BUILTIN_FIELDS}
    assert [f.name for f in BUILTIN_FIELDS] == BUILTIN_NAMES
    assert {n for n, f in specs.items() if f.required} == {
        "id",
        "provider",
        "price_input_per_mtok",
        "price_output_per_mtok",
    }
    assert {n: f.type for n, f in specs.items()} == {
        "id": "string",
        "provider": "string",
        "price_input_per_mtok": "number",
        "price_output_per_mtok": "number",
        "price_cached_input_per_mtok": "number",
        "price_cache_write_per_mtok": "number",
        "price_reasoning_per_mtok": "number",
        "price_per_request": "number",
        "price": "string",
        "price_model": "string",
        "price_overrides": "string[]",
        "kind": "string",
        "bench_intelligence": "number",
        "supports_tools": "bool",
        "supports_vision": "bool",
        "context_window": "integer",
        "max_output_tokens": "integer",
        "regions": "string[]",
        "latency_p50_ms": "number",
    }
    assert specs["price_input_per_mtok"].unit == "USD/1M tokens"
    assert all(f.builtin for f in BUILTIN_FIELDS)


def test_custom_fields_join_the_builtin_ones():
    catalog = Catalog.from_document(catalog_doc())
    assert list(catalog.fields) == [*BUILTIN_NAMES, "soc2", "retention_days", *LIVE_NAMES]
    soc2 = catalog.fields["soc2"]
    assert (soc2.type, soc2.builtin, soc2.description, soc2.unit) == ("bool", False, "SOC 2 report on file", None)
    assert catalog.fields["retention_days"].unit == "days"
    assert catalog.fields["retention_days"].numeric and not soc2.numeric
    assert catalog.model("alpha").get("soc2") is True


def test_integral_floats_in_integer_fields_become_integers_and_null_means_unset():
    doc = catalog_doc()
    doc["models"][1]["max_output_tokens"] = None
    catalog = Catalog.from_document(doc)
    beta = catalog.model("beta")
    assert beta.get("context_window") == 8000 and type(beta.get("context_window")) is int
    assert "max_output_tokens" not in beta.values
    assert beta.get("bench_intelligence") is None


def test_example_catalog_declares_soc2():
    catalog = Catalog.from_file(EXAMPLES / "catalog.yaml")
    assert catalog.fields["soc2"].type == "bool"
    assert not catalog.fields["soc2"].builtin
    assert catalog.model("gpt-5.5").get("soc2") is True
    assert catalog.model("mistral-small-2603").get("soc2") is False
    assert catalog.source == str(EXAMPLES / "catalog.yaml")


def test_unknown_model_lookup_suggests():
    with pytest.raises(CatalogError) as info:
        Catalog.builtin().model("gpt-5.5-minni")
    assert str(info.value).startswith("unknown model 'gpt-5.5-minni'; did you mean gpt-5.4-mini")


# -- validation errors --------------------------------------------------------------------------


def test_unknown_model_field_suggests_and_says_how_to_declare():
    assert error_of(model_doc(sco2=True)) == (
        "c.yaml: models[0].sco2: unknown field; did you mean soc2?; declare custom fields under fields:"
    )


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"context_window": "big"}, "models[0].context_window: expected integer, got 'big'"),
        ({"context_window": 1.5}, "models[0].context_window: expected integer, got 1.5"),
        ({"bench_intelligence": "0.5"}, "models[0].bench_intelligence: expected number, got '0.5'"),
        ({"bench_intelligence": True}, "models[0].bench_intelligence: expected number, got true"),
        ({"latency_p50_ms": float("nan")}, "models[0].latency_p50_ms: expected number, got nan"),
        ({"supports_tools": 1}, "models[0].supports_tools: expected bool, got 1"),
        ({"regions": "eu"}, "models[0].regions: expected string[], got 'eu'"),
        ({"regions": ["eu", 1]}, "models[0].regions: expected string[], got ['eu', 1]"),
        ({"soc2": "yes"}, "models[0].soc2: expected bool, got 'yes'"),
        ({"retention_days": 2.5}, "models[0].retention_days: expected integer, got 2.5"),
        ({"id": 7}, "models[0].id: expected string, got 7"),
        ({"id": " "}, "models[0].id: must not be empty"),
        ({"provider": ""}, "models[0].provider: must not be empty"),
        ({"price_input_per_mtok": -1}, "models[0].price_input_per_mtok: a price cannot be negative"),
    ],
)
def test_wrong_value_types(values: dict[str, Any], expected: str):
    assert error_of(model_doc(**values)) == f"c.yaml: {expected}"


def test_missing_required_fields_are_each_named():
    doc = catalog_doc()
    doc["models"] = [{"id": "m", "price_output_per_mtok": 1}]
    assert error_of(doc) == "c.yaml: models[0].provider: field required; models[0].price_input_per_mtok: field required"


def test_duplicate_model_id():
    doc = catalog_doc()
    doc["models"][1]["id"] = "alpha"
    assert error_of(doc) == "c.yaml: models[1].id: model 'alpha' appears twice"


def test_custom_field_colliding_with_a_builtin():
    doc = catalog_doc()
    doc["fields"].append({"name": "regions", "type": "string"})
    assert error_of(doc) == "c.yaml: fields[2].name: 'regions' is a built-in field; custom fields need another name"


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ({"name": "soc2", "type": "bool"}, "fields[2].name: field 'soc2' is declared twice"),
        (
            {"name": "speed", "type": "float"},
            "fields[2].type: 'float' is not one of number, integer, bool, string, string[]",
        ),
        ({"name": "Speed", "type": "number"}, "fields[2].name: 'Speed' is not a field name ([a-z][a-z0-9_]*)"),
        (
            {"name": "speed", "type": "number", "min": 0},
            "fields[2].min: unknown key; a field has name, type, unit, description",
        ),
        ({"name": "speed", "type": "number", "unit": 5}, "fields[2].unit: must be a string"),
        ("speed", "fields[2]: must be a mapping with name, type, unit, description"),
    ],
)
def test_custom_field_declaration_errors(field: Any, expected: str):
    doc = catalog_doc()
    doc["fields"].append(field)
    assert error_of(doc) == f"c.yaml: {expected}"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"schema": "unhardcoded-catalog/v2"},
            "schema: must be 'unhardcoded-catalog/v1', got 'unhardcoded-catalog/v2'",
        ),
        ({"models": []}, "models: must be a non-empty list of models"),
        ({"fields": {"name": "x"}}, "fields: must be a list"),
        ({"model": []}, "model: unknown key; did you mean models?"),
    ],
)
def test_document_level_errors(change: dict[str, Any], expected: str):
    doc = {**catalog_doc(), **change}
    assert error_of(doc).startswith(f"c.yaml: {expected}")


def test_a_catalog_must_be_a_mapping():
    assert error_of(["x"]) == "c.yaml: a catalog is a mapping with schema, fields and models"


def test_text_and_file_errors_name_source_and_line(tmp_path: Path):
    with pytest.raises(CatalogError) as info:
        Catalog.from_text("schema: unhardcoded-catalog/v1\nmodels:\n  - {id: a\n", source="c.yaml")
    assert re.match(r"c\.yaml: line \d+, column \d+: invalid YAML: ", str(info.value))
    with pytest.raises(CatalogError) as info:
        Catalog.from_file(tmp_path / "missing.yaml")
    assert str(info.value) == f"{tmp_path / 'missing.yaml'}: no such file"


# -- the content version ------------------------------------------------------------------------


def test_version_is_the_content_hash_of_the_canonical_document():
    import hashlib

    catalog = Catalog.from_document(catalog_doc())
    assert catalog.version == hashlib.sha256(catalog.canonical.encode()).hexdigest()[:16]
    assert json.loads(catalog.canonical) == catalog.to_document()
    assert catalog.to_document()["schema"] == CATALOG_SCHEMA


def test_version_is_stable_under_key_order_format_and_number_spelling():
    doc = catalog_doc()
    reordered = {
        "models": [dict(reversed(list(m.items()))) for m in doc["models"]],
        "fields": [dict(reversed(list(f.items()))) for f in doc["fields"]],
        "schema": doc["schema"],
    }
    reordered["models"][0]["price_input_per_mtok"] = 1  # 1.0 and 1 are the same number
    versions = {
        Catalog.from_document(doc).version,
        Catalog.from_document(reordered).version,
        Catalog.from_text(json.dumps(doc, indent=4)).version,
        Catalog.from_text(yaml.safe_dump(reordered, default_flow_style=True)).version,
    }
    assert len(versions) == 1


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["models"][0].update(price_input_per_mtok=1.01),
        lambda d: d["models"][0].update(regions=["eu"]),
        lambda d: d["models"][0].update(soc2=False),
        lambda d: d["models"][1].update(supports_vision=True),
        lambda d: d["models"][1].update(id="gamma"),
        lambda d: d["models"].append(
            {"id": "gamma", "provider": "acme", "price_input_per_mtok": 0, "price_output_per_mtok": 0}
        ),
        lambda d: d["fields"][0].update(description="SOC 2 Type II"),
        lambda d: d["fields"][1].update(unit="d"),
    ],
)
def test_version_changes_with_any_value(mutate):
    doc = catalog_doc()
    before = Catalog.from_document(doc).version
    mutate(doc)
    assert Catalog.from_document(doc).version != before


# -- the archive --------------------------------------------------------------------------------


def test_archive_saves_loads_and_lists_versions(tmp_path: Path):
    archive = CatalogArchive(tmp_path / "catalogs")
    assert archive.versions() == []
    first = Catalog.from_document(catalog_doc())
    doc = catalog_doc()
    doc["models"][0]["price_output_per_mtok"] = 5.0
    second = Catalog.from_document(doc)

    path = archive.save(first)
    assert path == tmp_path / "catalogs" / f"{first.version}.json"
    assert path.read_text(encoding="utf-8") == first.canonical
    assert archive.save(first) == path  # saving again is a no-op
    archive.save(second)
    assert archive.versions() == sorted([first.version, second.version])

    loaded = archive.load(first.version)
    assert loaded.version == first.version
    assert loaded.models == first.models
    assert loaded.fields == first.fields
    assert archive.load(second.version).model("alpha").get("price_output_per_mtok") == 5.0


def test_archive_ignores_files_that_are_not_versions(tmp_path: Path):
    archive = CatalogArchive(tmp_path)
    archive.save(Catalog.builtin())
    (tmp_path / "notes.json").write_text("{}")
    (tmp_path / ".tmp-abc.json").write_text("{}")
    assert archive.versions() == [Catalog.builtin().version]


def test_archive_detects_a_tampered_file(tmp_path: Path):
    archive = CatalogArchive(tmp_path)
    catalog = Catalog.from_document(catalog_doc())
    path = archive.save(catalog)
    tampered = json.loads(path.read_text())
    tampered["models"][0]["price_input_per_mtok"] = 0.01
    path.write_text(json.dumps(tampered))
    with pytest.raises(CatalogError) as info:
        archive.load(catalog.version)
    assert str(info.value).startswith(f"{path}: content hashes to ")
    assert str(info.value).endswith(f"not {catalog.version}; the file was altered")


def test_archive_rejects_bad_and_unknown_versions(tmp_path: Path):
    archive = CatalogArchive(tmp_path)
    with pytest.raises(CatalogError) as info:
        archive.load("../../etc/passwd")
    assert str(info.value) == "'../../etc/passwd' is not a catalog version (16 hex digits)"
    with pytest.raises(CatalogError) as info:
        archive.load("0123456789abcdef")
    assert str(info.value) == f"catalog version 0123456789abcdef is not in {tmp_path}"


def test_archive_directory_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("UNHARDCODED_HOME", str(tmp_path / "home"))
    assert CatalogArchive().directory == tmp_path / "home" / "catalogs"
    monkeypatch.setenv("UNHARDCODED_CATALOG_DIR", str(tmp_path / "elsewhere"))
    assert CatalogArchive().directory == tmp_path / "elsewhere"


def test_odd_unknown_keys_are_quoted_in_the_path():
    assert error_of(model_doc(**{"": 1})) == 'c.yaml: models[0][""]: unknown field; declare custom fields under fields:'
    doc = {**catalog_doc(), "x y": 1}
    assert error_of(doc) == 'c.yaml: ["x y"]: unknown key'


def test_kind_is_chat_or_embedding():
    doc = {
        "schema": "unhardcoded-catalog/v1",
        "models": [
            {"id": "e", "provider": "p", "kind": "embedding", "price_input_per_mtok": 0.1, "price_output_per_mtok": 0},
            {"id": "c", "provider": "p", "price_input_per_mtok": 1, "price_output_per_mtok": 1},
        ],
    }
    assert Catalog.from_document(doc).model("e").values["kind"] == "embedding"
    doc["models"][1]["kind"] = "rerank"
    with pytest.raises(CatalogError, match=r"models\[1\]\.kind: must be one of chat, embedding, got 'rerank'"):
        Catalog.from_document(doc)
