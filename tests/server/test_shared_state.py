"""State shared by proxies through a real redis-server (``serve --state redis://...``): budget spending counted
across proxies, live events from one applied by the other, and proxies that keep answering when Redis dies.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from apps.proxy_harness import free_port
from redis_server import RedisServer
from server.test_budgets import CAPPED, NOON, OPEN, OPUS, Proxy, policies, running
from unhardcoded.semconv import metrics as M
from unhardcoded.server.state import (
    Charge,
    InProcessState,
    RedisState,
    StateError,
    open_state,
    redacted_url,
    window_key,
)
from unhardcoded.testing import TelemetryCapture


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def eventually(condition: Callable[[], bool], what: str, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


class LiveStandIn:
    """A stand-in for the router's LiveState: applies the live events another proxy published."""

    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []

    def apply(self, event: dict[str, Any]) -> None:
        self.applied.append(event)


# --------------------------------------------------------------------------- the backends, directly


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.mark.parametrize("backend", ["in-process", "redis"])
def test_a_reservation_charges_every_budget_or_none(backend: str, redis_server: RedisServer) -> None:
    async def scenario() -> None:
        state = InProcessState() if backend == "in-process" else RedisState(redis_server.url)
        await state.start()
        try:
            small = Charge("unhardcoded:test:small", 0.10, 60)
            large = Charge("unhardcoded:test:large", 1.00, 60)
            first = await state.reserve([large, small], 0.06)
            assert first.refused is None and first.spent == pytest.approx((0.06, 0.06))
            # The second would take `small` over: refused there, and `large` is not charged either.
            second = await state.reserve([large, small], 0.06)
            assert second.refused == 1 and second.spent == pytest.approx((0.06, 0.06))
            state.settle([(small, -0.05), (large, -0.05)])  # applied in the background
            await state.drain()
            third = await state.reserve([large, small], 0.06)
            assert third.refused is None and third.spent == pytest.approx((0.07, 0.07))
            assert third.shared is (backend == "redis")
            # A spent budget refuses even a request estimated at nothing.
            state.settle([(small, 0.05)])
            await state.drain()
            assert (await state.reserve([small], 0.0)).refused == 0
        finally:
            await state.aclose()

    _run(scenario())
    if backend == "redis":
        r = redis.Redis(port=redis_server.port)
        try:
            assert 0 < r.ttl("unhardcoded:test:small") <= 60  # the window's key goes away by itself
        finally:
            r.close()


def test_a_proxy_starts_and_reserves_on_its_local_view_with_no_redis_there() -> None:
    async def scenario() -> None:
        state = RedisState(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
        await state.start()
        try:
            charge = Charge("unhardcoded:test:x", 0.10, 60)
            first = await state.reserve([charge], 0.06)
            assert first.refused is None and first.shared is False
            assert (await state.reserve([charge], 0.06)).refused == 0  # the local view counts on
            state.settle([(charge, -0.06)])
            state.publish({"kind": "probe"})  # queued, then dropped as degraded: never raises
            await asyncio.sleep(0)
            assert state.degraded >= 3
        finally:
            await state.aclose()

    _run(scenario())


def test_budget_windows_are_aligned_to_the_epoch_so_every_proxy_names_the_same_one() -> None:
    key, ttl, resets_at = window_key("policy", "support", "24h", 86400, NOON)
    assert key == "unhardcoded:budget:policy:support:24h:20000"
    assert resets_at == 86400 * 20_001 and ttl == 43_200 + 60
    assert window_key("policy", "support", "24h", 86400, NOON + 43_200)[0].endswith(":20001")


def test_a_state_url_is_checked_and_its_password_never_shown() -> None:
    assert isinstance(open_state(None), InProcessState)
    assert isinstance(open_state("redis://127.0.0.1:6379/0"), RedisState)
    for bad, needle in (
        ("http://127.0.0.1:6379", "expected redis://HOST:PORT/DB"),
        ("redis://127.0.0.1:port/0", "the port is not a number"),
        ("redis://127.0.0.1:6379/zero", "the database is a number"),
    ):
        with pytest.raises(StateError, match=needle):
            open_state(bad)
    assert redacted_url("redis://:s3cret@h:1/0") == "redis://:***@h:1/0"
    with pytest.raises(StateError) as caught:
        open_state("http://user:s3cret@h:1/0")
    assert "s3cret" not in str(caught.value)


# --------------------------------------------------------------------------- two proxies, one Redis


@pytest.fixture
def two_proxies(
    simulated_provider: Any, redis_server: RedisServer, tel: TelemetryCapture
) -> Iterator[tuple[Proxy, Proxy]]:
    for first in running(simulated_provider, policies(CAPPED, OPEN), state=RedisState(redis_server.url), tel=tel):
        for second in running(simulated_provider, policies(CAPPED, OPEN), state=RedisState(redis_server.url)):
            for proxy in (first, second):
                eventually(lambda p=proxy: p.server.app.state.shared_state.subscribed.is_set(), "not subscribed")
            yield first, second


def test_spending_through_one_proxy_counts_on_the_other(two_proxies: tuple[Proxy, Proxy]) -> None:
    a, b = two_proxies
    assert [a.post("capped").status_code for _ in range(3)] == [200, 200, 200]
    refused = b.post("capped")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    assert b.opus_calls() == 0
    assert b.receipt(refused.headers["x-unhardcoded-request-id"])["budget"]["spent_usd"] == pytest.approx(3 * 0.025025)


def test_a_live_event_published_by_one_proxy_is_applied_by_the_other(two_proxies: tuple[Proxy, Proxy]) -> None:
    a, b = two_proxies
    live_a, live_b = LiveStandIn(), LiveStandIn()
    a.server.app.state.shared_state.subscribe(live_a.apply)
    b.server.app.state.shared_state.subscribe(live_b.apply)
    event = {"kind": "cooldown", "model": OPUS, "failures": 5, "until": NOON + 30}
    _call_on_server_loop(a, lambda: a.server.app.state.shared_state.publish(event))
    eventually(lambda: live_b.applied == [event], "the other proxy did not apply the event")
    time.sleep(0.1)  # its own event is not echoed back to the proxy that published it
    assert live_a.applied == []


def _call_on_server_loop(proxy: Proxy, call: Callable[[], None]) -> None:
    """Run ``call`` on the loop serving ``proxy`` (where the app's state lives)."""
    loop = proxy.server.app.state.shared_state.loop
    done = asyncio.run_coroutine_threadsafe(_call(call), loop)
    done.result(timeout=5)


async def _call(call: Callable[[], None]) -> None:
    call()


def test_killing_redis_leaves_both_proxies_answering_and_counted_as_degraded(
    two_proxies: tuple[Proxy, Proxy], redis_server: RedisServer, tel: TelemetryCapture
) -> None:
    a, b = two_proxies
    assert a.post("capped").status_code == 200
    redis_server.stop()
    for proxy in (a, b):
        for _ in range(2):
            assert proxy.post("capped").status_code == 200
            assert proxy.post("open").status_code == 200
    degraded = sum(tel.metric(M.UNHARDCODED_STATE_DEGRADED).values())
    assert degraded >= 2
    assert b.server.app.state.shared_state.degraded >= 2
    # Each proxy keeps counting on its local view meanwhile: A has spent 3 answers' worth, the next is refused.
    assert a.post("capped").status_code == 429

    # Redis back (empty, on the same port): the proxies use it again and hear each other again.
    redis_server.start()
    live_b = LiveStandIn()
    b.server.app.state.shared_state.subscribe(live_b.apply)
    eventually(lambda: b.server.app.state.shared_state.subscribed.is_set(), "B did not subscribe again")
    eventually(lambda: a.server.app.state.shared_state.subscribed.is_set(), "A did not subscribe again")
    time.sleep(1.1)  # past RETRY_AFTER_S: the next operations go to Redis
    assert b.post("capped").status_code == 200
    r = redis.Redis(port=redis_server.port)
    try:
        eventually(lambda: any(r.scan_iter("unhardcoded:budget:policy:capped:*")), "no budget key in Redis")
    finally:
        r.close()
    _call_on_server_loop(a, lambda: a.server.app.state.shared_state.publish({"kind": "probe"}))
    eventually(lambda: live_b.applied == [{"kind": "probe"}], "the event after the outage did not arrive")


# --------------------------------------------------------------------------- serve --state


def test_serve_with_state_redis_starts_connected_to_it(redis_server: RedisServer, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "unhardcoded.cli",
            "serve",
            "--port",
            str(port),
            "--state",
            redis_server.url,
            "--no-access-log",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**__import__("os").environ, "OTEL_SDK_DISABLED": "true"},
    )
    try:
        import httpx

        eventually(lambda: _healthy(httpx, port) or proc.poll() is not None, "serve did not start", 60)
        assert proc.poll() is None
        r = redis.Redis(port=redis_server.port)
        try:  # its live-event subscription is on the channel
            eventually(lambda: r.pubsub_numsub("unhardcoded:live")[0][1] >= 1, "serve did not subscribe")
        finally:
            r.close()
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0].decode()
    assert "state: redis://127.0.0.1" in out


def test_serve_refuses_a_bad_state_url_with_exit_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "unhardcoded.cli", "serve", "--state", "postgres://x/0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "expected redis://HOST:PORT/DB" in done.stderr


def _healthy(httpx: Any, port: int) -> bool:
    try:
        return bool(httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200)
    except httpx.HTTPError:
        return False


# --------------------------------------------------------------------------- live state through Redis

PAIR = """
schema: sigma-pol/v1
name: pair
rules: [{id: pair, field: id, op: in, value: [gpt-5.4-mini, claude-haiku-4-5]}]
fallback: {models: [gpt-5.4-mini, claude-haiku-4-5]}
"""


def test_a_cooldown_tripped_through_one_proxy_is_honoured_by_the_other(
    simulated_provider: Any, redis_server: RedisServer
) -> None:
    """Five failures through proxy A cool the model down; proxy B, sharing Redis, routes around it without a call."""
    from unhardcoded.testing.simulator import error

    for a in running(simulated_provider, policies(PAIR), state=RedisState(redis_server.url)):
        for b in running(simulated_provider, policies(PAIR), state=RedisState(redis_server.url)):
            for proxy in (a, b):
                eventually(lambda p=proxy: p.server.app.state.shared_state.subscribed.is_set(), "not subscribed")
            cheapest = a.receipt(a.post("pair").headers["x-unhardcoded-request-id"])["selected"]["model"]
            provider = "openai" if cheapest == "gpt-5.4-mini" else "anthropic"
            a.sims[provider].set_behavior(cheapest, error(503))
            answered = [a.post("pair") for _ in range(5)]
            assert all(r.status_code == 200 for r in answered)  # each fell back to the other model
            assert a.proxy.router.live.blocked == {cheapest}
            eventually(lambda: cheapest in b.proxy.router.live.blocked, "B did not hear of the cooldown")

            before = sum(1 for r in b.sims[provider].requests if r.model == cheapest)
            routed = b.post("pair")
            assert routed.status_code == 200
            assert sum(1 for r in b.sims[provider].requests if r.model == cheapest) == before  # not even tried
            receipt = b.receipt(routed.headers["x-unhardcoded-request-id"])
            (rejection,) = [r for r in receipt["rejected"] if r["model"] == cheapest]
            assert rejection["rule"] == "live:cooldown"
            assert receipt["answered_by"] != cheapest


def test_an_event_it_cannot_read_is_left_out_and_the_subscription_goes_on(
    simulated_provider: Any, redis_server: RedisServer
) -> None:
    for a in running(simulated_provider, policies(PAIR), state=RedisState(redis_server.url)):
        for b in running(simulated_provider, policies(PAIR), state=RedisState(redis_server.url)):
            for proxy in (a, b):
                eventually(lambda p=proxy: p.server.app.state.shared_state.subscribed.is_set(), "not subscribed")
            assert b.proxy.router.live.apply({"kind": "from a newer version"}) is False
            _call_on_server_loop(a, lambda: a.server.app.state.shared_state.publish({"type": "circuit_open"}))
            until = time.time() + 60
            event = {"type": "circuit_open", "model": OPUS, "at": time.time(), "until": until, "failures": 5}
            _call_on_server_loop(a, lambda: a.server.app.state.shared_state.publish(event))
            eventually(lambda: OPUS in b.proxy.router.live.blocked, "the readable event after a bad one was lost")
