"""Shared set-up for the telemetry and workflow tests: catalogs, policies, simulated providers.

Imported explicitly (``from telemetry_fixtures import ...``); the fixtures are
plain functions and small classes so each test module picks what it needs. Telemetry is captured by the
``tel`` fixture of ``conftest.py`` (:mod:`unhardcoded.testing`).
Run as a script (``python telemetry_fixtures.py workflow-service``) it is the
second service of the cross-process workflow test.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

from unhardcoded.catalog import Catalog
from unhardcoded.policy import Policy, validate_policy
from unhardcoded.router import ProviderClient, ProvidersConfig
from unhardcoded.testing.simulator import SimulatedProvider

# Providers are simulator names. Rejected by the policy below: `us-b` (region), `dim` (quality floor),
# `pricey` (price ceiling); `base` is the baseline (us only, so never a candidate).
CATALOG_DOC: dict[str, Any] = {
    "schema": "unhardcoded-catalog/v1",
    "models": [
        {
            "id": "cheap-a",
            "provider": "sim-a",
            "price_input_per_mtok": 0.1,
            "price_output_per_mtok": 0.2,
            "bench_intelligence": 0.6,
            "regions": ["eu"],
            "supports_tools": True,
            "context_window": 128000,
        },
        {
            "id": "mid-b",
            "provider": "sim-b",
            "price_input_per_mtok": 1,
            "price_output_per_mtok": 2,
            "bench_intelligence": 0.7,
            "regions": ["eu"],
            "supports_tools": True,
            "context_window": 128000,
        },
        {
            "id": "top-c",
            "provider": "sim-c",
            "price_input_per_mtok": 2,
            "price_output_per_mtok": 4,
            "bench_intelligence": 0.9,
            "regions": ["eu", "us"],
            "supports_tools": False,
            "context_window": 200000,
        },
        {
            "id": "us-b",
            "provider": "sim-b",
            "price_input_per_mtok": 0.5,
            "price_output_per_mtok": 1,
            "bench_intelligence": 0.8,
            "regions": ["us"],
            "supports_tools": True,
            "context_window": 128000,
        },
        {
            "id": "dim",
            "provider": "sim-a",
            "price_input_per_mtok": 0.05,
            "price_output_per_mtok": 0.1,
            "bench_intelligence": 0.3,
            "regions": ["eu"],
            "supports_tools": True,
            "context_window": 32000,
        },
        {
            "id": "pricey",
            "provider": "sim-c",
            "price_input_per_mtok": 10,
            "price_output_per_mtok": 40,
            "bench_intelligence": 0.95,
            "regions": ["eu"],
            "supports_tools": True,
            "context_window": 200000,
        },
        {
            "id": "base",
            "provider": "sim-c",
            "price_input_per_mtok": 3,
            "price_output_per_mtok": 15,
            "bench_intelligence": 0.95,
            "regions": ["us"],
            "supports_tools": True,
            "context_window": 200000,
        },
    ],
}

BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "y" * 400}]}
"""A chat request the router estimates at 104 input tokens (the simulator counts 100)."""

TOOLS_BODY: dict[str, Any] = {**BODY, "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]}


def catalog() -> Catalog:
    return Catalog.from_document(json.loads(json.dumps(CATALOG_DOC)))


def policy(
    cat: Catalog,
    *,
    name: str = "support",
    fallback: list[str] | None = None,
    on: list[str] | None = None,
    max_hops: int = 2,
    rules: list[dict[str, Any]] | None = None,
    baseline: str | None = "base",
) -> Policy:
    doc: dict[str, Any] = {
        "schema": "sigma-pol/v1",
        "name": name,
        "rules": rules
        if rules is not None
        else [
            {"id": "eu-region", "field": "regions", "op": "contains", "value": "eu"},
            {"id": "quality-floor", "field": "bench_intelligence", "op": "gte", "value": 0.5},
            {"id": "price-ceiling", "field": "price_output_per_mtok", "op": "lte", "value": 10},
        ],
        "fallback": {"models": fallback or [], "max_hops": max_hops, **({"on": on} if on is not None else {})},
    }
    if baseline is not None:
        doc["baseline"] = baseline
    return validate_policy(doc, cat)


def big_catalog(n: int = 500) -> Catalog:
    """``n`` models: most fail the policy of :func:`big_policy` for one of its three rules, a few pass."""
    models = []
    for i in range(n):
        region = ["eu"] if i % 5 else ["us"]  # every 5th fails the region rule
        models.append(
            {
                "id": f"model-{i:04d}",
                "provider": f"prov-{i % 7}",
                "price_input_per_mtok": round(0.1 + (i % 13) * 0.3, 2),
                "price_output_per_mtok": round(0.2 + (i % 17) * 0.9, 2),
                "bench_intelligence": round(0.2 + (i % 11) * 0.07, 2),
                "regions": region,
                "supports_tools": i % 3 != 0,
                "context_window": 8000 + 1000 * (i % 50),
            }
        )
    models.append(
        {
            "id": "the-baseline",
            "provider": "prov-0",
            "price_input_per_mtok": 3,
            "price_output_per_mtok": 15,
            "bench_intelligence": 0.99,
            "regions": ["us"],
            "supports_tools": True,
            "context_window": 200000,
        }
    )
    return Catalog.from_document({"schema": "unhardcoded-catalog/v1", "models": models})


def big_policy(cat: Catalog) -> Policy:
    return validate_policy(
        {
            "schema": "sigma-pol/v1",
            "name": "strict",
            "rules": [
                {"id": "eu-region", "field": "regions", "op": "contains", "value": "eu"},
                {"id": "tools", "field": "supports_tools", "op": "eq", "value": True},
                {"id": "quality-floor", "field": "bench_intelligence", "op": "gte", "value": 0.85},
            ],
            "baseline": "the-baseline",
        },
        cat,
    )


class Simulators:
    """Simulated providers ``sim-a``, ``sim-b``, ``sim-c`` on loopback, and a client pointing the catalog at them."""

    def __init__(self, behaviors: dict[str, dict[str, Any]] | None = None, timeout_s: float = 5.0) -> None:
        behaviors = behaviors or {}
        self.sims = {name: SimulatedProvider(name, behaviors.get(name)).start() for name in ("sim-a", "sim-b", "sim-c")}
        self.client = ProviderClient(
            ProvidersConfig(providers=[sim.provider_config(timeout_s=timeout_s) for sim in self.sims.values()])
        )

    def __getitem__(self, name: str) -> SimulatedProvider:
        return self.sims[name]

    def close(self) -> None:
        self.client.close()
        for sim in self.sims.values():
            sim.close()


def simulators(behaviors: dict[str, dict[str, Any]] | None = None, timeout_s: float = 5.0) -> Iterator[Simulators]:
    sims = Simulators(behaviors, timeout_s)
    try:
        yield sims
    finally:
        sims.close()


def parent_of(span: Any) -> str | None:
    return format(span.parent.span_id, "016x") if span.parent is not None else None


def span_id_of(span: Any) -> str:
    return format(span.context.span_id, "016x")


def trace_id_of(span: Any) -> str:
    return format(span.context.trace_id, "032x")


# --------------------------------------------------------------------------- the second service of the cross-process test


def workflow_service(otlp_endpoint: str) -> None:
    """An HTTP service that continues the caller's workflow: three nodes, a decision in each, spans over OTLP/gRPC.

    Prints its port, serves until stdin closes. ``POST /nodes`` answers the
    three decisions' request ids and trace ids as JSON.
    """
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import unhardcoded
    from unhardcoded.testing.simulator import ok

    setup = unhardcoded.configure(
        service_name="workflow-service", endpoint=otlp_endpoint, protocol="grpc", metrics=False
    )
    cat = catalog()
    pol = policy(cat, fallback=["mid-b"])
    sim_a = SimulatedProvider("sim-a", {"cheap-a": ok()}).start()
    client = ProviderClient(ProvidersConfig(providers=[sim_a.provider_config(timeout_s=5)]))
    router = unhardcoded.Router(cat, client=client)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            out = []
            with unhardcoded.continue_from(self.headers):
                with unhardcoded.workflow.node("retrieve"):
                    out.append(router.decide(pol, BODY))
                with unhardcoded.workflow.node("draft"):
                    decision, _, _ = router.route(pol, BODY)
                    out.append(decision)
                with unhardcoded.workflow.node("review"):
                    out.append(router.decide(pol, TOOLS_BODY))
            setup.force_flush()
            body = json.dumps([d.model_dump(mode="json", by_alias=True) for d in out]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()  # the test closes stdin to stop the service
    server.shutdown()
    setup.shutdown()
    client.close()
    sim_a.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["workflow-service"]:
        workflow_service(sys.argv[2])
    else:
        raise SystemExit(f"usage: {sys.argv[0]} workflow-service OTLP_GRPC_ENDPOINT")


__all__ = [
    "BODY",
    "CATALOG_DOC",
    "TOOLS_BODY",
    "Simulators",
    "big_catalog",
    "big_policy",
    "catalog",
    "parent_of",
    "policy",
    "simulators",
    "span_id_of",
    "trace_id_of",
    "workflow_service",
]
