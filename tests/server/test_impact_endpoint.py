"""``POST /x/impact`` on the proxy: the impact report over the proxy's store, on uvicorn over loopback.

The store holds a recorded history of demo decisions (``impact_history``); the proxy serves that history's policies
on its catalog. The report must be the one measured in-process; bad bodies are 400 naming the field; with client
keys a client measures its own requests, under the policies its key may use.
"""

from __future__ import annotations

import hashlib

import httpx
import pytest

from apps.proxy_harness import serving
from impact_history import (
    CATALOG,
    POLICIES,
    history_db_fixture,  # noqa: F401  (fixture: history_db)
    history_fixture,  # noqa: F401  (fixture: history)
    triage_document,
)
from unhardcoded.policy import validate_policy
from unhardcoded.receipts import open_store
from unhardcoded.receipts.impact import measure_impact
from unhardcoded.receipts.replay import parse_since
from unhardcoded.router import NO_TELEMETRY, Router
from unhardcoded.server import create_app
from unhardcoded.server.auth import ClientKeys

SINCE = "2026-05-24T12:00:00Z"
OPS_KEY = "sk-CANARY-impact-ops-4b5c6d7e8f90"
SUPPORT_KEY = "sk-CANARY-impact-support-0a9b8c7d"


@pytest.fixture
def store(history_db):
    s = open_store(str(history_db), create=False)
    yield s
    s.close()


def proxy(store, **kwargs):
    router = Router(CATALOG, telemetry=NO_TELEMETRY)
    return serving(create_app(router, list(POLICIES.values()), store=store, **kwargs))


def post(server, body, **kw) -> httpx.Response:
    return httpx.post(server.base_url + "/x/impact", json=body, timeout=120, **kw)


def without_until(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "until"}


def test_the_report_is_the_one_measured_in_process(store):
    tight = triage_document(ceiling=0.35)
    expected = measure_impact(store, CATALOG, parse_since(SINCE), policy=validate_policy(tight, CATALOG))
    with proxy(store) as server:
        r = post(server, {"since": SINCE, "policy": tight})
        assert r.status_code == 200, r.text
        assert without_until(r.json()) == without_until(expected.to_json_dict())
        assert r.json()["changes"][0]["rule"] == "price-ceiling"

        # By name: the proxy's own policy of that name (here, the one the history was recorded under).
        named = post(server, {"since": SINCE, "policy": "triage"}).json()
        assert named["policy"]["fingerprint"] == POLICIES["triage"].fingerprint
        assert named["differ"] == 0 and named["decisions"] == named["kept"] > 0

        # A catalog version the store keeps; with no policy, every decision under its own.
        kept = post(server, {"since": "3650d", "catalog": CATALOG.version}).json()
        assert kept["catalog"]["version"] == CATALOG.version and kept["decisions"] == 2500 and kept["differ"] == 0

        # The window is the request's: the history ended before the last day.
        assert post(server, {"since": "1h"}).json()["decisions"] == 0


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({}, "since", "since: required"),
        ({"since": "soon"}, "since", "since: 'soon' is not a duration"),
        (
            {"since": "7d", "policy": {"schema": "sigma-pol/v1", "name": "t", "rules": [{"id": "r"}]}},
            "policy",
            "rules[0]",
        ),
        ({"since": "7d", "policy": "no-such-policy"}, "policy", "no policy 'no-such-policy'"),
        ({"since": "7d", "catalog": "0000000000000000"}, "catalog", "0000000000000000"),
        ({"since": "7d", "catalog": {"schema": "nope"}}, "catalog", "schema: must be"),
        ({"since": "7d", "colour": "red"}, "colour", "colour: unknown field"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(store, body, param, words):
    with proxy(store) as server:
        r = post(server, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert error["code"] == "invalid_impact_request" and error["type"] == "invalid_request_error"


def test_a_body_that_is_not_json_and_a_proxy_without_a_store(store):
    with proxy(store) as server:
        r = httpx.post(server.base_url + "/x/impact", content=b"{since:", timeout=10)
        assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    with serving(create_app(Router(CATALOG, telemetry=NO_TELEMETRY), list(POLICIES.values()))) as server:
        r = post(server, {"since": "7d"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "no_receipt_store"


def test_with_client_keys_a_client_measures_its_own_requests_under_the_policies_it_may_use(store, history):
    receipts = history.receipts()
    store.put_many(
        [
            (r.model_copy(update={"request_id": f"req_support_bot_{i}", "client": "support-bot"}), None)
            for i, r in enumerate(receipts[:4])
        ]
    )
    keys = ClientKeys.parse(
        "keys:\n"
        f"  - {{name: ops, sha256: {hashlib.sha256(OPS_KEY.encode()).hexdigest()}, policies: ['*'], inline: true}}\n"
        f"  - {{name: support-bot, sha256: {hashlib.sha256(SUPPORT_KEY.encode()).hexdigest()}, policies: [support]}}\n",
        "keys.yaml",
    )
    with proxy(store, client_keys=keys) as server:
        assert post(server, {"since": SINCE}).status_code == 401
        bot = {"Authorization": f"Bearer {SUPPORT_KEY}"}
        mine = post(server, {"since": SINCE}, headers=bot).json()
        assert (mine["in_window"], mine["decisions"]) == (4, 4)
        refused = post(server, {"since": SINCE, "policy": "triage"}, headers=bot)
        assert refused.status_code == 403 and "triage" in refused.json()["error"]["message"]
        inline = post(server, {"since": SINCE, "policy": triage_document(ceiling=0.35)}, headers=bot)
        assert inline.status_code == 403 and "inline policies" in inline.json()["error"]["message"]
        ops = post(
            server,
            {"since": SINCE, "policy": triage_document(ceiling=0.35)},
            headers={"Authorization": f"Bearer {OPS_KEY}"},
        )
        assert ops.status_code == 200 and ops.json()["in_window"] == 0  # ops sent none of these requests
