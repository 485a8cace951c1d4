"""Every API real apps call, through the proxy with the real clients: Responses, Anthropic Messages, embeddings,
the model list. Each answered, each with a receipt, each falling back on a provider error; translation to a
chat-only provider; the implicit request:api and request:kind rules on the receipt."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx
import openai
import pytest

from apps.proxy_harness import RunningServer, serving
from unhardcoded.catalog import Catalog
from unhardcoded.policy import Policy
from unhardcoded.router import Router
from unhardcoded.router.providers import ProviderClient, ProviderConfig, ProvidersConfig
from unhardcoded.server import create_app
from unhardcoded.testing.simulator import SimulatedProvider, error, ok, rate_limit

# alpha speaks chat completions only; beta chat, Responses and embeddings; anth only Anthropic Messages (x-api-key).
CATALOG = Catalog.from_document(
    {
        "schema": "unhardcoded-catalog/v1",
        "models": [
            {"id": "alpha-chat", "provider": "alpha", "price_input_per_mtok": 0.1, "price_output_per_mtok": 0.4,
             "supports_tools": True, "bench_intelligence": 0.5, "context_window": 100000},
            {"id": "beta-chat", "provider": "beta", "price_input_per_mtok": 1.0, "price_output_per_mtok": 4.0,
             "supports_tools": True, "bench_intelligence": 0.7, "context_window": 100000},
            {"id": "beta-chat-2", "provider": "beta", "price_input_per_mtok": 2.0, "price_output_per_mtok": 8.0,
             "supports_tools": True, "bench_intelligence": 0.8, "context_window": 100000},
            {"id": "claude-x", "provider": "anth", "price_input_per_mtok": 0.5, "price_output_per_mtok": 2.0,
             "supports_tools": True, "bench_intelligence": 0.75, "context_window": 200000},
            {"id": "embed-small", "provider": "beta", "kind": "embedding", "price_input_per_mtok": 0.02,
             "price_output_per_mtok": 0.0, "context_window": 8192},
            {"id": "embed-large", "provider": "alpha", "kind": "embedding", "price_input_per_mtok": 0.13,
             "price_output_per_mtok": 0.0, "context_window": 8192},
        ],
    }
)  # fmt: skip
CHEAP = Policy.model_validate(
    {
        "schema": "sigma-pol/v1",
        "name": "cheap",
        "rank": {"by": "cost", "order": "asc"},
        "fallback": {"models": ["alpha-chat", "claude-x", "beta-chat"], "on": ["error", "timeout", "rate_limit"]},
    }
)
EMBED = Policy.model_validate(
    {
        "schema": "sigma-pol/v1",
        "name": "embed",
        "rank": {"by": "cost", "order": "asc"},
        "fallback": {"models": ["embed-large"], "on": ["error", "timeout", "rate_limit"]},
    }
)
# Only the chat-only provider's model passes: a Responses request must be translated for it.
ALPHA_ONLY = Policy.model_validate(
    {
        "schema": "sigma-pol/v1",
        "name": "alpha-only",
        "rules": [{"id": "alpha", "field": "provider", "op": "eq", "value": "alpha"}],
    }
)
BETA_ONLY = Policy.model_validate(
    {
        "schema": "sigma-pol/v1",
        "name": "beta-only",
        "rules": [{"id": "beta", "field": "provider", "op": "in", "value": ["beta", "alpha"]}],
        "rank": {"by": "price_input_per_mtok", "order": "desc"},
        "fallback": {"models": ["beta-chat", "alpha-chat"], "on": ["error", "rate_limit"]},
    }
)
APIS = {
    "alpha": ["chat_completions", "embeddings"],
    "beta": ["chat_completions", "responses", "embeddings"],
    "anth": ["messages"],
}
ANTHROPIC_KEY = "sk-ant-simulated-key-0123456789"


@dataclass
class Apps:
    server: RunningServer
    sims: dict[str, SimulatedProvider]
    made: list[Any] = field(default_factory=list)
    """The clients made here, closed when the test ends (no socket is left for the garbage collector)."""

    @property
    def url(self) -> str:
        return self.server.base_url

    def openai(self, **kwargs: Any) -> openai.OpenAI:
        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, **kwargs)
        self.made.append(client)
        return client

    def anthropic(self) -> anthropic.Anthropic:
        client = anthropic.Anthropic(base_url=self.url, api_key="unused-by-the-proxy", max_retries=0)
        self.made.append(client)
        return client

    def receipt(self, request_id: str) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/x/receipts/{request_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def last_receipt(self) -> dict[str, Any]:
        """The receipt of the proxy's latest decision (for clients that do not show response headers)."""
        return self.receipt(list(self.server.proxy.recent._items)[-1])

    def paths(self, provider: str) -> list[str]:
        return [r.path for r in self.sims[provider].requests]


@pytest.fixture
def apps(simulated_provider: Callable[..., SimulatedProvider], monkeypatch: pytest.MonkeyPatch) -> Iterator[Apps]:
    monkeypatch.setenv("SIM_ANTHROPIC_KEY", ANTHROPIC_KEY)
    sims = {
        "alpha": simulated_provider("alpha"),
        "beta": simulated_provider("beta"),
        "anth": simulated_provider("anth", expected_api_key=ANTHROPIC_KEY),
    }
    providers = ProvidersConfig(
        providers=[
            ProviderConfig(
                name=name,
                base_url=sim.base_url,
                timeout_s=5.0,
                apis=APIS[name],
                auth="x-api-key" if name == "anth" else "bearer",
                api_key_env="SIM_ANTHROPIC_KEY" if name == "anth" else None,
            )
            for name, sim in sims.items()
        ]
    )
    client = ProviderClient(providers)
    app = create_app(
        Router(CATALOG, client),
        [CHEAP, EMBED, ALPHA_ONLY, BETA_ONLY],
        default_policy="cheap",
        default_embedding_policy="embed",
    )
    with serving(app, closing=[client]) as server:
        made = Apps(server, sims)
        try:
            yield made
        finally:
            for one in made.made:
                one.close()
    client.close()


def _rejected(receipt: dict[str, Any], rule: str) -> dict[str, str]:
    return {r["model"]: r["message"] for r in receipt["rejected"] if r["rule"] == rule}


# --------------------------------------------------------------------------- Responses API


def test_responses_plain_native_and_translated(apps: Apps) -> None:
    client = apps.openai()
    # cheap: alpha-chat (chat only) is cheapest: the Responses request is translated to chat completions for it.
    raw = client.responses.with_raw_response.create(model="auto", input="Where is my parcel?")
    response = raw.parse()
    assert response.output_text.startswith("This is a simulated answer from alpha to alpha-chat")
    assert response.model == "alpha-chat" and response.usage is not None and response.usage.input_tokens > 0
    assert apps.paths("alpha") == ["/v1/chat/completions"]
    receipt = apps.receipt(raw.headers["x-unhardcoded-request-id"])
    assert receipt["answered_by"] == "alpha-chat" and receipt["outcome"] == "answered"
    assert receipt["features"]["api"] == "responses"
    # anth speaks only Messages: request:api rejects its model, on the receipt.
    assert "claude-x" in _rejected(receipt, "request:api")
    assert "cannot serve the Responses API" in _rejected(receipt, "request:api")["claude-x"]
    # embedding models are the other kind.
    assert set(_rejected(receipt, "request:kind")) == {"embed-small", "embed-large"}

    # beta speaks the Responses API: sent as it is.
    response = client.responses.create(model="auto", input="hi", extra_body={"policy": "beta-only"})
    assert response.model == "beta-chat-2"
    assert apps.paths("beta")[-1] == "/v1/responses"
    assert apps.sims["beta"].requests[-1].body["input"] == "hi"


def test_responses_stream_and_tools(apps: Apps) -> None:
    client = apps.openai()
    tools = [
        {
            "type": "function",
            "name": "track",
            "parameters": {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]},
        }
    ]
    for policy, provider in (("alpha-only", "alpha"), ("beta-only", "beta")):
        apps.sims[provider].set_behavior(
            "alpha-chat" if provider == "alpha" else "beta-chat-2", ok(text="one two three")
        )
        with client.responses.stream(model="auto", input="count", extra_body={"policy": policy}) as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
        assert "".join(deltas) == "one two three" and final.output_text == "one two three", policy
        assert final.usage is not None and final.usage.output_tokens > 0

        model = "alpha-chat" if provider == "alpha" else "beta-chat-2"
        apps.sims[provider].set_behavior(model, ok(tool_call=True))
        response = client.responses.create(model="auto", input="track A1", tools=tools, extra_body={"policy": policy})
        calls = [item for item in response.output if item.type == "function_call"]
        assert [c.name for c in calls] == ["track"] and json.loads(calls[0].arguments) == {"order": "simulated"}
        # the tool's answer goes back, as a Responses input item; translated to a tool message for alpha
        follow = client.responses.create(
            model="auto",
            input=[
                {"role": "user", "content": "track A1"},
                {
                    "type": "function_call",
                    "call_id": calls[0].call_id,
                    "name": "track",
                    "arguments": calls[0].arguments,
                },
                {"type": "function_call_output", "call_id": calls[0].call_id, "output": "in transit"},
            ],
            tools=tools,
            extra_body={"policy": policy},
        )
        assert follow.output
        sent = apps.sims[provider].requests[-1].body
        if provider == "alpha":
            assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool"]
            assert sent["tools"][0]["function"]["name"] == "track"
        else:
            assert sent["input"][2]["type"] == "function_call_output"
        # streamed tool call
        with client.responses.stream(model="auto", input="track", tools=tools, extra_body={"policy": policy}) as s:
            names = [
                e.item.name for e in s if e.type == "response.output_item.added" and e.item.type == "function_call"
            ]
            final = s.get_final_response()
        assert names == ["track"], policy
        assert [i.type for i in final.output] == ["function_call"]


def test_responses_fall_back_on_a_provider_error(apps: Apps) -> None:
    apps.sims["beta"].set_behavior("beta-chat-2", error(503))
    client = apps.openai()
    raw = client.responses.with_raw_response.create(model="auto", input="hi", extra_body={"policy": "beta-only"})
    assert raw.parse().model == "beta-chat" and raw.headers["x-unhardcoded-fallback"] == "beta-chat-2>beta-chat"
    receipt = apps.receipt(raw.headers["x-unhardcoded-request-id"])
    assert [a["status"] for a in receipt["attempts"]] == ["error", "ok"]
    # streamed: before the first event, the same
    apps.sims["beta"].set_behavior("beta-chat-2", rate_limit())
    with client.responses.stream(model="auto", input="hi", extra_body={"policy": "beta-only"}) as stream:
        final = stream.get_final_response()
    assert final.model == "beta-chat"


def test_previous_response_id_is_pinned_to_a_responses_provider(apps: Apps) -> None:
    client = apps.openai()
    # cheap: alpha (translated) and anth cannot hold the state; beta's models can, and only beta's.
    raw = client.responses.with_raw_response.create(model="auto", input="and then?", previous_response_id="resp_1")
    receipt = apps.receipt(raw.headers["x-unhardcoded-request-id"])
    assert receipt["answered_by"] == "beta-chat"
    rejected = _rejected(receipt, "request:api")
    assert set(rejected) == {"alpha-chat", "claude-x"}
    assert "previous_response_id" in rejected["alpha-chat"]
    assert receipt["fallback"]["chain"] == []  # alpha-chat and claude-x: other providers, never fallen back to
    # a policy whose only passing model speaks chat completions: refused, request:api on the receipt
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.responses.create(
            model="auto", input="and then?", previous_response_id="resp_1", extra_body={"policy": "alpha-only"}
        )
    assert "request:api" in caught.value.message
    assert apps.sims["alpha"].requests == []


def test_untranslatable_responses_request_says_what(apps: Apps) -> None:
    client = apps.openai()
    with pytest.raises(openai.APIStatusError) as caught:
        client.responses.create(
            model="auto", input="search", tools=[{"type": "web_search"}], extra_body={"policy": "alpha-only"}
        )
    assert caught.value.status_code == 502
    assert "tools[0].type: 'web_search' tools are run by a Responses provider" in caught.value.message
    assert apps.sims["alpha"].requests == []


# --------------------------------------------------------------------------- Anthropic Messages


def test_messages_plain_stream_tools_native_and_translated(apps: Apps) -> None:
    client = apps.anthropic()
    # cheap ranks alpha-chat (chat only: translated) first; then claude-x, which speaks Messages natively.
    raw = client.messages.with_raw_response.create(
        model="auto", max_tokens=100, messages=[{"role": "user", "content": "Where is my parcel?"}]
    )
    message = raw.parse()
    assert message.content[0].type == "text" and "simulated answer from alpha" in message.content[0].text
    assert message.model == "alpha-chat" and message.stop_reason == "end_turn"
    assert apps.paths("alpha") == ["/v1/chat/completions"]
    receipt = apps.receipt(raw.headers["x-unhardcoded-request-id"])
    assert receipt["features"]["api"] == "messages" and receipt["outcome"] == "answered"

    apps.sims["alpha"].set_behavior("alpha-chat", error(500))
    raw = client.messages.with_raw_response.create(
        model="auto", max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.parse().model == "claude-x" and raw.headers["x-unhardcoded-fallback"] == "alpha-chat>claude-x"
    sent = apps.sims["anth"].requests[-1]
    assert sent.path == "/v1/messages" and sent.headers["x-api-key"] == ANTHROPIC_KEY
    assert "authorization" not in sent.headers and sent.headers["anthropic-version"]
    assert sent.body["system"] == "Be brief."

    tools = [{"name": "track", "input_schema": {"type": "object", "properties": {"order": {"type": "string"}},
                                                "required": ["order"]}}]  # fmt: skip
    for provider, model in (("anth", "claude-x"), ("alpha", "alpha-chat")):
        apps.sims["alpha"].set_behavior("alpha-chat", ok(tool_call=True) if provider == "alpha" else error(500))
        apps.sims["anth"].set_behavior("claude-x", ok(tool_call=True))
        message = client.messages.create(
            model="auto",
            max_tokens=100,
            tools=tools,
            messages=[{"role": "user", "content": "track A1"}],  # type: ignore[arg-type]
        )
        assert message.model == model and message.stop_reason == "tool_use"
        use = [b for b in message.content if b.type == "tool_use"]
        assert use and use[0].name == "track" and use[0].input == {"order": "simulated"}
        apps.sims["anth"].set_behavior("claude-x", ok(text="one two three"))
        apps.sims["alpha"].set_behavior("alpha-chat", ok(text="one two three") if provider == "alpha" else error(500))
        with client.messages.stream(model="auto", max_tokens=100, messages=[{"role": "user", "content": "count"}]) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        assert text == "one two three" and final.model == model, provider
        assert final.usage.output_tokens > 0


def test_messages_errors_in_anthropic_shape(apps: Apps) -> None:
    client = apps.anthropic()
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="auto", max_tokens=10, messages=[{"role": "user", "content": "x"}],
                               extra_body={"policy": "nope-not-here", "bogus": 1})  # fmt: skip
    assert caught.value.body["type"] == "error"  # type: ignore[index]
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "bogus: unknown field" in caught.value.message
    for sim in apps.sims.values():
        sim.default = error(500)
    with pytest.raises(anthropic.InternalServerError) as failed:
        client.messages.create(model="auto", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert failed.value.status_code == 502 and "every attempt failed" in failed.value.message
    # /v1/v1/messages (base_url ending in /v1) is not served
    r = httpx.post(f"{apps.url}/v1/v1/messages", json={})
    assert r.status_code == 404


# --------------------------------------------------------------------------- embeddings and models


def test_embeddings_routed_by_the_embedding_policy(apps: Apps) -> None:
    client = apps.openai()
    raw = client.embeddings.with_raw_response.create(model="auto", input=["a parcel", "a letter"])
    result = raw.parse()
    assert len(result.data) == 2 and len(result.data[0].embedding) == 8 and result.model == "embed-small"
    receipt = apps.receipt(raw.headers["x-unhardcoded-request-id"])
    assert receipt["policy"]["name"] == "embed" and receipt["features"]["kind"] == "embedding"
    assert set(_rejected(receipt, "request:kind")) == {"alpha-chat", "beta-chat", "beta-chat-2", "claude-x"}
    assert apps.paths("beta") == ["/v1/embeddings"]
    # falls back on a provider error
    apps.sims["beta"].set_behavior("embed-small", error(503))
    raw = client.embeddings.with_raw_response.create(model="auto", input="a parcel")
    assert raw.parse().model == "embed-large" and raw.headers["x-unhardcoded-fallback"] == "embed-small>embed-large"
    receipt = apps.receipt(raw.headers["x-unhardcoded-request-id"])
    assert receipt["outcome"] == "answered" and [a["model"] for a in receipt["attempts"]] == [
        "embed-small",
        "embed-large",
    ]


def test_embeddings_never_take_the_chat_default(simulated_provider: Callable[..., SimulatedProvider]) -> None:
    sim = simulated_provider("beta")
    client = ProviderClient(ProvidersConfig(providers=[sim.provider_config()]))
    app = create_app(Router(CATALOG, client), [CHEAP, EMBED], default_policy="cheap")
    with serving(app, closing=[client]) as server:
        r = httpx.post(f"{server.base_url}/v1/embeddings", json={"input": "x"})
        assert r.status_code == 400 and "--default-embedding-policy" in r.json()["error"]["message"]
        # a chat policy named for embeddings: every chat model rejected by request:kind, on the receipt
        r = httpx.post(f"{server.base_url}/v1/embeddings", json={"input": "x", "policy": "embed"})
        assert r.status_code == 502  # beta does not list embeddings: request:api; alpha is not configured
    client.close()


def test_models_list_and_legacy_completions(apps: Apps) -> None:
    client = apps.openai()
    ids = [m.id for m in client.models.list()]
    assert ids == [m.id for m in CATALOG.models]
    assert client.models.retrieve("claude-x").owned_by == "anth"
    only = httpx.get(f"{apps.url}/v1/models", params={"policy": "alpha-only"}).json()
    assert [m["id"] for m in only["data"]] == ["alpha-chat", "embed-large"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="auto", prompt="hi")
    assert "legacy completions API is not served" in caught.value.message


def test_chat_still_rejects_embedding_models_and_keeps_its_span_name(apps: Apps) -> None:
    raw = apps.openai().chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}]
    )
    receipt = apps.receipt(raw.headers["x-unhardcoded-request-id"])
    assert receipt["answered_by"] == "alpha-chat"
    assert "api" not in receipt["features"] and "kind" not in receipt["features"]
    assert set(_rejected(receipt, "request:kind")) == {"embed-small", "embed-large"}
    assert "claude-x" in _rejected(receipt, "request:api")  # anth does not speak chat completions


# --------------------------------------------------------------------------- the frameworks apps are built with


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """No trace export by the Agents SDK, and no tokenizer download: tiktoken finds an empty cache, and no code
    path here needs it (a test needing an encoding would fail rather than fetch one)."""
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")
    (tmp_path / "tiktoken").mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    monkeypatch.setenv("OPENAI_API_KEY", "unused")


def test_agents_sdk_default_model(apps: Apps, offline: None) -> None:
    import asyncio

    import agents

    async def run(policy: str, provider: str, model: str) -> None:
        client = openai.AsyncOpenAI(
            base_url=f"{apps.url}/v1", api_key="unused", max_retries=0, default_headers={"X-Unhardcoded-Policy": policy}
        )
        agent = agents.Agent(name="support", instructions="Answer briefly.")  # the SDK's default model
        run_config = agents.RunConfig(
            model_provider=agents.OpenAIProvider(openai_client=client, use_responses=True), tracing_disabled=True
        )
        try:
            result = await agents.Runner.run(agent, "Where is my parcel?", run_config=run_config)
            assert f"simulated answer from {provider} to {model}" in result.final_output, policy
            sent = apps.sims[provider].requests[-1]
            if provider == "beta":  # sent as it came: the reasoning settings the SDK's default model sends included
                assert sent.path == "/v1/responses" and sent.body["model"] == model
                assert sent.body["reasoning"]["effort"] == "none" and sent.body["text"]["verbosity"] == "low"
            else:  # translated for a chat-only provider; the reasoning effort as chat completions spell it
                assert sent.path == "/v1/chat/completions" and sent.body["messages"][0]["role"] == "system"
                assert sent.body["reasoning_effort"] == "none" and sent.body["verbosity"] == "low"
            # falls back on a provider error
            apps.sims[provider].set_behavior(model, error(500))
            result = await agents.Runner.run(agent, "Again?", run_config=run_config)
            assert "simulated answer" in result.final_output and f"to {model}." not in result.final_output
            receipt = apps.last_receipt()
            assert receipt["features"]["api"] == "responses" and receipt["outcome"] == "answered"
            assert receipt["attempts"][0]["model"] == model and receipt["attempts"][0]["status"] == "error"
            apps.sims[provider].set_behavior(model, ok())
        finally:
            await client.close()

    asyncio.run(run("cheap", "alpha", "alpha-chat"))
    asyncio.run(run("beta-only", "beta", "beta-chat-2"))


def test_langchain_responses_api(apps: Apps, offline: None) -> None:
    from langchain_openai import ChatOpenAI

    http_client = httpx.Client()
    apps.made.append(http_client)
    chat = ChatOpenAI(
        model="auto",
        base_url=f"{apps.url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        use_responses_api=True,
        max_retries=0,
        default_headers={"X-Unhardcoded-Policy": "beta-only"},
        http_client=http_client,
    )
    answer = chat.invoke("Where is my parcel?")
    assert "simulated answer from beta to beta-chat-2" in str(answer.content)
    assert apps.sims["beta"].requests[-1].path == "/v1/responses"
    assert apps.last_receipt()["answered_by"] == "beta-chat-2"
    apps.sims["beta"].set_behavior("beta-chat-2", error(503))
    answer = chat.invoke("Again?")
    assert "simulated answer from beta to beta-chat." in str(answer.content)
    receipt = apps.last_receipt()
    assert receipt["answered_by"] == "beta-chat" and [a["status"] for a in receipt["attempts"]] == ["error", "ok"]
    # streamed through langchain: the Responses event stream
    apps.sims["beta"].set_behavior("beta-chat-2", ok(text="one two three"))
    pieces = [chunk.content for chunk in chat.stream("count")]
    assert "one two three" in "".join(
        part if isinstance(part, str) else "".join(p.get("text", "") for p in part if isinstance(p, dict))
        for part in pieces
    )


def test_chat_parse_and_async_responses_stream(apps: Apps) -> None:
    import asyncio

    from pydantic import BaseModel

    class Where(BaseModel):
        city: str

    apps.sims["alpha"].set_behavior("alpha-chat", ok(text='{"city": "Paris"}'))
    parsed = apps.openai().chat.completions.parse(
        model="auto", messages=[{"role": "user", "content": "Where?"}], response_format=Where
    )
    assert parsed.choices[0].message.parsed == Where(city="Paris")
    sent = apps.sims["alpha"].requests[-1].body
    assert sent["response_format"]["type"] == "json_schema"

    async def stream() -> str:
        async with openai.AsyncOpenAI(base_url=f"{apps.url}/v1", api_key="unused", max_retries=0) as client:
            async with client.responses.stream(model="auto", input="Where?", text_format=Where) as events:
                final = await events.get_final_response()
        assert final.output_parsed == Where(city="Paris")
        return final.model

    assert asyncio.run(stream()) == "alpha-chat"  # translated, text.format as response_format
    assert apps.sims["alpha"].requests[-1].body["response_format"]["json_schema"]["name"] == "Where"
