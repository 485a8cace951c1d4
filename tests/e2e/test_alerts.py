"""A fallback storm fires the real Prometheus fallback-rate alert, and recovery resolves it.

The rules are collector-config/prometheus/rules.yml with only the time scales
shrunk (5m windows -> 10s, `for: 1m` -> 2s); the expressions are the shipped ones.
Prometheus scrapes the Collector's span metrics every second.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.parse
from contextlib import ExitStack
from pathlib import Path

import pytest

from .infra import CONFIG_DIR, Process, binary, free_port, http_get, start_collector, url_ok, wait_for

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent


def fast_rules(text: str) -> str:
    text = re.sub(r"\[5m\]", "[10s]", text)
    return re.sub(r"for: 1m", "for: 2s", text)


@pytest.fixture(scope="module")
def prom_stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e-alerts")
    with ExitStack() as stack:
        # traces go nowhere useful here (no Jaeger/Tempo): only the span metrics matter
        collector, c = start_collector(tmp, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
        stack.callback(collector.stop)
        rules = tmp / "rules.yml"
        rules.write_text(fast_rules((CONFIG_DIR / "prometheus" / "rules.yml").read_text()))
        config = (CONFIG_DIR / "prometheus" / "prometheus.yml").read_text()
        config = config.replace("scrape_interval: 15s", "scrape_interval: 1s").replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        config = config.replace('"127.0.0.1:8889"', f'"{c["prom_target"]}"')
        assert c["prom_target"] in config
        (tmp / "prometheus.yml").write_text(config)
        port = free_port()
        prom = Process("prometheus", [binary("prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
                                      f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                       tmp / "prometheus.log")
        stack.callback(prom.stop)
        prom.wait_ready(url_ok(f"http://127.0.0.1:{port}/-/ready"), timeout=30)
        yield {"prometheus": f"http://127.0.0.1:{port}", "collector": c}


def _send(collector: dict, plain: int, fallback: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    r = subprocess.run([sys.executable, str(HERE / "send_decisions.py"), "--endpoint", collector["otlp_grpc"],
                        "--service", "e2e-storm", "--plain", str(plain), "--fallback", str(fallback)],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr


def _alerts(prom: str) -> list[dict]:
    status, body = http_get(f"{prom}/api/v1/alerts")
    assert status == 200
    return [a for a in json.loads(body)["data"]["alerts"] if a["labels"]["alertname"] == "UnhardcodedFallbackRateHigh"]


def _query(prom: str, expr: str) -> list[dict]:
    status, body = http_get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert status == 200, body
    return json.loads(body)["data"]["result"]


def test_fallback_storm_fires_the_alert_and_recovery_resolves_it(prom_stack):
    prom = prom_stack["prometheus"]
    # prime: Prometheus needs a counter's earlier sample to see a rate, so let both series exist first
    _send(prom_stack["collector"], plain=5, fallback=1)
    wait_for("the span metrics scraped", lambda: _query(prom, 'traces_span_metrics_calls_total{unhardcoded_fallback_triggered="true"}'), timeout=30)
    assert _alerts(prom) == []
    _send(prom_stack["collector"], plain=2, fallback=20)

    firing = wait_for("UnhardcodedFallbackRateHigh firing", lambda: [a for a in _alerts(prom) if a["state"] == "firing"], timeout=40)
    assert firing[0]["labels"]["unhardcoded_policy_name"] == "triage"
    assert float(firing[0]["value"]) > 0.2
    assert "of decisions fell back" in firing[0]["annotations"]["summary"]

    # recovery: plain traffic only; the 10s window forgets the storm
    def resolved():
        _send(prom_stack["collector"], plain=10, fallback=0)
        return _alerts(prom) == []

    wait_for("UnhardcodedFallbackRateHigh resolved", resolved, timeout=60, interval=0.1)
