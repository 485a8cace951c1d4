"""Subcommands of the router core: `fields`, `rank` (dry run), `fingerprint`, and `demo`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RequestError
from . import UsageError, load_catalog_arg, print_json

if TYPE_CHECKING:
    from . import Subcommands


def add_commands(sub: Subcommands) -> None:
    p = sub.add_parser("fields", help="list the catalog fields a policy rule may test")
    p.add_argument(
        "--catalog", metavar="FILE", help="catalog file (default: $UNHARDCODED_CATALOG or the built-in catalog)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=cmd_fields)

    p = sub.add_parser("rank", help="dry run: the would-be decision for a policy and request, no inference")
    p.add_argument("--policy", required=True, metavar="FILE", help="policy file (sigma-pol/v1, YAML or JSON)")
    p.add_argument("--catalog", metavar="FILE")
    p.add_argument("--request", metavar="FILE", help="an OpenAI chat-completions request body (JSON); - for stdin")
    p.add_argument("--json", action="store_true", help="print the would-be receipt (no attempts) as JSON")
    p.set_defaults(run=cmd_rank)

    p = sub.add_parser("demo", help="run a 5-node workflow on simulated providers and store its receipts")
    p.add_argument(
        "--store", metavar="URL", help="receipt store (default: $UNHARDCODED_STORE or the per-user SQLite file)"
    )
    p.add_argument("--json", action="store_true", help="print the workflow receipt as JSON")
    p.add_argument(
        "--history",
        type=int,
        metavar="N",
        help="instead: route N more demo requests (tickets of varied lengths) into the store, dated over the last "
        "7 days, for `replay --since 7d` to decide again",
    )
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("fingerprint", help="print a policy's fingerprint")
    p.add_argument("policy", metavar="POLICY_FILE")
    p.add_argument("--catalog", metavar="FILE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_fingerprint)


def cmd_fields(args: argparse.Namespace) -> int:
    catalog = load_catalog_arg(args.catalog)
    fields = list(catalog.fields.values())
    if args.json:
        rows = [
            {"name": f.name, "type": f.type, "unit": f.unit, "builtin": f.builtin, "description": f.description}
            for f in fields
        ]
        print_json({"catalog_version": catalog.version, "fields": rows})
        return 0
    width = max(len(f.name) for f in fields)
    for f in fields:
        unit = f" ({f.unit})" if f.unit else ""
        kind = "" if f.builtin else " [custom]"
        print(f"{f.name.ljust(width)}  {f.type:<8}  {f.description}{unit}{kind}")
    print(f"\ncatalog {catalog.source} · version {catalog.version} · {len(catalog)} models")
    return 0


DEFAULT_REQUEST = {"messages": [{"role": "user", "content": "Hello! Summarize our refund policy in two sentences."}]}


def _read_request(path: str | None) -> dict[str, Any]:
    if path is None:
        return DEFAULT_REQUEST
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RequestError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        request: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(f"{path}: line {exc.lineno}: invalid JSON: {exc.msg}") from None
    return request


def cmd_rank(args: argparse.Namespace) -> int:
    from ..policy import load_policy_file
    from ..receipts.model import Receipt
    from ..receipts.render import render_receipt
    from ..router import Router

    catalog = load_catalog_arg(args.catalog)
    policy = load_policy_file(args.policy, catalog)
    decision = Router(catalog).decide(policy, _read_request(args.request))
    receipt = Receipt.from_decision(decision)
    if args.json:
        print_json(receipt.to_json_dict())
    else:
        print(render_receipt(receipt))
    return 0


def cmd_fingerprint(args: argparse.Namespace) -> int:
    from ..policy import load_policy_file

    policy = load_policy_file(args.policy, load_catalog_arg(args.catalog))
    if args.json:
        print_json(
            {
                "name": policy.name,
                "fingerprint": policy.fingerprint,
                "schema": policy.schema_id,
                "canonical": policy.canonical,
            }
        )
    else:
        print(policy.fingerprint)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import record_history, run_demo

    if args.history is None:
        run_demo(args.store, as_json=args.json)
        return 0
    if args.json:
        raise UsageError("--history prints no receipt: leave out --json")
    if not 1 <= args.history <= 1_000_000:
        raise UsageError(f"--history {args.history}: expected a number of requests from 1 to 1000000")
    from ..receipts import open_store
    from ..receipts.stores import ReceiptQuery

    store = open_store(args.store)
    try:
        ids = record_history(store, args.history, seed=store.count(ReceiptQuery(limit=None)) + 1)
        print(f"recorded {len(ids)} demo requests in {store.location}, dated over the last 7 days")
    finally:
        store.close()
    return 0
