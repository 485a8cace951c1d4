"""Write src/unhardcoded/catalog/builtin_prices.json: the built-in catalog's price schedules from genai-prices.

    python scripts/build_prices.py [--date YYYY-MM-DD]

Each built-in model with ``price: genai-prices`` is looked up by its exact ``price_model`` in the
installed genai-prices snapshot; the file records the package version and the snapshot date. A
test rebuilds it and checks it equal, and checks every price against ``genai_prices.calc_price``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from unhardcoded.catalog.genai import PriceData
from unhardcoded.catalog.model import PRICE_GENAI, builtin_document

OUT = Path(__file__).resolve().parents[1] / "src" / "unhardcoded" / "catalog" / "builtin_prices.json"


def build(snapshot_date: str) -> dict[str, object]:
    data = PriceData.installed()
    models = {}
    for m in builtin_document(with_prices=False)["models"]:
        if m.get("price") == PRICE_GENAI:
            models[m["id"]] = data.schedule(m["price_model"], f"models[{m['id']}]").to_json()
    return {
        "source": "genai-prices",
        "data_version": data.data_version,
        "snapshot_date": snapshot_date,
        "models": models,
    }


def render(doc: dict[str, object]) -> str:
    """Sorted JSON, one model a line, so a price change is a one-line diff."""
    head = {k: v for k, v in doc.items() if k != "models"}
    lines = [json.dumps(head, sort_keys=True)[:-1] + ', "models": {']
    models = doc["models"]
    assert isinstance(models, dict)
    items = [f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(models.items())]
    return "\n".join(lines) + "\n" + ",\n".join(items) + "\n}}\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--date", default=dt.date.today().isoformat(), help="snapshot date to record (default: today)")
    args = ap.parse_args()
    OUT.write_text(render(build(args.date)), encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
