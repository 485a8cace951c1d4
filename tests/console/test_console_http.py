"""The console over HTTP: sign-in behind the query token, the proxy's /x/ui/, bad filters and flags."""

from __future__ import annotations

import subprocess
import sys
from urllib.parse import quote

import httpx
import pytest

from apps.proxy_harness import serving
from browser import dom, parse
from processor_fixtures import ProcessorProcess
from unhardcoded.receipts import ReceiptQuery, open_store
from unhardcoded.server import create_app
from unhardcoded.testing.bulk import generate

TOKEN = "q-secret-token"
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    path = tmp_path_factory.mktemp("console-http") / "receipts.db"
    store = open_store(str(path))
    try:
        run = generate(store, 60, seed=4, failure_rate=0.3)
    finally:
        store.close()
    return path, run


@pytest.fixture
def guarded(filled, tmp_path, monkeypatch):
    monkeypatch.setenv("CONSOLE_QUERY_TOKEN", TOKEN)
    p = ProcessorProcess(str(filled[0]), "--query-token-env", "CONSOLE_QUERY_TOKEN", log=tmp_path / "log").start()
    yield p, filled[1]
    p.stop()


def test_behind_the_query_token_the_console_signs_in_with_an_httponly_strict_cookie(guarded, tmp_path):
    p, run = guarded
    rid = run.request_ids[0]
    with httpx.Client(base_url=p.url, headers={"Accept": BROWSER}) as c:
        assert httpx.get(f"{p.url}/r/{rid}").status_code == 401  # an API client is told, not redirected
        first = c.get(f"/r/{rid}")
        assert first.status_code == 303 and first.headers["location"] == f"/ui/sign-in?next=%2Fr%2F{rid}"
        form = c.get(first.headers["location"])
        assert form.status_code == 200 and 'name="token"' in form.text and 'type="password"' in form.text
        wrong = c.post("/ui/sign-in", data={"token": "guess", "next": "/ui/"})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        ok = c.post("/ui/sign-in", data={"token": TOKEN, "next": f"/r/{rid}"})
        assert ok.status_code == 303 and ok.headers["location"] == f"/r/{rid}"
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie and TOKEN not in cookie
        assert c.get(f"/r/{rid}").status_code == 200 and c.get("/ui/").status_code == 200
        assert c.get("/ui/rollups").status_code == 200
        # The JSON API keeps its bearer token: the console's cookie does not open it.
        assert c.get(f"/receipts/{rid}").status_code == 401
        assert c.get(f"/receipts/{rid}", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        out = c.post("/ui/sign-out")
        assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
        assert c.get("/ui/").status_code == 303
        assert c.get("/ui/", headers={"Authorization": "Bearer wrong"}).status_code == 401
        # A sign-in never sends the browser to another site.
        away = c.post("/ui/sign-in", data={"token": TOKEN, "next": "//evil.example/x"})
        assert away.headers["location"] == "/ui/"
    # The pages answer a bearer token too (scripts, curl).
    assert httpx.get(f"{p.url}/ui/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_the_sign_in_page_in_chromium_is_labelled(guarded, tmp_path):
    p, _ = guarded
    page = parse(dom(f"{p.url}/ui/", tmp_path / "profile"))  # redirected to the sign-in page
    token = page.find_all("input", id="token")[0]
    assert token.attrs["type"] == "password"
    assert page.find_all("label", **{"for": "token"})
    assert page.find_all("input", name="next")[0].attrs["value"] == "/ui/"


def test_a_bad_filter_is_a_400_page_naming_the_parameter(filled, tmp_path):
    p = ProcessorProcess(str(filled[0]), log=tmp_path / "log").start()
    try:
        for params, named in (
            ({"since": "yesterday-ish"}, "since="),
            ({"outcome": "maybe"}, "outcome="),
            ({"fallback": "perhaps"}, "fallback="),
            ({"limit": "0"}, "limit="),
            ({"cursor": "garbage!"}, "cursor"),
        ):
            r = httpx.get(f"{p.url}/ui/", params=params)
            assert r.status_code == 400 and named in r.text, params
        r = httpx.get(f"{p.url}/ui/rollups", params={"by": "colour"})
        assert r.status_code == 400 and "by=" in r.text
        assert httpx.get(f"{p.url}/ui/rollups.csv", params={"chart": "nope"}).status_code == 404
        page = httpx.get(f"{p.url}/ui/")
        assert "default-src 'none'" in page.headers["content-security-policy"]
    finally:
        p.stop()


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--jaeger-url", "http://localhost:16686/trace/", "{trace_id}"),
        ("--tempo-url", "javascript:alert(1)/{trace_id}", "http://"),
    ],
)
def test_a_trace_url_template_without_trace_id_or_http_stops_the_start(tmp_path, flag, value, says):
    out = subprocess.run(
        [sys.executable, "-m", "unhardcoded.cli", "processor", "--store", str(tmp_path / "r.db"), flag, value],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and flag in out.stderr and says in out.stderr


def test_the_proxy_serves_the_console_over_its_own_store(filled, tmp_path):
    store = open_store(str(filled[0]))
    try:
        with serving(create_app(store=store)) as served:
            base = served.base_url
            rid = filled[1].request_ids[-1]
            listing = httpx.get(f"{base}/x/ui/")
            assert listing.status_code == 200 and f'href="/x/ui/r/{rid}"' in listing.text
            n = store.count(ReceiptQuery(fallback=True))
            page = parse(httpx.get(f"{base}/x/ui/", params={"fallback": "true", "limit": 500}).text)
            assert len([tr for tr in page.find_all("tr") if "data-request-id" in tr.attrs]) == n
            receipt = httpx.get(f"{base}/x/ui/r/{quote(rid, safe='')}")
            assert receipt.status_code == 200 and f'href="/x/receipts/{rid}"' in receipt.text
            wid = next(iter(filled[1].workflows))
            assert httpx.get(f"{base}/x/ui/w/{wid}").status_code == 200
            assert httpx.get(f"{base}/x/ui/rollups").status_code == 200
            assert httpx.get(f"{base}/x/ui/r/req_nobody").status_code == 404
        with serving(create_app()) as bare:
            r = httpx.get(f"{bare.base_url}/x/ui/")
            assert r.status_code == 404 and "serve --store" in r.text
    finally:
        store.close()
