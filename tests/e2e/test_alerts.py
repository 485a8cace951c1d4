"""The shipped alert rules fire in a real Prometheus scraping real metrics, and resolve when the cause goes away.

Prometheus scrapes the Collector every second and evaluates
collector-config/prometheus/rules.yml with only its time scales shrunk (see
FAST); the expressions are the shipped ones. Two sources of traffic:

- send_decisions.py bursts (policy triage) for the fallback storm;
- `unhardcoded serve` (policy support) as a real subprocess exporting OTLP to
  the Collector, in front of simulated providers in this process, called by
  the real `openai` client five times a second for the whole module. The tests
  make its providers fail (errors: every candidate fails; savings: only the
  baseline model answers) and recover.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.parse
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import openai
import pytest

from unhardcoded.catalog import Catalog
from unhardcoded.testing.simulator import SimulatedProvider, error, ok

from .infra import (
    CONFIG_DIR,
    binary,
    free_port,
    http_get,
    start_collector,
    start_prometheus,
    start_proxy,
    wait_for,
)

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
# The support policy picks grok-4-fast-non-reasoning, then mistral-large-2512, then gpt-4.1 (its baseline: gpt-5.5).
SELECTED, FIRST_FALLBACK, SECOND_FALLBACK = "grok-4-fast-non-reasoning", "mistral-large-2512", "gpt-4.1"
HELLO = [{"role": "user", "content": "Where is my parcel?"}]

# Every time scale in rules.yml, and what it becomes here. A window, offset or `for` not listed fails the test.
FAST = {
    "[5m]": "[10s]",  # rate windows of the decision rules
    "[1h]": "[10s]",  # savings window
    "offset 1d": "offset 20s",  # savings compared with an earlier window that does not overlap
    "for: 1m": "for: 2s",
    "for: 15m": "for: 2s",
}
_TIME_SCALE = re.compile(r"\[\d+[smhdwy]\]|offset \d+[smhdwy]|for: \d+[smhdwy]")


def fast_rules(text: str) -> str:
    unknown = set(_TIME_SCALE.findall(text)) - set(FAST)
    assert not unknown, f"rules.yml has time scales this test does not shrink: {sorted(unknown)}"
    for slow, fast in FAST.items():
        text = text.replace(slow, fast)
    return text


class Traffic:
    """The openai client against the proxy, one request every ``interval`` s on a thread, until stopped."""

    def __init__(self, proxy: str, interval: float = 0.2) -> None:
        self.client = openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0, timeout=10)
        self.interval = interval
        self.outcomes: Counter[str] = Counter()
        self.answered_by: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proxy-traffic", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                answer = self.client.chat.completions.create(model="auto", messages=HELLO)
                self.outcomes["answered"] += 1
                self.answered_by[answer.model] += 1
            except openai.APIStatusError as exc:
                self.outcomes[str(exc.status_code)] += 1
            except Exception as exc:  # noqa: BLE001 - reported by the tests, not lost in a thread
                self.unexpected.append(repr(exc))

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


@pytest.fixture(scope="module")
def prom_stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e-alerts")
    with ExitStack() as stack:
        # traces go nowhere useful here (no Jaeger/Tempo): only the metrics matter
        collector, c = start_collector(tmp, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
        stack.callback(collector.stop)
        rules = tmp / "rules.yml"
        rules.write_text(fast_rules((CONFIG_DIR / "prometheus" / "rules.yml").read_text()))
        r = subprocess.run(
            [binary("promtool"), "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, r.stdout + r.stderr
        config = (CONFIG_DIR / "prometheus" / "prometheus.yml").read_text()
        config = config.replace("scrape_interval: 15s", "scrape_interval: 1s").replace(
            "evaluation_interval: 15s", "evaluation_interval: 1s"
        )
        config = config.replace('"127.0.0.1:8889"', f'"{c["prom_target"]}"')
        assert c["prom_target"] in config and "interval: 1s" in config
        (tmp / "prometheus.yml").write_text(config)
        prom, port = start_prometheus(tmp)
        stack.callback(prom.stop)

        sims = {}
        for name in sorted({m.provider for m in Catalog.builtin().models}):
            sims[name] = SimulatedProvider(name).start()
            stack.callback(sims[name].close)
        providers = [{"name": s.name, "base_url": s.base_url, "timeout_s": 5} for s in sims.values()]
        proxy, url = start_proxy(tmp, providers, c["otlp_grpc"], service="e2e-alerts-proxy")
        stack.callback(proxy.stop)
        traffic = Traffic(url).start()
        stack.callback(traffic.stop)
        provider_of = {m.id: m.provider for m in Catalog.builtin().models}

        def behave(model: str, behavior) -> None:
            sims[provider_of[model]].set_behavior(model, behavior)

        yield {
            "prometheus": f"http://127.0.0.1:{port}",
            "collector": c,
            "traffic": traffic,
            "behave": behave,
            "models": list(provider_of),
        }
        assert traffic.unexpected == []


def _send(collector: dict, plain: int, fallback: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    r = subprocess.run(
        [
            sys.executable,
            str(HERE / "send_decisions.py"),
            "--endpoint",
            collector["otlp_grpc"],
            "--service",
            "e2e-storm",
            "--plain",
            str(plain),
            "--fallback",
            str(fallback),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stderr


def _alerts(prom: str, name: str, policy: str) -> list[dict]:
    status, body = http_get(f"{prom}/api/v1/alerts")
    assert status == 200
    return [
        a
        for a in json.loads(body)["data"]["alerts"]
        if a["labels"]["alertname"] == name and a["labels"].get("unhardcoded_policy_name") == policy
    ]


def _firing(prom: str, name: str, policy: str) -> list[dict]:
    return [a for a in _alerts(prom, name, policy) if a["state"] == "firing"]


def _query(prom: str, expr: str) -> list[dict]:
    status, body = http_get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert status == 200, body
    return json.loads(body)["data"]["result"]


def _value(prom: str, expr: str) -> float | None:
    result = _query(prom, expr)
    return float(result[0]["value"][1]) if result else None


def test_fast_rules_shrink_only_time_scales():
    shipped = (CONFIG_DIR / "prometheus" / "rules.yml").read_text()
    fast = fast_rules(shipped)
    assert _TIME_SCALE.sub("T", fast) == _TIME_SCALE.sub("T", shipped)
    assert set(_TIME_SCALE.findall(fast)) <= set(FAST.values())


def test_fallback_storm_fires_the_alert_and_recovery_resolves_it(prom_stack):
    prom = prom_stack["prometheus"]
    # prime: Prometheus needs a counter's earlier sample to see a rate, so let both series exist first
    _send(prom_stack["collector"], plain=5, fallback=1)
    wait_for(
        "the span metrics scraped",
        lambda: _query(
            prom,
            'traces_span_metrics_calls_total{unhardcoded_policy_name="triage",unhardcoded_fallback_triggered="true"}',
        ),
        timeout=30,
    )
    assert _alerts(prom, "UnhardcodedFallbackRateHigh", "triage") == []
    _send(prom_stack["collector"], plain=2, fallback=20)

    firing = wait_for(
        "UnhardcodedFallbackRateHigh firing", lambda: _firing(prom, "UnhardcodedFallbackRateHigh", "triage"), timeout=40
    )
    assert firing[0]["labels"]["severity"] == "warning"
    assert float(firing[0]["value"]) > 0.2
    assert "of decisions fell back" in firing[0]["annotations"]["summary"]

    # recovery: plain traffic only; the 10s window forgets the storm
    def resolved():
        _send(prom_stack["collector"], plain=10, fallback=0)
        return _alerts(prom, "UnhardcodedFallbackRateHigh", "triage") == []

    wait_for("UnhardcodedFallbackRateHigh resolved", resolved, timeout=60, interval=0.1)


def test_savings_drop_fires_the_alert_and_recovery_resolves_it(prom_stack):
    """Only the second standby answers (every other model is down): savings fall from ~98% to ~70%.

    Every other model, not just the pick and the first standby: the proxy cools a failing model down and routes
    to the next cheapest one (docs/live.md), which would keep the savings up."""
    prom, behave, traffic = prom_stack["prometheus"], prom_stack["behave"], prom_stack["traffic"]
    ratio = 'unhardcoded:savings_ratio:1h{unhardcoded_policy_name="support"}'
    # the earlier window the rule compares with must hold normal traffic: the pick saves ~98% against gpt-5.5
    wait_for("normal savings 20s ago", lambda: (_value(prom, f"{ratio} offset 20s") or 0) > 0.5, timeout=60)
    assert _alerts(prom, "UnhardcodedSavingsDropped", "support") == []
    normal = _value(prom, ratio)
    assert normal is not None and normal > 0.5

    down = [m for m in prom_stack["models"] if m != SECOND_FALLBACK]
    for model in down:
        behave(model, error(503))
    try:
        firing = wait_for(
            "UnhardcodedSavingsDropped firing",
            lambda: _firing(prom, "UnhardcodedSavingsDropped", "support"),
            timeout=40,
        )
        assert traffic.answered_by[SECOND_FALLBACK] > 0
        assert firing[0]["labels"]["severity"] == "info"
        assert float(firing[0]["value"]) < normal - 0.2
        assert firing[0]["annotations"]["summary"].startswith("Policy support: savings vs baseline down to ")
        # the app's own counters tell it too: once the failing models are cooled down, every decision rejects them
        # with live:cooldown (before that, each fell back); per decision, summed per policy first, since the two
        # counters carry different labels
        support = '{unhardcoded_policy_name="support"}'
        cooled = _value(
            prom,
            'sum by (unhardcoded_policy_name) (rate(unhardcoded_rejections_total{unhardcoded_policy_name="support",'
            'unhardcoded_rejection_rule="live:cooldown"}[10s]))'
            f" / sum by (unhardcoded_policy_name) (rate(unhardcoded_decisions_total{support}[10s]))",
        )
        assert cooled is not None and cooled > 0.2
    finally:
        for model in down:
            behave(model, ok())
    wait_for(
        "UnhardcodedSavingsDropped resolved",
        lambda: _alerts(prom, "UnhardcodedSavingsDropped", "support") == [],
        timeout=60,
    )
    assert (_value(prom, ratio) or 0) > 0.5


def test_error_rate_fires_the_alert_and_recovery_resolves_it(prom_stack):
    """Every candidate of the support policy fails: the proxy answers 502 and the decision spans end in ERROR."""
    prom, behave, traffic = prom_stack["prometheus"], prom_stack["behave"], prom_stack["traffic"]
    wait_for(
        "support decisions scraped",
        lambda: _query(prom, 'unhardcoded:decisions:rate5m{unhardcoded_policy_name="support"}'),
        timeout=30,
    )
    assert _alerts(prom, "UnhardcodedDecisionErrorRateHigh", "support") == []

    failed_before = traffic.outcomes["502"]
    # Every model: the proxy cools failing models down and routes to the others (docs/live.md); with all of them
    # failing, requests fail (502) until every candidate is cooling down, then no model passes (422).
    for model in prom_stack["models"]:
        behave(model, error(500))
    try:
        firing = wait_for(
            "UnhardcodedDecisionErrorRateHigh firing",
            lambda: _firing(prom, "UnhardcodedDecisionErrorRateHigh", "support"),
            timeout=40,
        )
        assert traffic.outcomes["502"] > failed_before
        assert firing[0]["labels"]["severity"] == "critical"
        assert float(firing[0]["value"]) > 0.05
        assert "of decisions failed" in firing[0]["annotations"]["summary"]
    finally:
        for model in prom_stack["models"]:
            behave(model, ok())
    wait_for(
        "UnhardcodedDecisionErrorRateHigh resolved",
        lambda: _alerts(prom, "UnhardcodedDecisionErrorRateHigh", "support") == [],
        timeout=60,
    )
