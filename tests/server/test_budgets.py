"""Budgets on the proxy: a policy's or a client key's spending per window, refused with 429 ``budget_exceeded``.

The real proxy on uvicorn over loopback, the real openai client, simulated providers whose answers cost what
their usage costs at catalog prices. A decision's billed cost is what the budget spends.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from apps.proxy_harness import HELLO, catalog_simulators, providers_for, serving
from unhardcoded.catalog import Catalog
from unhardcoded.errors import PolicyError
from unhardcoded.policy import load_policy
from unhardcoded.policy.builtin import builtin_policy_dir
from unhardcoded.receipts.render import render_rollup
from unhardcoded.receipts.stores import open_store
from unhardcoded.router import Router
from unhardcoded.router.providers import ProviderClient
from unhardcoded.semconv import attributes as A
from unhardcoded.semconv import metrics as M
from unhardcoded.server import create_app
from unhardcoded.server.auth import ClientKeys, ClientKeysError
from unhardcoded.server.state import InProcessState, SharedState
from unhardcoded.testing import TelemetryCapture
from unhardcoded.testing.simulator import ok

OPUS = "claude-opus-4-7"  # $5 in, $25 out per Mtok
LONG_ANSWER = "x" * 4000  # 1000 output tokens: $0.025 a call
NOON = 86400 * 20_000 + 43_200.0
"""A fixed clock in the middle of a 24h window (a refusal carries no Retry-After then)."""

CAPPED = """
schema: sigma-pol/v1
name: capped
rules: [{id: opus, field: id, op: eq, value: claude-opus-4-7}]
budget: {usd: 0.07, window: 24h}
"""
# Each answer costs $0.025; each request is estimated at ~$0.0128 (512 output tokens): 0 + est, 0.025 + est and
# 0.050 + est fit $0.07, then 0.075 is spent: the fourth request is refused.
CHEAP = """
schema: sigma-pol/v1
name: cheap
rules: [{id: haiku, field: id, op: eq, value: claude-haiku-4-5}]
"""
OPEN = """
schema: sigma-pol/v1
name: open
rules: [{id: opus, field: id, op: eq, value: claude-opus-4-7}]
"""

BOT_KEY = "sk-budget-bot-5e5e5e5e5e5e"


def policies(*texts: str) -> list[Any]:
    return [load_policy(t) for t in texts]


class Proxy:
    """A running proxy over simulated providers, with a fixed budget clock."""

    def __init__(self, server: Any, sims: dict[str, Any]) -> None:
        self.server = server
        self.sims = sims

    @property
    def proxy(self) -> Any:
        return self.server.proxy

    def post(self, policy: str | None = None, key: str | None = None) -> httpx.Response:
        body: dict[str, Any] = {"messages": HELLO}
        if policy is not None:
            body["policy"] = policy
        headers = {"authorization": f"Bearer {key}"} if key else {}
        response = httpx.post(f"{self.server.base_url}/v1/chat/completions", json=body, headers=headers, timeout=10)
        self.settled()
        return response

    def settled(self) -> None:
        """Wait until every reservation has been settled with its actual cost (that happens after the answer)."""
        deadline = time.monotonic() + 5
        while self.proxy.budgets.settling:
            assert time.monotonic() < deadline, "the budget reservations were not settled"
            time.sleep(0.005)

    def receipt(self, request_id: str, key: str | None = None) -> dict[str, Any]:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        r = httpx.get(f"{self.server.base_url}/x/receipts/{request_id}", headers=headers)
        assert r.status_code == 200, r.text
        return r.json()

    def opus_calls(self) -> int:
        return sum(1 for r in self.sims["anthropic"].requests if r.model == OPUS)


def running(
    simulated_provider: Any,
    pols: list[Any],
    *,
    state: SharedState | None = None,
    clock: float = NOON,
    tel: TelemetryCapture | None = None,
    **app_kwargs: Any,
) -> Iterator[Proxy]:
    sims = catalog_simulators(simulated_provider)
    for sim in sims.values():
        for model in (OPUS, "claude-haiku-4-5"):
            sim.set_behavior(model, ok(LONG_ANSWER))
    client = ProviderClient(providers_for(sims, timeout_s=5.0))
    router = Router(Catalog.builtin(), client, tracer_provider=tel.tracer_provider if tel else None)
    app = create_app(
        router,
        pols,
        state=state,
        meter_provider=tel.meter_provider if tel else None,
        tracer_provider=tel.tracer_provider if tel else None,
        **app_kwargs,
    )
    app.state.proxy.budgets.clock = lambda: clock
    with serving(app, closing=[client]) as server:
        yield Proxy(server, sims)
    client.close()


@pytest.fixture
def capped(simulated_provider: Any, tel: TelemetryCapture) -> Iterator[Proxy]:
    yield from running(simulated_provider, policies(CAPPED, CHEAP, OPEN), tel=tel)


def spend_until_refused(proxy: Proxy, policy: str, key: str | None = None, limit: int = 20) -> list[httpx.Response]:
    answers = []
    for _ in range(limit):
        answers.append(proxy.post(policy, key))
        if answers[-1].status_code != 200:
            return answers
    raise AssertionError(f"{limit} requests and the budget still was not spent")


# --------------------------------------------------------------------------- the policy's budget


def test_a_spent_budget_answers_429_budget_exceeded_with_a_receipt_naming_it(capped: Proxy, tel: Any) -> None:
    answers = spend_until_refused(capped, "capped")
    *paid, refused = answers
    assert [a.status_code for a in paid] == [200, 200, 200]
    costs = [capped.receipt(a.headers["x-unhardcoded-request-id"])["cost"]["usd"] for a in paid]
    assert all(c == pytest.approx(0.025025) for c in costs)

    assert refused.status_code == 429
    assert refused.headers["x-should-retry"] == "false"
    assert "retry-after" not in refused.headers  # the window resets in 12 hours
    error = refused.json()["error"]
    assert error["code"] == "budget_exceeded" and error["type"] == "insufficient_quota"
    assert "policy 'capped'" in error["message"] and "$0.07 per 24h" in error["message"]
    assert capped.opus_calls() == 3  # the refused request never reached the provider

    receipt = capped.receipt(refused.headers["x-unhardcoded-request-id"])
    assert receipt["outcome"] == "over_budget"
    assert receipt["attempts"] == [] and receipt["answered_by"] is None
    assert receipt["cost"]["usd"] == 0  # refused before any call: nothing paid
    budget = receipt["budget"]
    assert budget["scope"] == "policy" and budget["name"] == "capped" and budget["window"] == "24h"
    assert budget["limit_usd"] == 0.07 and budget["action"] == "refused"
    assert budget["spent_usd"] == pytest.approx(sum(costs))

    # The decision span says the same, and a receipt rebuilt from it equals the proxy's.
    spans = [s for s in tel.decisions() if s.attributes[A.UNHARDCODED_REQUEST_ID] == receipt["request_id"]]
    assert spans and spans[0].attributes[A.UNHARDCODED_DECISION_OUTCOME] == "over_budget"
    assert spans[0].attributes[A.UNHARDCODED_BUDGET_SPENT_USD] == pytest.approx(sum(costs))
    rebuilt = [r for r in tel.receipts() if r.request_id == receipt["request_id"]]
    assert rebuilt[0].to_json_dict()["budget"] == budget

    # Gauges: what is left and the limit, per budget.
    remaining = tel.metric(M.UNHARDCODED_BUDGET_REMAINING)
    labels = frozenset(
        {
            A.UNHARDCODED_BUDGET_SCOPE: "policy",
            A.UNHARDCODED_BUDGET_NAME: "capped",
            A.UNHARDCODED_BUDGET_WINDOW: "24h",
        }.items()
    )
    assert remaining[labels] == pytest.approx(0.07 - sum(costs))
    assert tel.metric(M.UNHARDCODED_BUDGET_LIMIT)[labels] == 0.07

    # Other policies are not touched by it.
    assert capped.post("open").status_code == 200


def test_a_spent_budget_refuses_a_messages_call_in_anthropics_error_shape(capped: Proxy) -> None:
    """The same budget covers every API; on /v1/messages the refusal is the error shape the anthropic SDK reads."""
    import anthropic

    spend_until_refused(capped, "capped")
    calls = capped.opus_calls()
    client = anthropic.Anthropic(
        base_url=capped.server.base_url,
        api_key="sk-ant-unused",
        max_retries=3,
        default_headers={"x-unhardcoded-policy": "capped"},
    )
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model="auto", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    client.close()
    answer = caught.value.response
    assert answer.headers["x-should-retry"] == "false"
    body = answer.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error", body
    assert "budget exceeded" in body["error"]["message"] and "'capped'" in body["error"]["message"]
    assert capped.opus_calls() == calls  # refused before any provider call, and not retried


def test_rollups_count_the_requests_a_budget_refused(capped: Proxy, tel: Any, tmp_path: Any) -> None:
    spend_until_refused(capped, "capped")
    assert capped.post("capped").status_code == 429
    assert capped.post("open").status_code == 200
    store = open_store(str(tmp_path / "receipts.db"))
    try:
        for receipt in tel.receipts():
            store.put(receipt)
        rows = {r.key: r for r in store.rollup("policy")}
    finally:
        store.close()
    assert rows["capped"].over_budget == 2 and rows["capped"].decisions == 5
    assert rows["capped"].cost_usd == pytest.approx(3 * 0.025025)
    assert rows["open"].over_budget == 0
    assert rows["capped"].to_json_dict()["over_budget"] == 2
    table = render_rollup(list(rows.values()), "policy")
    assert table.splitlines()[0].split()[-2:] == ["over", "budget"]
    assert table.splitlines()[-1].split()[-1] == "2"  # the total


def test_the_openai_client_does_not_retry_a_budget_refusal(capped: Proxy) -> None:
    spend_until_refused(capped, "capped")
    sent: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [sent.append]})
    client = openai.OpenAI(base_url=capped.server.openai_base_url, api_key="unused", max_retries=3, http_client=http)
    try:
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="auto", messages=HELLO, extra_body={"policy": "capped"})
    finally:
        client.close()
    assert caught.value.code == "budget_exceeded"
    assert len(sent) == 1  # x-should-retry: false, so none of its three retries


def test_retry_after_is_sent_only_when_the_window_resets_soon(simulated_provider: Any) -> None:
    reset = 86400 * 20_001.0
    for proxy in running(simulated_provider, policies(CAPPED), clock=reset - 30):
        refused = spend_until_refused(proxy, "capped")[-1]
        assert refused.status_code == 429 and refused.headers["retry-after"] == "30"


def test_a_failed_call_spends_nothing(simulated_provider: Any) -> None:
    from unhardcoded.testing.simulator import error

    for proxy in running(simulated_provider, policies(CAPPED)):
        proxy.sims["anthropic"].set_behavior(OPUS, error(500))
        # Five failed calls (502), then the model cools down and no model passes (422): neither spends.
        assert [proxy.post("capped").status_code for _ in range(10)] == [502] * 5 + [422] * 5
        [(_, limit, left)] = list(proxy.proxy.budgets.remaining())
        assert left == limit == 0.07


def test_a_streamed_request_spends_and_is_refused_too(capped: Proxy) -> None:
    client = openai.OpenAI(base_url=capped.server.openai_base_url, api_key="unused", max_retries=0)
    try:
        for _ in range(3):
            with client.chat.completions.create(
                model="auto", messages=HELLO, stream=True, extra_body={"policy": "capped"}
            ) as stream:
                assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == LONG_ANSWER
            capped.settled()
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="auto", messages=HELLO, stream=True, extra_body={"policy": "capped"})
    finally:
        client.close()
    assert caught.value.code == "budget_exceeded"


# --------------------------------------------------------------------------- a cheaper fallback policy


def test_a_policy_can_name_a_cheaper_policy_to_use_once_its_budget_is_spent(simulated_provider: Any) -> None:
    text = CAPPED.replace("window: 24h}", "window: 24h, fallback_policy: cheap}")
    for proxy in running(simulated_provider, policies(text, CHEAP)):
        answers = [proxy.post("capped") for _ in range(5)]
        assert [a.status_code for a in answers] == [200] * 5
        assert [a.headers["x-unhardcoded-model"] for a in answers] == [OPUS] * 3 + ["claude-haiku-4-5"] * 2
        receipt = proxy.receipt(answers[3].headers["x-unhardcoded-request-id"])
        assert receipt["policy"]["name"] == "cheap" and receipt["outcome"] == "answered"
        assert receipt["budget"]["name"] == "capped" and receipt["budget"]["action"] == "fallback"
        assert proxy.receipt(answers[0].headers["x-unhardcoded-request-id"])["budget"] is None
        with httpx.stream(
            "POST",
            f"{proxy.server.base_url}/v1/chat/completions",
            json={"messages": HELLO, "policy": "capped", "stream": True},
        ) as streamed:
            assert streamed.status_code == 200 and streamed.headers["x-unhardcoded-model"] == "claude-haiku-4-5"
            streamed.read()
        proxy.settled()
        receipt = proxy.receipt(streamed.headers["x-unhardcoded-request-id"])
        assert receipt["policy"]["name"] == "cheap" and receipt["budget"]["action"] == "fallback"


def test_a_fallback_policy_the_proxy_does_not_have_is_refused_at_start_up() -> None:
    from unhardcoded.errors import ConfigError

    text = CAPPED.replace("window: 24h}", "window: 24h, fallback_policy: nowhere}")
    with pytest.raises(ConfigError, match=r"budget\.fallback_policy names 'nowhere'"):
        create_app(Router(Catalog.builtin()), policies(text), state=InProcessState())


# --------------------------------------------------------------------------- a client key's budget


def test_a_client_keys_budget_counts_its_requests_under_every_policy(simulated_provider: Any) -> None:
    digest = hashlib.sha256(BOT_KEY.encode()).hexdigest()
    keys = ClientKeys.parse(
        f"keys:\n  - name: bot\n    sha256: {digest}\n    policies: [open]\n    budget: {{usd: 0.05, window: 1h}}\n",
        "keys.yaml",
    )
    for proxy in running(simulated_provider, policies(OPEN), client_keys=keys):
        answers = spend_until_refused(proxy, "open", BOT_KEY)
        assert [a.status_code for a in answers] == [200, 200, 429]
        error = answers[-1].json()["error"]
        assert error["code"] == "budget_exceeded" and "client 'bot'" in error["message"]
        budget = proxy.receipt(answers[-1].headers["x-unhardcoded-request-id"], BOT_KEY)["budget"]
        assert budget["scope"] == "client" and budget["name"] == "bot" and budget["window"] == "1h"


@pytest.mark.parametrize(
    ("budget", "needle"),
    [
        ("{usd: 0, window: 1h}", "keys[0].budget.usd: must be a positive number"),
        ("{usd: 1, window: 1w}", "keys[0].budget.window: must be a window like 1h"),
        ("{usd: 1, window: 1h, fallback_policy: x}", "keys[0].budget.fallback_policy: unknown key"),
    ],
)
def test_a_bad_client_key_budget_names_its_field(budget: str, needle: str) -> None:
    digest = hashlib.sha256(BOT_KEY.encode()).hexdigest()
    text = f"keys:\n  - name: bot\n    sha256: {digest}\n    policies: [open]\n    budget: {budget}\n"
    with pytest.raises(ClientKeysError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        ClientKeys.parse(text, "keys.yaml")


# --------------------------------------------------------------------------- the policy model


def test_a_budget_is_in_the_fingerprint_only_when_set() -> None:
    support = load_policy((builtin_policy_dir() / "support.yaml").read_text())
    assert support.fingerprint == "1237271721-1664593158"  # as without the budget field
    assert "budget" not in support.canonical
    with_budget = load_policy((builtin_policy_dir() / "support.yaml").read_text() + "budget: {usd: 5, window: 24h}\n")
    assert with_budget.fingerprint != support.fingerprint
    assert '"budget":{"usd":5,"window":"24h"}' in with_budget.canonical
    other_window = load_policy((builtin_policy_dir() / "support.yaml").read_text() + "budget: {usd: 5, window: 1h}\n")
    assert other_window.fingerprint != with_budget.fingerprint


@pytest.mark.parametrize(
    ("budget", "needle"),
    [
        ("{usd: -1, window: 24h}", "budget.usd: must be a positive number of US dollars, got -1"),
        ("{usd: 1, window: 2 days}", "budget.window: must be a window like 1h, 24h or 30d"),
        ("{usd: 1, window: 1h, fallback_policy: capped}", "budget.fallback_policy: names this policy itself"),
        ("{usd: 1, windw: 1h}", "budget.windw: unknown key"),
        ("5", "budget: must be a mapping"),
    ],
)
def test_a_bad_policy_budget_names_its_field(budget: str, needle: str) -> None:
    with pytest.raises(PolicyError, match=needle):
        load_policy(f"schema: sigma-pol/v1\nname: capped\nbudget: {budget}\n")
