"""Hostile query parameters and path ids on every route of the processor's query API and pages.

Each case is one request to a real processor process; the answer must be 2xx or
the documented 4xx with a JSON error naming the parameter (never a 500, never a
traceback), and the processor must still answer afterwards.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor_fixtures import ProcessorProcess


def _cursor(doc: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


def _raw_cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


HUGE_INT = "9" * 5000
DEEP_JSON = "[" * 20_000 + "]" * 20_000

# (id, path with query, statuses allowed, the parameter a 400 must name)
CORPUS: list[tuple[str, str, tuple[int, ...], str | None]] = [
    ("cursor-offset-10e25", "/receipts?cursor=" + _cursor({"o": 10**25}), (400,), "cursor"),
    ("cursor-offset-2e63", "/receipts?cursor=" + _cursor({"o": 2**63}), (400,), "cursor"),
    ("cursor-offset-negative", "/receipts?cursor=" + _cursor({"o": -1}), (400,), "cursor"),
    ("cursor-offset-true", "/receipts?cursor=" + _cursor({"o": True}), (400,), "cursor"),
    ("cursor-offset-float", "/receipts?cursor=" + _cursor({"o": 1.5}), (400,), "cursor"),
    ("cursor-offset-string", "/receipts?cursor=" + _cursor({"o": "10"}), (400,), "cursor"),
    ("cursor-offset-huge-int-text", "/receipts?cursor=" + _raw_cursor('{"o": ' + HUGE_INT + "}"), (400,), "cursor"),
    ("cursor-offset-nan", "/receipts?cursor=" + _raw_cursor('{"o": NaN}'), (400,), "cursor"),
    ("cursor-deep-json", "/receipts?cursor=" + _raw_cursor(DEEP_JSON), (400,), "cursor"),
    ("cursor-list", "/receipts?cursor=" + _cursor([1, 2]), (400,), "cursor"),
    ("cursor-not-base64", "/receipts?cursor=%25%25%25", (400,), "cursor"),
    ("cursor-not-utf8", "/receipts?cursor=" + base64.urlsafe_b64encode(b"\xff\xfe").decode(), (400,), "cursor"),
    ("since-9999999d", "/receipts?since=9999999d", (400,), "since"),
    ("since-100000000000h", "/receipts?since=100000000000h", (400,), "since"),
    ("since-400-digit-seconds", "/receipts?since=" + "9" * 400 + "s", (400,), "since"),
    ("since-tiny", "/receipts?since=0.0000001s", (200,), None),
    ("since-year-1", "/receipts?since=0001-01-01", (200,), None),
    ("since-year-9999", "/receipts?since=9999-12-31T23:59:59", (200,), None),
    ("since-year-1-east", "/receipts?since=0001-01-01T00:00:00%2B23:59", (200, 400), "since"),
    ("since-year-9999-west", "/receipts?since=9999-12-31T23:59:59-23:59", (200, 400), "since"),
    ("since-month-13", "/receipts?since=2024-13-01", (400,), "since"),
    ("since-nul", "/receipts?since=7d%00", (400,), "since"),
    ("until-9999999d", "/receipts?until=9999999d", (400,), "until"),
    ("until-huge-int", "/receipts?until=" + HUGE_INT + "d", (400,), "until"),
    ("limit-zero", "/receipts?limit=0", (400,), "limit"),
    ("limit-negative", "/receipts?limit=-1", (400,), "limit"),
    ("limit-over", "/receipts?limit=1001", (400,), "limit"),
    ("limit-huge", "/receipts?limit=" + HUGE_INT, (400,), "limit"),
    ("limit-superscript", "/receipts?limit=" + quote("²"), (400,), "limit"),
    ("limit-arabic-digits", "/receipts?limit=" + quote("١٠"), (400,), "limit"),
    ("limit-float", "/receipts?limit=1.5", (400,), "limit"),
    ("fallback-maybe", "/receipts?fallback=maybe", (400,), "fallback"),
    ("complete-nul", "/receipts?complete=%00", (400,), "complete"),
    ("policy-sql", "/receipts?policy=" + quote("' OR 1=1 --"), (200,), None),
    ("policy-nul", "/receipts?policy=a%00b", (200,), None),
    ("policy-bad-utf8", "/receipts?policy=%ff%fe", (200,), None),
    ("policy-lone-surrogate", "/receipts?policy=%ed%a0%80", (200,), None),
    ("model-long", "/receipts?model=" + "m" * 60_000, (200,), None),
    ("workflow-like-wildcards", "/receipts?workflow=%25_%25", (200,), None),
    ("repeated-params", "/receipts?limit=1&limit=2&limit=abc", (200, 400), "limit"),
    ("rollups-by-unknown", "/rollups?by=secret", (400,), "by"),
    ("rollups-by-empty", "/rollups?by=", (400,), "by"),
    ("rollups-by-nul", "/rollups?by=policy%00", (400,), "by"),
    ("rollups-since-9999999d", "/rollups?since=9999999d", (400,), "since"),
    ("rollups-since-100000000000h", "/rollups?since=100000000000h", (400,), "since"),
    ("rollups-since-garbage", "/rollups?since=" + quote("<script>"), (400,), "since"),
    ("receipt-id-nul", "/receipts/a%00b", (404,), None),
    ("receipt-id-bad-utf8", "/receipts/%ff%fe", (404,), None),
    ("receipt-id-traversal", "/receipts/..%2F..%2Fetc%2Fpasswd", (404,), None),
    ("receipt-id-long", "/receipts/" + "r" * 60_000, (404,), None),
    ("receipt-id-sql", "/receipts/" + quote("x' OR '1'='1"), (404,), None),
    ("workflow-id-nul", "/workflows/a%00b", (404,), None),
    ("workflow-id-bad-utf8", "/workflows/%ff", (404,), None),
    ("receipt-page-script", "/r/" + quote("<script>alert(1)</script>"), (404,), None),
    ("receipt-page-nul", "/r/%00", (404,), None),
    ("workflow-page-script", "/w/" + quote('"><img src=x onerror=alert(1)>'), (404,), None),
    ("stats-with-params", "/stats?x=" + HUGE_INT, (200,), None),
]
HOSTILE_INPUTS = len(CORPUS)


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    base = tmp_path_factory.mktemp("query")
    p = ProcessorProcess(str(base / "receipts.db"), log=base / "processor.log").start()
    yield p
    p.stop()


def _check(p: ProcessorProcess, path: str, allowed: tuple[int, ...], names: str | None) -> httpx.Response:
    r = httpx.get(p.url + path, timeout=30)
    assert r.status_code != 500 and "Traceback" not in r.text, (path[:200], r.status_code, r.text[:300])
    assert r.status_code in allowed, (path[:200], r.status_code, r.text[:300])
    if r.status_code == 400:
        error = r.json()["error"]
        assert names is not None and names in error["message"], error
    if path.startswith(("/r/", "/w/")):
        assert "<script>" not in r.text and "<img" not in r.text
    return r


@pytest.mark.parametrize(("path", "allowed", "names"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_hostile_query_is_answered_4xx_and_the_processor_still_serves(processor, path, allowed, names):
    _check(processor, path, allowed, names)
    assert processor.get("/healthz").status_code == 200


_PARAMS = ("limit", "cursor", "since", "until", "fallback", "complete", "policy", "model", "workflow")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    route=st.sampled_from(["/receipts", "/rollups"]),
    params=st.lists(st.tuples(st.sampled_from((*_PARAMS, "by")), st.text(max_size=40)), max_size=4),
)
def test_fuzzed_query_parameters_never_get_a_500(processor, route, params):
    query = "&".join(f"{quote(k)}={quote(v, safe='', errors='surrogatepass')}" for k, v in params)
    r = httpx.get(f"{processor.url}{route}?{query}", timeout=30)
    assert r.status_code in (200, 400), (route, query, r.status_code, r.text[:300])
    if r.status_code == 400:
        assert r.json()["error"]["code"] == "bad_request"
