"""Every config in collector-config/ is accepted by the program that reads it.

Binaries come from scripts/install-infra.sh; a missing one fails the test with
the command that builds it.
"""

from __future__ import annotations

import pytest

from .infra import CONFIG_DIR, binary, run, start_jaeger, start_tempo

pytestmark = pytest.mark.e2e

COLLECTOR_CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("otelcol*.yaml"))


def _ok(result, what: str) -> None:
    assert result.returncode == 0, f"{what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"


def test_collector_configs_are_found():
    assert {"otelcol.yaml", "otelcol-loadbalancing.yaml"} <= set(COLLECTOR_CONFIGS)


@pytest.mark.parametrize("config", COLLECTOR_CONFIGS)
def test_collector_config_validates(config):
    _ok(
        run([binary("otelcol-unhardcoded"), "validate", "--config", str(CONFIG_DIR / config)]),
        f"otelcol validate {config}",
    )


def test_loadbalancing_config_takes_a_list_of_processors_from_the_environment():
    env = {"UNHARDCODED_PROCESSOR_GRPC_ENDPOINTS": "[127.0.0.1:4417, 127.0.0.1:4427, 127.0.0.1:4437]"}
    r = run(
        [binary("otelcol-unhardcoded"), "print-config", "--config", str(CONFIG_DIR / "otelcol-loadbalancing.yaml")],
        env=env,
    )
    if r.returncode != 0 and "unknown command" in (r.stderr + r.stdout):
        # print-config is behind a feature gate in some releases; validate still expands the variable
        _ok(
            run(
                [binary("otelcol-unhardcoded"), "validate", "--config", str(CONFIG_DIR / "otelcol-loadbalancing.yaml")],
                env=env,
            ),
            "validate",
        )
        return
    _ok(r, "print-config")
    assert "127.0.0.1:4427" in r.stdout and "127.0.0.1:4437" in r.stdout


def test_collector_rejects_a_broken_config(tmp_path):
    """The validator really reads the file (a typo in a component name fails)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (CONFIG_DIR / "otelcol.yaml")
        .read_text()
        .replace("[memory_limiter, tail_sampling, batch]", "[memory_limiter, tail_samplin, batch]")
    )
    assert "tail_samplin," in bad.read_text()
    r = run([binary("otelcol-unhardcoded"), "validate", "--config", str(bad)])
    assert r.returncode != 0


def test_jaeger_config_validates():
    _ok(run([binary("jaeger"), "validate", "--config", str(CONFIG_DIR / "jaeger.yaml")]), "jaeger validate")


def test_prometheus_config():
    _ok(
        run([binary("promtool"), "check", "config", str(CONFIG_DIR / "prometheus" / "prometheus.yml")]),
        "promtool check config",
    )


def test_prometheus_rules():
    _ok(
        run([binary("promtool"), "check", "rules", str(CONFIG_DIR / "prometheus" / "rules.yml")]),
        "promtool check rules",
    )


def test_prometheus_rule_unit_tests():
    r = run([binary("promtool"), "test", "rules", str(CONFIG_DIR / "prometheus" / "rules_test.yml")])
    _ok(r, "promtool test rules")
    assert "SUCCESS" in r.stdout


def test_jaeger_starts_with_its_config(tmp_path):
    proc, urls = start_jaeger(tmp_path)
    try:
        from .infra import http_get

        status, body = http_get(urls["query"] + "/api/services")
        assert status == 200 and b'"data"' in body
    finally:
        proc.stop()


def test_tempo_starts_with_its_config(tmp_path):
    proc, urls = start_tempo(tmp_path)
    try:
        from .infra import http_get

        status, body = http_get(urls["http"] + "/api/search?q=%7B%7D")
        assert status == 200 and b'"traces"' in body
        assert (tmp_path / "tempo-data").exists()
    finally:
        proc.stop()


def test_jaeger_sends_no_traces_of_its_own(tmp_path, monkeypatch):
    """Jaeger v2 would trace its own queries to $OTEL_EXPORTER_OTLP_ENDPOINT (default: the Collector's port)."""
    from otlp_receiver import OTLPReceiver

    from .infra import http_get

    with OTLPReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.grpc_endpoint)
        proc, urls = start_jaeger(tmp_path)
        try:
            for path in ("/api/services", "/api/traces?service=checkout&lookback=1h", "/api/v3/services"):
                assert http_get(urls["query"] + path)[0] in (200, 404)
        finally:
            proc.stop()  # flushes whatever it would export
        assert rx.spans() == []
