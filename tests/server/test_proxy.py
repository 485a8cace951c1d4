"""The proxy against the real openai client: answers, headers, fallback, streams, and what is refused."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from apps.proxy_harness import (
    FIRST_FALLBACK,
    HELLO,
    PROVIDER_OF,
    SECOND_FALLBACK,
    SELECTED,
    Stack,
    all_requests,
    catalog_simulators,
    make_stack,
    providers_for,
    serving,
)
from unhardcoded.catalog import Catalog
from unhardcoded.router import Router
from unhardcoded.router.providers import ProviderClient
from unhardcoded.server import create_app
from unhardcoded.testing.simulator import (
    cut_after_tokens,
    cut_before_first_token,
    error,
    ok,
    rate_limit,
    timeout,
)


@pytest.fixture
def stack(simulated_provider: Any) -> Iterator[Stack]:
    yield from make_stack(simulated_provider, timeout_s=1.0)


# --------------------------------------------------------------------------- answers


def test_sync_answer_names_the_model_and_carries_the_decision_headers(stack: Stack) -> None:
    raw = stack.client().chat.completions.with_raw_response.create(model="auto", messages=HELLO)
    completion = raw.parse()

    assert completion.model == SELECTED
    assert completion.choices[0].message.content == f"This is a simulated answer from xai to {SELECTED}."
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert raw.headers["x-unhardcoded-model"] == SELECTED
    assert raw.headers["x-unhardcoded-fallback"] == "false"
    assert raw.headers["x-unhardcoded-policy"] == "support"
    request_id = raw.headers["x-unhardcoded-request-id"]
    receipt = stack.receipt(request_id)
    assert raw.headers["x-unhardcoded-policy-fingerprint"] == receipt["policy"]["fingerprint"]
    assert receipt["answered_by"] == SELECTED and receipt["outcome"] == "answered"
    [sent] = stack.sim_for(SELECTED).requests
    assert sent.body["model"] == SELECTED and "policy" not in sent.body


def test_async_client(stack: Stack) -> None:
    async def go() -> Any:
        async with stack.aclient() as client:
            return await client.chat.completions.with_raw_response.create(model="auto", messages=HELLO)

    raw = asyncio.run(go())
    assert raw.parse().model == SELECTED
    assert raw.headers["x-unhardcoded-fallback"] == "false"


@pytest.mark.parametrize(
    ("behavior", "reason"),
    [(error(503), "error"), (timeout(5), "timeout"), (rate_limit(None), "rate_limit")],
    ids=["error", "timeout", "rate_limit"],
)
def test_failure_hops_along_the_cascade(stack: Stack, behavior: Any, reason: str) -> None:
    stack.behave(SELECTED, behavior)

    raw = stack.client().chat.completions.with_raw_response.create(model="auto", messages=HELLO)

    assert raw.parse().model == FIRST_FALLBACK
    assert raw.headers["x-unhardcoded-model"] == FIRST_FALLBACK
    assert raw.headers["x-unhardcoded-fallback"] == f"{SELECTED}>{FIRST_FALLBACK}"
    receipt = stack.receipt(raw.headers["x-unhardcoded-request-id"])
    assert receipt["fallback"]["hops"] == [{"from": SELECTED, "to": FIRST_FALLBACK, "reason": reason}]
    assert [a["status"] for a in receipt["attempts"]] == ["error", "ok"]


def test_two_hops(stack: Stack) -> None:
    stack.behave(SELECTED, error(500))
    stack.behave(FIRST_FALLBACK, error(502))

    raw = stack.client().chat.completions.with_raw_response.create(model="auto", messages=HELLO)

    assert raw.parse().model == SECOND_FALLBACK
    assert raw.headers["x-unhardcoded-fallback"] == f"{SELECTED}>{FIRST_FALLBACK}>{SECOND_FALLBACK}"


@pytest.mark.parametrize(
    ("behavior", "status", "exc_type"),
    [
        (error(500), 502, openai.InternalServerError),
        (timeout(5), 504, openai.InternalServerError),
        (rate_limit(None), 429, openai.RateLimitError),
    ],
    ids=["error", "timeout", "rate_limit"],
)
def test_every_attempt_failing_mirrors_the_last_failure(
    stack: Stack, behavior: Any, status: int, exc_type: type
) -> None:
    for model in (SELECTED, FIRST_FALLBACK, SECOND_FALLBACK):
        stack.behave(model, behavior)

    with pytest.raises(exc_type) as caught:
        stack.client().chat.completions.create(model="auto", messages=HELLO)

    err = caught.value
    assert err.status_code == status
    assert "every attempt failed" in err.message and SECOND_FALLBACK in err.message
    headers = err.response.headers
    assert headers["x-unhardcoded-fallback"] == f"{SELECTED}>{FIRST_FALLBACK}>{SECOND_FALLBACK}"
    assert "x-unhardcoded-model" not in headers
    receipt = stack.receipt(headers["x-unhardcoded-request-id"])
    assert receipt["outcome"] == "failed" and len(receipt["attempts"]) == 3


# --------------------------------------------------------------------------- streams


def test_stream_relays_every_chunk_under_the_answering_model(stack: Stack) -> None:
    raw = stack.client().chat.completions.with_raw_response.create(model="auto", messages=HELLO, stream=True)
    chunks = list(raw.parse())

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"This is a simulated answer from xai to {SELECTED}."
    assert {c.model for c in chunks} == {SELECTED}
    assert all(c.usage is None for c in chunks)  # the caller did not ask for usage
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-unhardcoded-model"] == SELECTED
    receipt = stack.receipt(raw.headers["x-unhardcoded-request-id"])
    assert receipt["outcome"] == "answered"
    assert receipt["attempts"][0]["output_tokens"] > 0


def test_stream_usage_when_asked(stack: Stack) -> None:
    stream = stack.client().chat.completions.create(
        model="auto", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_async_stream(stack: Stack) -> None:
    async def go() -> str:
        async with stack.aclient() as client:
            stream = await client.chat.completions.create(model="auto", messages=HELLO, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert asyncio.run(go()).endswith(f"to {SELECTED}.")


def test_stream_cut_before_first_token_falls_back(stack: Stack) -> None:
    stack.behave(SELECTED, cut_before_first_token())

    raw = stack.client().chat.completions.with_raw_response.create(model="auto", messages=HELLO, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)

    assert text.endswith(f"to {FIRST_FALLBACK}.")
    assert raw.headers["x-unhardcoded-model"] == FIRST_FALLBACK
    assert raw.headers["x-unhardcoded-fallback"] == f"{SELECTED}>{FIRST_FALLBACK}"
    receipt = stack.receipt(raw.headers["x-unhardcoded-request-id"])
    assert [(a["model"], a["status"], a["error_type"]) for a in receipt["attempts"]] == [
        (SELECTED, "error", "stream_interrupted"),
        (FIRST_FALLBACK, "ok", None),
    ]


def test_stream_that_fails_before_answering_falls_back(stack: Stack) -> None:
    stack.behave(SELECTED, rate_limit(None))
    chunks = list(stack.client().chat.completions.create(model="auto", messages=HELLO, stream=True))
    assert chunks[0].model == FIRST_FALLBACK


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_provider_missing_from_the_providers_file_falls_back(simulated_provider: Any, stream: bool) -> None:
    sims = catalog_simulators(simulated_provider)
    configured = providers_for({name: sim for name, sim in sims.items() if name != PROVIDER_OF[SELECTED]})
    with ProviderClient(configured) as client:
        app = create_app(Router(Catalog.builtin(), client), default_policy="support")
        with serving(app, closing=[client]) as server:
            stack = Stack(sims, server)
            raw = stack.client().chat.completions.with_raw_response.create(model="auto", messages=HELLO, stream=stream)
            answer = raw.parse()
            models = {c.model for c in answer} if stream else {answer.model}
            receipt = stack.receipt(raw.headers["x-unhardcoded-request-id"])
    assert models == {FIRST_FALLBACK}
    assert [(a["model"], a["error_type"]) for a in receipt["attempts"]] == [
        (SELECTED, "unknown_provider"),
        (FIRST_FALLBACK, None),
    ]


def test_stream_cut_after_tokens_ends_in_an_error_event(stack: Stack) -> None:
    stack.behave(SELECTED, cut_after_tokens(2))

    raw = stack.client().chat.completions.with_raw_response.create(model="auto", messages=HELLO, stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in raw.parse():
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")

    assert "".join(received) == "This is "  # two tokens reached the caller, then the break
    assert "broke off" in caught.value.message
    assert raw.headers["x-unhardcoded-model"] == SELECTED
    receipt = stack.receipt(raw.headers["x-unhardcoded-request-id"])
    assert receipt["outcome"] == "failed" and receipt["answered_by"] is None
    assert [(a["model"], a["status"], a["error_type"]) for a in receipt["attempts"]] == [
        (SELECTED, "error", "stream_interrupted"),
    ]
    assert stack.sim_for(FIRST_FALLBACK).requests == []  # no silent retry


def test_stream_error_event_on_the_wire(stack: Stack) -> None:
    stack.behave(SELECTED, cut_after_tokens(1))
    with httpx.stream(
        "POST", f"{stack.server.openai_base_url}/chat/completions", json={"messages": HELLO, "stream": True}
    ) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert r.status_code == 200
    last = json.loads(events[-1][len("data: ") :])
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert last["error"]["code"] == "stream_interrupted"
    assert "data: [DONE]" not in events


def test_stream_every_attempt_failing_is_an_http_error(stack: Stack) -> None:
    for model in (SELECTED, FIRST_FALLBACK, SECOND_FALLBACK):
        stack.behave(model, error(500))
    with pytest.raises(openai.InternalServerError) as caught:
        list(stack.client().chat.completions.create(model="auto", messages=HELLO, stream=True))
    assert caught.value.status_code == 502


def test_client_leaving_mid_stream_is_recorded(stack: Stack) -> None:
    stack.behave(SELECTED, ok("one two three four five six seven eight", chunk_delay_s=0.2))
    with httpx.stream(
        "POST", f"{stack.server.openai_base_url}/chat/completions", json={"messages": HELLO, "stream": True}
    ) as r:
        request_id = r.headers["x-unhardcoded-request-id"]
        for line in r.iter_lines():
            if '"content":"one' in line:
                break
    for _ in range(100):
        receipt = httpx.get(f"{stack.server.base_url}/x/receipts/{request_id}").json()
        if receipt["attempts"]:
            break
        time.sleep(0.05)
    assert receipt["outcome"] == "failed"
    assert receipt["attempts"][0]["error_type"] == "client_disconnected"


# --------------------------------------------------------------------------- request features feed the rules


def _rank(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{stack.server.base_url}/x/rank", json=body)
    assert r.status_code == 200, r.text
    return r.json()


EU_ONLY = {
    "schema": "sigma-pol/v1",
    "name": "eu-cheap",
    "rules": [
        {"id": "eu", "field": "regions", "op": "contains", "value": "eu"},
        {"id": "cheap", "field": "price_output_per_mtok", "op": "lte", "value": 0.6},
        {"id": "quality-floor", "field": "bench_intelligence", "op": "gte", "value": 0.4},
    ],
    "rank": {"by": "price_input_per_mtok", "order": "asc"},
}


def test_tools_in_the_request_require_a_model_with_tools(stack: Stack) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "track",
                "parameters": {"type": "object", "properties": {"parcel": {"type": "string"}}, "required": ["parcel"]},
            },
        }
    ]
    plain = _rank(stack, {"messages": HELLO, "policy": EU_ONLY})
    assert plain["selected"]["model"] == "mistral-small-2603"  # cheapest in the EU, but it has no tools

    completion = stack.client().chat.completions.create(
        model="auto", messages=HELLO, tools=tools, extra_body={"policy": EU_ONLY}
    )
    assert completion.model != "mistral-small-2603"
    assert completion.choices[0].message.tool_calls is None or completion.choices[0].message.tool_calls
    receipt = stack.receipt(_last_request_id(stack))
    assert any(r["model"] == "mistral-small-2603" and r["rule"] == "request:tools" for r in receipt["rejected"])


def _last_request_id(stack: Stack) -> str:
    return next(reversed(stack.server.proxy.recent._items))


def test_images_require_vision_and_max_tokens_the_output_limit(stack: Stack) -> None:
    image = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        }
    ]
    receipt = _rank(stack, {"messages": image, "policy": EU_ONLY})
    assert any(r["rule"] == "request:vision" and r["model"] == "mistral-small-2603" for r in receipt["rejected"])

    big = _rank(stack, {"messages": HELLO, "max_tokens": 66000})
    assert any(r["rule"] == "request:max-tokens" and r["model"] == SELECTED for r in big["rejected"])
    completion = stack.client().chat.completions.create(model="auto", messages=HELLO, max_tokens=66000)
    assert completion.model == big["selected"]["model"] != SELECTED


# --------------------------------------------------------------------------- policies


def test_policy_by_name_in_the_body_and_in_the_header(stack: Stack) -> None:
    client = stack.client()
    by_body = client.chat.completions.with_raw_response.create(
        model="auto", messages=HELLO, extra_body={"policy": "triage"}
    )
    by_header = client.chat.completions.with_raw_response.create(
        model="auto", messages=HELLO, extra_headers={"X-Unhardcoded-Policy": "triage"}
    )
    assert by_body.headers["x-unhardcoded-policy"] == by_header.headers["x-unhardcoded-policy"] == "triage"
    assert by_body.parse().model == by_header.parse().model


def test_inline_policy(stack: Stack) -> None:
    raw = stack.client().chat.completions.with_raw_response.create(
        model="auto", messages=HELLO, extra_body={"policy": EU_ONLY}
    )
    assert raw.headers["x-unhardcoded-policy"] == "eu-cheap"
    assert raw.parse().model == "mistral-small-2603"


def test_no_model_passes_the_policy(stack: Stack) -> None:
    impossible = dict(EU_ONLY, rules=[{"id": "genius", "field": "bench_intelligence", "op": "gte", "value": 0.99}])
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        stack.client().chat.completions.create(model="auto", messages=HELLO, extra_body={"policy": impossible})
    assert "no model" in caught.value.message and "genius ×35" in caught.value.message
    assert caught.value.code == "no_candidate"
    assert all_requests(stack.sims) == []


# --------------------------------------------------------------------------- bad requests are never sent


def _post(stack: Stack, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{stack.server.openai_base_url}/chat/completions",
        content=content,
        headers={"content-type": "application/json", **(headers or {})},
    )


@pytest.mark.parametrize(
    ("content", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b"", 400, "empty"),
        (json.dumps({"model": "auto"}).encode(), 400, "messages: field required"),
        (json.dumps({"messages": []}).encode(), 400, "messages: must be a non-empty array"),
        (json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(), 400, "messages[0].role"),
        (
            json.dumps({"messages": HELLO, "temprature": 0.2}).encode(),
            400,
            "temprature: unknown field (did you mean 'temperature'?)",
        ),
        (json.dumps({"messages": HELLO, "max_tokens": -1}).encode(), 400, "max_tokens"),
        (json.dumps({"messages": HELLO, "policy": "no-such-policy"}).encode(), 404, "unknown policy 'no-such-policy'"),
        (json.dumps({"messages": HELLO, "policy": 7}).encode(), 400, "policy: must be"),
        (
            json.dumps(
                {
                    "messages": HELLO,
                    "policy": {
                        "schema": "sigma-pol/v1",
                        "name": "x",
                        "rules": [{"id": "r", "field": "bench_intelignce", "op": "gte", "value": 0.5}],
                    },
                }
            ).encode(),
            422,
            "policy: rules[0].field: unknown field 'bench_intelignce'",
        ),
    ],
    ids=[
        "bad-json",
        "not-object",
        "empty",
        "no-messages",
        "empty-messages",
        "bad-role",
        "unknown-field",
        "bad-max-tokens",
        "unknown-policy",
        "policy-type",
        "invalid-inline-policy",
    ],
)
def test_bad_requests_are_refused_with_a_clear_message(stack: Stack, content: bytes, status: int, needle: str) -> None:
    r = _post(stack, content)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert needle in error["message"]
    assert r.headers["x-unhardcoded-request-id"].startswith("req_")
    assert all_requests(stack.sims) == []


def test_unknown_policy_in_the_header(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        stack.client().chat.completions.create(
            model="auto", messages=HELLO, extra_headers={"X-Unhardcoded-Policy": "nope"}
        )
    assert "unknown policy 'nope'" in caught.value.message
    assert all_requests(stack.sims) == []


def test_invalid_inline_policy_message_is_the_policy_error(stack: Stack) -> None:
    from unhardcoded.errors import PolicyError
    from unhardcoded.policy import validate_policy

    doc = {"schema": "sigma-pol/v1", "name": "Bad Name", "fallback": {"models": ["gpt-9"]}}
    with pytest.raises(PolicyError) as expected:
        validate_policy(doc, Catalog.builtin(), source="policy")
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        stack.client().chat.completions.create(model="auto", messages=HELLO, extra_body={"policy": doc})
    assert caught.value.body["message"] == str(expected.value)


def test_oversized_body_is_refused_while_reading(simulated_provider: Any) -> None:
    for stack in make_stack(simulated_provider, max_body_bytes=1024):
        big = json.dumps({"messages": [{"role": "user", "content": "x" * 5000}]}).encode()
        r = _post(stack, big)
        assert r.status_code == 413 and "1024 bytes" in r.json()["error"]["message"]

        async def chunked() -> Any:  # no Content-Length: the limit holds while reading
            for _ in range(10):
                yield b" " * 512

        async def send() -> httpx.Response:
            async with httpx.AsyncClient() as client:
                return await client.post(f"{stack.server.openai_base_url}/chat/completions", content=chunked())

        r2 = asyncio.run(send())
        assert r2.status_code == 413
        small = stack.client().chat.completions.create(model="auto", messages=HELLO)
        assert small.model == SELECTED
        assert len(all_requests(stack.sims)) == 1
