"""Hostile inline policies against the real `unhardcoded serve`: huge ones are refused with 413, and a stream of
distinct ones the proxy accepts leaves its memory within 100 MB of where it started (every cache bounded in bytes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from apps.proxy_harness import HELLO, free_port, make_stack
from unhardcoded import cli
from unhardcoded.catalog import Catalog
from unhardcoded.router import Router
from unhardcoded.router.engine import PolicyCompiler
from unhardcoded.router.features import features_from_request
from unhardcoded.server.app import RecentDecisions
from unhardcoded.server.policies import MAX_INLINE_POLICY_BYTES, MAX_INLINE_RULES
from unhardcoded.testing.capture import TelemetryCapture

pytest_plugins = ["conftest_providers"]

MiB = 1024 * 1024


def _policy(rules: int, tag: str, *, id_length: int = 8) -> dict[str, Any]:
    return {
        "schema": "sigma-pol/v1",
        "name": f"hostile-{tag}",
        "rules": [
            {"id": f"r{i}-{tag}".ljust(id_length, "x"), "field": "price_output_per_mtok", "op": "lte", "value": 10 + i}
            for i in range(rules)
        ],
        "rank": {"by": "cost", "order": "asc"},
    }


CORPUS = {
    "40k-rules-2-MiB": (_policy(40_000, "a"), 413),
    "one-rule-too-many": (_policy(MAX_INLINE_RULES + 1, "b"), 413),
    "few-rules-but-over-64-KiB": (_policy(100, "c", id_length=1000), 413),
}
HOSTILE_INPUTS = len(CORPUS) + 2  # and a stream of 20 distinct 2 MiB policies, and one of 400 distinct accepted ones


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    env = {
        **os.environ,
        "UNHARDCODED_STORE": str(tmp_path / "receipts.db"),
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", cli.__name__, "serve", "--port", str(port), "--no-access-log"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "serve exited"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "serve did not come up"
                time.sleep(0.05)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _rank(client: httpx.Client, port: int, policy: dict[str, Any]) -> httpx.Response:
    return client.post(f"http://127.0.0.1:{port}/x/rank", json={"messages": HELLO, "policy": policy})


@pytest.mark.parametrize("name", list(CORPUS))
def test_an_oversized_inline_policy_is_refused_with_413(served: tuple[int, int], name: str) -> None:
    port, _ = served
    policy, status = CORPUS[name]
    with httpx.Client(timeout=60) as client:
        answer = _rank(client, port, policy)
        assert answer.status_code == status, answer.text
        error = answer.json()["error"]
        assert error["code"] == "policy_too_large" and error["param"] == "policy"
        assert str(MAX_INLINE_RULES) in error["message"] or str(MAX_INLINE_POLICY_BYTES) in error["message"]
        assert client.get(f"http://127.0.0.1:{port}/healthz").status_code == 200


def test_twenty_distinct_2_MiB_policies_leave_memory_flat(served: tuple[int, int]) -> None:
    port, pid = served
    with httpx.Client(timeout=60) as client:
        assert _rank(client, port, _policy(5, "warm")).status_code == 200
        start = _rss(pid)
        for n in range(20):
            assert _rank(client, port, _policy(40_000, f"big{n}")).status_code == 413
        grown = _rss(pid) - start
    assert grown < 100 * MiB, f"RSS grew {grown / MiB:.0f} MiB"


def test_four_hundred_distinct_accepted_policies_leave_memory_within_bounds(served: tuple[int, int]) -> None:
    port, pid = served
    with httpx.Client(timeout=60) as client:
        assert _rank(client, port, _policy(5, "warm")).status_code == 200
        start = _rss(pid)
        for n in range(400):
            answer = _rank(client, port, _policy(MAX_INLINE_RULES, f"n{n}"))
            assert answer.status_code == 200, answer.text
        grown = _rss(pid) - start
    # What a kept policy and its decisions hold grows with the catalog's models (100 MiB was set at 30 models).
    bound = 100 * MiB * max(1.0, len(Catalog.builtin()) / 30)
    assert grown < bound, f"RSS grew {grown / MiB:.0f} MiB (bound {bound / MiB:.0f} MiB)"


def test_the_caches_count_their_bytes_and_stay_under_their_bounds() -> None:
    from unhardcoded.server.policies import PolicyDirectory, PolicyResolver

    catalog = Catalog.builtin()
    resolver = PolicyResolver(PolicyDirectory.of([], catalog), max_inline_bytes=1 * MiB)
    compiler = PolicyCompiler(max_bytes=1 * MiB)
    router = Router(catalog)
    recent = RecentDecisions(max_bytes=1 * MiB)
    for n in range(60):
        policy = resolver.resolve({"policy": _policy(MAX_INLINE_RULES, f"s{n}")}, None)
        compiler.compile(policy, catalog)
        recent.add(router.decide(policy, features_from_request({"messages": HELLO})))
    assert 0 < resolver.inline_bytes <= 1 * MiB
    assert 0 < compiler.size_bytes <= 1 * MiB
    assert 0 < recent.size_bytes <= 1 * MiB


def test_the_cache_sizes_are_reported_as_gauges(simulated_provider: Any) -> None:
    capture = TelemetryCapture()
    try:
        for stack in make_stack(simulated_provider, meter_provider=capture.meter_provider):
            with httpx.Client(timeout=30) as client:
                for n in range(3):
                    answer = _rank(client, stack.server.port, _policy(MAX_INLINE_RULES, f"g{n}"))
                    assert answer.status_code == 200
            sizes = {
                name: [p.value for p in capture.metrics(name)]
                for name in (
                    "unhardcoded.proxy.inline_policies.size",
                    "unhardcoded.proxy.compiled_policies.size",
                    "unhardcoded.proxy.recent_decisions.size",
                )
            }
    finally:
        capture.shutdown()
    assert all(len(values) == 1 and values[0] > 0 for values in sizes.values()), sizes
