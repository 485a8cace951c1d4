"""The receipts console in headless Chromium, against a real processor holding a few thousand receipts.

The receipts are made by ``unhardcoded.testing.bulk`` (the real router, cascade and provider client against
simulated providers on loopback, telemetry rebuilt into receipts); a few more arrive as OTLP over the wire, with
``<script>`` and quotes in their ids and names. Each test reads the page as Chromium built it (``--dump-dom``)
and compares what it shows with the JSON API; screenshots at desktop and phone width go to tmp/artifacts/console.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from urllib.parse import quote, urlencode

import httpx
import pytest

from browser import ARTIFACTS, DESKTOP, PHONE, dom, parse, png_is_blank, screenshot
from fixtures import span_layout as L
from processor_fixtures import ProcessorProcess, decisions_with_spans, workflow_with_spans
from unhardcoded.receipts import open_store
from unhardcoded.testing.bulk import generate

PB = {"Content-Type": "application/x-protobuf"}
RECEIPTS = 2000
PWNED = "data-pwned"
XSS = f"<script>document.documentElement.setAttribute('{PWNED}','1')</script>\"'"
XSS_IMG = f"<img src=x onerror=\"document.documentElement.setAttribute('{PWNED}','1')\">"
XSS_WORKFLOW = 'wf_"quoted"<b>'
SHOTS = ARTIFACTS / "console"


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console")
    path = tmp / "receipts.db"
    store = open_store(str(path))
    try:
        run = generate(store, RECEIPTS, seed=18, failure_rate=0.2, workflow_names=("refund-flow", XSS))
    finally:
        store.close()
    p = ProcessorProcess(
        str(path),
        "--wait-window",
        "0.3",
        "--jaeger-url",
        "http://jaeger.example:16686/trace/{trace_id}",
        "--tempo-url",
        "http://grafana.example:3000/explore?left=%7B%22queries%22:%5B%7B%22query%22:%22{trace_id}%22%7D%5D%7D",
        log=tmp / "processor.log",
    ).start()
    xss, xss_spans = decisions_with_spans(2, seed=81, prefix=XSS, hops=1)
    wds, wspans = workflow_with_spans(XSS_WORKFLOW, XSS, [XSS_IMG, "draft"], seed=82)
    for batch in (xss_spans, wspans):
        assert httpx.post(p.url + "/v1/traces", content=L.otlp_bytes(batch), headers=PB, timeout=10).status_code == 200
    total = RECEIPTS + len(xss) + len(wds)
    assert p.wait_for(lambda: p.get("/receipts", params={"limit": 1}).status_code == 200, 10)
    assert p.wait_for(lambda: _all(p, {})[1] == total, 20), p.tail()
    yield p, run, xss, wds
    p.stop()


def _all(p: ProcessorProcess, params: dict[str, str]) -> tuple[list[dict], int]:
    items: list[dict] = []
    cursor = None
    while True:
        doc = p.get("/receipts", params={**params, "limit": 1000, **({"cursor": cursor} if cursor else {})}).json()
        items += [i["receipt"] for i in doc["items"]]
        cursor = doc["next_cursor"]
        if not cursor:
            return items, len(items)


def _profile(tmp_path):
    return tmp_path / "chromium-profile"


def test_a_browser_at_the_root_is_sent_to_the_console_and_an_api_client_keeps_its_json(console):
    p = console[0]
    browser = httpx.get(p.url + "/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert browser.status_code == 303 and browser.headers["location"] == "/ui/"
    assert httpx.get(p.url + "/").json()["links"]["console"] == "/ui/"
    assert httpx.get(p.url + "/", headers={"Accept": "application/json"}).json()["service"]


def test_search_finds_a_request_by_id_and_a_workflow_and_a_trace(console, tmp_path):
    p, run, _, _ = console
    rid = random.Random(1).choice(run.request_ids)
    page = parse(dom(f"{p.url}/ui/?q={quote(rid)}", _profile(tmp_path)))
    assert f"Receipt · {rid}" in page.find_all("h1")[0].all_text()
    wid = next(iter(run.workflows))
    go = httpx.get(p.url + "/ui/", params={"q": wid})
    assert go.status_code == 303 and go.headers["location"] == f"/w/{wid}"
    receipt = p.get(f"/receipts/{rid}").json()["receipt"]
    go = httpx.get(p.url + "/ui/", params={"q": receipt["trace_id"]})
    if receipt["workflow"] is None:
        assert go.headers["location"] == f"/r/{rid}"
    else:
        assert go.headers["location"] == f"/w/{receipt['workflow']['id']}"
    missing = parse(dom(f"{p.url}/ui/?q=req_nobody_sent", _profile(tmp_path)))
    assert "req_nobody_sent" in missing.find_all("p", role="status")[0].all_text()


def test_a_filter_narrows_the_list_to_exactly_the_fallen_back_decisions_of_one_policy(console, tmp_path):
    p = console[0]
    expected, n = _all(p, {"policy": "support", "fallback": "true"})
    assert 0 < n < RECEIPTS / 2
    url = f"{p.url}/ui/?{urlencode({'policy': 'support', 'fallback': 'true', 'limit': 500})}"
    page = parse(dom(url, _profile(tmp_path)))
    shown = [tr.attrs["data-request-id"] for tr in page.find_all("tr") if "data-request-id" in tr.attrs]
    assert set(shown) == {r["request_id"] for r in expected} and len(shown) == n
    counts = {dd.attrs["data-count"]: int(dd.all_text()) for dd in page.find_all("dd")}
    assert counts["total"] == counts["fallbacks"] == n
    # The form shows the filter in force, and every row links to its receipt page.
    assert page.find_all("input", id="f-policy")[0].attrs["value"] == "support"
    links = {a.attrs["href"] for a in page.find_all("a")}
    assert all(f"/r/{quote(r, safe='')}" in links for r in shown)


def test_the_list_pages_by_cursor_newest_first(console):
    p = console[0]
    seen: list[str] = []
    url = "/ui/?" + urlencode({"policy": "triage", "limit": 200})
    while url:
        page = parse(httpx.get(p.url + url).text)
        seen += [tr.attrs["data-request-id"] for tr in page.find_all("tr") if "data-request-id" in tr.attrs]
        nxt = page.find_all("a", id="next-page")
        url = nxt[0].attrs["href"] if nxt else ""
    expected, n = _all(p, {"policy": "triage"})
    assert len(seen) == n and set(seen) == {r["request_id"] for r in expected}
    stamps = {r["request_id"]: r["timestamp"] for r in expected}
    assert [stamps[s] for s in seen] == sorted((stamps[s] for s in seen), reverse=True)


def _charts(page) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for fig in page.find_all("figure"):
        if "data-chart" not in fig.attrs:
            continue
        out[fig.attrs["data-chart"]] = {
            g.attrs["data-series"]: (float(g.attrs["data-total"]) if g.attrs["data-total"] else None)
            for g in fig.find_all("g")
            if "data-series" in g.attrs
        }
        # Every point drawn is a value of its series; each series is drawn.
        for g in fig.find_all("g"):
            if "data-series" in g.attrs:
                assert g.find_all("path")[0].attrs["d"].startswith("M")
    return out


def _nearest_rank(values, q):
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def test_each_chart_has_the_series_the_filter_implies_with_the_values_of_rollups(console, tmp_path):
    p = console[0]
    shot = screenshot(f"{p.url}/ui/rollups", SHOTS / "rollups-desktop.png", _profile(tmp_path), DESKTOP)
    assert not png_is_blank(shot)
    charts = _charts(parse(dom(f"{p.url}/ui/rollups", _profile(tmp_path))))
    assert set(charts) == {
        "decisions-by-model",
        "fallback-rate-by-model",
        "decisions-by-provider",
        "fallback-rate-by-provider",
        "cost-vs-baseline",
        "savings-by-policy",
        "rejections-by-rule",
        "latency",
    }
    for by in ("model", "provider"):
        rows = {r["key"]: r for r in p.get("/rollups", params={"by": by}).json()["rows"]}
        if len(rows) <= 8:
            assert set(charts[f"decisions-by-{by}"]) == set(rows)
        for key, total in charts[f"decisions-by-{by}"].items():
            if key != "(other)":
                assert total == rows[key]["decisions"]
                assert charts[f"fallback-rate-by-{by}"][key] == pytest.approx(rows[key]["fallback_rate"])
        assert sum(charts[f"decisions-by-{by}"].values()) == sum(r["decisions"] for r in rows.values())
    policies = {r["key"]: r for r in p.get("/rollups", params={"by": "policy"}).json()["rows"]}
    assert charts["cost-vs-baseline"]["cost"] == pytest.approx(sum(r["cost_usd"] for r in policies.values()))
    assert charts["cost-vs-baseline"]["baseline"] == pytest.approx(sum(r["baseline_usd"] for r in policies.values()))
    assert charts["savings-by-policy"] == pytest.approx({k: r["savings_usd"] for k, r in policies.items()})
    receipts = [r for r in _all(p, {})[0] if r["outcome"] != "dry_run"]
    rules = Counter(rule for r in receipts for rule in {j["rule"] for j in r["rejected"]})
    assert charts["rejections-by-rule"] == {k: float(v) for k, v in rules.items()} or len(rules) > 8
    latencies = [r["latency_ms"] for r in receipts]
    assert charts["latency"]["p50"] == pytest.approx(_nearest_rank(latencies, 0.5))
    assert charts["latency"]["p95"] == pytest.approx(_nearest_rank(latencies, 0.95))

    # Narrowed to one policy and client: only the models that policy chose for that client, with their counts.
    params = {"policy": "triage", "client": "support-bot", "by": "client"}
    narrowed = _charts(parse(dom(f"{p.url}/ui/rollups?{urlencode(params)}", _profile(tmp_path))))
    mine = [r for r in _all(p, {"policy": "triage", "client": "support-bot"})[0] if r["outcome"] != "dry_run"]
    models = Counter(r["answered_by"] or (r["selected"] or {}).get("model") or "(none)" for r in mine)
    assert narrowed["decisions-by-model"] == {k: float(v) for k, v in models.items()}
    assert set(narrowed["savings-by-client"]) == {"support-bot"}
    csv = httpx.get(f"{p.url}/ui/rollups.csv", params={**params, "chart": "decisions-by-model"}).text.splitlines()
    assert csv[0] == "chart,bucket_start,series,value"
    totals = {line.split(",")[2]: float(line.split(",")[3]) for line in csv if ",total," in line}
    assert totals == {k: float(v) for k, v in models.items()}


def test_the_waterfall_shows_every_attempt_of_a_workflow(console, tmp_path):
    p, run, _, _ = console
    flows = {}
    for wid in run.workflows:
        nodes = p.get(f"/workflows/{wid}").json()["workflow"]["nodes"]
        if any(n["fallback"]["triggered"] for n in nodes):
            flows[wid] = nodes
    assert flows, "no workflow fell back: raise failure_rate"
    wid, nodes = next(iter(flows.items()))
    shot = screenshot(f"{p.url}/w/{wid}", SHOTS / "workflow-desktop.png", _profile(tmp_path), DESKTOP)
    assert not png_is_blank(shot)
    page = parse(dom(f"{p.url}/w/{wid}", _profile(tmp_path)))
    svg = page.find_all("svg")[0]
    bars = [a for a in svg.find_all("a") if "data-kind" in a.attrs]
    assert [b.attrs["data-kind"] for b in bars if b.attrs["data-kind"] == "node"] == ["node"] * len(nodes)
    attempts = [b for b in bars if b.attrs["data-kind"] != "node"]
    expected = [(n["request_id"], a) for n in nodes for a in n["attempts"]]
    assert len(attempts) == len(expected)
    for bar, (rid, a) in zip(attempts, expected):
        assert bar.attrs["href"] == f"/r/{quote(rid, safe='')}"
        assert bar.attrs["data-kind"] == ("ok" if a["status"] == "ok" else "error")
        assert a["model"] in bar.all_text() and a["start_ms"] is not None
    hops = [b for b in attempts if "fallback" in b.all_text()]
    assert len(hops) == sum(len(n["fallback"]["hops"]) for n in nodes)
    # Bars sit on one time axis: an attempt starts no earlier than its node, and the hop after the failed call.
    x = defaultdict(list)
    for b in bars:
        x[b.attrs["href"]].append(float(b.find_all("rect")[0].attrs["x"]))
    assert all(xs[0] <= min(xs[1:], default=xs[0]) for xs in x.values())


def test_screenshots_at_desktop_and_phone_width_are_not_blank(console, tmp_path):
    p, run, _, _ = console
    rid = run.request_ids[0]
    for name, path in (("list", "/ui/"), ("receipt", f"/r/{rid}"), ("rollups", "/ui/rollups")):
        for size, label in ((DESKTOP, "desktop"), (PHONE, "phone")):
            shot = screenshot(p.url + path, SHOTS / f"{name}-{label}.png", _profile(tmp_path), size)
            assert shot.stat().st_size > 5000 and not png_is_blank(shot), shot


def _pages(p, run, xss, wds) -> list[str]:
    return [
        "/ui/",
        "/ui/?" + urlencode({"workflow": XSS_WORKFLOW}),
        "/ui/?" + urlencode({"q": XSS}),
        "/ui/?" + urlencode({"since": XSS}),
        "/ui/?" + urlencode({"client": XSS, "rule": XSS}),
        "/ui/rollups?" + urlencode({"by": "workflow"}),
        f"/r/{quote(xss[0].request_id, safe='')}",
        f"/w/{quote(XSS_WORKFLOW, safe='')}",
        f"/w/{quote(XSS, safe='')}",
        f"/r/{run.request_ids[0]}",
    ]


def test_names_with_script_and_quotes_from_spans_are_inert_on_every_page(console, tmp_path):
    p, run, xss, wds = console
    for path in _pages(p, run, xss, wds):
        page = parse(dom(p.url + path, _profile(tmp_path)))
        assert PWNED not in page.find_all("html")[0].attrs, path  # nothing ran
        assert not page.find_all("script") and not page.find_all("img"), path
        for el in page.iter():
            assert not any(k.startswith("on") for k in el.attrs), (path, el.tag, el.attrs)
    # The names are shown, as text.
    text = parse(dom(f"{p.url}/w/{quote(XSS_WORKFLOW, safe='')}", _profile(tmp_path))).all_text()
    assert XSS in text and XSS_IMG in text and XSS_WORKFLOW in text
    assert XSS in parse(dom(f"{p.url}/r/{quote(xss[0].request_id, safe='')}", _profile(tmp_path))).all_text()


def test_every_page_is_usable_with_the_keyboard(console, tmp_path):
    p, run, xss, wds = console
    for path in _pages(p, run, xss, wds)[:3] + ["/ui/rollups", f"/w/{next(iter(run.workflows))}"]:
        page = parse(dom(p.url + path, _profile(tmp_path)))
        labels = {lab.attrs.get("for") for lab in page.find_all("label")}
        focusable = []
        for el in page.iter():
            assert "onclick" not in el.attrs and int(el.attrs.get("tabindex") or 0) <= 0, (path, el.tag)
            if el.tag in ("input", "select", "textarea") and el.attrs.get("type") != "hidden":
                assert el.attrs.get("id") in labels, (path, el.attrs)  # every control is labelled
                focusable.append(el)
            elif el.tag == "a":
                assert el.attrs.get("href"), (path, el.all_text())  # a link the keyboard reaches
                focusable.append(el)
            elif el.tag in ("button", "summary"):
                focusable.append(el)
        # Focus order is document order: the skip link, then the search, then the page.
        assert focusable[0].attrs.get("href") == "#main" and focusable[0].all_text() == "Skip to content"
        assert focusable[3].attrs.get("id") == "search-q", path
        for button in page.find_all("button"):
            assert button.attrs.get("type") == "submit" and button.ancestor("form") is not None


def test_trace_links_and_json_links(console, tmp_path):
    p, run, _, _ = console
    rid = run.request_ids[5]
    receipt = p.get(f"/receipts/{rid}").json()["receipt"]
    page = parse(httpx.get(f"{p.url}/r/{rid}").text)
    hrefs = [a.attrs["href"] for a in page.find_all("a")]
    assert f"http://jaeger.example:16686/trace/{receipt['trace_id']}" in hrefs
    assert any(h.startswith("http://grafana.example:3000/explore") and receipt["trace_id"] in h for h in hrefs)
    assert f"/receipts/{rid}" in hrefs
    for path, json_href in (("/ui/?policy=support", "/receipts?policy=support"), ("/ui/rollups", "/rollups?by=policy")):
        page = parse(httpx.get(p.url + path).text)
        assert json_href in [a.attrs["href"] for a in page.find_all("a", rel="alternate")]
