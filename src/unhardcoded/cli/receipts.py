"""Subcommands over recorded receipts: `receipt` (show one), `replay` (decide it again today), `rollup` (cost vs baseline)."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any, TextIO

from ..errors import UnhardcodedError
from ..receipts.stores import ROLLUP_KEYS, ReceiptQuery, open_store
from . import UsageError, load_catalog_arg, print_json
from .sources import add_source_arguments, source_from_args, store_help

if TYPE_CHECKING:
    from . import Subcommands


class NotFoundError(UnhardcodedError):
    """No receipt or workflow has the id asked for."""


def add_commands(sub: Subcommands) -> None:
    p = sub.add_parser("receipt", help="show a request's receipt (or a workflow's) as a card or JSON")
    p.add_argument("id", metavar="REQUEST_ID", help="a request id (X-Unhardcoded-Request-Id) or a workflow id")
    add_source_arguments(p)
    p.add_argument("--json", action="store_true", help="print the receipt as JSON (unhardcoded.receipt/v1)")
    p.add_argument(
        "--verify",
        action="store_true",
        help="check the router's signature instead of showing the receipt: exit 0 verified, 1 invalid or unsigned",
    )
    p.add_argument(
        "--public-key",
        metavar="FILE",
        action="append",
        default=[],
        help="with --verify: the router's public key (PEM), or a directory of *.pub; repeat for retired keys",
    )
    p.set_defaults(run=cmd_receipt)

    p = sub.add_parser(
        "replay",
        help="decide a recorded request again on today's catalog (exit 1 when the decision differs); with --since "
        "alone, every decision since then under a new policy and/or catalog: the impact report",
    )
    p.add_argument("id", metavar="REQUEST_ID", nargs="?", help="the request to replay (or --all, or --since alone)")
    p.add_argument("--all", action="store_true", help="replay every recorded decision (narrow with --since)")
    p.add_argument(
        "--since",
        metavar="DURATION_OR_ISO",
        help="decisions since 7d, 24h, 30m, ... or an ISO date/time; without REQUEST_ID or --all: the impact report",
    )
    p.add_argument(
        "--catalog",
        metavar="FILE",
        help="today's catalog (default: $UNHARDCODED_CATALOG, else the last `catalog update`, else the built-in)",
    )
    p.add_argument(
        "--policy",
        metavar="FILE",
        help="impact report: decide the decisions recorded under this policy's name with it (default: each "
        "decision's own recorded policy)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--store", metavar="URL", help=store_help())
    where.add_argument(
        "--processor",
        metavar="URL",
        help="impact report: ask a running `unhardcoded processor` (POST /x/impact; query token from "
        "$UNHARDCODED_PROCESSOR_TOKEN)",
    )
    p.add_argument(
        "--live",
        choices=("recorded", "now", "ignore"),
        default="recorded",
        help="live state today's decision reads: the snapshot recorded on the decision (default), this process's "
        "live state (now), or none (ignore)",
    )
    p.add_argument("--json", action="store_true", help="print the comparison (or the impact report) as JSON")
    p.add_argument(
        "--fail-on-change", action="store_true", help="impact report: exit 1 when any decision picks another model"
    )
    p.set_defaults(run=cmd_replay)

    p = sub.add_parser(
        "rollup",
        help="decisions, fallback rate, cost and savings against the baseline, per policy, workflow, model or client",
    )
    p.add_argument("--by", choices=ROLLUP_KEYS, default="policy", help="group by (default: policy)")
    p.add_argument("--since", metavar="DURATION_OR_ISO", help="only decisions since 7d, 24h, ... or an ISO date")
    p.add_argument("--store", metavar="URL", help=store_help())
    p.add_argument("--json", action="store_true", help="print rows as JSON")
    p.set_defaults(run=cmd_rollup)


def cmd_receipt(args: argparse.Namespace) -> int:
    from ..receipts.render import render_receipt, render_workflow

    if not args.id.strip():
        raise UsageError("REQUEST_ID is empty")
    if args.public_key and not args.verify:
        raise UsageError("--public-key goes with --verify")
    if args.verify:
        return _verify(args)
    source = source_from_args(args)
    receipt = source.receipt(args.id)
    if receipt is not None:
        if args.json:
            print_json(receipt.to_json_dict())
        else:
            print(render_receipt(receipt))
        return 0
    workflow = source.workflow(args.id)
    if workflow is not None:
        if args.json:
            print_json(workflow.model_dump(mode="json", by_alias=True))
        else:
            print(render_workflow(workflow))
        return 0
    raise NotFoundError(f"no receipt or workflow {args.id!r} in {source.description}")


def _verify(args: argparse.Namespace) -> int:
    """``receipt ID --verify``: the signature's status, checked here with the public keys given (the source is not
    trusted to say it): one line per receipt, exit 0 only when every one is verified."""
    from ..receipts.verify import PublicKeys, verify_receipt

    if not args.public_key:
        raise UsageError("--verify needs the router's public key: --public-key FILE (repeatable)")
    keys = PublicKeys.load(args.public_key)
    source = source_from_args(args)
    receipt = source.receipt(args.id)
    if receipt is not None:
        receipts = [receipt]
    else:
        workflow = source.workflow(args.id)
        if workflow is None:
            raise NotFoundError(f"no receipt or workflow {args.id!r} in {source.description}")
        receipts = list(workflow.nodes)
        if not receipts:
            raise NotFoundError(f"workflow {args.id!r} in {source.description} has no decisions to verify")
    checks = [(r.request_id, verify_receipt(r, keys)) for r in receipts]
    if args.json:
        print_json([{"request_id": request_id, "signature": c.to_json_dict()} for request_id, c in checks])
    else:
        for request_id, check in checks:
            print(f"{request_id}: {check.line()}")
    return 0 if all(c.status == "verified" for _, c in checks) else 1


def _progress(stream: TextIO, done: int, total: int) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    stream.write(f"\rreplaying [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done >= total:
        stream.write("\n")
    stream.flush()


def cmd_replay(args: argparse.Namespace) -> int:
    from ..receipts.render import render_replay
    from ..receipts.replay import ReplayError, parse_since, replay_from_store, replay_receipt

    if args.all and args.id:
        raise UsageError("give a REQUEST_ID or --all, not both")
    if not args.all and not args.id:
        if not args.since:
            raise UsageError("give a REQUEST_ID to replay, --all, or --since DURATION for the impact report")
        return _impact(args)
    impact_only = [f for f, v in (("--policy", args.policy), ("--processor", args.processor)) if v]
    if args.fail_on_change:
        impact_only.append("--fail-on-change")
    if impact_only:
        raise UsageError(f"{', '.join(impact_only)}: only for the impact report (--since without REQUEST_ID or --all)")
    if args.since and not args.all:
        raise UsageError("--since goes with --all")
    since = parse_since(args.since) if args.since else None
    today = load_catalog_arg(args.catalog)
    store = open_store(args.store, create=False)
    try:
        if not args.all:
            from ..router.live import LiveState

            result = replay_from_store(store, args.id, today, live=args.live, live_now=LiveState())
            if args.json:
                print_json(result.to_json_dict())
            else:
                print(render_replay(result))
            return 0 if result.same else 1

        query = ReceiptQuery(since=since, limit=None)
        total = store.count(query)
        tty = sys.stderr.isatty()
        same = differ = 0
        skipped: Counter[str] = Counter()
        differing: list[dict[str, Any]] = []
        page, offset = 500, 0
        done = 0
        while offset < total:
            batch = store.query(ReceiptQuery(since=since, limit=page, offset=offset))
            if not batch:
                break
            offset += len(batch)
            for receipt in batch:
                try:
                    result = replay_receipt(store, receipt, today, live=args.live)
                except ReplayError as exc:
                    skipped[str(exc).split(";")[0].split(" in ")[0]] += 1
                else:
                    if result.same:
                        same += 1
                    else:
                        differ += 1
                        differing.append(
                            {
                                "request_id": receipt.request_id,
                                "policy": receipt.policy.name,
                                "winner": {"recorded": result.winner_then, "today": result.winner_now},
                                "rejections_changed": len(result.rejection_changes),
                            }
                        )
                done += 1
                if tty and (done % 25 == 0 or done == total):
                    _progress(sys.stderr, done, total)
        summary = {
            "since": since.isoformat() if since else None,
            "replayed": same + differ,
            "same": same,
            "differ": differ,
            "skipped": sum(skipped.values()),
            "skipped_reasons": dict(skipped),
            "differing": differing,
        }
        if args.json:
            print_json(summary)
        else:
            for d in differing:
                print(
                    f"differs   {d['request_id']}  {d['policy']}  winner {d['winner']['recorded']} → {d['winner']['today']}"
                    f"  ({d['rejections_changed']} rejection changes)"
                )
            scope = f" since {since.isoformat(timespec='seconds')}" if since else ""
            line = f"replayed {same + differ} decisions{scope}: {same} same, {differ} differ"
            if skipped:
                line += (
                    f", {sum(skipped.values())} skipped ("
                    + "; ".join(f"{n}× {why}" for why, n in skipped.items())
                    + ")"
                )
            print(line)
        return 1 if differ else 0
    finally:
        store.close()


def _impact(args: argparse.Namespace) -> int:
    """``replay --since``: every decision of the window decided again; exit 1 with --fail-on-change when any
    decision picks another model."""
    import os

    from ..policy import load_policy_file
    from ..receipts.impact import ImpactReport, measure_impact
    from ..receipts.render import render_impact
    from ..receipts.replay import parse_since
    from . import CATALOG_ENV

    since = parse_since(args.since)
    catalog = load_catalog_arg(args.catalog)
    policy = load_policy_file(args.policy, catalog) if args.policy else None
    if args.processor:
        from ..processor.client import ProcessorSource

        body: dict[str, Any] = {"since": args.since}
        if policy is not None:
            body["policy"] = json.loads(policy.canonical)
        if args.catalog or os.environ.get(CATALOG_ENV):
            body["catalog"] = catalog.to_document()
        report = ImpactReport.model_validate(ProcessorSource(args.processor).impact(body))
    else:
        store = open_store(args.store, create=False)
        try:
            report = measure_impact(store, catalog, since, policy=policy)
        finally:
            store.close()
    if args.json:
        print_json(report.to_json_dict())
    else:
        print(render_impact(report))
    return 1 if args.fail_on_change and report.differ else 0


def cmd_rollup(args: argparse.Namespace) -> int:
    from ..receipts.render import render_rollup
    from ..receipts.replay import parse_since

    since = parse_since(args.since) if args.since else None
    store = open_store(args.store, create=False)
    try:
        rows = store.rollup(args.by, since)
    finally:
        store.close()
    if args.json:
        print_json(
            {"by": args.by, "since": since.isoformat() if since else None, "rows": [r.to_json_dict() for r in rows]}
        )
    else:
        print(render_rollup(rows, args.by))
    return 0
