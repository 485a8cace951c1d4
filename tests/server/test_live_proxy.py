"""Live routing through the real proxy: cooldowns, rate-limit headroom and several keys, with simulated providers on
loopback that count their calls, and a clock the test moves (no waiting out a cooldown)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from apps.proxy_harness import PROVIDER_OF, SELECTED, catalog_simulators, providers_for, serving
from unhardcoded.catalog import Catalog
from unhardcoded.policy import load_policy_file, validate_policy
from unhardcoded.policy.builtin import builtin_policy_dir
from unhardcoded.router import Router
from unhardcoded.router.live import LiveState
from unhardcoded.router.providers import ProviderClient, ProviderConfig, ProviderKey, ProvidersConfig
from unhardcoded.server import create_app
from unhardcoded.testing import capture
from unhardcoded.testing.simulator import error, ok

PROVIDER = PROVIDER_OF[SELECTED]
"""The provider of the shipped support policy's pick, the one these tests make fail."""


def builtin_policy(name: str) -> Any:
    return load_policy_file(builtin_policy_dir() / f"{name}.yaml")


class Clock:
    """The live state's time, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _support_with_health(**health: Any) -> Any:
    doc = builtin_policy("support").to_document()
    doc["health"] = health
    return validate_policy(doc)


class LiveStack:
    def __init__(self, sims: dict[str, Any], server: Any, clock: Clock, live: LiveState) -> None:
        self.sims, self.server, self.clock, self.live = sims, server, clock, live

    def ask(self, content: str = "Where is my parcel?") -> tuple[str, dict[str, Any]]:
        import httpx

        r = httpx.post(
            f"{self.server.base_url}/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": content}]},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        receipt = httpx.get(f"{self.server.base_url}/x/receipts/{r.headers['x-unhardcoded-request-id']}").json()
        return r.headers["x-unhardcoded-model"], receipt

    def calls(self, provider: str, model: str) -> int:
        return sum(1 for r in self.sims[provider].requests if r.model == model)


def _stack(
    simulated_provider: Any, providers: ProvidersConfig | None = None, meter_provider: Any = None, **health: Any
) -> Iterator[LiveStack]:
    sims = catalog_simulators(simulated_provider)
    clock = Clock()
    live = LiveState(clock=clock)
    client = ProviderClient(providers or providers_for(sims, timeout_s=5.0))
    policy = _support_with_health(**health) if health else builtin_policy("support")
    app = create_app(
        Router(Catalog.builtin(), client, live=live), [policy], default_policy="support", meter_provider=meter_provider
    )
    with serving(app, closing=[client]) as server:
        yield LiveStack(sims, server, clock, live)
    client.close()


@pytest.fixture
def stack(simulated_provider: Any) -> Iterator[LiveStack]:
    yield from _stack(simulated_provider, failures=5, window="60s", cooldown="30s")


def test_five_failures_cool_the_model_down_then_one_probe_finds_it_recovered(stack: LiveStack) -> None:
    stack.sims[PROVIDER].set_behavior(SELECTED, error(503))
    for _ in range(5):
        model, receipt = stack.ask()
        assert model != SELECTED and receipt["selected"]["model"] == SELECTED  # tried, failed, fell back
    assert stack.calls(PROVIDER, SELECTED) == 5

    # Cooled down: answered by another model, the failing provider not called, the receipt says why and until when.
    for _ in range(3):
        model, receipt = stack.ask()
        assert model != SELECTED and receipt["selected"]["model"] != SELECTED
        [why] = [r for r in receipt["rejected"] if r["model"] == SELECTED]
        assert why["rule"] == "live:cooldown" and why["field"] == "live.cooldown"
        assert why["observed"]["failures"] == 5
        assert why["observed"]["until"] == "2027-01-15T08:00:30.000Z"
        assert re.fullmatch(r"cooling down after 5 failures \(until 2027-01-15T08:00:30\.000Z\)", why["message"])
        assert receipt["live"]["models"][SELECTED]["live:cooldown"] == why["observed"]
        assert [a["model"] for a in receipt["attempts"]] == [receipt["selected"]["model"]]
    assert stack.calls(PROVIDER, SELECTED) == 5

    # The cooldown ends; the provider has recovered: one probe goes through and the model is routed to again.
    stack.sims[PROVIDER].set_behavior(SELECTED, ok())
    stack.clock.now += 30
    model, receipt = stack.ask()
    assert model == SELECTED and not any(r["model"] == SELECTED for r in receipt["rejected"])
    model, _ = stack.ask()
    assert model == SELECTED
    assert stack.calls(PROVIDER, SELECTED) == 7


def test_a_probe_that_fails_cools_the_model_down_again(stack: LiveStack) -> None:
    stack.sims[PROVIDER].set_behavior(SELECTED, error(500))
    for _ in range(5):
        stack.ask()
    stack.clock.now += 30
    _, receipt = stack.ask()  # the probe: tried, failed, fell back
    assert receipt["selected"]["model"] == SELECTED and receipt["attempts"][0]["status"] == "error"
    _, receipt = stack.ask()
    [why] = [r for r in receipt["rejected"] if r["model"] == SELECTED]
    assert why["rule"] == "live:cooldown" and why["observed"]["until"] == "2027-01-15T08:01:00.000Z"
    assert stack.calls(PROVIDER, SELECTED) == 6


def test_low_remaining_tokens_avoid_the_model_until_the_reset(stack: LiveStack) -> None:
    headroom = {"x-ratelimit-remaining-tokens": "40", "x-ratelimit-reset-tokens": "6m0s"}
    stack.sims[PROVIDER].set_behavior(SELECTED, ok(headers=headroom))
    model, receipt = stack.ask()
    assert model == SELECTED and receipt.get("live") is None
    stack.sims[PROVIDER].set_behavior(SELECTED, ok())

    model, receipt = stack.ask("Please summarize the whole refund policy " * 10)
    assert model != SELECTED
    [why] = [r for r in receipt["rejected"] if r["model"] == SELECTED]
    assert why["rule"] == "live:rate_limit" and why["field"] == "live.ratelimit_remaining_tokens"
    assert why["observed"]["remaining_tokens"] == 40 and why["observed"]["reset"] == "2027-01-15T08:06:00.000Z"
    assert stack.calls(PROVIDER, SELECTED) == 1

    stack.clock.now += 361
    model, _ = stack.ask("Please summarize the whole refund policy " * 10)
    assert model == SELECTED
    assert stack.calls(PROVIDER, SELECTED) == 2


def test_keys_are_balanced_by_weight_and_named_on_the_receipt(
    simulated_provider: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIVE_KEY_A", "sk-live-aaaa")
    monkeypatch.setenv("LIVE_KEY_B", "sk-live-bbbb")
    sims = catalog_simulators(simulated_provider)
    configs = [sim.provider_config(timeout_s=5.0) for name, sim in sims.items() if name != PROVIDER]
    picked = sims[PROVIDER]
    configs.append(
        ProviderConfig(
            name=PROVIDER,
            base_url=picked.base_url,
            keys=(ProviderKey(name="team-a", env="LIVE_KEY_A", weight=3), ProviderKey(name="team-b", env="LIVE_KEY_B")),
        )
    )
    for stack in _stack(simulated_provider, ProvidersConfig(providers=configs)):
        stack.sims = {**stack.sims, PROVIDER: picked}
        keys = []
        for _ in range(8):
            model, receipt = stack.ask()
            assert model == SELECTED
            keys.append(receipt["attempts"][0]["key"])
            assert "sk-live" not in str(receipt)
        assert Counter(keys) == {"team-a": 6, "team-b": 2}
        sent = Counter(r.headers["authorization"] for r in picked.requests)
        assert sent == {"Bearer sk-live-aaaa": 6, "Bearer sk-live-bbbb": 2}


def test_circuit_and_headroom_gauges(simulated_provider: Any) -> None:
    with capture() as tel:
        for stack in _stack(simulated_provider, meter_provider=tel.meter_provider, failures=5, window=60, cooldown=30):
            headroom = {"x-ratelimit-remaining-requests": "7", "x-ratelimit-reset-requests": "20ms"}
            stack.sims[PROVIDER].set_behavior(SELECTED, ok(headers=headroom))
            stack.ask()
            stack.sims[PROVIDER].set_behavior(SELECTED, error(500))
            for _ in range(5):
                stack.ask()
            circuit = tel.metric("unhardcoded.live.circuit")
            assert circuit[frozenset({("gen_ai.request.model", SELECTED)})] == 1
            remaining = tel.metric("unhardcoded.live.ratelimit.remaining")
            key = frozenset({("gen_ai.request.model", SELECTED), ("unhardcoded.live.ratelimit.kind", "requests")})
            assert remaining == {key: 7}
            stack.clock.now += 30
            assert tel.metric("unhardcoded.live.circuit")[frozenset({("gen_ai.request.model", SELECTED)})] == 2
            assert tel.metric("unhardcoded.live.ratelimit.remaining") == {}


def test_the_clock_starts_where_the_receipts_say() -> None:
    # The times asserted above: the test clock's epoch seconds in the receipt's ISO form.
    from unhardcoded.router.live import iso_ms

    assert iso_ms(int(Clock().now * 1e9)) == "2027-01-15T08:00:00.000Z"
