"""How fast the receipts processor takes spans in and writes receipts out, and how much memory it holds when waiting.

The processor is the real `unhardcoded processor` command in a subprocess on
loopback, with a SQLite store in a temporary directory. Decisions come from
the real engine (about 12 rejection events each, 1-3 attempt spans), encoded
by the real OTLP encoder into exports of about 512 spans (the SDK's batch).

Throughput: every export is sent and acknowledged (so its spans are in the
spool), and the clock stops when every receipt is written. Spans/s per core
divides by the CPU seconds the processor process used (user + system), so the
sender's work on the other core does not count. Two arrival orders: as the SDK
exports them (a decision's spans mostly in one export), and scattered over the
whole run (almost every receipt waits for later exports). Each figure is the
median of --rounds runs. Targets: >= 10,000 spans/s per core over OTLP/HTTP
and OTLP/gRPC.

Verification (this tree only): signed decisions sent to a processor holding the public key, then every receipt
read back once (``GET /receipts/{id}``): reads per second per core of the processor's CPU, each read verifying
the signature; and ``verify_receipt`` alone, in this process. Verifying is never on the ingest path, so the
throughput figures above are what ingest costs whether spans are signed or not.

Memory: 100,000 decision spans whose attempt spans never come (so every
receipt stays pending for the wait window), then the processor's RSS. Target:
<= 300 MB.

    python bench/processor.py [--decisions 4000] [--pending 100000] [--rounds 3] [--against OTHER]

With --against, every throughput run is paired with a run of the processor
from another tree (its root or its ``src`` directory; that ``src`` is put first
on PYTHONPATH, as this tree's is for its own runs), back to back, the two
taking turns at going first, and
each row also prints the other tree's median and the geometric mean of the
pairs' ratios: on a shared VM only such same-sitting pairs tell a few percent
apart.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import grpc  # noqa: E402
import httpx  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

import compare  # noqa: E402  (bench/ is on the path when a script runs)
from fixtures import span_layout as L  # noqa: E402
from processor_fixtures import ProcessorProcess, decisions_with_spans  # noqa: E402
from unhardcoded.semconv import attributes as A  # noqa: E402

TARGET_SPANS_PER_CORE = 10_000
TARGET_RSS_MB = 300
EXPORT_SPANS = 512


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def exports(spans: list[Any], seed: int) -> list[bytes]:
    spans = list(spans)
    return [L.otlp_bytes(spans[i : i + EXPORT_SPANS]) for i in range(0, len(spans), EXPORT_SPANS)]


def wait_finished(p: ProcessorProcess, receipts: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if p.stats()["receipts_finished"] >= receipts:
            return
        time.sleep(0.02)
    raise SystemExit(f"only {p.stats()['receipts_finished']} of {receipts} receipts written in {timeout_s}s")


def run_http(p: ProcessorProcess, payloads: list[bytes]) -> None:
    with httpx.Client(timeout=60) as client:
        for body in payloads:
            r = client.post(p.url + "/v1/traces", content=body, headers={"Content-Type": "application/x-protobuf"})
            if r.status_code != 200:
                raise SystemExit(f"export answered {r.status_code}: {r.text[:200]}")


def run_grpc(p: ProcessorProcess, payloads: list[bytes]) -> None:
    channel = grpc.insecure_channel(p.grpc_endpoint, options=[("grpc.max_send_message_length", 64 << 20)])
    export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
    for body in payloads:
        export(body, timeout=60)
    channel.close()


def throughput(
    transport: str, payloads: list[bytes], spans: int, receipts: int, tmp: Path, src: Path
) -> tuple[float, float]:
    tmp.mkdir(parents=True, exist_ok=True)
    env = compare.child_env(src)
    p = ProcessorProcess(
        str(tmp / "receipts.db"), "--no-access-log", "--wait-window", "5", env=env, log=tmp / "processor.log"
    ).start()
    try:
        send = run_http if transport == "http" else run_grpc
        send(p, payloads[:1])  # warm up: imports, first connection, first receipts
        wait_finished(p, 1)
        warm_receipts = p.stats()["receipts_finished"]
        cpu0, t0 = cpu_seconds(p.proc.pid), time.perf_counter()
        send(p, payloads[1:])
        wait_finished(p, receipts)
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(p.proc.pid) - cpu0
        measured = spans * (receipts - warm_receipts) / receipts  # the spans of the timed exports, near enough
        return measured / cpu, measured / wall
    finally:
        p.stop()


def pending_payloads(n: int, seed: int) -> list[bytes]:
    """``n`` decision spans (copies of real ones, each its own trace and request) whose attempts never come."""
    _, spans = decisions_with_spans(200, seed=seed, hops=1)
    template = ExportTraceServiceRequest.FromString(
        L.otlp_bytes([s for s in spans if A.UNHARDCODED_ATTEMPT_INDEX not in s.attributes])
    )
    originals = [s for rs in template.resource_spans for ss in rs.scope_spans for s in ss.spans]
    rng = random.Random(seed)
    out, batch = [], ExportTraceServiceRequest()
    scope = None
    for i in range(n):
        if scope is None:
            rs = batch.resource_spans.add()
            rs.resource.CopyFrom(template.resource_spans[0].resource)
            scope = rs.scope_spans.add()
        span = scope.spans.add()
        span.CopyFrom(originals[i % len(originals)])
        span.trace_id = rng.randbytes(16)
        span.span_id = rng.randbytes(8)
        for kv in span.attributes:
            if kv.key == A.UNHARDCODED_REQUEST_ID:
                kv.value.string_value = f"req_pending_{i:07d}"
        if len(scope.spans) >= EXPORT_SPANS:
            out.append(batch.SerializeToString())
            batch, scope = ExportTraceServiceRequest(), None
    if scope is not None:
        out.append(batch.SerializeToString())
    return out


def memory(n: int, tmp: Path, src: Path) -> float:
    p = ProcessorProcess(
        str(tmp / "pending.db"),
        "--no-access-log",
        "--wait-window",
        "3600",
        "--max-pending-spans",
        str(n * 2),
        env=compare.child_env(src),
        log=tmp / "pending.log",
    ).start()
    try:
        run_http(p, pending_payloads(n, seed=9))
        deadline = time.monotonic() + 120
        while p.stats()["spans_pending"] < n and time.monotonic() < deadline:
            time.sleep(0.1)
        stats = p.stats()
        if stats["spans_pending"] < n:
            raise SystemExit(f"only {stats['spans_pending']} spans pending")
        return rss_mb(p.proc.pid)
    finally:
        p.stop()


def verification(n: int, tmp: Path) -> tuple[float, float, int]:
    """Reads per second per core of a processor verifying each receipt it answers; ``verify_receipt`` per second
    per core in this process; how many of the reads were ``verified``."""
    import random as _random

    from processor_fixtures import make_decision
    from unhardcoded._signature import PublicKeys, SigningKey
    from unhardcoded.receipts import rebuild_receipts, verify_receipt
    from unhardcoded.telemetry.signing import DecisionSigner

    key_file, pub_file = ROOT / "tests/fixtures/signing/fixture.key", ROOT / "tests/fixtures/signing/fixture.pub"
    signer = DecisionSigner(SigningKey.load(key_file))
    tp, exporter = L.provider("checkout")
    tracer = tp.get_tracer("unhardcoded")
    rng = _random.Random(11)
    ids = []
    for i in range(n):
        d = make_decision(rng, f"req_verify_{i:06d}")
        L.emit_decision(tracer, d, signer=signer)
        ids.append(d.request_id)
    spans = list(exporter.get_finished_spans())
    receipts = rebuild_receipts(L.otlp_bytes(spans)).receipts
    keys = PublicKeys.load([pub_file])
    t = time.process_time()
    for r in receipts:
        verify_receipt(r, keys)
    in_process = len(receipts) / (time.process_time() - t)
    p = ProcessorProcess(
        str(tmp / "verify.db"),
        "--no-access-log",
        "--wait-window",
        "0.5",
        "--public-key",
        str(pub_file),
        env=compare.child_env(compare.tree_src(ROOT)),
        log=tmp / "verify.log",
    ).start()
    try:
        run_http(p, exports(spans, 1))
        wait_finished(p, n)
        verified = 0
        with httpx.Client(base_url=p.url, timeout=30) as client:
            client.get(f"/receipts/{ids[0]}")  # warm up
            cpu0 = cpu_seconds(p.proc.pid)
            for request_id in ids:
                verified += client.get(f"/receipts/{request_id}").json()["signature"]["status"] == "verified"
            cpu = cpu_seconds(p.proc.pid) - cpu0
        return n / cpu, in_process, verified
    finally:
        p.stop()


def reference_loop_s() -> float:
    """CPU seconds for a fixed pure-Python loop: how fast this machine runs Python right now, to compare runs by."""
    t = time.process_time()
    total = 0
    for i in range(5_000_000):
        total += i
    return time.process_time() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--decisions", type=int, default=4000)
    ap.add_argument("--pending", type=int, default=100_000)
    ap.add_argument("--verify-reads", type=int, default=1000, help="signed receipts read back, each verified")
    ap.add_argument("--rounds", type=int, default=3, help="runs per transport and order; the median is reported")
    ap.add_argument(
        "--against", metavar="TREE", help="another tree (its root or its src directory): pair every run with one of it"
    )
    args = ap.parse_args()
    # Both trees' processors run with their src first on PYTHONPATH: an installed unhardcoded is neither.
    this = compare.tree_src(ROOT)
    that = compare.tree_src(args.against) if args.against else None
    print(f"making {args.decisions} decisions ...", file=sys.stderr)
    ds, spans = decisions_with_spans(args.decisions, seed=3)
    scattered = list(spans)
    random.Random(1).shuffle(scattered)
    orders = {
        # As an SDK's BatchSpanProcessor exports them: a decision's attempt spans end just before it, so
        # most receipts have all their spans in one export and a few are split across two.
        "sdk order": exports(spans, 1),
        # Every trace's spans scattered over the whole run: almost every receipt waits for spans from later
        # exports, and its earlier spans are read back from the spool.
        "scattered": exports(scattered, 1),
    }
    n_exports = len(orders["sdk order"])
    print(
        f"{len(spans)} spans in {n_exports} exports of <= {EXPORT_SPANS}; cores: {os.cpu_count()}; "
        f"median of {args.rounds} runs each; load average {os.getloadavg()[0]:.1f}; "
        f"reference loop {reference_loop_s():.2f} s CPU (smaller is a faster machine)"
    )
    print(f"this tree: {this.parent}  [{compare.git_head(this.parent)}]")
    if that is not None:
        print(f"against:   {that.parent}  [{compare.git_head(that.parent)}]")
    ok = True
    with tempfile.TemporaryDirectory(prefix="unhardcoded-bench-") as d:
        tmp = Path(d)
        for order, payloads in orders.items():
            for transport in ("http", "grpc"):
                runs: list[tuple[float, float]] = []
                others: list[tuple[float, float]] = []
                for i in range(args.rounds):
                    # The two trees take turns at going first, so neither always runs on a machine the other warmed.
                    for tree in (this, that) if i % 2 else (that, this):
                        if tree is None:
                            continue
                        name = f"{'o' if tree is that else ''}{order[:3]}{transport}{i}"
                        result = throughput(transport, payloads, len(spans), len(ds), tmp / name, tree)
                        (others if tree is that else runs).append(result)
                per_core = statistics.median(r[0] for r in runs)
                wall = statistics.median(r[1] for r in runs)
                verdict = "ok" if per_core >= TARGET_SPANS_PER_CORE else "BELOW TARGET"
                ok &= per_core >= TARGET_SPANS_PER_CORE
                print(
                    f"OTLP/{transport:<4} {order:<9}  {per_core:>9,.0f} spans/s per core (processor CPU)  {wall:>9,.0f} spans/s wall"
                    f"   target >= {TARGET_SPANS_PER_CORE:,}: {verdict}"
                )
                if others:
                    ratios = [r[0] / o[0] for r, o in zip(runs, others)]
                    geomean = math.exp(sum(map(math.log, ratios)) / len(ratios))
                    print(
                        f"  against {args.against}: {statistics.median(o[0] for o in others):>9,.0f} spans/s per core;"
                        f" this / that, paired: {geomean:.3f} (geometric mean), {sum(r > 1 for r in ratios)} of {len(ratios)} faster"
                    )
        reads, in_process, verified = verification(args.verify_reads, tmp)
        print(
            f"verification on read (GET /receipts/ID, --public-key): {reads:>7,.0f} reads/s per core (processor CPU), "
            f"{verified} of {args.verify_reads} verified; verify_receipt alone {in_process:,.0f}/s per core"
        )
        mb = memory(args.pending, tmp, this)
        verdict = "ok" if mb <= TARGET_RSS_MB else "OVER TARGET"
        ok &= mb <= TARGET_RSS_MB
        print(f"RSS at {args.pending:,} pending spans: {mb:,.0f} MB   target <= {TARGET_RSS_MB} MB: {verdict}")
    print(f"load average after: {os.getloadavg()[0]:.1f}; reference loop {reference_loop_s():.2f} s CPU")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
