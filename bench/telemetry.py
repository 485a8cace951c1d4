"""What emitting a decision's telemetry costs, against a bare SDK span carrying as much, and with no SDK at all.

The decision: the built-in catalog under a policy that rejects exactly 10 of
its models (so 10 rejection events), no provider call. What is timed is the
telemetry alone, per decision, as ``Router.decide`` runs it: the current
workflow lookup, ``RouterTelemetry.decision(compiled)`` (start the span), then
``scope.finish(decision)`` (stamp the Decision, attributes, events, metrics,
end), on a Decision computed beforehand.

- SDK: a ``TracerProvider`` with a ``BatchSpanProcessor`` to an exporter that
  does nothing, against a bare span: ``start_span`` + ``set_attributes`` with
  the same attributes (already built) + the same 10 events + ``end``. Target:
  at most 1.5x the bare span. Shown with the metrics off (the API's no-op
  meter) -- the like-for-like comparison -- and with an SDK ``MeterProvider``
  too.
- No SDK: the API's default (proxy, no-op) providers. Target: at most 2 us per decision.

    python bench/telemetry.py [--iterations 5000] [--rounds 7] [--check]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from unhardcoded.catalog import Catalog
from unhardcoded.policy import validate_policy
from unhardcoded.router import Router
from unhardcoded.router.engine import CompiledPolicy
from unhardcoded.router.features import features_from_request
from unhardcoded.semconv import spans as S
from unhardcoded.telemetry import RouterTelemetry
from unhardcoded.telemetry.layout import PolicyLayout
from unhardcoded.telemetry.workflows import current_workflow
from workload import POLICY

TARGET_RATIO = 1.5
TARGET_NO_SDK_US = 2.0

BODY = {"messages": [{"role": "user", "content": "Where is my order? " * 20}]}


class NoExport(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def timed_rounds(fns: dict[str, Callable[[], Any]], iterations: int, rounds: int) -> dict[str, list[float]]:
    """Per round, the mean time per call of each function in microseconds; rounds interleave the functions so
    that a machine busy with something else slows all of them alike (GC off while timing, as timeit does)."""
    for fn in fns.values():
        for _ in range(min(iterations, 2000)):
            fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            gc.collect()
            gc.disable()
            try:
                t0 = time.perf_counter()
                for _ in range(iterations):
                    fn()
                out[name].append((time.perf_counter() - t0) / iterations * 1e6)
            finally:
                gc.enable()
    return out


def ratio(num: list[float], den: list[float]) -> float:
    """Median of the per-round ratios."""
    return statistics.median(a / b for a, b in zip(num, den))


def sdk_tracer_provider() -> TracerProvider:
    tp = TracerProvider()
    tp.add_span_processor(BatchSpanProcessor(NoExport()))
    return tp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)

    catalog = Catalog.builtin()
    policy = validate_policy(POLICY, catalog)
    compiled = CompiledPolicy(policy, catalog)
    decision = compiled.decide(features_from_request(BODY))
    assert len(decision.rejected) == 10, len(decision.rejected)
    n, r = args.iterations, args.rounds

    # ---- SDK: ours against a bare span with the same attributes and events
    tp = sdk_tracer_provider()
    ours_traces = RouterTelemetry(tracer_provider=tp)  # meter: the API's no-op
    reader = InMemoryMetricReader()
    ours_both = RouterTelemetry(tracer_provider=tp, meter_provider=MeterProvider(metric_readers=[reader]))

    def emit(telemetry: RouterTelemetry) -> Callable[[], None]:
        # What Router.decide adds to the engine's work: the workflow lookup, the span, its end.
        def run() -> None:
            current_workflow()
            with telemetry.decision(compiled) as scope:
                scope.finish(decision)

        return run

    attrs, events, _ = PolicyLayout(compiled).decision_attributes(decision, decision.outcome)
    bare_tracer = tp.get_tracer("bare")
    name = S.DECISION_SPAN_NAME.format(policy=policy.name)
    event_name = S.REJECTION_EVENT

    def bare() -> None:
        span = bare_tracer.start_span(name, kind=S.DECISION_SPAN_KIND, start_time=time.time_ns())
        span.set_attributes(attrs)
        for event in events:
            span.add_event(event_name, event)
        span.end()

    sdk = timed_rounds({"bare": bare, "traces": emit(ours_traces), "both": emit(ours_both)}, n, r)
    tp.shutdown()

    # ---- no SDK: the API's default providers (nothing was installed globally above)
    ours_none = RouterTelemetry()
    router = Router(catalog)
    features = features_from_request(BODY)
    noop_tracer = trace.get_tracer("reference")  # the API's proxy to its no-op tracer

    def noop_span() -> None:
        noop_tracer.start_span(name).end()

    none = timed_rounds({"telemetry": emit(ours_none), "noop_span": noop_span}, n, r)
    whole = timed_rounds(
        {"router": lambda: router.decide(policy, features), "engine": lambda: compiled.decide(features)},
        max(n // 10, 1),
        r,
    )

    bare_us, traces_us, both_us = (statistics.median(sdk[k]) for k in ("bare", "traces", "both"))
    traces_x, both_x = ratio(sdk["traces"], sdk["bare"]), ratio(sdk["both"], sdk["bare"])
    none_us = statistics.median(none["telemetry"])
    noop_span_us = statistics.median(none["noop_span"])
    router_us, engine_us = statistics.median(whole["router"]), statistics.median(whole["engine"])
    span = f"{len(attrs)} attributes, {len(events)} events"
    print(
        f"decision telemetry, per decision ({n} calls x {r} interleaved rounds, medians), Python {sys.version.split()[0]}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(f"  SDK (BatchSpanProcessor -> no-op exporter), one decision span: {span}")
    print(f"    bare SDK span, same attributes and events   {bare_us:8.2f} us")
    print(
        f"    unhardcoded, traces (no-op meter)           {traces_us:8.2f} us   {traces_x:5.2f}x bare   (target <= {TARGET_RATIO}x)"
    )
    print(
        f"    unhardcoded, traces + SDK metrics           {both_us:8.2f} us   {both_x:5.2f}x bare   (6 metric points more than the bare span)"
    )
    print("  no SDK (API default no-op providers)")
    print(
        f"    unhardcoded telemetry                       {none_us:8.2f} us   (target <= {TARGET_NO_SDK_US} us)   "
        f"{ratio(none['telemetry'], none['noop_span']):4.2f}x one no-op start_span+end"
    )
    print(f"    reference: API no-op start_span + end       {noop_span_us:8.2f} us")
    print(f"    Router.decide (features given), whole       {router_us:8.2f} us")
    print(f"    CompiledPolicy.decide, no telemetry         {engine_us:8.2f} us")
    ok = traces_x <= TARGET_RATIO and none_us <= TARGET_NO_SDK_US
    print("targets:", "met" if ok else "MISSED")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
