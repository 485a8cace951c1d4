"""The console's pages with 100,000 receipts in SQLite: how long ``/ui/`` takes to answer (target p50 < 100 ms).

A real processor (``unhardcoded processor``, a subprocess on loopback) serves a SQLite store holding ``--receipts``
receipts: ``--seed-receipts`` routed through the real router and rebuilt from their spans
(``unhardcoded.testing.bulk.generate``), then copied under new ids and spread over 30 days
(``bulk.replicate``). Each page is asked for ``--requests`` times in turn, one at a time; the script prints the
p50 and p95 of the answer times the client saw, against the target for ``/ui/``.

    python bench/console.py                      # 100,000 receipts (about two minutes to build)
    python bench/console.py --store /tmp/c.db    # build once, keep the file, reuse it next time
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

TARGET_P50_MS = 100.0


def build(path: Path, receipts: int, seed_receipts: int) -> None:
    from unhardcoded.receipts import ReceiptQuery, open_store
    from unhardcoded.testing.bulk import generate, replicate

    store = open_store(str(path))
    try:
        have = store.count()
        if have >= receipts:
            print(f"store {path}: {have} receipts already, reused")
            return
        started = time.perf_counter()
        seed_store = open_store(str(path.with_suffix(".seed.db")))
        try:
            generate(seed_store, seed_receipts, seed=100, failure_rate=0.2)
            seeds = seed_store.query(ReceiptQuery(limit=None))
        finally:
            seed_store.close()
        print(f"routed {len(seeds)} requests through the real router in {time.perf_counter() - started:.1f}s")
        batch: list = []
        for r in replicate(seeds, receipts - have, seed=1):
            batch.append((r, None))
            if len(batch) == 5000:
                store.put_many(batch)
                batch.clear()
        store.put_many(batch)
        print(f"store {path}: {store.count()} receipts, built in {time.perf_counter() - started:.1f}s")
    finally:
        store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(url: str, requests: int) -> list[float]:
    times = []
    with httpx.Client(timeout=30) as client:
        client.get(url)  # warm: first page cache fill, template compile
        for _ in range(requests):
            t0 = time.perf_counter()
            r = client.get(url)
            times.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                raise SystemExit(f"{url}: {r.status_code} {r.text[:200]}")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--receipts", type=int, default=100_000)
    ap.add_argument("--seed-receipts", type=int, default=2000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--store", type=Path, help="the SQLite file to build (or reuse); default a temporary one")
    args = ap.parse_args()
    tmp = None
    if args.store is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-console-")
        args.store = Path(tmp.name) / "receipts.db"
    build(args.store, args.receipts, args.seed_receipts)
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "unhardcoded.cli", "processor", "--port", str(port), "--no-grpc"),
            *("--store", str(args.store), "--no-access-log", "--log-level", "warning"),
        ],
        env=os.environ.copy(),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the processor did not start")
            time.sleep(0.1)
        print(f"\n{'page':<44} {'p50 ms':>8} {'p95 ms':>8}")
        results = {}
        for path in (
            "/ui/",
            "/ui/?policy=support&fallback=true",
            "/ui/?rule=data-residency",
            "/ui/?since=7d&client=support-bot",
            "/ui/?q=req_nobody_sent",
            "/ui/rollups?since=7d",
        ):
            times = measure(base + path, args.requests if "rollups" not in path else max(5, args.requests // 20))
            p50 = statistics.median(times)
            p95 = sorted(times)[max(0, int(len(times) * 0.95) - 1)]
            results[path] = p50
            print(f"{path:<44} {p50:>8.1f} {p95:>8.1f}")
        verdict = "meets" if results["/ui/"] < TARGET_P50_MS else "MISSES"
        print(
            f"\n/ui/ p50 {results['/ui/']:.1f} ms with {args.receipts} receipts: {verdict} the target (< {TARGET_P50_MS:.0f} ms)"
        )
    finally:
        proc.terminate()
        proc.wait(20)
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
