"""Thousands of receipts for the console's tests and benchmark, made the way production makes them.

Every decision is routed by the real :class:`~unhardcoded.router.Router` (the real engine, cascade and provider
client) against :class:`~.simulator.SimulatedProvider` servers on loopback that fail on a seeded schedule, so some
requests fall back and some fail; its spans go through the real telemetry into a
:class:`~unhardcoded.receipts.ReceiptSpanProcessor`, which rebuilds the receipts from them and stores them. Some
requests run as nodes of workflows; some carry a client key's name. :func:`replicate` then copies stored receipts
under new request ids and spread-out timestamps, for a store of 100,000 receipts in seconds.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..receipts import Receipt, ReceiptStore

__all__ = ["BulkRun", "generate", "replicate"]

NODES = ("classify", "extract-order", "lookup-order", "draft-reply", "check-tone")
CLIENTS = ("support-bot", "triage-bot", None)
WORKFLOW_NAMES = ("refund-flow", "shipping-flow")
_TOOLS = [{"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}]


@dataclass
class BulkRun:
    """What :func:`generate` routed: the request ids in order, the workflows (id → request ids) and the store."""

    request_ids: list[str] = field(default_factory=list)
    workflows: dict[str, list[str]] = field(default_factory=dict)


def _body(rng: random.Random) -> dict[str, Any]:
    words = " ".join(
        rng.choice(("refund", "order", "parcel", "late", "broken", "invoice")) for _ in range(rng.randint(5, 400))
    )
    body: dict[str, Any] = {
        "model": "auto",
        "messages": [{"role": "user", "content": words}],
        "max_tokens": rng.choice((16, 64, 256, 400)),
    }
    if rng.random() < 0.5:
        body["tools"] = _TOOLS
    return body


def generate(
    store: ReceiptStore,
    n: int,
    *,
    seed: int = 0,
    failure_rate: float = 0.15,
    workflow_every: int = 12,
    workflow_names: Sequence[str] = WORKFLOW_NAMES,
    service_name: str = "bulk",
) -> BulkRun:
    """Route ``n`` requests under the built-in ``support`` and ``triage`` policies and store their receipts.

    Each model fails a call with probability ``failure_rate`` (a 503, or a 429 without Retry-After), drawn from
    ``seed`` before each request; about one request in ``workflow_every`` starts a workflow of two to five nodes,
    named from ``workflow_names``.
    """
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    from ..catalog import Catalog
    from ..policy import load_policy_file
    from ..policy.builtin import builtin_policy_dir
    from ..receipts import ReceiptSpanProcessor
    from ..router import ProviderClient, ProvidersConfig, Router
    from ..telemetry import workflow
    from .simulator import Behavior, SimulatedProvider, error, ok, rate_limit

    rng = random.Random(seed)
    catalog = Catalog.builtin()
    policies = [load_policy_file(builtin_policy_dir() / f"{name}.yaml", catalog) for name in ("support", "triage")]
    run = BulkRun()
    with ExitStack() as stack:
        sims: dict[str, SimulatedProvider] = {}
        for provider in sorted({m.provider for m in catalog.models}):
            sims[provider] = stack.enter_context(SimulatedProvider(provider))
        client = ProviderClient(ProvidersConfig(providers=[s.provider_config(timeout_s=10) for s in sims.values()]))
        stack.callback(client.close)
        tracer_provider = TracerProvider(
            resource=Resource.create({"service.name": service_name}), shutdown_on_exit=False
        )
        receipts = ReceiptSpanProcessor(store, catalogs=[catalog])
        tracer_provider.add_span_processor(receipts)
        stack.callback(tracer_provider.shutdown)
        router = Router(catalog, client, tracer_provider=tracer_provider)
        healthy = ok()
        failures: tuple[Behavior, ...] = (
            error(503, message="simulated outage"),
            rate_limit(None),
        )

        def shuffle_behaviors() -> None:
            for m in catalog.models:
                fails = rng.random() < failure_rate
                sims[m.provider].set_behavior(m.id, rng.choice(failures) if fails else healthy)

        def route_one(flow: Any | None = None, node: str | None = None) -> str:
            shuffle_behaviors()
            policy = rng.choice(policies)
            client_name = rng.choice(CLIENTS)
            if flow is not None and node is not None:
                with flow.node(node):
                    decision, _, _ = router.route(policy, _body(rng), client_name=client_name)
            else:
                decision, _, _ = router.route(policy, _body(rng), client_name=client_name)
            run.request_ids.append(decision.request_id)
            return decision.request_id

        while len(run.request_ids) < n:
            if workflow_every and rng.randrange(workflow_every) == 0 and n - len(run.request_ids) >= 2:
                size = min(rng.randint(2, len(NODES)), n - len(run.request_ids))
                with workflow(rng.choice(list(workflow_names)), tracer_provider=tracer_provider) as flow:
                    run.workflows[flow.ref.id] = [route_one(flow, node) for node in NODES[:size]]
            else:
                route_one()
        tracer_provider.force_flush()
        receipts.force_flush()
    return run


def _stamp(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def replicate(
    receipts: Sequence[Receipt], n: int, *, days: float = 30.0, now: datetime | None = None, seed: int = 0
) -> Iterator[Receipt]:
    """``n`` copies of ``receipts`` in turn, each under its own request id (and workflow id, for workflow nodes) and
    a timestamp spread evenly over the ``days`` before ``now``, newest last."""
    if not receipts:
        return
    rng = random.Random(seed)
    end = now or datetime.now(UTC)
    step = timedelta(days=days) / max(1, n)
    start = end - timedelta(days=days)
    for i in range(n):
        r = receipts[i % len(receipts)]
        copy = i // len(receipts)
        update: dict[str, Any] = {
            "request_id": f"{r.request_id}-c{copy}-{i}",
            "timestamp": _stamp(start + step * i + timedelta(milliseconds=rng.randint(0, 999))),
        }
        if r.workflow is not None:
            update["workflow"] = r.workflow.model_copy(update={"id": f"{r.workflow.id}-c{copy}"})
        yield r.model_copy(update=update)
