"""How long one routing decision takes (filter + rank + select, no provider call), against LiteLLM's Router.

For synthetic catalogs of 50, 100, 500 and 1000 models (seeded, so every run
sees the same models) and one realistic 8-rule policy, each decision is timed
on its own with ``time.perf_counter_ns`` after a warm-up, and the p50 and p99
are printed. The policy is compiled once per (fingerprint, catalog version) by
the Router and reused, as in production; what is timed is
``router.compile(policy).decide(features_from_request(body))`` on an OpenAI
chat-completions body: reading the request's features, the request rules,
ranking the survivors, selecting the winner, the fallback chain, the cost
against the baseline and the Decision with every rejection. A second column
times ``Router.decide``, which adds the decision span and metrics (here the
OpenTelemetry API's no-ops: no SDK is configured).

In the same run LiteLLM's ``Router`` chooses among the same number of
deployments (one model group, one deployment per catalog model, same prices):
``get_available_deployment(model=..., messages=...)`` with the default
``simple-shuffle`` strategy, plus ``latency-based-routing`` (sync path) and
``cost-based-routing`` (async only in LiteLLM, so ``async_get_available_deployment``
awaited in one event loop). LiteLLM is kept off the network
(``LITELLM_LOCAL_MODEL_COST_MAP=True``, telemetry off, no provider call).
LiteLLM's own published figures: 0.58 ms at 100 deployments, 15 ms at 500.

    pip install -e '.[bench]' && python bench/decision.py
    python bench/decision.py --quick
    python bench/decision.py --sizes 100,1000 --iterations 5000 [--budget 15] [--require-litellm] [--check]
    python bench/decision.py --compare ../base --no-litellm   # ours on this tree and on another, alternating

Targets (issue 2): p50 <= 50 us at 100 models and <= 0.5 ms at 1000, growing
linearly with the catalog, and ahead of LiteLLM at every size.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any

# LiteLLM reads these at import time: no remote cost map, no telemetry, quiet logs.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")
os.environ.setdefault("LITELLM_LOG", "ERROR")

import compare
from unhardcoded.catalog import Catalog
from unhardcoded.policy import validate_policy
from unhardcoded.router import Router, features_from_request

DEFAULT_SIZES = (50, 100, 500, 1000)
TARGET_P50_NS = {100: 50_000, 1000: 500_000}
LITELLM_PUBLISHED_MS = {100: 0.58, 500: 15.0}
LINEAR_SLACK = 1.5
"""Linear growth: the p50 per model at the largest size may be at most this many times the best per-model p50."""

MODEL_GROUP = "bench"

PROVIDERS = (
    "openai",
    "anthropic",
    "google",
    "mistral",
    "deepseek",
    "meta",
    "cohere",
    "xai",
    "alibaba",
    "amazon",
    "ai21",
    "moonshot",
)
FAMILIES = ("nano", "mini", "flash", "small", "medium", "pro", "large", "ultra")
REGIONS = ("us", "eu", "apac", "ca", "uk", "me")
CONTEXT_WINDOWS = (16_384, 32_768, 65_536, 128_000, 200_000, 1_000_000)


# -- synthetic catalog, policy and requests -----------------------------------------------


def make_catalog_document(size: int, seed: int = 2) -> dict[str, Any]:
    """``size`` models with seeded providers, prices, scores, capabilities, context windows and regions."""
    rng = random.Random(seed * 1_000_003 + size)
    models = []
    for i in range(size):
        provider = rng.choice(PROVIDERS)
        family = rng.choice(FAMILIES)
        tier = FAMILIES.index(family) / (len(FAMILIES) - 1)  # 0 (nano) .. 1 (ultra)
        quality = min(0.99, max(0.05, rng.gauss(0.25 + 0.55 * tier, 0.1)))
        price_in = round(0.05 * (60 ** (tier + rng.uniform(-0.15, 0.15))) * rng.uniform(0.7, 1.3), 4)
        price_out = round(price_in * rng.choice((2, 3, 4, 5, 8)), 4)
        regions = sorted(rng.sample(REGIONS, rng.randint(1, 4)))
        if rng.random() < 0.6 and "eu" not in regions:
            regions = sorted([*regions, "eu"])
        model: dict[str, Any] = {
            "id": f"{provider}-{family}-{i:04d}",
            "provider": provider,
            "price_input_per_mtok": price_in,
            "price_output_per_mtok": price_out,
            "bench_intelligence": round(quality, 3),
            "supports_tools": rng.random() < 0.92,
            "supports_vision": rng.random() < 0.85,
            "context_window": rng.choice(CONTEXT_WINDOWS),
            "max_output_tokens": rng.choice((4_096, 8_192, 16_384, 32_768, 65_536)),
            "regions": regions,
            "latency_p50_ms": round(rng.uniform(250, 3_600), 1),
        }
        if rng.random() < 0.03:  # a few catalog entries lack a score: rules must reject, not crash
            del model["bench_intelligence"]
        models.append(model)
    return {"schema": "unhardcoded-catalog/v1", "models": models}


def make_policy_document(catalog_doc: dict[str, Any]) -> dict[str, Any]:
    """The 8-rule policy: capabilities, quality floor, price ceiling, context, EU region, latency, providers."""
    models = catalog_doc["models"]
    # A fallback cascade and a baseline that exist in every catalog: good, expensive models.
    strong = sorted(
        (
            m
            for m in models
            if m.get("bench_intelligence", 0) >= 0.6
            and m["supports_tools"]
            and m["supports_vision"]
            and "eu" in m["regions"]
            and m["provider"] not in ("xai", "moonshot")
            and m["context_window"] >= 32_000
            and m["latency_p50_ms"] <= 3_000
            and m["price_output_per_mtok"] <= 25
        ),
        key=lambda m: (-m["bench_intelligence"], m["id"]),
    )
    fallback = [m["id"] for m in strong[:2]]
    baseline = max(models, key=lambda m: (m["price_output_per_mtok"], m["id"]))["id"]
    return {
        "schema": "sigma-pol/v1",
        "name": "bench-eu-support",
        "rules": [
            {"id": "tools", "field": "supports_tools", "op": "eq", "value": True},
            {"id": "quality-floor", "field": "bench_intelligence", "op": "gte", "value": 0.3},
            {"id": "price-ceiling", "field": "price_output_per_mtok", "op": "lte", "value": 25},
            {"id": "long-context", "field": "context_window", "op": "gte", "value": 32_000},
            {"id": "eu-only", "field": "regions", "op": "contains", "value": "eu"},
            {"id": "vision", "field": "supports_vision", "op": "eq", "value": True},
            {"id": "latency-ceiling", "field": "latency_p50_ms", "op": "lte", "value": 3_000},
            {"id": "vendor-exclusions", "field": "provider", "op": "not_in", "value": ["xai", "moonshot"]},
        ],
        "rank": {"by": "cost", "order": "asc", "then": [{"by": "bench_intelligence", "order": "desc"}]},
        "select": {"score_field": "bench_intelligence"},
        "fallback": {"models": fallback, "max_hops": 2},
        "baseline": baseline,
    }


_WORDS = (
    "the",
    "order",
    "refund",
    "account",
    "shipping",
    "invoice",
    "please",
    "help",
    "error",
    "password",
    "delivery",
    "customer",
    "update",
    "cancel",
    "subscription",
    "thanks",
)
_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "description": "Find an order by id",
        "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
    },
}


def make_requests(n: int = 64, seed: int = 3) -> list[dict[str, Any]]:
    """Chat-completions bodies: short and long prompts, some with tools, images or max_tokens."""
    rng = random.Random(seed)
    bodies = []
    for _ in range(n):
        words = rng.choice((12, 60, 400, 3_000, 20_000))
        text = " ".join(rng.choice(_WORDS) for _ in range(words))
        user: dict[str, Any] = {"role": "user", "content": text}
        if rng.random() < 0.2:
            user = {
                "role": "user",
                "content": [
                    {"type": "text", "text": text},
                    {"type": "image_url", "image_url": {"url": "https://example.invalid/a.png"}},
                ],
            }
        body: dict[str, Any] = {
            "model": MODEL_GROUP,
            "messages": [{"role": "system", "content": "You are a support agent."}, user],
        }
        if rng.random() < 0.6:
            body["tools"] = [_TOOL]
        if rng.random() < 0.5:
            body["max_tokens"] = rng.choice((256, 1_024, 4_096, 20_000))
        bodies.append(body)
    return bodies


# -- timing ---------------------------------------------------------------------------------


def percentile(sorted_ns: list[int], q: float) -> int:
    """Nearest-rank percentile of already sorted samples."""
    k = max(0, min(len(sorted_ns) - 1, round(q / 100 * len(sorted_ns) + 0.5) - 1))
    return sorted_ns[k]


class Timed:
    """Samples, in ns, of ``call(i)`` (or ``await call(i)`` when ``is_async``), each call timed on its own."""

    def __init__(self, call: Callable[[int], Any], is_async: bool = False) -> None:
        self.call = call
        self.is_async = is_async
        self.samples: list[int] = []
        self.i = 0
        self.loop = asyncio.new_event_loop() if is_async else None

    def run(self, n: int, record: bool = True, deadline_ns: int | None = None, min_calls: int = 1) -> list[int]:
        """Make ``n`` calls (fewer if ``deadline_ns`` of wall time runs out, but ``min_calls``); their samples."""
        if self.loop is not None:
            return self.loop.run_until_complete(self._arun(n, record, deadline_ns, min_calls))
        call, clock, samples, start = self.call, time.perf_counter_ns, [], self.i
        end = clock() + deadline_ns if deadline_ns is not None else None
        for k in range(n):
            t0 = clock()
            call(start + k)
            t1 = clock()
            samples.append(t1 - t0)
            if end is not None and t1 >= end and k + 1 >= min_calls:
                break
        return self._done(samples, record)

    async def _arun(self, n: int, record: bool, deadline_ns: int | None, min_calls: int) -> list[int]:
        call, clock, samples, start = self.call, time.perf_counter_ns, [], self.i
        end = clock() + deadline_ns if deadline_ns is not None else None
        for k in range(n):
            t0 = clock()
            await call(start + k)
            t1 = clock()
            samples.append(t1 - t0)
            if end is not None and t1 >= end and k + 1 >= min_calls:
                break
        return self._done(samples, record)

    def _done(self, samples: list[int], record: bool) -> list[int]:
        self.i += len(samples)
        if record:
            self.samples += samples
        return samples

    def close(self) -> None:
        if self.loop is not None:
            self.loop.close()

    def p50_p99(self) -> tuple[int, int]:
        ordered = sorted(self.samples)
        return percentile(ordered, 50), percentile(ordered, 99)


MIN_SAMPLES = 100


def measure(
    timers: dict[str, Timed], iterations: int, warmup: int, budget_s: float, rounds: int = 10
) -> dict[str, tuple[int, int, int]]:
    """Warm every timer up, then take up to ``iterations`` samples of each, interleaved in ``rounds`` so that
    a change in machine load over the run is shared by every router instead of landing on one.

    A router too slow for ``iterations`` calls in ``budget_s`` seconds gets as many as fit (at least
    MIN_SAMPLES); its warm-up is held to a tenth of the budget.
    """
    budget_ns = int(budget_s * 1e9)
    planned = {}
    for name, t in timers.items():
        # LiteLLM's first call in a process sets things up (a quarter of a second): never judge by it alone.
        warm = sorted(t.run(warmup, record=False, deadline_ns=budget_ns // 10, min_calls=min(warmup, 10)))
        typical = warm[len(warm) // 2]
        planned[name] = min(iterations, max(MIN_SAMPLES, budget_ns // max(typical, 1)))
    for r in range(rounds):
        gc.collect()
        for name, t in timers.items():
            n = planned[name] // rounds + (1 if r < planned[name] % rounds else 0)
            if n:
                t.run(n)
    for t in timers.values():
        t.close()
    return {name: (*t.p50_p99(), len(t.samples)) for name, t in timers.items()}


# -- ours -----------------------------------------------------------------------------------


class Ours:
    def __init__(self, catalog_doc: dict[str, Any], bodies: list[dict[str, Any]]) -> None:
        self.catalog = Catalog.from_document(catalog_doc, source=f"<synthetic {len(catalog_doc['models'])}>")
        self.policy = validate_policy(make_policy_document(catalog_doc), self.catalog)
        self.router = Router(self.catalog)
        self.bodies = bodies
        compiled = self.router.compile(self.policy)  # compiled once, then reused by every decide
        # `survivors` is the compiled policy's own; a tree without it (run by --compare) just prints no count.
        self.static_survivors = sum(s is not None for s in getattr(compiled, "survivors", ()))
        self.live, self.live_policy = _live_setup(self.catalog, catalog_doc)
        decisions = [self.router.decide(self.policy, b) for b in bodies]
        self.mean_candidates = sum(len(d.candidates) for d in decisions) / len(decisions)
        assert all(d.selected is not None for d in decisions), "every synthetic request should have a winner"

    def call(self, i: int) -> Any:
        """The decision proper: the request's features, the compiled policy (a cache hit), filter, rank, select."""
        body = self.bodies[i % len(self.bodies)]
        return self.router.compile(self.policy).decide(features_from_request(body))

    def call_live(self, i: int) -> Any:
        """The decision under the policy plus three live rules, every model observed (the live values read at
        decide time from the live state's per-model rows; the compiled policy is a cache hit as above)."""
        body = self.bodies[i % len(self.bodies)]
        return self.router.compile(self.live_policy).decide(features_from_request(body), live=self.live)

    def call_router(self, i: int) -> Any:
        """The same through ``Router.decide``, which adds the decision span and metrics (OTel API, no SDK here)."""
        return self.router.decide(self.policy, self.bodies[i % len(self.bodies)])


LIVE_RULES = (
    {"id": "fast-now", "field": "live.latency_p50_ms", "op": "lte", "value": 5_000},
    {"id": "healthy", "field": "live.error_rate", "op": "lte", "value": 0.5},
    {"id": "not-swamped", "field": "live.in_flight", "op": "lte", "value": 64},
)


def _live_setup(catalog: Catalog, catalog_doc: dict[str, Any]) -> tuple[Any, Any]:
    """A live state in which every model answered once (its catalog latency) and the policy with three live rules;
    (None, None) on a tree without live fields (run by --compare)."""
    try:
        from unhardcoded.router.live import LiveState
    except ImportError:
        return None, None
    live = LiveState()
    for m in catalog.models:
        live.record_success(m.id, None, float(m.values.get("latency_p50_ms") or 1000))
    doc = make_policy_document(catalog_doc)
    doc["rules"] = [*doc["rules"], *LIVE_RULES]
    return live, validate_policy(doc, catalog)


# -- LiteLLM --------------------------------------------------------------------------------


def import_litellm() -> tuple[Any, str | None]:
    try:
        import litellm
    except Exception as exc:  # noqa: BLE001 - any import failure means: no comparison this run
        return None, f"{type(exc).__name__}: {exc}"
    litellm.telemetry = False
    litellm.suppress_debug_info = True
    litellm.set_verbose = False
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return litellm, None


def litellm_model_list(catalog_doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One deployment per catalog model in one model group, priced as the catalog prices it; never called."""
    return [
        {
            "model_name": MODEL_GROUP,
            "litellm_params": {
                "model": f"openai/{m['id']}",
                "api_key": "sk-bench-not-a-key",
                "api_base": "http://127.0.0.1:9/v1",  # discard port: nothing is ever sent
                "input_cost_per_token": m["price_input_per_mtok"] / 1e6,
                "output_cost_per_token": m["price_output_per_mtok"] / 1e6,
            },
            "model_info": {"id": m["id"]},
        }
        for m in catalog_doc["models"]
    ]


LITELLM_STRATEGIES = ("simple-shuffle", "latency-based-routing", "cost-based-routing")
ASYNC_ONLY = {"cost-based-routing"}  # LiteLLM's LowestCostLoggingHandler only selects on the async path


def litellm_timer(litellm: Any, catalog_doc: dict[str, Any], bodies: list[dict[str, Any]], strategy: str) -> Timed:
    router = litellm.Router(model_list=litellm_model_list(catalog_doc), routing_strategy=strategy)
    messages = [b["messages"] for b in bodies]
    n = len(messages)
    if strategy in ASYNC_ONLY:

        def acall(i: int) -> Any:
            return router.async_get_available_deployment(model=MODEL_GROUP, messages=messages[i % n], request_kwargs={})

        return Timed(acall, is_async=True)

    def call(i: int) -> Any:
        return router.get_available_deployment(model=MODEL_GROUP, messages=messages[i % n])

    return Timed(call)


# -- report ---------------------------------------------------------------------------------


def fmt(ns: int | None) -> str:
    if ns is None:
        return "-"
    if ns < 1_000_000:
        return f"{ns / 1_000:.1f} us"
    return f"{ns / 1_000_000:.2f} ms"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) for c, w in zip(cells, widths))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--sizes",
        default=",".join(map(str, DEFAULT_SIZES)),
        help="comma-separated catalog sizes (default: %(default)s)",
    )
    ap.add_argument(
        "--iterations", type=int, default=None, help="timed decisions per size and router (default 5000, --quick 500)"
    )
    ap.add_argument("--quick", action="store_true", help="fewer iterations, simple-shuffle only for LiteLLM")
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds of timed calls per size and router, at most (default 15, --quick 3); "
        f"a slower router gets fewer calls, never under {MIN_SAMPLES}",
    )
    ap.add_argument("--no-litellm", action="store_true", help="time ours only")
    ap.add_argument("--require-litellm", action="store_true", help="exit 2 if LiteLLM cannot be imported")
    ap.add_argument(
        "--check", action="store_true", help="exit 1 if a target is missed (with --compare: if a figure is worse)"
    )
    compare.add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        ap.error(f"--sizes: expected comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) < 1:
        ap.error("--sizes: catalog sizes must be positive")
    iterations = args.iterations or (500 if args.quick else 5_000)
    if iterations < 1:
        ap.error("--iterations must be positive")
    warmup = max(20, iterations // 10)
    budget = args.budget if args.budget is not None else (3.0 if args.quick else 15.0)
    if budget <= 0:
        ap.error("--budget must be positive")
    strategies = LITELLM_STRATEGIES[:1] if args.quick else LITELLM_STRATEGIES
    if args.child:
        return _child(sizes, iterations, warmup, budget)
    if args.compare:
        return _compare(args, sizes, iterations, budget)

    litellm, why = (None, "--no-litellm") if args.no_litellm else import_litellm()
    if litellm is None:
        print(
            f"LiteLLM NOT available ({why}): printing our figures only."
            + ("" if args.no_litellm else " Install it with: pip install -e '.[bench]'"),
            file=sys.stderr,
        )
        if args.require_litellm:
            return 2

    bodies = make_requests()
    print(
        f"decision time: up to {iterations} timed calls per size and router (at most {budget:g} s of them) after "
        f"{warmup} warm-up, interleaved in 10 rounds; "
        f"Python {sys.version.split()[0]}"
        + (f"; litellm {_litellm_version()}" if litellm else "")
        + f"; {os.cpu_count()} CPUs, load average {_load()}"
    )
    # (p50 ns, p99 ns, calls timed)
    ours: dict[int, tuple[int, int, int]] = {}
    ours_router: dict[int, tuple[int, int, int]] = {}
    ours_live: dict[int, tuple[int, int, int]] = {}
    theirs: dict[tuple[int, str], tuple[int, int, int]] = {}
    shape_rows = []
    for size in sizes:
        doc = make_catalog_document(size)
        o = Ours(doc, bodies)
        shape_rows.append([str(size), str(o.static_survivors), f"{o.mean_candidates:.1f}"])
        timers = {"ours": Timed(o.call), "ours-router": Timed(o.call_router), "ours-live": Timed(o.call_live)}
        if litellm is not None:
            for strategy in strategies:
                timers[strategy] = litellm_timer(litellm, doc, bodies, strategy)
        results = measure(timers, iterations, warmup, budget)
        ours[size] = results["ours"]
        ours_router[size] = results["ours-router"]
        ours_live[size] = results["ours-live"]
        for strategy in strategies if litellm is not None else ():
            theirs[(size, strategy)] = results[strategy]
        print(
            f"  {size} models: ours p50 {fmt(ours[size][0])}"
            + (f", LiteLLM simple-shuffle p50 {fmt(theirs[(size, strategies[0])][0])}" if litellm else ""),
            file=sys.stderr,
            flush=True,
        )

    print()
    print("policy: 8 rules, rank by cost asc then bench_intelligence desc, 2-model fallback; 64 request bodies")
    print(table(["models", "pass policy", "mean candidates/request"], shape_rows))
    print()
    rows = []
    for size in sizes:
        p50, p99, _ = ours[size]
        lt = theirs.get((size, "simple-shuffle"))
        rows.append(
            [
                str(size),
                fmt(p50),
                fmt(p99),
                fmt(lt[0] if lt else None),
                fmt(lt[1] if lt else None),
                str(lt[2]) if lt else "-",
                f"{lt[0] / p50:.1f}x" if lt else "-",
                f"{p50 / size:.0f} ns",
                fmt(ours_router[size][0]),
                fmt(ours_router[size][1]),
                fmt(ours_live[size][0]),
            ]
        )
    print(
        "ours = CompiledPolicy.decide(features_from_request(body)), policy compiled once and fetched from the Router's cache"
    )
    print("LiteLLM = Router.get_available_deployment(model, messages), simple-shuffle (its default)")
    print("via Router.decide = ours plus the decision span and metrics (OpenTelemetry API, no SDK configured)")
    print("3 live rules = ours with live.latency_p50_ms, live.error_rate, live.in_flight rules, every model observed")
    print(f"ours: {', '.join(str(ours[s][2]) for s in sizes)} calls timed per size")
    print(
        table(
            [
                "models",
                "ours p50",
                "ours p99",
                "LiteLLM p50",
                "LiteLLM p99",
                "calls",
                "ratio p50",
                "ours p50/model",
                "via Router.decide p50",
                "p99",
                "3 live rules p50",
            ],
            rows,
        )
    )
    if litellm is not None and len(strategies) > 1:
        print()
        print("other LiteLLM routing strategies (cost-based-routing is async-only: async_get_available_deployment)")
        rows = []
        for size in sizes:
            for strategy in strategies[1:]:
                p50, p99, calls = theirs[(size, strategy)]
                rows.append([str(size), strategy, fmt(p50), fmt(p99), str(calls), f"{p50 / ours[size][0]:.1f}x"])
        print(table(["models", "strategy", "LiteLLM p50", "LiteLLM p99", "calls", "ratio p50 vs ours"], rows))
    print()
    print("LiteLLM published: " + ", ".join(f"{ms} ms at {n}" for n, ms in LITELLM_PUBLISHED_MS.items()))

    print(f"load average at the end: {_load()} (p99 on a loaded machine measures the scheduler more than the router)")
    print()
    print("targets")
    missed = 0

    def verdict(ok: bool | None, text: str) -> None:
        nonlocal missed
        mark = "n/a " if ok is None else ("PASS" if ok else "MISS")
        missed += ok is False
        print(f"  [{mark}] {text}")

    for size, target in TARGET_P50_NS.items():
        if size in ours:
            verdict(ours[size][0] <= target, f"p50 <= {fmt(target)} at {size} models: {fmt(ours[size][0])}")
        else:
            verdict(None, f"p50 <= {fmt(target)} at {size} models: size not run")
    if 100 in ours_live:
        verdict(
            ours_live[100][0] <= TARGET_P50_NS[100],
            f"p50 <= {fmt(TARGET_P50_NS[100])} at 100 models with three live rules: {fmt(ours_live[100][0])}",
        )
    big = [s for s in sizes if s >= 100]
    if len(big) >= 2:
        per_model = {s: ours[s][0] / s for s in big}
        worst = per_model[big[-1]] / min(per_model.values())
        verdict(
            worst <= LINEAR_SLACK,
            f"linear growth: p50/model at {big[-1]} is {worst:.2f}x the best p50/model over sizes >= 100 "
            f"(<= {LINEAR_SLACK}x); p50 {big[0]}->{big[-1]} grew {ours[big[-1]][0] / ours[big[0]][0]:.1f}x "
            f"for {big[-1] / big[0]:.0f}x models",
        )
    else:
        verdict(None, "linear growth: needs two sizes >= 100")
    if litellm is not None:
        behind = [f"{s} ({strategy})" for (s, strategy), (p50, _, _) in theirs.items() if p50 <= ours[s][0]]
        verdict(
            not behind,
            "ahead of LiteLLM at every size and strategy (p50)"
            + (f": behind at {', '.join(behind)}" if behind else ""),
        )
    else:
        verdict(None, "ahead of LiteLLM at every size: LiteLLM not available")
    return 1 if (args.check and missed) else 0


def _child(sizes: list[int], iterations: int, warmup: int, budget: float) -> int:
    """One run of ours (both columns) on whatever tree is on the path, for --compare; no LiteLLM."""
    bodies = make_requests()
    figures = {}
    for size in sizes:
        o = Ours(make_catalog_document(size), bodies)
        results = measure({"ours": Timed(o.call), "router": Timed(o.call_router)}, iterations, warmup, budget)
        figures[f"ours_{size}"] = results["ours"][0] / 1_000
        figures[f"router_{size}"] = results["router"][0] / 1_000
    compare.report(figures, calls=f"up to {iterations} timed per size and column after {warmup} warm-up")
    return 0


def _compare(args: argparse.Namespace, sizes: list[int], iterations: int, budget: float) -> int:
    figures = []
    for size in sizes:
        figures.append(compare.Figure(f"ours_{size}", f"CompiledPolicy.decide p50, {size} models", "us"))
        figures.append(compare.Figure(f"router_{size}", f"Router.decide p50, {size} models", "us"))
    argv = ["--sizes", ",".join(map(str, sizes)), "--iterations", str(iterations), "--budget", f"{budget:g}"]
    worse = compare.compare("decision time", __file__, argv, args.compare, figures, args.compare_rounds)
    return 1 if (args.check and worse) else 0


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _litellm_version() -> str:
    try:
        from importlib.metadata import version

        return version("litellm")
    except Exception:  # noqa: BLE001
        return "?"


if __name__ == "__main__":
    sys.exit(main())
