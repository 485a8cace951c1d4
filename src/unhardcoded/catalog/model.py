"""The catalog (`unhardcoded-catalog/v1`): models, their fields, and the content version."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from .._canonical import canonical_json
from .._documents import key_path, parse_document, read_document
from ..errors import CatalogError
from .fields import (
    BUILTIN_FIELD_NAMES,
    BUILTIN_FIELDS,
    FIELD_TYPES,
    LIVE_FIELDS,
    MODEL_KINDS,
    FieldSpec,
    describe_value,
    suggest,
    value_matches,
)

CATALOG_SCHEMA = "unhardcoded-catalog/v1"
_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class CatalogModel:
    """One model of the catalog: its id, provider and every field value it declares."""

    __slots__ = ("id", "provider", "values")

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.id: str = values["id"]
        self.provider: str = values["provider"]

    def get(self, field: str) -> Any:
        return self.values.get(field)

    def __repr__(self) -> str:
        return f"CatalogModel(id={self.id!r}, provider={self.provider!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CatalogModel) and other.values == self.values

    def __hash__(self) -> int:
        return hash(self.id)


class Catalog:
    """A validated catalog. Immutable; its ``version`` is the hash of its content."""

    def __init__(
        self, custom_fields: Iterable[FieldSpec], models: Iterable[CatalogModel], source: str = "<catalog>"
    ) -> None:
        self.custom_fields: tuple[FieldSpec, ...] = tuple(custom_fields)
        self.models: tuple[CatalogModel, ...] = tuple(models)
        self.source = source
        self.fields: dict[str, FieldSpec] = {f.name: f for f in BUILTIN_FIELDS}
        self.fields.update({f.name: f for f in self.custom_fields})
        # Observed by the router, never set in a catalog (a custom field name cannot hold a '.').
        self.fields.update({f.name: f for f in LIVE_FIELDS})
        self._by_id = {m.id: m for m in self.models}

    def __len__(self) -> int:
        return len(self.models)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._by_id

    def model(self, model_id: str) -> CatalogModel:
        try:
            return self._by_id[model_id]
        except KeyError:
            raise CatalogError(f"unknown model {model_id!r}{suggest(model_id, self._by_id.keys())}") from None

    @property
    def model_ids(self) -> list[str]:
        return [m.id for m in self.models]

    def to_document(self) -> dict[str, Any]:
        """The catalog as a `unhardcoded-catalog/v1` document."""
        return {
            "schema": CATALOG_SCHEMA,
            "fields": [
                {
                    k: v
                    for k, v in f.model_dump(exclude={"builtin", "required", "live", "unobserved"}).items()
                    if v is not None
                }
                for f in self.custom_fields
            ],
            "models": [dict(m.values) for m in self.models],
        }

    @cached_property
    def canonical(self) -> str:
        return canonical_json(self.to_document())

    @cached_property
    def version(self) -> str:
        """First 16 hex digits of the SHA-256 of the canonical document."""
        return hashlib.sha256(self.canonical.encode("utf-8")).hexdigest()[:16]

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_document(cls, doc: Any, source: str = "<catalog>") -> Catalog:
        errors: list[str] = []

        def err(path: str, msg: str) -> None:
            errors.append(f"{path}: {msg}")

        if not isinstance(doc, Mapping):
            raise CatalogError(f"{source}: a catalog is a mapping with schema, fields and models")
        for key in doc:
            if key not in ("schema", "fields", "models"):
                err(key_path("", key), f"unknown key{suggest(str(key), {'schema', 'fields', 'models'})}")
        schema = doc.get("schema")
        if schema != CATALOG_SCHEMA:
            err("schema", f"must be {CATALOG_SCHEMA!r}, got {describe_value(schema)}")

        custom: list[FieldSpec] = []
        raw_fields = doc.get("fields") or []
        if not isinstance(raw_fields, list):
            err("fields", "must be a list")
            raw_fields = []
        for i, raw in enumerate(raw_fields):
            path = f"fields[{i}]"
            if not isinstance(raw, Mapping):
                err(path, "must be a mapping with name, type, unit, description")
                continue
            extra = set(raw) - {"name", "type", "unit", "description"}
            for key in sorted(extra):
                err(key_path(path, key), "unknown key; a field has name, type, unit, description")
            name = raw.get("name")
            ftype = raw.get("type")
            if not isinstance(name, str) or not _FIELD_NAME.match(name):
                err(f"{path}.name", f"{describe_value(name)} is not a field name ([a-z][a-z0-9_]*)")
                continue
            if name in BUILTIN_FIELD_NAMES:
                err(f"{path}.name", f"{name!r} is a built-in field; custom fields need another name")
                continue
            if any(f.name == name for f in custom):
                err(f"{path}.name", f"field {name!r} is declared twice")
                continue
            if ftype not in FIELD_TYPES:
                err(f"{path}.type", f"{describe_value(ftype)} is not one of {', '.join(FIELD_TYPES)}")
                continue
            unit = raw.get("unit")
            desc = raw.get("description", "")
            if unit is not None and not isinstance(unit, str):
                err(f"{path}.unit", "must be a string")
                continue
            if not isinstance(desc, str):
                err(f"{path}.description", "must be a string")
                continue
            custom.append(FieldSpec(name=name, type=ftype, unit=unit, description=desc))

        specs = {f.name: f for f in BUILTIN_FIELDS}
        specs.update({f.name: f for f in custom})
        models: list[CatalogModel] = []
        seen: set[str] = set()
        raw_models = doc.get("models")
        if not isinstance(raw_models, list) or not raw_models:
            err("models", "must be a non-empty list of models")
            raw_models = []
        for i, raw in enumerate(raw_models):
            path = f"models[{i}]"
            if not isinstance(raw, Mapping):
                err(path, "must be a mapping of field names to values")
                continue
            values: dict[str, Any] = {}
            reported: set[str] = set()
            ok = True
            for key, value in raw.items():
                spec = specs.get(key)
                if spec is None:
                    err(
                        key_path(path, key),
                        f"unknown field{suggest(str(key), specs.keys())}; declare custom fields under fields:",
                    )
                    ok = False
                    continue
                if value is None:
                    continue
                if not value_matches(spec.type, value):
                    err(f"{path}.{key}", f"expected {spec.type}, got {describe_value(value)}")
                    reported.add(key)
                    ok = False
                    continue
                if key == "kind" and value not in MODEL_KINDS:
                    err(f"{path}.{key}", f"must be one of {', '.join(MODEL_KINDS)}, got {describe_value(value)}")
                    reported.add(key)
                    ok = False
                    continue
                if key in ("id", "provider") and not value.strip():
                    # A blank id cannot be sent to a provider or named by a policy; a blank provider matches no entry.
                    err(f"{path}.{key}", "must not be empty")
                    reported.add(key)
                    ok = False
                    continue
                values[key] = int(value) if spec.type == "integer" else value
            for spec in specs.values():
                if spec.required and spec.name not in values and spec.name not in reported:
                    err(f"{path}.{spec.name}", "field required")
                    ok = False
            for price in ("price_input_per_mtok", "price_output_per_mtok"):
                if isinstance(values.get(price), (int, float)) and values[price] < 0:
                    err(f"{path}.{price}", "a price cannot be negative")
                    ok = False
            if not ok:
                continue
            if values["id"] in seen:
                err(f"{path}.id", f"model {values['id']!r} appears twice")
                continue
            seen.add(values["id"])
            models.append(CatalogModel(values))
        if errors:
            shown = errors[:10]
            more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
            raise CatalogError(f"{source}: " + "; ".join(shown) + more)
        return cls(custom, models, source=source)

    @classmethod
    def from_text(cls, text: str, source: str = "<catalog>") -> Catalog:
        return cls.from_document(parse_document(text, source, CatalogError), source)

    @classmethod
    def from_file(cls, path: str | Path) -> Catalog:
        return cls.from_document(read_document(path, CatalogError), str(path))

    @classmethod
    def builtin(cls) -> Catalog:
        """The catalog that ships with the package (prices are illustrative)."""
        global _BUILTIN
        if _BUILTIN is None:
            text = resources.files("unhardcoded.catalog").joinpath("builtin.yaml").read_text(encoding="utf-8")
            _BUILTIN = cls.from_text(text, source="<built-in catalog>")
        return _BUILTIN


_BUILTIN: Catalog | None = None
