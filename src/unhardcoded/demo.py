"""`unhardcoded demo`: a 5-node support workflow under two policies, on simulated providers, with stored receipts.

Everything runs on this machine: the providers are simulated OpenAI-compatible
servers on loopback, so no key and no network are needed. One node's first
choice fails on purpose, so the receipts show the standby cascade at work.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO, cast

from .catalog import Catalog
from .policy import Policy, load_policy_file
from .policy.builtin import builtin_policy_dir

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    from .receipts.stores import ReceiptStore

SERVICE_NAME = "unhardcoded-demo"
WORKFLOW_NAME = "support-ticket"
FAILING_MODEL = "grok-4-fast-non-reasoning"
"""The simulated provider answers this model's first call with a 503, so one node falls back."""

TICKET = (
    "Hi, I ordered a standing desk (order #A-20931) three weeks ago. It arrived with a cracked leg and "
    "I'd like a replacement or a refund. I'm in Lyon, France. What are my options?"
)
LOOKUP_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Fetch an order by its number",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
        },
    }
]


@dataclass
class DemoNode:
    name: str
    policy: str
    body: dict[str, Any]


def demo_nodes() -> list[DemoNode]:
    def chat(system: str, user: str, **extra: Any) -> dict[str, Any]:
        return {
            "model": "auto",
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            **extra,
        }

    return [
        DemoNode(
            "classify", "triage", chat("Classify the ticket: billing, damage, shipping, other.", TICKET, max_tokens=16)
        ),
        DemoNode(
            "extract-order", "triage", chat("Extract the order number and the country as JSON.", TICKET, max_tokens=64)
        ),
        DemoNode(
            "lookup-order",
            "support",
            chat("Look the order up before answering.", TICKET, tools=LOOKUP_TOOLS, max_tokens=256),
        ),
        DemoNode(
            "draft-reply",
            "support",
            chat("Draft a friendly reply offering a replacement or refund under EU law.", TICKET, max_tokens=400),
        ),
        DemoNode(
            "check-tone",
            "triage",
            chat(
                "Check the draft is polite and promises nothing beyond policy. Answer ok or fix.", TICKET, max_tokens=64
            ),
        ),
    ]


@dataclass
class DemoResult:
    workflow_id: str
    request_ids: list[str] = field(default_factory=list)
    store_location: str = ""


def run_demo(store_url: str | None = None, *, out: TextIO = sys.stdout, as_json: bool = False) -> DemoResult:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    from .receipts import Receipt, ReceiptSpanProcessor, open_store
    from .receipts.render import render_workflow
    from .router import Router
    from .telemetry import workflow
    from .telemetry.setup import sdk_disabled

    said = sys.stderr if as_json else out  # with --json, stdout carries the receipt alone

    def say(*parts: object) -> None:
        print(*parts, file=said)

    catalog = Catalog.builtin()
    policies: dict[str, Policy] = {
        name: load_policy_file(builtin_policy_dir() / f"{name}.yaml", catalog) for name in ("support", "triage")
    }
    store = open_store(store_url)
    with ExitStack() as stack:
        stack.callback(store.close)
        say("Simulated providers on loopback (no real LLM is called, no key is needed):")
        client, sims = _simulated_providers(stack, catalog)
        for sim in sims:
            say(f"  {sim.name:<10} {sim.base_url}")

        tracer_provider, exporting = _tracer_provider(Resource, TracerProvider)
        # OTEL_SDK_DISABLED (a standard OpenTelemetry variable) turns every span into a no-op: no span reaches
        # the receipt processor, so the receipts are written from the decisions themselves.
        sdk_off = sdk_disabled()
        if sdk_off:
            say("OTEL_SDK_DISABLED is set: no spans are recorded; receipts are stored from the decisions.")
        receipts = ReceiptSpanProcessor(store, catalogs=[catalog])
        tracer_provider.add_span_processor(receipts)
        stack.callback(tracer_provider.shutdown)
        router = Router(catalog, client, tracer_provider=tracer_provider)

        say(
            f"\nRunning workflow {WORKFLOW_NAME!r}: 5 nodes under policies "
            f"support ({policies['support'].fingerprint}) and triage ({policies['triage'].fingerprint})"
        )
        result = DemoResult(workflow_id="", store_location=str(getattr(store, "location", store_url or "")))
        with workflow(WORKFLOW_NAME, tracer_provider=tracer_provider) as wf:
            result.workflow_id = wf.ref.id
            for node in demo_nodes():
                with wf.node(node.name):
                    decision, _, failure = router.route(policies[node.policy], node.body)
                result.request_ids.append(decision.request_id)
                if sdk_off:
                    policy = policies[node.policy]
                    store.put(Receipt.from_decision(decision), policy.canonical)
                hops = (
                    " → ".join([h.from_ for h in decision.hops] + [decision.answered_by or "nobody"])
                    if decision.hops
                    else decision.answered_by
                )
                note = f" (fell back: {decision.hops[0].reason})" if decision.hops else ""
                if failure is not None:
                    note += f" (failed: {failure.error_type})"
                say(f"  {node.name:<14} {node.policy:<8} → {hops}{note}")
        if sdk_off:
            store.put_workflow(result.workflow_id, WORKFLOW_NAME, finished=True)
        tracer_provider.force_flush()
        receipts.force_flush()

        receipt = store.workflow(result.workflow_id)
        if receipt is None:
            raise RuntimeError("the demo's workflow receipt was not stored")
        if as_json:
            import json

            print(json.dumps(receipt.model_dump(mode="json", by_alias=True), indent=2, ensure_ascii=False), file=out)
        else:
            say("")
            say(render_workflow(receipt))
            say(f"\nReceipts stored in {result.store_location}. Look at any node's receipt:")
            for rid in result.request_ids:
                say(f"  unhardcoded receipt {rid}")
            say(f"  unhardcoded receipt {result.workflow_id}      # the whole workflow")
            say("  unhardcoded rollup --by policy")
            if exporting:
                say(f"\nSpans were also exported over OTLP to {exporting}.")
        return result


def _tracer_provider(
    resource_cls: type[Resource], provider_cls: type[TracerProvider]
) -> tuple[TracerProvider, str | None]:
    """Our own provider, plus an OTLP exporter when the standard OTEL_* variables ask for one."""
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint:
        from .telemetry import configure

        setup = configure(SERVICE_NAME, metrics=False, set_global=False)
        return cast("TracerProvider", setup.tracer_provider), endpoint  # built by configure: the SDK's
    return provider_cls(
        resource=resource_cls.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", SERVICE_NAME)})
    ), None


def _simulated_providers(
    stack: ExitStack, catalog: Catalog, failing_model: str = FAILING_MODEL
) -> tuple[Any, list[Any]]:
    """A simulated provider on loopback for each provider of ``catalog`` (closed with ``stack``), and a client over
    them; the provider of ``failing_model`` answers that model's first call with a 503."""
    from .router import ProviderClient, ProvidersConfig
    from .testing.simulator import Behavior, SimulatedProvider, error, fail_times, ok

    sims: list[SimulatedProvider] = []
    for provider in sorted({m.provider for m in catalog.models}):
        behaviors: dict[str, Behavior] = {}
        if failing_model in catalog and provider == catalog.model(failing_model).provider:
            behaviors[failing_model] = fail_times(
                1, then=ok(), failure=error(503, message="simulated outage: upstream overloaded")
            )
        sim = SimulatedProvider(provider, behaviors).start()
        stack.callback(sim.close)
        sims.append(sim)
    client = ProviderClient(ProvidersConfig(providers=[s.provider_config(timeout_s=10) for s in sims]))
    stack.callback(client.close)
    return client, sims


FAIL_EVERY = 25
"""In a recorded history, one call in this many to :data:`FAILING_MODEL` fails first, so fallbacks are in it too."""


def record_history(
    store: ReceiptStore,
    n: int,
    *,
    catalog: Catalog | None = None,
    policies: Mapping[str, Policy] | None = None,
    days: float = 7.0,
    seed: int = 1,
    now: datetime | None = None,
    failing_model: str = FAILING_MODEL,
) -> list[str]:
    """Route ``n`` requests of the demo's workflow nodes (tickets of seeded, varied lengths) through the real router
    over simulated providers, and store their receipts dated over the ``days`` before ``now``: a history for
    ``replay --since`` to decide again. ``policies`` by name must hold every policy the demo nodes name (by
    default the shipped ``support`` and ``triage``); one call in :data:`FAIL_EVERY` to ``failing_model`` fails first.
    Returns the request ids in the order they were routed."""
    import random

    from .errors import NoCandidateError
    from .receipts import Receipt
    from .router import NO_TELEMETRY, Router
    from .router.decision import iso_ms
    from .router.live import NoLive
    from .testing.simulator import error, fail_times, ok

    catalog = catalog if catalog is not None else Catalog.builtin()
    if policies is None:
        policies = {
            name: load_policy_file(builtin_policy_dir() / f"{name}.yaml", catalog) for name in ("support", "triage")
        }
    nodes = demo_nodes()
    missing = sorted({node.policy for node in nodes} - set(policies))
    if missing:
        raise ValueError(f"record_history needs the policies {', '.join(missing)}")
    rng = random.Random(seed)
    end_ns = int((now or datetime.now(UTC)).timestamp() * 1e9)
    span_ns = int(days * 86400e9)
    store.put_catalog(catalog)
    ids: list[str] = []
    batch: list[tuple[Receipt, str | None]] = []
    with ExitStack() as stack:
        client, sims = _simulated_providers(stack, catalog, failing_model)
        failing = next(
            (s for s in sims if failing_model in catalog and s.name == catalog.model(failing_model).provider), None
        )
        # History: a run of simulated failures must not cool a model down for the requests after it.
        router = Router(catalog, client, telemetry=NO_TELEMETRY, live=NoLive())
        calls = 0
        for i in range(n):
            node = nodes[i % len(nodes)]
            body = dict(node.body)
            system, user = body["messages"]
            body["messages"] = [system, {"role": "user", "content": " ".join([user["content"]] * rng.randint(1, 8))}]
            policy = policies[node.policy]
            try:
                decision, _, _ = router.route(policy, body)
            except NoCandidateError as exc:
                assert exc.decision is not None
                decision = exc.decision
            if failing is not None and failing_model in [a.model for a in decision.attempts]:
                calls += 1
                if calls % FAIL_EVERY == 0:
                    failing.set_behavior(
                        failing_model, fail_times(1, then=ok(), failure=error(503, message="simulated outage"))
                    )
            decision.timestamp = iso_ms(end_ns - rng.randrange(span_ns))
            ids.append(decision.request_id)
            batch.append((Receipt.from_decision(decision), policy.canonical))
            if len(batch) >= 500:
                store.put_many(batch)
                batch = []
        if batch:
            store.put_many(batch)
    return ids
