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
- Signing (a tree that has it): what a signing key adds per decision, the signed content and the Ed25519
  signature, timed call by call (p50), and the decision span recorded with a key against without. Target: at
  most 40 us p50. The ratio to the bare span above is measured without a key.

    python bench/telemetry.py [--iterations 5000] [--rounds 7] [--check]
    python bench/telemetry.py --compare ../base [--compare-rounds 3]   # this tree and another, alternating
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
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

# bench/ is on the path when a script runs. Only public names of the package: --compare runs this script on a tree
# whose internals may sit elsewhere.
import compare
from unhardcoded.catalog import Catalog
from unhardcoded.policy import validate_policy
from unhardcoded.router import CompiledPolicy, Router, features_from_request
from unhardcoded.telemetry import RouterTelemetry, current_workflow
from workload import POLICY

TARGET_RATIO = 1.5
TARGET_NO_SDK_US = 2.0
TARGET_SIGNING_US = 40.0

BODY = {"messages": [{"role": "user", "content": "Where is my order? " * 20}]}


class NoExport(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def timed_rounds(fns: dict[str, Callable[[], Any]], iterations: int, rounds: int) -> dict[str, list[float]]:
    """Per round, the mean time per call of each function in microseconds; rounds interleave the functions so
    that a machine busy with something else slows all of them alike (GC off while timing, as timeit does).

    The clock is this process's CPU time (all its threads: the BatchSpanProcessor's worker is part of what a span
    costs), not wall time: on a shared machine the wall clock mostly measures the other processes' time slices.
    """
    for fn in fns.values():
        for _ in range(min(iterations, 2000)):
            fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            gc.collect()
            gc.disable()
            try:
                t0 = time.process_time()
                for _ in range(iterations):
                    fn()
                out[name].append((time.process_time() - t0) / iterations * 1e6)
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


def emitted_decision_span(compiled: CompiledPolicy, decision: Any) -> Any:
    """The decision span as the package emits it, finished: the bare span below carries the same name, kind,
    attributes and events."""
    tp = TracerProvider()
    exporter = InMemorySpanExporter()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    with RouterTelemetry(tracer_provider=tp).decision(compiled) as scope:
        scope.finish(decision)
    tp.shutdown()
    (span,) = exporter.get_finished_spans()
    return span


def measure(n: int, r: int) -> dict[str, float]:
    """Every figure, in microseconds per decision, and the ratios to the bare span."""
    catalog = Catalog.builtin()
    policy = validate_policy(POLICY, catalog)
    compiled = CompiledPolicy(policy, catalog)
    decision = compiled.decide(features_from_request(BODY))
    assert len(decision.rejected) == 10, len(decision.rejected)

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

    # Attributes as built before they reach the SDK (lists, not the tuples the SDK stores).
    emitted = emitted_decision_span(compiled, decision)
    attrs = {k: list(v) if isinstance(v, tuple) else v for k, v in emitted.attributes.items()}
    events = [(e.name, dict(e.attributes)) for e in emitted.events]
    bare_tracer = tp.get_tracer("bare")
    name, kind = emitted.name, emitted.kind

    def bare() -> None:
        span = bare_tracer.start_span(name, kind=kind, start_time=time.time_ns())
        span.set_attributes(attrs)
        for event_name, event in events:
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
    signing = measure_signing(compiled, decision, n, r)
    whole = timed_rounds(
        {"router": lambda: router.decide(policy, features), "engine": lambda: compiled.decide(features)},
        max(n // 10, 1),
        r,
    )
    return {
        "bare_us": statistics.median(sdk["bare"]),
        "traces_us": statistics.median(sdk["traces"]),
        "both_us": statistics.median(sdk["both"]),
        "traces_x": ratio(sdk["traces"], sdk["bare"]),
        "both_x": ratio(sdk["both"], sdk["bare"]),
        "none_us": statistics.median(none["telemetry"]),
        "none_x": ratio(none["telemetry"], none["noop_span"]),
        "noop_span_us": statistics.median(none["noop_span"]),
        "router_us": statistics.median(whole["router"]),
        "engine_us": statistics.median(whole["engine"]),
        "attributes": len(attrs),
        "events": len(events),
        **signing,
    }


def measure_signing(compiled: CompiledPolicy, decision: Any, n: int, r: int) -> dict[str, float]:
    """Signing's cost: the signer alone, p50 of single calls, and the decision span with a key against without
    (both on a BatchSpanProcessor). Empty on a tree without signing."""
    import tempfile

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    pem = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    tp = sdk_tracer_provider()
    with tempfile.NamedTemporaryFile(suffix=".key") as f:
        f.write(pem)
        f.flush()
        try:
            signed = RouterTelemetry(tracer_provider=tp, signing_key=f.name)  # type: ignore[call-arg]
        except TypeError:
            tp.shutdown()
            return {}
    unsigned = RouterTelemetry(tracer_provider=tp, signing_key=None)  # type: ignore[call-arg]
    signer = signed.signer()
    assert signer is not None
    with unsigned.decision(compiled) as scope:  # the decision as recorded: trace and span ids set
        scope.finish(decision)
    # Batches of 50 calls, CPU time as elsewhere here (on a shared machine the wall clock counts other processes'
    # time slices): the p50 and p90 are over the batches' means.
    samples = []
    for _ in range(max(n // 50, 40)):
        t0 = time.process_time_ns()
        for _ in range(50):
            signer.sign(decision, decision.outcome)
        samples.append((time.process_time_ns() - t0) / 50)

    def emit(telemetry: RouterTelemetry) -> Callable[[], None]:
        def run() -> None:
            with telemetry.decision(compiled) as scope:
                scope.finish(decision)

        return run

    spans = timed_rounds({"unsigned": emit(unsigned), "signed": emit(signed)}, max(n // 2, 1), r)
    tp.shutdown()
    return {
        "signing_p50_us": statistics.median(samples) / 1000,
        "signing_p90_us": statistics.quantiles(samples, n=10)[-1] / 1000,
        "signed_span_us": statistics.median(spans["signed"]),
        "unsigned_span_us": statistics.median(spans["unsigned"]),
    }


COMPARED = (
    compare.Figure("traces_us", "SDK: decision span (no-op meter)", "us"),
    compare.Figure("traces_x", "SDK: decision span / bare span", "x"),
    compare.Figure("both_us", "SDK: decision span + SDK metrics", "us"),
    compare.Figure("both_x", "SDK: span + metrics / bare span", "x"),
    compare.Figure("none_us", "no SDK: decision telemetry", "us"),
    compare.Figure("router_us", "no SDK: Router.decide, whole", "us"),
    compare.Figure("engine_us", "CompiledPolicy.decide, no telemetry", "us"),
    compare.Figure("bare_us", "bare SDK span (no package code timed)", "us", reference=True),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a target is missed (with --compare: when a figure is worse)"
    )
    compare.add_arguments(parser)
    args = parser.parse_args(argv)

    n, r = args.iterations, args.rounds
    if args.child:
        m = measure(n, r)
        signing = {k: f"{m.pop(k):.1f} us" for k in list(m) if k.startswith(("signing_", "signed_", "unsigned_"))}
        compare.report(m, calls=f"{n} calls x {r} interleaved rounds, medians", **signing)
        return 0
    if args.compare:
        argv = ["--iterations", str(n), "--rounds", str(r)]
        worse = compare.compare("decision telemetry", __file__, argv, args.compare, COMPARED, args.compare_rounds)
        return 1 if (args.check and worse) else 0

    m = measure(n, r)
    bare_us, traces_us, both_us = m["bare_us"], m["traces_us"], m["both_us"]
    traces_x, both_x = m["traces_x"], m["both_x"]
    none_us, noop_span_us = m["none_us"], m["noop_span_us"]
    router_us, engine_us = m["router_us"], m["engine_us"]
    span = f"{m['attributes']:.0f} attributes, {m['events']:.0f} events"
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
        f"{m['none_x']:4.2f}x one no-op start_span+end"
    )
    print(f"    reference: API no-op start_span + end       {noop_span_us:8.2f} us")
    print(f"    Router.decide (features given), whole       {router_us:8.2f} us")
    print(f"    CompiledPolicy.decide, no telemetry         {engine_us:8.2f} us")
    if "signing_p50_us" in m:
        signing_ok = m["signing_p50_us"] <= TARGET_SIGNING_US
        print("  signing (a signing key configured; off the caller's path where the proxy records late)")
        print(
            f"    signing, content + Ed25519, per decision   {m['signing_p50_us']:8.2f} us p50   "
            f"(p90 {m['signing_p90_us']:.2f} us; target <= {TARGET_SIGNING_US} us p50)"
        )
        print(
            f"    decision span signed / unsigned            {m['signed_span_us']:8.2f} us / {m['unsigned_span_us']:.2f} us"
        )
    else:
        signing_ok = True
    ok = traces_x <= TARGET_RATIO and none_us <= TARGET_NO_SDK_US and signing_ok
    print("targets:", "met" if ok else "MISSED")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
