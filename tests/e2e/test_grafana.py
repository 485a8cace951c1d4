"""The Grafana dashboard and alert rules in collector-config/grafana/ ask only for what exists.

Last, the dashboard's queries run against real backends behind the real Collector fed by real decisions
(tests/e2e/send_decisions.py): in Prometheus every panel shows data, with the labels its legend names; in Tempo
every TraceQL query parses and finds exactly the traces it names.

Every PromQL expression (panel targets, the policy variable's query, the Grafana alert rules), with the dashboard's
variables substituted, parses with the real promtool and names only metrics the registry (semconv/metrics.yaml, as
the Collector's prometheus exporter names them) or the Collector's span_metrics connector define, and only labels
those metrics carry. Every TraceQL query names only registry attributes. promtool missing is a failure naming the
command that installs it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from .infra import (
    CONFIG_DIR,
    REPO,
    binary,
    free_port,
    http_get,
    start_collector,
    start_prometheus,
    start_tempo,
    wait_for,
)

pytestmark = pytest.mark.e2e

GRAFANA = CONFIG_DIR / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
ALERTING = sorted((GRAFANA / "provisioning" / "alerting").glob("*.yaml"))
SEMCONV = REPO / "semconv"

# What Grafana puts in place of each variable before a query leaves it (values of the right shape).
VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range": "6h",
    "policy": "(support|triage)",
    "policy:regex": "(support|triage)",
    "request_id": "req_8f41c2",
    "prometheus": "unhardcoded-prometheus",
    "tempo": "unhardcoded-tempo",
}
_VARIABLE = re.compile(r"\$\{([a-zA-Z_:]+)\}|\$([a-zA-Z_]+)")

# Labels every span_metrics series carries (besides the connector's configured dimensions).
SPAN_METRICS_LABELS = {"service_name", "span_name", "span_kind", "status_code"}
# Labels a query makes itself: `le` of histogram buckets, and the model label_replace takes out of a span name.
DERIVED_LABELS = {"le", "model"}
# Names the real Collector's prometheus exporter gave the registry's counters (seen by tests/e2e/test_pipeline.py
# and test_alerts.py on /metrics and in Prometheus).
OBSERVED = {
    "unhardcoded.decisions": "unhardcoded_decisions_total",
    "unhardcoded.fallbacks": "unhardcoded_fallbacks_total",
    "unhardcoded.cost": "unhardcoded_cost_USD_total",
    "unhardcoded.cost.baseline": "unhardcoded_cost_baseline_USD_total",
}


def substitute(query: str, values: dict[str, str] | None = None) -> str:
    given = {**VARIABLES, **(values or {})}

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in given, f"variable ${name} has no test value (add it to VARIABLES): {query}"
        return given[name]

    return _VARIABLE.sub(value, query)


def _label(attribute: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", attribute)


def registry_series(metrics_yaml: Path | None = None) -> dict[str, set[str]]:
    """Every series name the registry's metrics (semconv/*.yaml, or the one file given) have in Prometheus, with the
    labels each may carry."""
    suffix_of_unit = {"s": "_seconds", "ms": "_milliseconds", "By": "_bytes", "USD": "_USD", "1": "", "": ""}
    series: dict[str, set[str]] = {}
    files = [metrics_yaml] if metrics_yaml is not None else sorted(SEMCONV.glob("*.yaml"))
    groups = [g for f in files for g in (yaml.safe_load(f.read_text()) or {}).get("groups", [])]
    for group in (g for g in groups if g.get("type") == "metric"):
        unit = re.sub(r"\{[^}]*\}", "", group["unit"])
        assert unit in suffix_of_unit, f"{group['metric_name']}: unit {group['unit']!r} has no known suffix here"
        base = _label(group["metric_name"]) + suffix_of_unit[unit]
        if group["instrument"] == "gauge" and unit == "1":
            base += "_ratio"
        labels = {_label(a["ref"]) for a in group.get("attributes", [])}
        names = {
            "counter": [base + "_total"],
            "histogram": [base + "_bucket", base + "_sum", base + "_count"],
        }.get(group["instrument"], [base])
        for name in names:
            series[name] = labels | ({"le"} if name.endswith("_bucket") else set())
    return series


def span_metrics_series() -> dict[str, set[str]]:
    config = yaml.safe_load((CONFIG_DIR / "otelcol.yaml").read_text())
    (connector,) = (c for k, c in config["connectors"].items() if k.split("/")[0] in ("span_metrics", "spanmetrics"))
    prefix = _label(connector["namespace"])
    labels = SPAN_METRICS_LABELS | {_label(d["name"]) for d in connector.get("dimensions", [])}
    duration = f"{prefix}_duration_milliseconds"
    return {
        f"{prefix}_calls_total": labels,
        f"{duration}_bucket": labels | {"le"},
        f"{duration}_sum": labels,
        f"{duration}_count": labels,
    }


ALLOWED = registry_series() | span_metrics_series()


def registry_attributes() -> set[str]:
    ids = set()
    for path in SEMCONV.glob("*.yaml"):
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            if group.get("type") == "attribute_group":
                ids |= {a["id"] for a in group.get("attributes", []) if "id" in a}
    return ids


def _prometheus_uid(datasource: dict | None) -> bool:
    return bool(datasource) and datasource.get("type") == "prometheus"


def dashboard_queries() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(where, PromQL) and (where, TraceQL) of every dashboard, variables included."""
    promql, traceql = [], []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"] + [p for row in board["panels"] for p in row.get("panels", [])]:
            for target in panel.get("targets", []):
                where = f"{path.name}: panel {panel['title']!r} query {target.get('refId')}"
                source = target.get("datasource") or panel.get("datasource") or {}
                if source.get("type") == "prometheus":
                    promql.append((where, target["expr"]))
                elif source.get("type") == "tempo":
                    traceql.append((where, target["query"]))
                else:
                    pytest.fail(f"{where}: a datasource neither Prometheus nor Tempo: {source}")
        for variable in board["templating"]["list"]:
            if variable["type"] == "query" and _prometheus_uid(variable.get("datasource")):
                m = re.fullmatch(r"label_values\((.+), *([a-zA-Z_]+)\)", variable["query"])
                assert m, f"{path.name}: variable {variable['name']}: not label_values(SERIES, LABEL)"
                promql.append((f"{path.name}: variable {variable['name']}", f"count by ({m[2]}) ({m[1]})"))
    return promql, traceql


def alert_queries() -> list[tuple[str, str]]:
    found = []
    for path in ALERTING:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                for query in rule["data"]:
                    if query["datasourceUid"] != "__expr__":
                        found.append(
                            (f"{path.name}: rule {rule['title']} query {query['refId']}", query["model"]["expr"])
                        )
    return found


PROMQL, TRACEQL = dashboard_queries()
PROMQL += alert_queries()


# ------------------------------------------------------------------ PromQL through promtool
def promtool_errors(expressions: list[tuple[str, str]], tmp: Path) -> str:
    """promtool's complaints about the expressions (each made a recording rule), or '' when every one parses."""
    rules = {
        "groups": [
            {"name": f"q{i}", "rules": [{"record": f"grafana:query_{i}", "expr": substitute(expr)}]}
            for i, (_, expr) in enumerate(expressions)
        ]
    }
    path = tmp / "queries.rules.yml"
    path.write_text(yaml.safe_dump(rules, width=10_000))
    r = subprocess.run([binary("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    if r.returncode == 0:
        assert f"SUCCESS: {len(expressions)} rules found" in r.stdout, r.stdout
        return ""
    where = "\n".join(f"  q{i} = {w}" for i, (w, _) in enumerate(expressions))
    return f"{r.stdout}{r.stderr}\nwhere:\n{where}"


def test_the_dashboard_and_alerts_have_queries():
    assert DASHBOARDS and ALERTING
    assert len(PROMQL) >= 15 and len(TRACEQL) >= 3


def test_every_promql_expression_parses_with_promtool(tmp_path):
    assert promtool_errors(PROMQL, tmp_path) == ""


def test_promtool_rejects_a_broken_expression(tmp_path):
    """The check above can fail: one unbalanced expression among good ones is reported."""
    errors = promtool_errors(
        [*PROMQL[:2], ("broken", "sum by (x) (rate(unhardcoded_decisions_total[$__rate_interval])")], tmp_path
    )
    assert '"grafana:query_2": could not parse expression' in errors
    assert "grafana:query_0" not in errors.split("where:")[0] and "q2 = broken" in errors


def test_every_variable_has_a_value_of_its_shape():
    with pytest.raises(AssertionError, match=r"\$nope"):
        substitute("rate(x[$nope])")
    assert substitute('x{a=~"${policy:regex}"}[$__rate_interval]') == 'x{a=~"(support|triage)"}[1m]'


# ------------------------------------------------------------------ metric and label names
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"\{([^}]*)\}")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN"}


def names_in(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) an expression reads; label_replace's target counts as a derived label."""
    text = _STRING.sub('""', substitute(expr))
    labels: set[str] = set()
    for _, inside in _GROUPING.findall(text):
        labels |= {x.strip() for x in inside.split(",") if x.strip()}
    text = _GROUPING.sub(" ", text)
    for inside in _MATCHERS.findall(text):
        labels |= {m.group(0) for m in re.finditer(r"[a-zA-Z_][a-zA-Z0-9_]*(?=\s*(=~|!~|!=|=))", inside)}
    text = _MATCHERS.sub(" ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    text = re.sub(r"\boffset\s+\d+[smhdwy]", " ", text)
    metrics = set()
    for m in _IDENT.finditer(text):
        word = m.group(0)
        if word in KEYWORDS or re.match(r"\s*\(", text[m.end() :]):  # a function or an aggregation
            continue
        metrics.add(word)
    return metrics, labels


def test_the_name_reader_reads_what_it_should():
    metrics, labels = names_in(
        'sum by (a) (rate(m1_total{b="x", c=~"y|z"}[5m] offset 1d)) / on (d) group_left (e) m2 or vector(0)'
        ' > bool 3 and label_replace(m3, "model", "$1", "span_name", "(.+)")'
    )
    assert metrics == {"m1_total", "m2", "m3"}
    assert labels == {"a", "b", "c", "d", "e"}


@pytest.mark.parametrize(("where", "expr"), PROMQL, ids=[w for w, _ in PROMQL])
def test_every_promql_expression_names_only_defined_metrics_and_their_labels(where, expr):
    metrics, labels = names_in(expr)
    assert metrics, f"{where}: no metric found in {expr}"
    unknown = metrics - set(ALLOWED)
    assert not unknown, f"{where}: {sorted(unknown)} defined neither by semconv/metrics.yaml nor span_metrics: {expr}"
    carried = set.union(*(ALLOWED[m] for m in metrics)) | DERIVED_LABELS
    stray = labels - carried
    assert not stray, f"{where}: labels {sorted(stray)} are on none of {sorted(metrics)}: {expr}"


def test_the_name_check_rejects_a_metric_the_registry_does_not_define():
    metrics, _ = names_in('sum(rate(unhardcoded_decisions{unhardcoded_policy_name="x"}[5m]))')
    assert metrics - set(ALLOWED) == {"unhardcoded_decisions"}


def test_the_registry_names_are_those_the_collector_exports():
    for metric, name in OBSERVED.items():
        assert name in ALLOWED, f"{metric}: {name} (as exported) is not among the names derived from the registry"
    # and the generator derives the same names as this test
    generate_grafana = _generator()
    derived = {m.prometheus for m in generate_grafana.registry_metrics().values()}
    for name in derived:
        assert name in ALLOWED or f"{name}_bucket" in ALLOWED, name
    assert {generate_grafana.M[m] for m in OBSERVED} == set(OBSERVED.values())


def _generator():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import generate_grafana
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return generate_grafana


GAUGES = """
  - id: metric.unhardcoded.test.circuit
    type: metric
    metric_name: unhardcoded.test.circuit
    instrument: gauge
    unit: "{state}"
    brief: A circuit's state per model.
    attributes:
      - ref: unhardcoded.selected.model
      - ref: unhardcoded.policy.name
  - id: metric.unhardcoded.test.remaining
    type: metric
    metric_name: unhardcoded.test.remaining
    instrument: updowncounter
    unit: USD
    brief: Budget remaining.
  - id: metric.unhardcoded.test.headroom
    type: metric
    metric_name: unhardcoded.test.headroom
    instrument: gauge
    unit: "1"
    brief: Rate-limit headroom.
    attributes:
      - ref: unhardcoded.answered.model
"""


def test_gauges_in_the_registry_get_a_live_state_panel_each(tmp_path):
    """Gauges appear as panels once the registry has them; their queries pass the same checks."""
    registry = tmp_path / "metrics.yaml"
    registry.write_text((SEMCONV / "metrics.yaml").read_text().rstrip() + "\n" + GAUGES)
    generate_grafana = _generator()
    board = generate_grafana.build_dashboard(generate_grafana.registry_metrics(registry))
    titles = [p["title"] for p in board["panels"]]
    shipped = [p["title"] for p in generate_grafana.build_dashboard()["panels"]]
    assert "unhardcoded.budget.remaining" in shipped and "unhardcoded.test.circuit" not in shipped
    row = titles.index("Live state")
    added = [(t, p) for t, p in zip(titles[row + 1 :], board["panels"][row + 1 :]) if t.startswith("unhardcoded.test.")]
    assert [t for t, _ in added] == [
        "unhardcoded.test.circuit",
        "unhardcoded.test.headroom",
        "unhardcoded.test.remaining",
    ]
    exprs = [(t, p["targets"][0]["expr"]) for t, p in added]
    assert exprs == [
        (
            "unhardcoded.test.circuit",
            'max by (unhardcoded_selected_model, unhardcoded_policy_name) (unhardcoded_test_circuit{unhardcoded_policy_name=~"$policy"})',
        ),
        ("unhardcoded.test.headroom", "max by (unhardcoded_answered_model) (unhardcoded_test_headroom_ratio)"),
        ("unhardcoded.test.remaining", "max(unhardcoded_test_remaining_USD)"),
    ]
    allowed = registry_series(registry)
    for where, expr in exprs:
        metrics, labels = names_in(expr)
        assert metrics <= set(allowed) and labels <= set.union(*(allowed[m] for m in metrics)), where
    assert promtool_errors(exprs, tmp_path) == ""


# ------------------------------------------------------------------ TraceQL
_SCOPED = re.compile(r'\b(span|resource|event|link|instrumentation)\.("(?:[^"\\]|\\.)*"|[a-zA-Z_][a-zA-Z0-9_.]*)')
_UNSCOPED = re.compile(r'(?<![a-zA-Z0-9_"])\.("(?:[^"\\]|\\.)*"|[a-zA-Z_][a-zA-Z0-9_.]*)')


def traceql_attributes(query: str) -> set[str]:
    """Attribute names a TraceQL query reads: scoped (`span."a.b"`, `resource.x`) and unscoped (`.a.b`)."""
    text = substitute(query)
    found = {m.group(2).strip('"') for m in _SCOPED.finditer(text)}
    rest = _STRING.sub('""', _SCOPED.sub(" ", text))
    return found | {m.group(1).strip('"') for m in _UNSCOPED.finditer(rest)}


@pytest.mark.parametrize(("where", "query"), TRACEQL, ids=[w for w, _ in TRACEQL])
def test_every_traceql_query_uses_registry_attributes(where, query):
    assert re.fullmatch(r"\{ .+ \}", query), f"{where}: not one spanset filter: {query}"
    assert query.count("(") == query.count(")"), f"{where}: unbalanced parentheses: {query}"
    attributes = traceql_attributes(query)
    assert attributes, f"{where}: names no attribute: {query}"
    unknown = attributes - registry_attributes()
    assert not unknown, f"{where}: {sorted(unknown)} are not registry attributes (semconv/): {query}"


def test_the_traceql_check_rejects_an_attribute_the_registry_does_not_define():
    found = traceql_attributes(
        '{ span."unhardcoded.policy.name" = "x" && .unhardcoded.nope = 1 && span.bogus = "a.b" }'
    )
    assert found == {"unhardcoded.policy.name", "unhardcoded.nope", "bogus"}
    assert found - registry_attributes() == {"unhardcoded.nope", "bogus"}


# ------------------------------------------------------------------ the files are the generator's
def test_the_generated_files_are_current():
    r = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "generate_grafana.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_dashboard_targets_grafana_11():
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["schemaVersion"] >= 39, f"{path.name}: schemaVersion {board['schemaVersion']} is before Grafana 11"


# ------------------------------------------------------------------ against a real Prometheus
@pytest.fixture(scope="module")
def prometheus_with_decisions(tmp_path_factory):
    """Prometheus (1 s scrape) on the Collector, after plain and fallback decisions of policy triage went through."""
    tmp = tmp_path_factory.mktemp("e2e-grafana")
    with ExitStack() as stack:
        collector, c = start_collector(tmp, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
        stack.callback(collector.stop)
        config = (CONFIG_DIR / "prometheus" / "prometheus.yml").read_text()
        config = config.replace("interval: 15s", "interval: 1s").replace('"127.0.0.1:8889"', f'"{c["prom_target"]}"')
        assert c["prom_target"] in config
        (tmp / "prometheus.yml").write_text(config)
        shutil.copy(CONFIG_DIR / "prometheus" / "rules.yml", tmp / "rules.yml")
        prom, port = start_prometheus(tmp)
        stack.callback(prom.stop)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        # Two runs of one sender (one service instance, so one series each): the second counts past the first, so
        # every counter rises between scrapes, as a long-running app's would.
        env["OTEL_RESOURCE_ATTRIBUTES"] = "service.instance.id=e2e-grafana-sender"
        named = set.union(*(names_in(expr)[0] for _, expr in PROMQL)) - GAUGE_SERIES
        for plain, fallback in ((8, 2), (20, 6)):
            r = subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__).with_name("send_decisions.py")),
                    *("--endpoint", c["otlp_grpc"], "--service", "e2e-grafana"),
                    *("--plain", str(plain), "--fallback", str(fallback)),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
            )
            assert r.returncode == 0, r.stderr
            wait_for(
                "every series the queries name scraped",
                lambda: all(_instant(port, f"group({name})") for name in named),
                timeout=30,
            )
        yield port


def _instant(port: int, expr: str) -> list[dict]:
    query = urllib.parse.urlencode({"query": expr})
    status, body = http_get(f"http://127.0.0.1:{port}/api/v1/query?{query}")
    assert status == 200, body
    return json.loads(body)["data"]["result"]


def _panel_queries() -> list[tuple[str, str, str]]:
    """(where, expr, legend) of every Prometheus target of the dashboards, but the Live state row's."""
    found = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        row = ""
        for panel in board["panels"]:
            row = panel["title"] if panel["type"] == "row" else row
            if row == LIVE_STATE:
                continue
            for target in panel.get("targets", []):
                if "expr" in target:
                    where = f"{path.name}: panel {panel['title']!r} query {target['refId']}"
                    found.append((where, target["expr"], target.get("legendFormat", "")))
    return found


# Panels that read zero from this traffic (no decision failed), and what they read.
ZERO_HERE = {"Failed decisions"}
# The registry's gauges (circuit, headroom, budget) need traffic of their own (cooldowns, budgets): their panels are
# held to promtool and the names above, not to showing data after send_decisions.py.
LIVE_STATE = "Live state"
GAUGE_SERIES = {name for name in registry_series() if not name.endswith(("_total", "_bucket", "_sum", "_count"))}


def test_every_panel_shows_data_from_real_decisions(prometheus_with_decisions):
    port = prometheus_with_decisions
    queries = _panel_queries()

    def values(expr: str) -> list[float]:
        return [float(series["value"][1]) for series in _instant(port, substitute(expr))]

    def without_data() -> list[str]:
        return [
            where
            for where, expr, _ in queries
            if where.split("'")[1] not in ZERO_HERE and not any(v > 0 and math.isfinite(v) for v in values(expr))
        ]

    try:
        wait_for("every panel query showing a positive value", lambda: not without_data(), timeout=60)
    finally:
        assert without_data() == []
    for where, expr, legend in queries:
        if where.split("'")[1] in ZERO_HERE:
            assert values(expr) == [0.0], where
        wanted = set(re.findall(r"\{\{\s*([a-zA-Z_]+)\s*\}\}", legend))
        for series in _instant(port, substitute(expr)):
            missing = {name for name in wanted if not series["metric"].get(name)}
            assert not missing, f"{where}: a series without {sorted(missing)}: {series['metric']}"


def test_every_metric_the_queries_name_is_exported(prometheus_with_decisions):
    """Series the panels need only through a selector that may match nothing here are still there by name."""
    port = prometheus_with_decisions
    named = set.union(*(names_in(expr)[0] for _, expr in PROMQL)) - GAUGE_SERIES
    absent = sorted(name for name in named if not _instant(port, f"group({name})"))
    assert absent == []


def test_the_grafana_alerts_are_those_of_the_prometheus_rules():
    """Same alerts, severities, durations and thresholds as collector-config/prometheus/rules.yml."""
    shipped = {
        rule["alert"]: rule
        for group in yaml.safe_load((CONFIG_DIR / "prometheus" / "rules.yml").read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    grafana = {
        rule["title"]: rule
        for path in ALERTING
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    }
    assert set(grafana) == set(shipped)
    for title, rule in grafana.items():
        assert rule["for"] == shipped[title].get("for", "0s"), title  # Prometheus: no `for` fires at once
        assert rule["labels"]["severity"] == shipped[title]["labels"]["severity"], title
        (threshold,) = (q["model"] for q in rule["data"] if q["datasourceUid"] == "__expr__")
        (evaluator,) = threshold["conditions"]
        assert f"{abs(evaluator['evaluator']['params'][0])}" in shipped[title]["expr"], title


# ------------------------------------------------------------------ TraceQL in a real Tempo
@pytest.fixture(scope="module")
def tempo_with_decisions(tmp_path_factory):
    """Tempo behind the Collector (tail sampling keeps every fallback), after decisions of policy triage."""
    tmp = tmp_path_factory.mktemp("e2e-grafana-tempo")
    with ExitStack() as stack:
        tempo, t = start_tempo(tmp)
        stack.callback(tempo.stop)
        collector, c = start_collector(tmp, f"127.0.0.1:{free_port()}", t["otlp_grpc"])
        stack.callback(collector.stop)
        r = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).with_name("send_decisions.py")),
                *("--endpoint", c["otlp_grpc"], "--service", "e2e-grafana-tempo", "--plain", "5", "--fallback", "3"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        )
        assert r.returncode == 0, r.stderr
        yield t["http"], json.loads(r.stdout)


def _tempo_traces(tempo: str, query: str) -> set[str]:
    now = int(time.time())
    q = urllib.parse.urlencode({"q": query, "limit": 1000, "start": now - 3600, "end": now + 60})
    status, body = http_get(f"{tempo}/api/search?{q}", timeout=10)
    assert status == 200, f"Tempo refused {query}: {body!r}"
    return {t["traceID"].rjust(32, "0") for t in json.loads(body).get("traces") or []}


def test_every_traceql_query_finds_exactly_its_traces_in_tempo(tempo_with_decisions):
    tempo, sent = tempo_with_decisions
    fell_back = {d["trace_id"] for d in sent["fallback"]}
    one = sent["fallback"][0]
    values = {"request_id": one["request_id"], "policy:regex": "(triage)"}
    # what each Tempo panel must list after this traffic (no decision failed, none was a workflow node)
    expected = {
        "Decisions that fell back": fell_back,
        "Decisions without an answer": set(),
        "Request by id": {one["trace_id"]},
        "Workflows": set(),
    }
    queries = {where.split("'")[1]: substitute(query, values) for where, query in TRACEQL}
    assert set(queries) == set(expected)
    wait_for(
        "the fallback traces in Tempo",
        lambda: _tempo_traces(tempo, queries["Decisions that fell back"]) == fell_back,
        timeout=40,
    )
    for title, query in queries.items():
        assert _tempo_traces(tempo, query) == expected[title], f"{title}: {query}"
