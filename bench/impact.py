"""How fast the impact report decides stored decisions again, on one core, against the target of 20,000 receipts/s.

A store of N receipts is recorded first, through the real path: the demo's workflow nodes (tickets of varied
lengths, so no two requests cost the same) routed by the real router over simulated providers on loopback, under the
shipped support and triage policies, on the built-in catalog (``unhardcoded.demo.record_history``; about 2 ms a
request). The timed part is :func:`unhardcoded.receipts.impact.measure_impact` over all of them: reading the pages
from SQLite, deciding each again, pricing before and after, building the report. Three cases:

- ``recorded``: each decision under its own recorded policy, on the same catalog (nothing changes);
- ``tightened``: the triage policy with its price ceiling at 0.595 (its usual winner, mistral-small-2603 at $0.60 per 1M output tokens, is rejected: most triage decisions change);
- ``new catalog``: every output price 10% higher (a catalog the policies compile against anew).

Rates are receipts per second of this process's CPU time (the work is one thread: one core), and the median of
``--rounds``; the wall-clock rate of the same rounds is printed beside it. ``reading`` is the store's pages alone.

    python bench/impact.py [--receipts 20000] [--rounds 5] [--store PATH]   # PATH: keep (or reuse) the store
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from unhardcoded.catalog import Catalog
from unhardcoded.demo import record_history
from unhardcoded.policy import load_policy, load_policy_file
from unhardcoded.policy.builtin import builtin_policy_dir
from unhardcoded.receipts import open_store
from unhardcoded.receipts.impact import PAGE, measure_impact
from unhardcoded.receipts.stores import HistoryQuery, ReceiptQuery

TARGET = 20_000


def build(path: Path, n: int) -> None:
    store = open_store(str(path))
    try:
        have = store.count(ReceiptQuery(limit=None))
        if have >= n:
            print(f"store {path}: {have} receipts (reused)")
            return
        t0 = time.perf_counter()
        record_history(store, n - have, seed=have + 1)
        print(f"store {path}: recorded {n - have} demo requests in {time.perf_counter() - t0:.1f} s")
    finally:
        store.close()


def timed(fn, rounds: int) -> tuple[float, float, int]:
    """Median CPU and wall seconds of ``rounds`` calls, and what the last one counted."""
    cpu, wall, counted = [], [], 0
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        counted = fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall), counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receipts", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--store", help="the store file to record into (or reuse); default: a temporary one")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.store) if args.store else Path(tmp) / "receipts.db"
        build(path, args.receipts)
        catalog = Catalog.builtin()
        triage = (builtin_policy_dir() / "triage.yaml").read_text(encoding="utf-8")
        tight = load_policy(triage.replace("value: 2\n", "value: 0.595\n"), catalog)
        assert tight.fingerprint != load_policy_file(builtin_policy_dir() / "triage.yaml", catalog).fingerprint
        doc = catalog.to_document()
        for model in doc["models"]:
            model["price_output_per_mtok"] = round(model["price_output_per_mtok"] * 1.1, 6)
        dearer = Catalog.from_document(doc, source="dearer")
        since, until = datetime(1970, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(days=1)

        store = open_store(str(path), create=False)
        try:

            def reading() -> int:
                n, query = 0, HistoryQuery(since=since, until=until, limit=PAGE)
                while rows := store.history(query):
                    n += len(rows)
                    query = HistoryQuery(since=since, until=until, after=(rows[-1][0], rows[-1][1]), limit=PAGE)
                return n

            cases = {
                "reading": reading,
                "recorded": lambda: measure_impact(store, catalog, since, until=until).decisions,
                "tightened": lambda: measure_impact(store, catalog, since, until=until, policy=tight).decisions,
                "new catalog": lambda: measure_impact(store, dearer, since, until=until).decisions,
            }
            print(f"load average {os.getloadavg()[0]:.1f}; median of {args.rounds} rounds")
            print(f"\n{'case':<12} {'receipts':>9} {'cpu s':>8} {'receipts/s (cpu)':>17} {'receipts/s (wall)':>18}")
            for name, fn in cases.items():
                cpu, wall, n = timed(fn, args.rounds)
                print(f"{name:<12} {n:>9} {cpu:>8.3f} {n / cpu:>17,.0f} {n / wall:>18,.0f}")
            changed = measure_impact(store, catalog, since, until=until, policy=tight)
            print(
                f"\ntightened: {changed.changed} of {changed.decisions} decisions change; "
                f"target {TARGET:,} receipts/s decided again per core; load average {os.getloadavg()[0]:.1f}"
            )
        finally:
            store.close()


if __name__ == "__main__":
    main()
