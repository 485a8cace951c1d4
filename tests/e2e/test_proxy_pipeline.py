"""Proxy traffic through the Collector: `unhardcoded serve` -> otelcol -> Jaeger, Tempo and the receipts processor.

One module-scoped stack on free loopback ports: Jaeger, Tempo, the receipts
processor, otelcol-unhardcoded with the shipped otelcol.yaml, and the proxy as a
real subprocess exporting OTLP to the Collector, in front of simulated providers
(one per catalog provider, in this process, so a test can make a model fail).
The real `openai` client sends the traffic, in groups:

    plain         answered by the support policy's pick
    fallback      the pick fails (503), the first standby answers
    all_failed    the pick and both standbys fail: 502 to the caller
    solo_failed   a policy with no standby whose pick fails: 502, no fallback
    no_candidate  a policy nothing in the catalog passes: 422
    stream_cut    a stream that breaks off after two tokens: no silent retry

The Collector also runs a second config file, made at test time from the
shipped one, that gives each of otelcol.yaml's keep policies its own pipeline
(that policy alone, nothing sampled besides) ending in a loopback OTLP
receiver, so each policy is shown to match what our spans carry on its own.
"""

from __future__ import annotations

import io
import json
import time
import urllib.parse
from contextlib import ExitStack, redirect_stdout
from typing import Any

import openai
import pytest
import yaml

from otlp_receiver import OTLPReceiver
from unhardcoded.catalog import Catalog
from unhardcoded.cli import main as cli_main
from unhardcoded.policy import load_policy_file
from unhardcoded.policy.builtin import builtin_policy_dir
from unhardcoded.receipts.backends import JaegerSource, TempoSource
from unhardcoded.testing.simulator import SimulatedProvider, cut_after_tokens, error, ok

from .infra import (
    CONFIG_DIR,
    http_get,
    start_collector,
    start_jaeger,
    start_processor,
    start_proxy,
    start_tempo,
    wait_for,
)

pytestmark = pytest.mark.e2e

SERVICE = "e2e-proxy"
# The shipped support policy picks grok-4-fast-non-reasoning, then falls back to mistral-large-2512, then gpt-4.1.
SELECTED, FIRST_FALLBACK, SECOND_FALLBACK = "grok-4-fast-non-reasoning", "mistral-large-2512", "gpt-4.1"
HELLO = [{"role": "user", "content": "Where is my parcel?"}]
COUNTS = {"plain": 40, "fallback": 5, "all_failed": 3, "solo_failed": 3, "no_candidate": 2, "stream_cut": 2}
FAILED = ("all_failed", "solo_failed", "no_candidate", "stream_cut")
FAILURE_STATUS = {
    "all_failed": (502, "upstream_error"),
    "solo_failed": (502, "upstream_error"),
    "no_candidate": (422, "no_candidate"),
}
# What each keep policy of otelcol.yaml must keep, by traffic group (span-layout.md):
# fallback.triggered is true when a hop was taken; outcome failed/no_candidate sets the decision span to
# ERROR; a failed provider call sets its attempt span to ERROR, so every fallback trace holds an error too.
KEPT_BY_POLICY = {
    "keep-fallbacks": {"fallback", "all_failed"},
    "keep-failed-decisions": set(FAILED),
    "keep-errors": {"fallback", *FAILED},
}


def _support_policy(name: str, **changes: Any) -> dict[str, Any]:
    # through the package's loader: PyYAML alone reads the key `on:` as True
    policy = load_policy_file(builtin_policy_dir() / "support.yaml").model_dump(
        by_alias=True, mode="json", exclude_none=True
    )
    policy["name"] = name
    policy.update(changes)
    return policy


# The proxy cools a model down after 5 failures and routes around it (docs/live.md); these groups need the failing
# pick tried on every request, so they carry the support policy with a health that never trips.
STEADY = {"failures": 1000, "window": 1}
SUPPORT_STEADY = _support_policy("support", health=STEADY)
SOLO = _support_policy(
    "support-solo", fallback={"models": [], "on": ["error", "timeout", "rate_limit"], "max_hops": 0}, health=STEADY
)
IMPOSSIBLE = _support_policy(
    "support-impossible", rules=[{"id": "superhuman", "field": "bench_intelligence", "op": "gte", "value": 2}]
)


def _per_policy_config(receivers: dict[str, OTLPReceiver]) -> dict[str, Any]:
    """A second Collector config: each keep policy of the shipped tail_sampling, alone, in a pipeline of its own."""
    shipped = yaml.safe_load((CONFIG_DIR / "otelcol.yaml").read_text())
    sampling = shipped["processors"]["tail_sampling"]
    policies = {p["name"]: p for p in sampling["policies"]}
    assert set(KEPT_BY_POLICY) <= set(policies), f"otelcol.yaml's keep policies changed: {sorted(policies)}"
    config: dict[str, Any] = {"processors": {}, "exporters": {}, "service": {"pipelines": {}}}
    for name, rx in receivers.items():
        config["processors"][f"tail_sampling/{name}"] = {
            **{k: v for k, v in sampling.items() if k != "policies"},
            "policies": [policies[name]],
        }
        config["exporters"][f"otlp_http/{name}"] = {"endpoint": rx.http_endpoint}
        config["service"]["pipelines"][f"traces/{name}"] = {
            "receivers": ["otlp"],
            "processors": ["memory_limiter", f"tail_sampling/{name}"],
            "exporters": [f"otlp_http/{name}"],
        }
    return config


class Traffic:
    """The openai client against the proxy; every request's id and trace id, by group."""

    def __init__(self, proxy: str, sims: dict[str, SimulatedProvider]) -> None:
        self.client = openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0)
        self.sims = sims
        self.provider_of = {m.id: m.provider for m in Catalog.builtin().models}
        self.groups: dict[str, list[str]] = {g: [] for g in COUNTS}

    def behave(self, model: str, behavior: Any) -> None:
        self.sims[self.provider_of[model]].set_behavior(model, behavior)

    def send(self, group: str, **extra: Any) -> None:
        try:
            raw = self.client.chat.completions.with_raw_response.create(model="auto", messages=HELLO, **extra)
            headers = raw.headers
            if extra.get("stream"):
                try:
                    for _ in raw.parse():
                        pass
                except openai.APIError:
                    assert group == "stream_cut"
                else:
                    assert group != "stream_cut", "the stream was not cut"
            else:
                raw.parse()
                assert group in ("plain", "fallback"), f"{group} was answered"
        except openai.APIStatusError as exc:
            assert (exc.status_code, exc.code) == FAILURE_STATUS[group], f"{group}: {exc}"
            headers = exc.response.headers
        self.groups[group].append(headers["x-unhardcoded-request-id"])

    def run(self) -> None:
        n = COUNTS
        for _ in range(n["plain"]):
            self.send("plain")
        self.behave(SELECTED, error(503, message="simulated outage"))
        for _ in range(n["fallback"]):
            self.send("fallback", extra_body={"policy": SUPPORT_STEADY})
        self.behave(FIRST_FALLBACK, error(500))
        self.behave(SECOND_FALLBACK, error(500))
        for _ in range(n["all_failed"]):
            self.send("all_failed", extra_body={"policy": SUPPORT_STEADY})
        self.behave(FIRST_FALLBACK, ok())
        self.behave(SECOND_FALLBACK, ok())
        for _ in range(n["solo_failed"]):
            self.send("solo_failed", extra_body={"policy": SOLO})
        self.behave(SELECTED, ok())
        for _ in range(n["no_candidate"]):
            self.send("no_candidate", extra_body={"policy": IMPOSSIBLE})
        self.behave(SELECTED, cut_after_tokens(2))
        for _ in range(n["stream_cut"]):
            self.send("stream_cut", stream=True, extra_body={"policy": SUPPORT_STEADY})
        self.behave(SELECTED, ok())


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e-proxy")
    with ExitStack() as stack:
        sims = {}
        for name in sorted({m.provider for m in Catalog.builtin().models}):
            sims[name] = SimulatedProvider(name).start()
            stack.callback(sims[name].close)
        receivers = {name: OTLPReceiver().start() for name in KEPT_BY_POLICY}
        for rx in receivers.values():
            stack.callback(rx.close)
        per_policy = tmp / "otelcol-per-policy.yaml"
        per_policy.write_text(yaml.safe_dump(_per_policy_config(receivers), sort_keys=False))

        jaeger, j = start_jaeger(tmp)
        stack.callback(jaeger.stop)
        tempo, t = start_tempo(tmp)
        stack.callback(tempo.stop)
        processor, pr = start_processor(tmp)
        stack.callback(processor.stop)
        collector, c = start_collector(
            tmp,
            j["otlp_grpc"],
            t["otlp_grpc"],
            extra_configs=[per_policy],
            extra_env={"UNHARDCODED_PROCESSOR_ENDPOINT": pr["http"]},
        )
        stack.callback(collector.stop)
        providers = [{"name": s.name, "base_url": s.base_url, "timeout_s": 5} for s in sims.values()]
        proxy, url = start_proxy(tmp, providers, c["otlp_grpc"], service=SERVICE)
        stack.callback(proxy.stop)

        traffic = Traffic(url, sims)
        traffic.run()
        yield {
            "jaeger": j["query"],
            "tempo": t["http"],
            "processor": pr["http"],
            "proxy": url,
            "proxy_store": str(tmp / "proxy.db"),
            "receivers": receivers,
            "groups": traffic.groups,
        }


def _cli_json(*argv: str) -> dict:
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = cli_main(["receipt", *argv, "--json"])
    assert rc == 0, argv
    return json.loads(buf.getvalue())


def _processor_receipt(processor: str, request_id: str) -> dict | None:
    status, body = http_get(f"{processor}/receipts/{request_id}")
    return json.loads(body)["receipt"] if status == 200 else None


@pytest.fixture(scope="module")
def receipts(stack) -> dict[str, dict]:
    """Every request's receipt as the processor behind the Collector stored it (it sees every span, unsampled)."""
    out = {}
    for group, ids in stack["groups"].items():
        assert len(ids) == COUNTS[group], group
        for rid in ids:
            out[rid] = wait_for(
                f"{group} {rid} in the processor", lambda: _processor_receipt(stack["processor"], rid), timeout=30
            )
    return out


def _trace_ids(stack, receipts, *groups: str) -> set[str]:
    return {receipts[rid]["trace_id"] for g in groups for rid in stack["groups"][g]}


def _tempo_trace_ids(tempo: str, traceql: str) -> set[str]:
    now = int(time.time())
    q = urllib.parse.urlencode({"q": traceql, "limit": 1000, "start": now - 3600, "end": now + 60})
    status, body = http_get(f"{tempo}/api/search?{q}", timeout=10)
    assert status == 200, body
    return {t["traceID"].rjust(32, "0") for t in json.loads(body).get("traces") or []}


def _jaeger_trace_ids(jaeger: str) -> set[str]:
    q = urllib.parse.urlencode({"service": SERVICE, "limit": 1000, "lookback": "1h"})
    status, body = http_get(f"{jaeger}/api/traces?{q}", timeout=10)
    assert status == 200, body
    return {t["traceID"].rjust(32, "0") for t in json.loads(body)["data"]}


def test_the_traffic_did_what_each_group_says(stack, receipts):
    by_group = {g: [receipts[rid] for rid in ids] for g, ids in stack["groups"].items()}
    for r in by_group["plain"]:
        assert (r["outcome"], r["answered_by"], r["fallback"]["triggered"]) == ("answered", SELECTED, False)
    for r in by_group["fallback"]:
        assert (r["outcome"], r["answered_by"], r["fallback"]["hops"]) == (
            "answered",
            FIRST_FALLBACK,
            [{"from": SELECTED, "to": FIRST_FALLBACK, "reason": "error"}],
        )
    for r in by_group["all_failed"]:
        assert (r["outcome"], r["fallback"]["triggered"], len(r["attempts"])) == ("failed", True, 3)
    for r in by_group["solo_failed"]:
        assert (r["outcome"], r["fallback"]["triggered"], len(r["attempts"])) == ("failed", False, 1)
        assert r["policy"]["name"] == "support-solo"
    for r in by_group["no_candidate"]:
        assert (r["outcome"], r["fallback"]["triggered"], r["attempts"]) == ("no_candidate", False, [])
    for r in by_group["stream_cut"]:
        assert (r["outcome"], r["fallback"]["triggered"]) == ("failed", False)
        assert [a["error_type"] for a in r["attempts"]] == ["stream_interrupted"]
    assert all(r["complete"] for r in receipts.values())


def test_every_kept_receipt_is_the_same_from_jaeger_tempo_the_processor_and_the_proxy(stack, receipts):
    kept = [rid for g, ids in stack["groups"].items() if g != "plain" for rid in ids]
    last = stack["groups"]["stream_cut"][-1]
    wait_for("the last request in Jaeger", lambda: JaegerSource(stack["jaeger"]).fetch_request(last), timeout=30)
    wait_for("the last request in Tempo", lambda: TempoSource(stack["tempo"]).fetch_request(last), timeout=30)
    sampled_plain = _jaeger_trace_ids(stack["jaeger"]) & _trace_ids(stack, receipts, "plain")
    kept += [rid for rid in stack["groups"]["plain"] if receipts[rid]["trace_id"] in sampled_plain]
    for rid in kept:
        stored = receipts[rid]
        assert _cli_json(rid, "--jaeger", stack["jaeger"]) == stored, rid
        assert _cli_json(rid, "--tempo", stack["tempo"]) == stored, rid
        # the proxy's own receipts: rebuilt from its spans into its store, and from the decision it answered
        assert _cli_json(rid, "--store", stack["proxy_store"]) == stored, rid
        status, body = http_get(f"{stack['proxy']}/x/receipts/{rid}")
        assert status == 200 and json.loads(body) == stored, rid


def test_traceql_finds_exactly_the_fallback_traces(stack, receipts):
    expected = _trace_ids(stack, receipts, "fallback", "all_failed")
    assert expected == {r["trace_id"] for r in receipts.values() if r["fallback"]["triggered"]}
    query = '{ span."unhardcoded.fallback.triggered" = true }'
    got = wait_for(
        "the fallback traces in Tempo",
        lambda: (lambda s: s if s >= expected else None)(_tempo_trace_ids(stack["tempo"], query)),
        timeout=30,
    )
    assert got == expected


@pytest.fixture(scope="module")
def decided(stack, receipts) -> None:
    """Every trace of the traffic has had its tail-sampling decision."""
    must_keep = _trace_ids(stack, receipts, "fallback", *FAILED)
    wait_for(
        "every fallback, failed and error trace in Jaeger",
        lambda: must_keep <= _jaeger_trace_ids(stack["jaeger"]),
        timeout=30,
    )
    time.sleep(3)  # decision_wait is 2s: every trace sent before those is decided by now


def test_tail_sampling_keeps_every_failed_and_error_trace_and_drops_most_plain_ones(stack, receipts, decided):
    must_keep = _trace_ids(stack, receipts, "fallback", *FAILED)
    plain = _trace_ids(stack, receipts, "plain")
    sent = must_keep | plain  # the proxy's other traces (readiness probes, receipt look-ups) are sampled too
    in_jaeger = _jaeger_trace_ids(stack["jaeger"]) & sent
    assert must_keep <= in_jaeger
    # 10% probabilistic: ~4 of 40 expected; P(>= 20 kept) is negligible
    assert len(in_jaeger & plain) < 20, f"{len(in_jaeger & plain)} of {len(plain)} plain traces kept"
    in_tempo = wait_for(
        "the same traces in Tempo",
        lambda: (lambda s: s if s >= in_jaeger else None)(
            _tempo_trace_ids(stack["tempo"], f'{{ resource.service.name = "{SERVICE}" }}') & sent
        ),
        timeout=30,
    )
    assert in_tempo == in_jaeger
    failed = (
        '{ span."unhardcoded.decision.outcome" = "failed" || span."unhardcoded.decision.outcome" = "no_candidate" }'
    )
    assert _tempo_trace_ids(stack["tempo"], failed) == _trace_ids(stack, receipts, *FAILED)
    assert _tempo_trace_ids(stack["tempo"], "{ status = error }") == must_keep


@pytest.mark.parametrize("policy", sorted(KEPT_BY_POLICY))
def test_each_keep_policy_alone_keeps_exactly_its_traces(stack, receipts, decided, policy):
    """otelcol.yaml's keep policies name attributes and values our spans really carry (no policy is dead)."""
    expected = _trace_ids(stack, receipts, *KEPT_BY_POLICY[policy])
    rx = stack["receivers"][policy]

    def kept() -> set[str]:
        return {s.trace_id for s in rx.spans() if s.service == SERVICE}

    wait_for(f"{policy}'s traces", lambda: kept() >= expected, timeout=30)
    assert kept() == expected
    # whole traces: the server span, the decision span and every attempt span of each
    by_trace = {r["trace_id"]: r for r in receipts.values()}
    for trace_id in expected:
        r = by_trace[trace_id]
        names = sorted(s.name for s in rx.spans() if s.trace_id == trace_id)
        assert names == sorted(
            [
                "POST /v1/chat/completions",
                f"route {r['policy']['name']}",
                *(f"chat {a['model']}" for a in r["attempts"]),
            ]
        ), r["request_id"]
