"""The catalog (`unhardcoded-catalog/v1`): models, their fields, and the content version."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

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
from .pricing import PriceSchedule, Rate, flat_schedule

if TYPE_CHECKING:
    from .genai import PriceData

CATALOG_SCHEMA = "unhardcoded-catalog/v1"
_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
PRICE_GENAI = "genai-prices"
PRICE_CATALOG = "catalog"
# Catalog price field -> rate of a price set (per_request is USD per request, the others per 1M tokens).
PRICE_FIELDS: dict[str, str] = {
    "price_input_per_mtok": "input",
    "price_output_per_mtok": "output",
    "price_cached_input_per_mtok": "cached_input",
    "price_cache_write_per_mtok": "cache_write",
    "price_reasoning_per_mtok": "reasoning",
    "price_per_request": "per_request",
}


class PriceInfo(NamedTuple):
    """Where a catalog's ``genai-prices`` prices come from: the source, its data version and snapshot date."""

    source: str
    data_version: str
    snapshot_date: str | None


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
        self,
        custom_fields: Iterable[FieldSpec],
        models: Iterable[CatalogModel],
        source: str = "<catalog>",
        prices: PriceInfo | None = None,
        schedules: Mapping[str, PriceSchedule] | None = None,
    ) -> None:
        self.custom_fields: tuple[FieldSpec, ...] = tuple(custom_fields)
        self.models: tuple[CatalogModel, ...] = tuple(models)
        self.source = source
        self.prices = prices
        """The source and data version of the prices taken from genai-prices; None when every price is the file's."""
        # Every model's price schedule: resolved from genai-prices (kept in the document) or built from its fields.
        self.schedules: dict[str, PriceSchedule] = dict(schedules or {})
        for m in self.models:
            if m.id not in self.schedules:
                self.schedules[m.id] = schedule_from_fields(m.values)
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

    def schedule(self, model_id: str) -> PriceSchedule:
        """The price schedule of ``model_id`` (for :func:`unhardcoded.catalog.pricing.cost`)."""
        try:
            return self.schedules[model_id]
        except KeyError:
            raise CatalogError(f"unknown model {model_id!r}{suggest(model_id, self._by_id.keys())}") from None

    def to_document(self) -> dict[str, Any]:
        """The catalog as a `unhardcoded-catalog/v1` document, prices from genai-prices resolved into it."""
        doc: dict[str, Any] = {
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
        if self.prices is not None:
            doc["prices"] = {
                "source": self.prices.source,
                "data_version": self.prices.data_version,
                "snapshot_date": self.prices.snapshot_date,
                "models": {
                    m.id: self.schedules[m.id].to_json() for m in self.models if m.values.get("price") == PRICE_GENAI
                },
            }
        return doc

    @cached_property
    def canonical(self) -> str:
        return canonical_json(self.to_document())

    @cached_property
    def version(self) -> str:
        """First 16 hex digits of the SHA-256 of the canonical document."""
        return hashlib.sha256(self.canonical.encode("utf-8")).hexdigest()[:16]

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_document(cls, doc: Any, source: str = "<catalog>", price_data: PriceData | None = None) -> Catalog:
        """A validated catalog. Models with ``price: genai-prices`` take their schedule from the document's
        ``prices`` section when it has one (an archived version), else from ``price_data`` (default: the
        installed ``genai-prices`` snapshot)."""
        errors: list[str] = []

        def err(path: str, msg: str) -> None:
            errors.append(f"{path}: {msg}")

        if not isinstance(doc, Mapping):
            raise CatalogError(f"{source}: a catalog is a mapping with schema, fields and models")
        for key in doc:
            if key not in ("schema", "fields", "models", "prices"):
                err(key_path("", key), f"unknown key{suggest(str(key), {'schema', 'fields', 'models', 'prices'})}")
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
            by_ref = values.get("price") == PRICE_GENAI
            for spec in specs.values():
                if spec.required and spec.name not in values and spec.name not in reported:
                    if by_ref and spec.name in PRICE_FIELDS:
                        continue
                    err(f"{path}.{spec.name}", "field required")
                    ok = False
            if "price" in values and values["price"] not in (PRICE_GENAI, PRICE_CATALOG):
                err(f"{path}.price", f"{describe_value(values['price'])} is not {PRICE_GENAI} or {PRICE_CATALOG}")
                ok = False
            if by_ref and "/" not in str(values.get("price_model", "")):
                err(f"{path}.price_model", "price: genai-prices needs price_model: provider/model (genai-prices ids)")
                ok = False
            if not by_ref and "price_model" in values:
                err(f"{path}.price_model", "only with price: genai-prices")
                ok = False
            for price in PRICE_FIELDS:
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
        prices, schedules = _resolve_prices(doc.get("prices"), models, price_data, err)
        if errors:
            shown = errors[:10]
            more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
            raise CatalogError(f"{source}: " + "; ".join(shown) + more)
        return cls(custom, models, source=source, prices=prices, schedules=schedules)

    @classmethod
    def from_text(cls, text: str, source: str = "<catalog>", price_data: PriceData | None = None) -> Catalog:
        return cls.from_document(parse_document(text, source, CatalogError), source, price_data)

    @classmethod
    def from_file(cls, path: str | Path, price_data: PriceData | None = None) -> Catalog:
        return cls.from_document(read_document(path, CatalogError), str(path), price_data)

    @classmethod
    def builtin(cls) -> Catalog:
        """The catalog that ships with the package: prices from the genai-prices snapshot it was built with."""
        global _BUILTIN
        if _BUILTIN is None:
            _BUILTIN = cls.from_document(builtin_document(), source="<built-in catalog>")
        return _BUILTIN


def builtin_document(with_prices: bool = True) -> dict[str, Any]:
    """The built-in catalog's document: ``builtin.yaml`` and, unless ``with_prices`` is false, the price
    schedules precomputed from genai-prices (``builtin_prices.json``, written by ``scripts/build_prices.py``)."""
    import json

    files = resources.files("unhardcoded.catalog")
    doc = parse_document(files.joinpath("builtin.yaml").read_text(encoding="utf-8"), "builtin.yaml", CatalogError)
    if with_prices:
        doc["prices"] = json.loads(files.joinpath("builtin_prices.json").read_text(encoding="utf-8"))
    return dict(doc)


def schedule_from_fields(values: Mapping[str, Any]) -> PriceSchedule:
    return flat_schedule(**{rate: values[f] for f, rate in PRICE_FIELDS.items() if values.get(f) is not None})


def _resolve_prices(
    raw: Any, models: list[CatalogModel], price_data: PriceData | None, err: Any
) -> tuple[PriceInfo | None, dict[str, PriceSchedule]]:
    """Every ``price: genai-prices`` model's schedule, its headline price fields filled in, and the source."""
    refs = [m for m in models if m.values.get("price") == PRICE_GENAI]
    if raw is None and not refs:
        return None, {}
    schedules: dict[str, PriceSchedule] = {}
    if raw is not None:
        if not isinstance(raw, Mapping) or not isinstance(raw.get("models"), Mapping):
            err("prices", "must be a mapping with source, data_version, snapshot_date, models")
            return None, {}
        extra = set(raw) - {"source", "data_version", "snapshot_date", "models"}
        for key in sorted(extra):
            err(f"prices.{key}", "unknown key; prices has source, data_version, snapshot_date, models")
        info = PriceInfo(str(raw.get("source", "")), str(raw.get("data_version", "")), raw.get("snapshot_date"))
        for model_id, sched in raw["models"].items():
            try:
                schedules[model_id] = PriceSchedule.from_json(sched, f"prices.models.{model_id}")
            except CatalogError as exc:
                err(f"prices.models.{model_id}", str(exc).split(": ", 1)[-1])
        # A model removed from the file leaves its schedule behind: it is dropped (to_document writes none).
        by_id = {m.id for m in refs}
        schedules = {k: v for k, v in schedules.items() if k in by_id}
        for m in refs:
            if m.id not in schedules:
                err(f"prices.models.{m.id}", "missing: the model takes its prices from genai-prices")
                continue
            schedules[m.id] = _fill_headline(m, schedules[m.id], info.snapshot_date)
        return info, schedules
    if price_data is None:
        from .genai import PriceData

        price_data = PriceData.installed()
    for m in refs:
        try:
            sched = price_data.schedule(m.values["price_model"])
        except CatalogError as exc:
            err(f"models[{m.id}].price_model", str(exc))
            continue
        schedules[m.id] = _fill_headline(m, sched, price_data.snapshot_date)
    return PriceInfo("genai-prices", price_data.data_version, price_data.snapshot_date), schedules


def _fill_headline(m: CatalogModel, sched: PriceSchedule, snapshot_date: str | None) -> PriceSchedule:
    """Apply the model's own price fields over ``sched`` and set its other headline price fields from the set in
    force on the snapshot date. A price field is the model's own when ``price_overrides`` names it or its value
    differs from the headline genai-prices gives (written in the file, or edited in an archived copy)."""
    values = m.values
    current = _headline(sched, snapshot_date)
    own = set(values.get("price_overrides") or ())
    for f, rate_key in PRICE_FIELDS.items():
        if f in values and f not in own:
            rate = getattr(current, rate_key)
            if rate is None or rate.base != float(values[f]):
                own.add(f)
    if own:
        values["price_overrides"] = [f for f in PRICE_FIELDS if f in own]
        fixed = {PRICE_FIELDS[f]: Rate(float(values[f])) for f in values["price_overrides"] if f in values}
        sched = PriceSchedule([(cond, ps._replace(**fixed)) for cond, ps in sched.entries])
        current = _headline(sched, snapshot_date)
    for f, rate_key in PRICE_FIELDS.items():
        rate = getattr(current, rate_key)
        if f not in own and rate is not None:
            values[f] = rate.base
    return sched


def _headline(sched: PriceSchedule, snapshot_date: str | None) -> Any:
    import datetime as dt

    if snapshot_date:
        return sched.at(dt.datetime.combine(dt.date.fromisoformat(snapshot_date), dt.time(12)))
    # No date: the newest date-started set (daily windows are surcharges or discounts, not the headline).
    return next(ps for cond, ps in reversed(sched.entries) if cond is None or "from_date" in cond)


_BUILTIN: Catalog | None = None
