"""`unhardcoded catalog show|validate|diff|update`: the model catalog, its prices and their source."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
from typing import TYPE_CHECKING, Any

from . import UsageError, print_json

if TYPE_CHECKING:
    from ..catalog import Catalog
    from . import Subcommands

_VERSION = re.compile(r"^[0-9a-f]{16}$")


def add_commands(sub: Subcommands) -> None:
    p = sub.add_parser("catalog", help="show, validate, compare and update the model catalog and its prices")
    csub = p.add_subparsers(dest="catalog_command", metavar="ACTION")
    csub.required = True

    show = csub.add_parser("show", help="the catalog in use: models, prices, where each price comes from")
    show.add_argument("--catalog", metavar="FILE", help="a catalog file (default: the catalog commands use)")
    show.add_argument("--json", action="store_true", help="the catalog document with its version and source")
    show.set_defaults(run=cmd_show)

    val = csub.add_parser("validate", help="check a catalog file; exit 2 naming the first problems")
    val.add_argument("file", metavar="FILE")
    val.add_argument("--json", action="store_true")
    val.set_defaults(run=cmd_validate)

    diff = csub.add_parser("diff", help="models added and removed, every changed field old -> new")
    for name in ("a", "b"):
        diff.add_argument(name, metavar=name.upper(), help="a catalog file, an archived version, or `builtin`")
    diff.add_argument("--json", action="store_true")
    diff.set_defaults(run=cmd_diff)

    up = csub.add_parser(
        "update",
        help="refresh prices from genai-prices (its live data when reachable, else the installed snapshot) "
        "into a new archived version, the default catalog from then on",
    )
    up.add_argument("--catalog", metavar="FILE", help="the catalog to price (default: the built-in catalog's models)")
    up.add_argument("--url", metavar="URL", help="price data URL (default: $UNHARDCODED_PRICES_URL or genai-prices')")
    up.add_argument("--offline", action="store_true", help="use the installed genai-prices snapshot, no fetch")
    up.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds to wait for the data (10)")
    up.add_argument("--json", action="store_true")
    up.set_defaults(run=cmd_update)


# -- show -------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _price_origin(values: dict[str, Any]) -> str:
    if values.get("price") == "genai-prices":
        own = values.get("price_overrides") or []
        return f"genai-prices {values['price_model']}" + (f" (own: {', '.join(own)})" if own else "")
    return "catalog"


def cmd_show(args: argparse.Namespace) -> int:
    from ..catalog.archive import default_catalog

    catalog, origin = default_catalog(args.catalog)
    prices = catalog.prices
    if args.json:
        print_json(
            {
                "version": catalog.version,
                "source": origin,
                "prices": prices._asdict() if prices is not None else None,
                "document": catalog.to_document(),
            }
        )
        return 0
    print(f"catalog {catalog.version} · {len(catalog)} models · {origin}")
    if prices is not None:
        date = f" · snapshot {prices.snapshot_date}" if prices.snapshot_date else ""
        print(f"prices  {prices.data_version}{date}")
    else:
        print("prices  every price is the catalog's own")
    rows = [("model", "provider", "kind", "in $/M", "cached", "out $/M", "tiers", "prices from")]
    for m in catalog.models:
        v = m.values
        sched = catalog.schedule(m.id)
        tiered = any(
            r is not None and r.tiers for _, ps in sched.entries for r in (ps.input, ps.output, ps.cached_input)
        )
        extra = "tiers" if tiered else ""
        if len(sched.entries) > 1:
            extra = (extra + "+" if extra else "") + "dated"
        rows.append(
            (
                m.id,
                m.provider,
                v.get("kind", "chat"),
                _fmt(v.get("price_input_per_mtok")),
                _fmt(v.get("price_cached_input_per_mtok")),
                _fmt(v.get("price_output_per_mtok")),
                extra or "-",
                _price_origin(v),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    print("capabilities, scores, regions and latencies are the catalog's own values")
    return 0


# -- validate ---------------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    from ..catalog import Catalog

    catalog = Catalog.from_file(args.file)  # a CatalogError is exit 2 with the reason
    by_ref = sum(1 for m in catalog.models if m.values.get("price") == "genai-prices")
    if args.json:
        print_json(
            {
                "valid": True,
                "file": args.file,
                "version": catalog.version,
                "models": len(catalog),
                "priced_by_genai_prices": by_ref,
                "prices": catalog.prices._asdict() if catalog.prices is not None else None,
            }
        )
    else:
        print(
            f"{args.file}: valid · version {catalog.version} · {len(catalog)} models, {by_ref} priced by genai-prices"
        )
    return 0


# -- diff -------------------------------------------------------------------------------------------


def _resolve(ref: str) -> Catalog:
    from ..catalog import Catalog
    from ..catalog.archive import CatalogArchive

    if ref == "builtin":
        return Catalog.builtin()
    if os.path.exists(ref):
        return Catalog.from_file(ref)
    if _VERSION.match(ref):
        return CatalogArchive().load(ref)
    raise UsageError(f"{ref!r} is neither a catalog file, an archived catalog version (16 hex digits) nor builtin")


def cmd_diff(args: argparse.Namespace) -> int:
    from ..catalog.diff import diff_catalogs

    d = diff_catalogs(_resolve(args.a), _resolve(args.b))
    if args.json:
        print_json(d)
        return 0
    print(f"catalog {d['from']} → {d['to']}")
    if d["prices"] is not None:
        old, new = d["prices"]["old"], d["prices"]["new"]
        print(f"prices   {_source(old)} → {_source(new)}")
    for m in d["added"]:
        print(f"added    {m}")
    for m in d["removed"]:
        print(f"removed  {m}")
    for c in d["changed"]:
        if c["field"] == "prices":
            print(f"changed  {c['model']}.prices (schedule: tiers or dated prices)")
        else:
            print(f"changed  {c['model']}.{c['field']}: {_fmt(c['old'])} → {_fmt(c['new'])}")
    if not (d["added"] or d["removed"] or d["changed"] or d["prices"]):
        print("no change")
    return 0


def _source(p: dict[str, Any] | None) -> str:
    if p is None:
        return "own prices"
    return str(p["data_version"]) + (f" of {p['snapshot_date']}" if p.get("snapshot_date") else "")


# -- update -----------------------------------------------------------------------------------------


def cmd_update(args: argparse.Namespace) -> int:
    from ..catalog import Catalog
    from ..catalog.archive import CatalogArchive, default_catalog
    from ..catalog.diff import diff_catalogs
    from ..catalog.genai import DEFAULT_FEED_URL, FEED_URL_ENV, PriceData
    from ..catalog.model import builtin_document
    from ..errors import CatalogError

    if args.catalog:
        from .._documents import read_document

        doc = dict(read_document(args.catalog, CatalogError))
        source = args.catalog
    else:
        doc = builtin_document(with_prices=False)
        source = "built-in models"
    doc.pop("prices", None)  # re-priced from the data below
    today = dt.datetime.now(dt.UTC).date().isoformat()
    url = args.url or os.environ.get(FEED_URL_ENV) or DEFAULT_FEED_URL
    fetched_from: str | None = None
    fallback_reason: str | None = None
    data: PriceData | None = None
    if not args.offline:
        try:
            data = PriceData.fetch(url, today, timeout=args.timeout)
            fetched_from = url
        except OSError as exc:  # unreachable, refused, timed out, HTTP error
            fallback_reason = f"{url} not reachable ({exc})"
    if data is None:
        installed = PriceData.installed()
        data = PriceData(list(installed.providers.values()), installed.data_version, today)
    previous, _ = default_catalog(None) if not args.catalog else (Catalog.builtin(), "")
    catalog = Catalog.from_document(doc, source=f"<catalog update of {source}>", price_data=data)
    archive = CatalogArchive()
    note = {
        "prices": data.data_version,
        "fetched_from": fetched_from,
        "updated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "catalog": source,
    }
    path = archive.mark_updated(catalog, note)
    changes = diff_catalogs(previous, catalog)
    report = {
        "version": catalog.version,
        "archived": str(archive.path_for(catalog.version)),
        "default": str(path),
        "prices": catalog.prices._asdict() if catalog.prices is not None else None,
        "live": fetched_from is not None,
        "fallback_reason": fallback_reason,
        "changes": {k: changes[k] for k in ("from", "added", "removed", "changed", "prices")},
    }
    if args.json:
        print_json(report)
        return 0
    how = f"live data from {fetched_from}" if fetched_from else "the installed genai-prices snapshot"
    if fallback_reason:
        print(f"note     {fallback_reason}; using {how}")
    print(f"catalog  {catalog.version} · {len(catalog)} models · prices {data.data_version} of {today} ({how})")
    print(f"archived {report['archived']}; the default catalog from now on")
    n = len(changes["changed"])
    print(
        f"changes  vs {changes['from']}: {n} field(s) changed, {len(changes['added'])} added, "
        f"{len(changes['removed'])} removed (unhardcoded catalog diff {changes['from']} {catalog.version})"
    )
    return 0
