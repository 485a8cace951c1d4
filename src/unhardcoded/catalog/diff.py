"""What changed between two catalogs: models added and removed, every changed field with old and new value."""

from __future__ import annotations

from typing import Any

from .model import Catalog


def diff_catalogs(a: Catalog, b: Catalog) -> dict[str, Any]:
    """``{added, removed, changed, prices}``: ``changed`` lists ``{model, field, old, new}`` in catalog order (a
    model's price schedule counts as the field ``prices``, so a tier or dated price that moved shows too);
    ``prices`` is the change of the price source, ``None`` when it is the same."""
    a_ids = set(a.model_ids)
    b_ids = set(b.model_ids)
    changed: list[dict[str, Any]] = []
    for m in b.models:
        if m.id not in a_ids:
            continue
        old = a.model(m.id).values
        new = m.values
        changed.extend(
            {"model": m.id, "field": field, "old": old.get(field), "new": new.get(field)}
            for field in sorted(set(old) | set(new))
            if old.get(field) != new.get(field)
        )
        if "genai-prices" not in (old.get("price"), new.get("price")):
            continue  # a catalog's own prices are its price fields, listed above
        old_sched = a.schedule(m.id).to_json()
        new_sched = b.schedule(m.id).to_json()
        if old_sched != new_sched:
            changed.append({"model": m.id, "field": "prices", "old": old_sched, "new": new_sched})
    source = None
    if a.prices != b.prices:
        source = {
            "old": a.prices._asdict() if a.prices is not None else None,
            "new": b.prices._asdict() if b.prices is not None else None,
        }
    return {
        "from": a.version,
        "to": b.version,
        "added": [i for i in b.model_ids if i not in a_ids],
        "removed": [i for i in a.model_ids if i not in b_ids],
        "changed": changed,
        "prices": source,
    }
