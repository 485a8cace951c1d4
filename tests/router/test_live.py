"""The live state on its own: headers read, events published and applied, live rules and ranking at decide time,
keys picked by weight, the policy's health settings and its fingerprint."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unhardcoded.catalog import Catalog
from unhardcoded.errors import PolicyError
from unhardcoded.policy import load_policy
from unhardcoded.policy.builtin import builtin_policy_dir
from unhardcoded.router import Router, features_from_request
from unhardcoded.router.live import HealthSettings, LiveState, parse_duration_s, ratelimit_from_headers
from unhardcoded.router.providers import ProvidersConfig, load_providers

NOW = 1_800_000_000.0
FEATURES = features_from_request({"messages": [{"role": "user", "content": "Where is my parcel?"}]})


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("1s", 1.0), ("0.5", 0.5), ("soon", None), ("", None)],
)
def test_reset_durations_as_openai_writes_them(text: str, seconds: float | None) -> None:
    assert parse_duration_s(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_headroom_from_openai_and_anthropic_headers() -> None:
    openai = ratelimit_from_headers(
        {
            "x-ratelimit-remaining-requests": "59",
            "x-ratelimit-remaining-tokens": "149984",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-reset-tokens": "6m0s",
        },
        NOW,
    )
    assert openai == {
        "remaining_requests": 59,
        "remaining_tokens": 149984,
        "reset_requests": NOW + 1,
        "reset_tokens": NOW + 360,
    }
    anthropic = ratelimit_from_headers(
        {"anthropic-ratelimit-tokens-remaining": "120", "anthropic-ratelimit-tokens-reset": "2027-01-15T08:01:00Z"}, NOW
    )
    assert anthropic is not None and anthropic["remaining_tokens"] == 120 and anthropic["reset_tokens"] == NOW + 60
    assert ratelimit_from_headers({"content-type": "application/json"}, NOW) is None
    assert ratelimit_from_headers({"x-ratelimit-remaining-tokens": "lots"}, NOW) is None


def test_every_change_is_published_as_a_plain_dict_and_applied_elsewhere_without_publishing_again() -> None:
    clock = Clock()
    events: list[dict[str, Any]] = []
    here = LiveState(clock=clock, publish=events.append)
    health = HealthSettings(failures=2, window_s=10, cooldown_s=5)
    here.record_success("m", None, 120.0, {"x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "2s"})
    here.record_failure("m", "k1", "503", None, health)
    here.record_failure("m", "k1", "503", None, health)
    assert [e["type"] for e in events] == ["success", "failure", "failure", "circuit_open"]
    assert events[-1] == {"type": "circuit_open", "model": "m", "at": NOW, "until": NOW + 5, "failures": 2}

    echoed: list[dict[str, Any]] = []
    there = LiveState(clock=clock, publish=echoed.append)
    for event in events:
        there.apply(dict(event))
    assert echoed == []
    assert there.cooldown_of("m", NOW) == here.cooldown_of("m", NOW) is not None
    assert there.value("m", "live.latency_p50_ms", NOW) == 120.0
    assert there.value("m", "live.consecutive_failures", NOW) == 2
    assert there.value("m", "live.error_rate", NOW) == pytest.approx(2 / 3)

    # Half-open after the cooldown: the first call is the probe, a second decision meanwhile still sees the cooldown.
    clock.now += 5
    assert here.cooldown_of("m", clock.now) is None
    here.begin_call("m")
    probing = here.cooldown_of("m", clock.now)
    assert probing is not None and probing["probing"] is True and probing["failures"] == 2
    here.end_call("m")
    here.record_success("m", None, 80.0)
    assert events[-1] == {"type": "circuit_close", "model": "m", "at": clock.now}
    assert here.cooldown_of("m", clock.now) is None


def test_keys_by_weight_skipping_one_cooling_down() -> None:
    clock = Clock()
    live = LiveState(clock=clock)
    keys = [("a", 3.0), ("b", 1.0)]
    assert [live.pick_key("m", keys, 10) for _ in range(8)].count("a") == 6
    for _ in range(5):
        live.record_failure("m", "a", "401")
    assert {live.pick_key("m", keys, 10) for _ in range(4)} == {"b"}
    clock.now += 31
    assert "a" in {live.pick_key("m", keys, 10) for _ in range(4)}


LIVE_POLICY = """
schema: sigma-pol/v1
name: live-rules
rules:
  - {id: fast-now, field: live.latency_p50_ms, op: lte, value: 2000}
  - {id: healthy, field: live.error_rate, op: lte, value: 0.5}
  - {id: calm, field: live.in_flight, op: lte, value: 8}
rank: {by: live.latency_p50_ms, order: asc}
"""


def test_live_rules_and_ranking_read_observed_values_and_the_documented_ones_otherwise() -> None:
    live = LiveState(clock=Clock())
    router = Router(telemetry=None, live=live)  # type: ignore[arg-type]
    policy = load_policy(LIVE_POLICY)
    catalog = Catalog.builtin()
    fastest = min(
        # a chat request: embedding models are rejected by request:kind, whatever their latency
        (
            m
            for m in catalog.models
            if m.values.get("latency_p50_ms") is not None and m.values.get("kind") != "embedding"
        ),
        key=lambda m: (m.values["latency_p50_ms"], m.id),
    )
    first = router.compile(policy).decide(FEATURES, live=live)
    assert first.selected is not None and first.selected.model == fastest.id  # the catalog's figure
    assert first.live == {
        "at": "2027-01-15T08:00:00.000Z",
        "fields": sorted(["live.latency_p50_ms", "live.error_rate", "live.in_flight"]),
        "models": {},
    }

    live.record_success(fastest.id, None, 2500.0)
    second = router.compile(policy).decide(FEATURES, live=live)
    [why] = [r for r in second.rejected if r.model == fastest.id]
    assert (why.rule, why.observed, why.message) == ("fast-now", 2500.0, "over fast now (2500 > 2000)")
    assert second.receipt_fields()["live"]["models"] == {
        fastest.id: {"live.latency_p50_ms": 2500.0, "live.error_rate": 0.0, "live.in_flight": 0}
    }


# The shipped support policy as it was before `health` (and `budget`) existed, and the fingerprint computed then.
SUPPORT_BEFORE_HEALTH = """
# Customer-support answers: tools required, a quality floor, a price ceiling; cheapest survivor wins.
schema: sigma-pol/v1
name: support
rules:
  - id: tools
    field: supports_tools
    op: eq
    value: true
  - id: quality-floor
    field: bench_intelligence
    op: gte
    value: 0.5
  - id: price-ceiling
    field: price_output_per_mtok
    op: lte
    value: 10
rank:
  by: cost
  order: asc
  then: [{by: bench_intelligence, order: desc}]
select:
  score_field: bench_intelligence
fallback:
  models: [claude-sonnet-4-6, gpt-5.5]
  on: [error, timeout, rate_limit]
  max_hops: 2
baseline: gpt-5.5
"""
SUPPORT_BEFORE_HEALTH_FINGERPRINT = "1142614073-1132739033"


def test_a_policy_without_health_keeps_its_fingerprint_and_health_is_in_it_only_when_set() -> None:
    support = load_policy(SUPPORT_BEFORE_HEALTH)
    assert support.fingerprint == SUPPORT_BEFORE_HEALTH_FINGERPRINT
    assert "health" not in support.canonical
    text = SUPPORT_BEFORE_HEALTH
    with_health = load_policy(text + "health: {failures: 3, window: 1m, cooldown: 500ms}\n")
    assert with_health.health is not None and (with_health.health.window, with_health.health.cooldown) == (60, 0.5)
    assert with_health.fingerprint != support.fingerprint
    assert (
        load_policy(text + "health: {failures: 3, window: 60, cooldown: 0.5}\n").fingerprint == with_health.fingerprint
    )


@pytest.mark.parametrize(
    ("health", "message"),
    [
        ("{failures: 0}", "health.failures: must be a whole number from 1 to 1000, got 0"),
        ("{window: soon}", "health.window: expected a positive duration like 30s, 500ms, 2m or 1h, got 'soon'"),
        ("{cooldown: -1}", "health.cooldown: expected a positive duration"),
        ("{failure: 3}", "health.failure: unknown key; did you mean failures?"),
    ],
)
def test_bad_health_is_refused_with_its_path(health: str, message: str) -> None:
    text = (builtin_policy_dir() / "support.yaml").read_text(encoding="utf-8")
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace("?", r"\?")):
        load_policy(text + f"health: {health}\n")


def test_providers_file_keys(tmp_path: Any) -> None:
    path = tmp_path / "providers.yaml"
    path.write_text(
        "providers:\n  - name: openai\n    base_url: https://api.openai.com/v1\n"
        "    keys: [{name: team-a, env: OPENAI_KEY_A, weight: 3}, {name: team-b, env: OPENAI_KEY_B}]\n",
        encoding="utf-8",
    )
    config = load_providers(path)
    assert [(k.name, k.env, k.weight) for k in config.providers[0].keys] == [
        ("team-a", "OPENAI_KEY_A", 3.0),
        ("team-b", "OPENAI_KEY_B", 1.0),
    ]
    path.write_text(
        "providers:\n  - name: openai\n    base_url: https://api.openai.com/v1\n    api_key_env: OPENAI_API_KEY\n"
        "    keys: [{name: a, env: A}, {name: a, env: B}]\n",
        encoding="utf-8",
    )
    with pytest.raises(Exception, match="give either api_key_env or keys, not both"):
        load_providers(path)
    assert ProvidersConfig(providers=[]).providers == []


def test_a_probe_the_caller_walked_away_from_leaves_the_next_call_to_probe() -> None:
    clock = Clock()
    live = LiveState(clock=clock)
    live.open_circuit("m", NOW + 5, failures=5)
    clock.now += 5
    live.begin_call("m")
    assert live.cooldown_of("m", clock.now) is not None  # probing
    live.end_call("m")
    live.release_probe("m")
    assert live.cooldown_of("m", clock.now) is None
    assert live.state_rows() == [("m", 2)]  # half-open: the next call is the probe


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(min_value=0, max_value=30)), min_size=1, max_size=600))
def test_the_error_rate_counted_as_calls_come_and_go_is_the_share_of_failures_in_the_window(
    calls: list[tuple[bool, float]],
) -> None:
    """The running count of failures equals a recount of the window (time moving on, the 256-call cap pushing out)."""
    now = [1_800_000_000.0]
    live = LiveState(clock=lambda: now[0])
    for ok, step in calls:
        now[0] += step
        if ok:
            live.record_success("m", None, 100.0)
        else:
            live.record_failure("m", None, "error", health=HealthSettings(failures=10_000, window_s=1, cooldown_s=1))
        outcomes = live.models["m"].outcomes
        assert live.models["m"].error_rate == sum(1 for _, good in outcomes if not good) / len(outcomes)
