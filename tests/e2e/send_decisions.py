"""Send routing decisions through the real Router, simulated providers and the OTLP exporter.

    python tests/e2e/send_decisions.py --endpoint http://127.0.0.1:4317 --plain 50 --fallback 5

Every decision is its own trace (no workflow). Plain decisions answer on the
first pick; fallback decisions find the pick down (503) and fall back to the
policy's standby. Prints JSON: {"plain": [{request_id, trace_id}], "fallback": [...]}.
Also exports the router's metrics (unhardcoded.decisions, ...) over OTLP.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack

from unhardcoded.catalog import Catalog
from unhardcoded.policy import load_policy_file, validate_policy
from unhardcoded.policy.builtin import builtin_policy_dir
from unhardcoded.router import ProviderClient, ProvidersConfig, Router
from unhardcoded.telemetry import configure
from unhardcoded.testing.simulator import SimulatedProvider, error

BODY = {
    "model": "auto",
    "messages": [{"role": "user", "content": "Classify: my desk arrived broken."}],
    "max_tokens": 16,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True, help="OTLP/gRPC endpoint of the Collector")
    ap.add_argument("--service", default="e2e-decisions")
    ap.add_argument("--policy", default="triage")
    ap.add_argument("--plain", type=int, default=50)
    ap.add_argument("--fallback", type=int, default=5)
    args = ap.parse_args(argv)

    catalog = Catalog.builtin()
    policy = load_policy_file(builtin_policy_dir() / f"{args.policy}.yaml", catalog)
    # A storm of fallbacks: the failing pick is tried on every decision, never cooled down (docs/live.md).
    policy = validate_policy({**policy.to_document(), "health": {"failures": 1000, "window": 1}}, catalog)
    setup = configure(
        args.service,
        endpoint=args.endpoint,
        protocol="grpc",
        metrics=True,
        metric_export_interval_ms=500,
        set_global=False,
    )
    out: dict[str, list[dict[str, str]]] = {"plain": [], "fallback": []}
    with ExitStack() as stack:
        providers = sorted({m.provider for m in catalog.models})

        def router(failing: str | None) -> Router:
            sims = []
            for p in providers:
                behaviors = (
                    {failing: error(503, message="simulated outage")}
                    if failing and catalog.model(failing).provider == p
                    else {}
                )
                sim = SimulatedProvider(p, behaviors).start()
                stack.callback(sim.close)
                sims.append(sim)
            client = ProviderClient(ProvidersConfig(providers=[s.provider_config(timeout_s=10) for s in sims]))
            stack.callback(client.close)
            return Router(catalog, client, tracer_provider=setup.tracer_provider, meter_provider=setup.meter_provider)

        plain = router(None)
        first_pick = plain.route(policy, BODY)[0].selected.model
        failing = router(first_pick)
        for kind, r, n in (("plain", plain, args.plain), ("fallback", failing, args.fallback)):
            for _ in range(n):
                decision, _, failure = r.route(policy, BODY)
                assert failure is None, failure
                assert bool(decision.hops) == (kind == "fallback"), (kind, decision.hops)
                out[kind].append({"request_id": decision.request_id, "trace_id": decision.trace_id})
    setup.force_flush()
    setup.tracer_provider.shutdown()
    if setup.meter_provider is not None:
        setup.meter_provider.shutdown()
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
