"""How fast receipts are rebuilt from OTLP protobuf, on one core, against the target of 20,000 spans/s per core.

Each decision is realistic: one decision span with 10 rejection events and
1-3 attempt spans (0-2 fallback hops). Spans are made by the real SDK and
encoded by the real OTLP encoder into ExportTraceServiceRequest payloads of
about 512 spans (the BatchSpanProcessor's default export batch); the timed part
is what a receipts processor does per payload: decode the bytes, read the
spans, rebuild the receipts. All decisions share one policy and catalog, as a
service's do: their rejection events repeat, and the rebuild reads a repeated
event once (the first pass, with that cache empty, is reported too).

    python bench/rebuild.py [--decisions 3000] [--rounds 5]

The reference point: the OpenTelemetry Collector's published sizing is about
10-15k spans/s per core for forwarding alone, so rebuilding has to keep up
with more than that to never be the bottleneck of a pipeline.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the span layout written out by hand (fixtures/span_layout.py)

from fixtures import span_layout as L  # noqa: E402
from unhardcoded.catalog import Catalog  # noqa: E402
from unhardcoded.policy import validate_policy  # noqa: E402
from unhardcoded.receipts import rebuild_receipts  # noqa: E402
from unhardcoded.router.decision import Attempt, Decision, FallbackHop  # noqa: E402
from unhardcoded.router.engine import CompiledPolicy, estimate_cost, price  # noqa: E402
from unhardcoded.router.features import RequestFeatures  # noqa: E402
from workload import POLICY  # noqa: E402  (bench/ is on the path when a script runs)

TARGET_SPANS_PER_S = 20_000
COLLECTOR_FORWARDING = "10-15k"
BATCH_SPANS = 512


def make_decisions(n: int, seed: int = 1) -> list[Decision]:
    rng = random.Random(seed)
    catalog = Catalog.builtin()
    compiled = CompiledPolicy(validate_policy(POLICY, catalog), catalog)
    out = []
    for i in range(n):
        d = compiled.decide(
            RequestFeatures(input_tokens=rng.randint(200, 4000), output_tokens=512, uses_tools=True),
            request_id=f"req_{i:016x}",
        )
        assert len(d.rejected) == 10, len(d.rejected)
        plan = [d.selected.model, *d.fallback_chain]
        hops = rng.choice([0, 0, 0, 1, 2])
        for h in range(hops):
            d.attempts.append(
                Attempt(
                    index=h,
                    model=plan[h],
                    provider=catalog.model(plan[h]).provider,
                    role="selected" if h == 0 else "fallback",
                    status="error",
                    error_type="503",
                    duration_ms=rng.uniform(50, 900),
                )
            )
            d.hops.append(FallbackHop(from_=plan[h], to=plan[h + 1], reason="error"))
        model = plan[hops]
        d.attempts.append(
            Attempt(
                index=hops,
                model=model,
                provider=catalog.model(model).provider,
                role="selected" if hops == 0 else "fallback",
                status="ok",
                duration_ms=rng.uniform(200, 2000),
                input_tokens=d.features.input_tokens,
                output_tokens=300,
            )
        )
        d.outcome, d.answered_by = "answered", model
        d.latency_ms = sum(a.duration_ms for a in d.attempts) + 2.5
        d.cost = price(
            estimate_cost(catalog.model(model), d.features.input_tokens, 300),
            catalog,
            "gpt-5.5",
            d.features.input_tokens,
            300,
        )
        out.append(d)
    return out


def payloads(decisions: list[Decision]) -> tuple[list[bytes], int]:
    """OTLP protobuf payloads of about BATCH_SPANS spans, whole decisions each; and the span count."""
    tp, exporter = L.provider("bench")
    tracer = tp.get_tracer("unhardcoded")
    out: list[bytes] = []
    batch: list = []
    total = 0
    for d in decisions:
        exporter.clear()
        L.emit_decision(tracer, d)
        spans = exporter.get_finished_spans()
        total += len(spans)
        batch.extend(spans)
        if len(batch) >= BATCH_SPANS:
            out.append(L.otlp_bytes(batch))
            batch = []
    if batch:
        out.append(L.otlp_bytes(batch))
    return out, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core

    decisions = make_decisions(args.decisions)
    data, spans = payloads(decisions)
    size = sum(len(p) for p in data)
    # The first pass, with the caches of repeated rejection events empty, is timed apart: it is what a
    # processor pays for the first decisions of each policy.
    t0 = time.process_time()
    rebuilt = sum(len(rebuild_receipts(p).receipts) for p in data)
    cold = time.process_time() - t0
    assert rebuilt == len(decisions), (rebuilt, len(decisions))
    # CPU time of this process, not wall time: a shared machine's other load is not ours to count.
    times, walls = [], []
    for _ in range(args.rounds):
        t0, w0 = time.process_time(), time.perf_counter()
        for p in data:
            rebuild_receipts(p)
        times.append(time.process_time() - t0)
        walls.append(time.perf_counter() - w0)
    best, median = min(times), statistics.median(times)
    spans_per_s = spans / median
    print(f"rebuild from OTLP protobuf, one core, python {sys.version.split()[0]}")
    print(
        f"  {len(decisions)} decisions = {spans} spans (10 rejection events each, 1-3 attempts) "
        f"in {len(data)} payloads, {size / 1e6:.1f} MB"
    )
    print(
        f"  median of {args.rounds} rounds: {median * 1000:.0f} ms CPU (best {best * 1000:.0f} ms; "
        f"wall {statistics.median(walls) * 1000:.0f} ms)"
    )
    print(
        f"  receipts rebuilt: {len(decisions) / median:,.0f}/s   spans: {spans_per_s:,.0f}/s "
        f"({median / len(decisions) * 1e6:.0f} µs per decision)"
    )
    best_spans = spans / best
    print(
        f"  best round: {len(decisions) / best:,.0f} receipts/s, {best_spans:,.0f} spans/s; "
        f"first pass (cold caches): {spans / cold:,.0f} spans/s"
    )
    verdict = "meets" if spans_per_s >= TARGET_SPANS_PER_S else "MISSES"
    print(
        f"  target ≥ {TARGET_SPANS_PER_S:,} spans/s per core: the median {verdict} it "
        f"({spans_per_s / TARGET_SPANS_PER_S:.2f}x); the Collector forwards {COLLECTOR_FORWARDING} spans/s per core"
    )
    if hasattr(os, "getloadavg"):
        load = os.getloadavg()[0]
        print(
            f"  machine load average {load:.1f} on {os.cpu_count()} CPUs"
            + ("  (busy: figures are pessimistic)" if load > 1 else "")
        )


if __name__ == "__main__":
    main()
