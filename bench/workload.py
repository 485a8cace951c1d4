"""The decision the benchmarks time: the support policy over the built-in catalog, rejecting 10 of its 35 models
(as it rejected 10 of 30 before the catalog took real prices and embedding models: the same span shapes)."""

from __future__ import annotations

POLICY = {
    "schema": "sigma-pol/v1",
    "name": "support",
    "rules": [
        {"id": "tools", "field": "supports_tools", "op": "eq", "value": True},
        {"id": "quality-floor", "field": "bench_intelligence", "op": "gte", "value": 0.42},
        {"id": "price-ceiling", "field": "price_output_per_mtok", "op": "lte", "value": 30},
    ],
    "fallback": {"models": ["claude-sonnet-4-6", "gpt-5.5", "gemini-3.1-pro-preview"], "max_hops": 2},
    "baseline": "gpt-5.5",
}
