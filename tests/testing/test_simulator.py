"""The simulated provider is a faithful OpenAI-compatible server: the real ``openai`` client works against it."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import threading
import time

import httpx
import openai
import pytest

from unhardcoded.testing.simulator import (
    SimulatedProvider,
    cut_after_tokens,
    error,
    fail_times,
    ok,
    rate_limit,
    timeout,
)

pytest_plugins = ["conftest_providers"]

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}


def client_for(sim: SimulatedProvider, api_key: str = "sk-test", **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key=api_key, max_retries=0, **kwargs)


def test_openai_client_create(simulated_provider):
    sim = simulated_provider("acme", {"small": ok("Paris.")})
    completion = client_for(sim).chat.completions.create(model="small", messages=MESSAGES)

    assert completion.object == "chat.completion"
    assert completion.model == "small"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "Paris."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == math.ceil(len(MESSAGES[0]["content"]) / 4)
    assert completion.usage.completion_tokens == math.ceil(len("Paris.") / 4)
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens

    [request] = sim.requests
    assert (request.method, request.path, request.model) == ("POST", "/v1/chat/completions", "small")
    assert request.body["messages"] == MESSAGES
    assert request.headers["authorization"] == "Bearer sk-test"
    assert all(name == name.lower() for name in request.headers)


def test_usage_is_deterministic(simulator):
    client = client_for(simulator)
    first = client.chat.completions.create(model="m", messages=MESSAGES)
    second = client.chat.completions.create(model="m", messages=MESSAGES)
    assert first.usage == second.usage
    assert first.choices[0].message.content == second.choices[0].message.content


def test_openai_client_stream_with_usage(simulator):
    stream = client_for(simulator).chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)

    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "This is a simulated answer from sim to m."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == math.ceil(len(text) / 4)


def test_stream_without_usage_option_sends_no_usage_chunk(simulator):
    chunks = list(client_for(simulator).chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_async_openai_client_stream(simulator):
    async def run() -> str:
        async with openai.AsyncOpenAI(base_url=simulator.base_url, api_key="k", max_retries=0) as client:
            stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert asyncio.run(run()) == "This is a simulated answer from sim to m."


def test_tool_call_non_streaming_and_streaming(simulated_provider):
    sim = simulated_provider("acme", default=ok(tool_call=True))
    client = client_for(sim)

    completion = client.chat.completions.create(model="m", messages=MESSAGES, tools=[WEATHER_TOOL])
    call = completion.choices[0].message.tool_calls[0]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert call.function.arguments == '{"city": "simulated", "days": 1}'

    chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, tools=[WEATHER_TOOL], stream=True))
    arguments = "".join(
        c.choices[0].delta.tool_calls[0].function.arguments or ""
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
    )
    assert arguments == call.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # Without tools in the request, a tool-calling behavior answers in text.
    plain = client.chat.completions.create(model="m", messages=MESSAGES)
    assert plain.choices[0].message.tool_calls is None
    assert plain.choices[0].message.content


def test_response_model_can_differ_from_request(simulated_provider):
    sim = simulated_provider("acme", {"gpt-x": ok(response_model="gpt-x-2026-01-01")})
    assert client_for(sim).chat.completions.create(model="gpt-x", messages=MESSAGES).model == "gpt-x-2026-01-01"


def test_rate_limit_raises_openai_rate_limit_error(simulated_provider):
    sim = simulated_provider("acme", {"busy": rate_limit(retry_after_s=2)})
    with pytest.raises(openai.RateLimitError) as caught:
        client_for(sim).chat.completions.create(model="busy", messages=MESSAGES)
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "2"
    assert caught.value.code == "rate_limit_exceeded"
    assert set(caught.value.body) == {"message", "type", "param", "code"}


def test_server_error_raises_openai_internal_server_error(simulated_provider):
    sim = simulated_provider("acme", {"broken": error(500)})
    with pytest.raises(openai.InternalServerError) as caught:
        client_for(sim).chat.completions.create(model="broken", messages=MESSAGES)
    assert caught.value.status_code == 500
    assert caught.value.type == "server_error"


def test_other_models_keep_working_next_to_a_broken_one(simulated_provider):
    sim = simulated_provider("acme", {"broken": error(503)})
    assert client_for(sim).chat.completions.create(model="fine", messages=MESSAGES).choices


def test_expected_api_key_enforced(simulated_provider):
    sim = simulated_provider("acme", expected_api_key="sk-right")
    with pytest.raises(openai.AuthenticationError) as caught:
        client_for(sim, api_key="sk-wrong").chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert "sk-wrong" not in str(caught.value)

    assert client_for(sim, api_key="sk-right").chat.completions.create(model="m", messages=MESSAGES).choices


def test_missing_authorization_header_gets_401(simulated_provider):
    sim = simulated_provider("acme", expected_api_key="sk-right")
    response = httpx.post(f"{sim.base_url}/chat/completions", json={"model": "m", "messages": MESSAGES})
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_timeout_raises_openai_timeout_and_close_does_not_wait(simulated_provider):
    sim = simulated_provider("acme", {"slow": timeout(sleep_s=30)})
    with pytest.raises(openai.APITimeoutError):
        client_for(sim, timeout=0.3).chat.completions.create(model="slow", messages=MESSAGES)
    started = time.monotonic()
    sim.close()
    assert time.monotonic() - started < 2


def test_cut_stream_raises_in_openai_client(simulated_provider):
    sim = simulated_provider("acme", {"flaky": cut_after_tokens(2)})
    stream = client_for(sim).chat.completions.create(model="flaky", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            received.append(chunk)
    assert [c.choices[0].delta.content for c in received[1:]] == ["This ", "is "]


def test_fail_times_then_recovers(simulated_provider):
    sim = simulated_provider("acme", {"m": fail_times(2, then=ok("back"), failure=error(502))})
    client = client_for(sim)
    for _ in range(2):
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="m", messages=MESSAGES)
        assert caught.value.status_code == 502
    assert client.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content == "back"


def test_set_behavior_at_runtime(simulator):
    client = client_for(simulator)
    simulator.set_behavior("m", error(500))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=MESSAGES)
    simulator.set_behavior("m", ok("recovered"))
    assert client.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content == "recovered"


def test_models_list(simulated_provider):
    sim = simulated_provider("acme", {"b": ok(), "a": error()})
    assert [m.id for m in client_for(sim).models.list()] == ["a", "b"]


def test_bad_requests_get_openai_shaped_400s(simulator):
    url = f"{simulator.base_url}/chat/completions"
    not_json = httpx.post(url, content=b"{nope", headers={"content-type": "application/json"})
    no_messages = httpx.post(url, json={"model": "m"})
    unknown = httpx.post(f"{simulator.base_url}/audio/speech", json={})
    assert (not_json.status_code, no_messages.status_code, unknown.status_code) == (400, 400, 404)
    assert no_messages.json()["error"]["param"] == "messages"
    for response in (not_json, no_messages, unknown):
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_concurrent_requests(simulated_provider):
    sim = simulated_provider("acme", default=ok(latency_s=0.2))
    client = client_for(sim)
    results: list[str] = []

    def call() -> None:
        results.append(client.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content)

    threads = [threading.Thread(target=call) for _ in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    assert time.monotonic() - started < 1.5  # served in parallel, not one after another
    assert len(sim.requests) == 8


def test_close_frees_the_port_and_is_idempotent():
    sim = SimulatedProvider("acme").start()
    port = sim.port
    client_for(sim).chat.completions.create(model="m", messages=MESSAGES)  # leaves a keep-alive connection
    sim.close()
    sim.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with pytest.raises(RuntimeError):
        sim.base_url


def test_server_never_logs_request_headers(simulated_provider, caplog):
    caplog.set_level(logging.DEBUG)
    sim = simulated_provider("acme", expected_api_key="sk-very-secret-header")
    client_for(sim, api_key="sk-very-secret-header").chat.completions.create(model="m", messages=MESSAGES)
    with pytest.raises(openai.AuthenticationError):
        client_for(sim, api_key="sk-very-secret-other").chat.completions.create(model="m", messages=MESSAGES)
    assert any(r.name == "unhardcoded.simulator" for r in caplog.records)
    assert "sk-very-secret" not in caplog.text
