"""ProviderClient against simulated providers on loopback, and the providers file."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import pickle
import secrets
import socket
import threading
import time
import traceback
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from unhardcoded.errors import ConfigError, UnhardcodedError
from unhardcoded.router.providers import (
    PROVIDERS_ENV,
    ChatResult,
    ProviderCallError,
    ProviderClient,
    ProviderConfig,
    ProvidersConfig,
    ProvidersFileError,
    default_providers,
    load_providers,
    providers_from_env,
)
from unhardcoded.testing.simulator import (
    SimulatedProvider,
    cut_after_tokens,
    cut_before_first_token,
    error,
    ok,
    rate_limit,
    raw,
    timeout,
)

pytest_plugins = ["conftest_providers"]

BODY = {"model": "alias", "messages": [{"role": "user", "content": "Summarise the receipt, please."}]}


def client_with(*sims: SimulatedProvider, api_key_env: str | None = None, timeout_s: float = 5) -> ProviderClient:
    configs = [sim.provider_config(api_key_env=api_key_env, timeout_s=timeout_s) for sim in sims]
    return ProviderClient(ProvidersConfig(providers=configs))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drain(stream) -> tuple[list[dict], ProviderCallError | None]:
    chunks: list[dict] = []
    try:
        for chunk in stream:
            chunks.append(chunk)
    except ProviderCallError as exc:
        return chunks, exc
    return chunks, None


async def adrain(stream) -> tuple[list[dict], ProviderCallError | None]:
    chunks: list[dict] = []
    try:
        async for chunk in stream:
            chunks.append(chunk)
    except ProviderCallError as exc:
        return chunks, exc
    return chunks, None


HOW = pytest.mark.parametrize("how", ["sync", "async"])
"""Run a test through ``chat``/``stream`` (httpx) and through ``achat``/``astream`` (the lean HTTP/1.1 client)."""


def call(client: ProviderClient, how: str, provider: str, model: str, body: dict, **kwargs) -> ChatResult:
    """``client.chat``, or ``client.achat`` on an event loop of its own."""
    if how == "sync":
        with client:
            return client.chat(provider, model, body, **kwargs)

    async def run() -> ChatResult:
        try:
            return await client.achat(provider, model, body, **kwargs)
        finally:
            await client.aclose()

    return asyncio.run(run())


def streamed(client: ProviderClient, how: str, provider: str, model: str, body: dict, **kwargs):
    """``(stream, chunks, error)`` of ``client.stream`` or ``client.astream`` read to the end."""
    if how == "sync":
        with client:
            stream = client.stream(provider, model, body, **kwargs)
            return (stream, *drain(stream))

    async def run():
        try:
            stream = client.astream(provider, model, body, **kwargs)
            return (stream, *(await adrain(stream)))
        finally:
            await client.aclose()

    return asyncio.run(run())


# --------------------------------------------------------------------------- non-streaming


def test_chat_ok_parses_tokens_and_response_model(simulated_provider):
    sim = simulated_provider("acme", {"m-1": ok("Done.", response_model="m-1-2026-05-01")})
    with client_with(sim) as client:
        result = client.chat("acme", "m-1", {**BODY, "policy": {"name": "support"}, "stream": True})

    assert isinstance(result, ChatResult)
    assert result.status_code == 200
    assert result.response_model == "m-1-2026-05-01"
    assert result.input_tokens == math.ceil(len(BODY["messages"][0]["content"]) / 4)
    assert result.output_tokens == math.ceil(len("Done.") / 4)
    assert result.body["choices"][0]["message"]["content"] == "Done."
    assert result.duration_ms > 0

    [request] = sim.requests
    assert request.body["model"] == "m-1"  # the catalog model id replaces the caller's
    assert "policy" not in request.body
    assert "stream" not in request.body


def test_achat_ok(simulated_provider):
    sim = simulated_provider("acme")

    async def run() -> ChatResult:
        async with client_with(sim) as client:
            first = await client.achat("acme", "m", BODY)
            second = await client.achat("acme", "m", BODY)
            assert first.output_tokens == second.output_tokens
            return second

    result = asyncio.run(run())
    assert result.response_model == "m"
    assert result.input_tokens and result.output_tokens


def test_connections_are_pooled_and_headers_added(simulated_provider):
    sim = simulated_provider("acme")
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with client_with(sim) as client:
        for _ in range(3):
            client.chat("acme", "m", BODY, headers={"traceparent": traceparent})
    assert all(r.headers["traceparent"] == traceparent for r in sim.requests)
    assert all("authorization" not in r.headers for r in sim.requests)  # no api_key_env, no key


def test_async_client_survives_a_new_event_loop(simulated_provider):
    sim = simulated_provider("acme")
    client = client_with(sim)

    async def once() -> int:
        try:
            return (await client.achat("acme", "m", BODY)).status_code
        finally:
            await client.aclose()

    assert asyncio.run(once()) == 200
    assert asyncio.run(once()) == 200


@HOW
def test_server_error_is_kind_error(how, simulated_provider):
    sim = simulated_provider("acme", {"m": error(500)})
    with client_with(sim) as client, pytest.raises(ProviderCallError) as caught:
        call(client, how, "acme", "m", BODY)
    exc = caught.value
    assert (exc.kind, exc.error_type, exc.status_code) == ("error", "500", 500)
    assert (exc.provider, exc.model) == ("acme", "m")
    assert "HTTP 500" in str(exc) and "server had an error" in str(exc)
    assert isinstance(exc, UnhardcodedError)


def test_async_server_error_is_kind_error(simulated_provider):
    sim = simulated_provider("acme", {"m": error(503)})

    async def run() -> ProviderCallError:
        async with client_with(sim) as client:
            with pytest.raises(ProviderCallError) as caught:
                await client.achat("acme", "m", BODY)
            return caught.value

    exc = asyncio.run(run())
    assert (exc.kind, exc.error_type, exc.status_code) == ("error", "503", 503)


@HOW
@pytest.mark.parametrize("status", [408, 504])
def test_gateway_timeouts_are_kind_timeout(how, simulated_provider, status):
    sim = simulated_provider("acme", {"m": error(status)})
    with client_with(sim) as client, pytest.raises(ProviderCallError) as caught:
        call(client, how, "acme", "m", BODY)
    assert (caught.value.kind, caught.value.error_type) == ("timeout", str(status))


@HOW
def test_slow_provider_is_kind_timeout(how, simulated_provider):
    sim = simulated_provider("acme", {"slow": timeout(sleep_s=2)})
    with client_with(sim) as client, pytest.raises(ProviderCallError) as caught:
        call(client, how, "acme", "slow", BODY, timeout_s=0.3)
    assert (caught.value.kind, caught.value.error_type, caught.value.status_code) == ("timeout", "timeout", None)


def test_async_slow_provider_is_kind_timeout(simulated_provider):
    sim = simulated_provider(
        "acme",
        {"slow": timeout(sleep_s=2)},
    )

    async def run() -> ProviderCallError:
        async with client_with(sim, timeout_s=0.3) as client:  # the provider's own timeout_s
            with pytest.raises(ProviderCallError) as caught:
                await client.achat("acme", "slow", BODY)
            return caught.value

    assert asyncio.run(run()).kind == "timeout"


@HOW
def test_rate_limit_with_retry_after_seconds(how, simulated_provider):
    sim = simulated_provider("acme", {"m": rate_limit(retry_after_s=2)})
    with client_with(sim) as client, pytest.raises(ProviderCallError) as caught:
        call(client, how, "acme", "m", BODY)
    assert (caught.value.kind, caught.value.error_type, caught.value.status_code) == ("rate_limit", "429", 429)
    assert caught.value.retry_after_s == 2


@HOW
def test_rate_limit_with_retry_after_http_date(how, simulated_provider):
    when = datetime.now(UTC) + timedelta(seconds=30)
    sim = simulated_provider("acme", {"m": rate_limit(retry_after=email.utils.format_datetime(when, usegmt=True))})
    with client_with(sim) as client, pytest.raises(ProviderCallError) as caught:
        call(client, how, "acme", "m", BODY)
    assert caught.value.kind == "rate_limit"
    assert 27 <= caught.value.retry_after_s <= 31


@HOW
def test_rate_limit_with_retry_after_ms_wins(how, simulated_provider):
    sim = simulated_provider("acme", {"m": rate_limit(retry_after_s=20, retry_after_ms=1500)})
    with client_with(sim) as client, pytest.raises(ProviderCallError) as caught:
        call(client, how, "acme", "m", BODY)
    assert caught.value.retry_after_s == 1.5


@HOW
def test_rate_limit_with_date_in_the_past_means_now(how, simulated_provider):
    sim = simulated_provider("acme", {"m": rate_limit(retry_after="Wed, 21 Oct 2015 07:28:00 GMT")})
    with client_with(sim) as client, pytest.raises(ProviderCallError) as caught:
        call(client, how, "acme", "m", BODY)
    assert caught.value.retry_after_s == 0


@HOW
def test_connect_refused_is_connect_error(how):
    config = ProviderConfig(name="gone", base_url=f"http://127.0.0.1:{closed_port()}/v1")
    with ProviderClient(ProvidersConfig(providers=[config])) as client, pytest.raises(ProviderCallError) as caught:
        call(client, how, "gone", "m", BODY)
    assert (caught.value.kind, caught.value.error_type, caught.value.status_code) == ("error", "connect_error", None)


def test_async_connect_refused_is_connect_error():
    config = ProviderConfig(name="gone", base_url=f"http://127.0.0.1:{closed_port()}/v1")

    async def run() -> ProviderCallError:
        async with ProviderClient(ProvidersConfig(providers=[config])) as client:
            with pytest.raises(ProviderCallError) as caught:
                await client.achat("gone", "m", BODY)
            return caught.value

    assert asyncio.run(run()).error_type == "connect_error"


@pytest.mark.parametrize(
    "behavior",
    [
        raw(200, "<html>not json</html>"),
        raw(200, json.dumps({"id": "x", "object": "chat.completion"})),
        raw(200, "[1, 2]"),
    ],
    ids=["not-json", "no-choices", "not-an-object"],
)
@HOW
def test_invalid_success_body_is_invalid_response(how, simulated_provider, behavior):
    sim = simulated_provider("acme", {"m": behavior})
    with client_with(sim) as client, pytest.raises(ProviderCallError) as caught:
        call(client, how, "acme", "m", BODY)
    assert (caught.value.kind, caught.value.error_type, caught.value.status_code) == ("error", "invalid_response", 200)


@HOW
def test_connection_closed_without_answer_is_an_error(how, simulated_provider):
    sim = simulated_provider("acme", {"m": timeout(sleep_s=0.1, then_close=True)})
    with client_with(sim) as client, pytest.raises(ProviderCallError) as caught:
        call(client, how, "acme", "m", BODY)
    assert caught.value.kind == "error"
    assert caught.value.error_type == "transport_error"


def test_unknown_provider_is_an_error():
    with ProviderClient(default_providers()) as client, pytest.raises(ProviderCallError) as caught:
        client.chat("nowhere", "m", BODY)
    assert (caught.value.kind, caught.value.error_type) == ("error", "unknown_provider")


def test_provider_call_error_pickles():
    exc = ProviderCallError(
        "boom", kind="rate_limit", error_type="429", provider="p", model="m", status_code=429, retry_after_s=2.0
    )
    copy = pickle.loads(pickle.dumps(exc))
    assert repr(copy) == repr(exc)


# --------------------------------------------------------------------------- keys


@HOW
def test_key_is_forwarded_as_bearer(how, simulated_provider, monkeypatch):
    monkeypatch.setenv("ACME_KEY", "sk-acme-123456")
    sim = simulated_provider("acme", expected_api_key="sk-acme-123456")
    with client_with(sim, api_key_env="ACME_KEY") as client:
        result = call(client, how, "acme", "m", BODY, headers={"Authorization": "Bearer sk-caller-attempt"})
    assert result.status_code == 200
    assert sim.requests[0].headers["authorization"] == "Bearer sk-acme-123456"


@HOW
def test_key_is_read_at_call_time(how, simulated_provider, monkeypatch):
    sim = simulated_provider("acme", expected_api_key="sk-second")
    with client_with(sim, api_key_env="ACME_KEY") as client:
        monkeypatch.setenv("ACME_KEY", "sk-first")
        with pytest.raises(ProviderCallError) as caught:
            call(client, how, "acme", "m", BODY)
        assert caught.value.error_type == "401"
        monkeypatch.setenv("ACME_KEY", "sk-second")
        assert call(client, how, "acme", "m", BODY).status_code == 200


@HOW
def test_missing_key_names_the_variable(how, simulated_provider, monkeypatch):
    monkeypatch.delenv("ACME_MISSING_KEY", raising=False)
    sim = simulated_provider("acme")
    with client_with(sim, api_key_env="ACME_MISSING_KEY") as client, pytest.raises(ProviderCallError) as caught:
        call(client, how, "acme", "m", BODY)
    assert (caught.value.kind, caught.value.error_type) == ("error", "missing_api_key")
    assert "ACME_MISSING_KEY" in str(caught.value)
    assert sim.requests == []  # nothing was sent


def test_canary_key_never_leaks(simulated_provider, monkeypatch, caplog):
    canary = f"sk-canary-{secrets.token_hex(16)}"
    monkeypatch.setenv("CANARY_KEY", canary)
    for name in ("httpx", "httpcore", "unhardcoded"):
        caplog.set_level(logging.DEBUG, logger=name)
    caplog.set_level(logging.DEBUG)

    sim = simulated_provider(
        "acme",
        {
            "error": error(500),
            "echo-error": error(400, echo_authorization=True),
            "echo-ok": ok(echo_authorization=True),
            "echo-raw": raw(502, f"upstream said: Authorization: Bearer {canary}", content_type="text/plain"),
            "slow": timeout(sleep_s=1),
            "busy": rate_limit(1),
            "gateway": error(504),
            "not-json": raw(200, "not json"),
            "cut0": cut_before_first_token(),
            "cut2": cut_after_tokens(2),
        },
        expected_api_key=canary,
    )
    other = simulated_provider("wrong-key", expected_api_key="sk-something-else")
    refused = ProviderConfig(name="refused", base_url=f"http://127.0.0.1:{closed_port()}/v1", api_key_env="CANARY_KEY")
    missing = ProviderConfig(name="missing", base_url=sim.base_url, api_key_env="CANARY_KEY_UNSET")
    providers = ProvidersConfig(
        providers=[
            sim.provider_config(api_key_env="CANARY_KEY", timeout_s=0.3),
            other.provider_config(api_key_env="CANARY_KEY"),
            refused,
            missing,
        ]
    )
    failing = ["error", "echo-error", "echo-raw", "slow", "busy", "gateway", "not-json", "cut0"]

    seen: list[object] = []
    errors: list[ProviderCallError] = []

    def expect_failure(call) -> None:
        with pytest.raises(ProviderCallError) as caught:
            call()
        errors.append(caught.value)

    with ProviderClient(providers) as client:
        for model in failing:
            expect_failure(lambda model=model: client.chat("acme", model, BODY))
        expect_failure(lambda: client.chat("wrong-key", "m", BODY))
        expect_failure(lambda: client.chat("refused", "m", BODY))
        expect_failure(lambda: client.chat("missing", "m", BODY))
        for model in ("error", "echo-error", "busy", "cut0", "cut2"):
            stream = client.stream("acme", model, BODY)
            chunks, exc = drain(stream)
            assert exc is not None
            errors.append(exc)
            seen.extend([stream, chunks])
        for model in ("m", "echo-ok"):
            result = client.chat("acme", model, BODY)
            seen.append(result)
            stream = client.stream("acme", model, BODY)
            seen.extend([stream, list(stream)])

        async def run_async() -> None:
            for model in ("error", "echo-error", "slow", "busy", "cut2"):
                try:
                    await client.achat("acme", model, BODY)
                except ProviderCallError as exc:
                    errors.append(exc)
                try:
                    await adrain_or_raise(client.astream("acme", model, BODY))
                except ProviderCallError as exc:
                    errors.append(exc)
            seen.append(await client.achat("acme", "echo-ok", BODY))
            await client.aclose()

        async def adrain_or_raise(stream) -> None:
            chunks, exc = await adrain(stream)
            seen.extend([stream, chunks])
            if exc is not None:
                raise exc

        asyncio.run(run_async())

    error_types = {e.error_type for e in errors}
    assert {
        "500",
        "400",
        "502",
        "timeout",
        "429",
        "504",
        "invalid_response",
        "401",
        "connect_error",
        "missing_api_key",
        "stream_interrupted",
    } <= error_types
    # The echoing providers really did echo the key, so scrubbing was exercised.
    assert any(canary in json.dumps(r.headers) for r in sim.requests)
    assert any("[REDACTED]" in str(e) for e in errors)
    assert "[REDACTED]" in json.dumps([s.body for s in seen if isinstance(s, ChatResult)])
    # DEBUG logging of httpx/httpcore was really on.
    assert any(r.name.startswith("httpcore") for r in caplog.records)

    for exc in errors:
        for text in (str(exc), repr(exc), exc.message, "".join(traceback.format_exception(exc)), *map(str, exc.args)):
            assert canary not in text
        assert canary not in repr(vars(exc))
        # Nothing reachable from the error holds the request (and its Authorization header).
        assert exc.__cause__ is None and exc.__context__ is None
    for obj in seen:
        assert canary not in repr(obj)
        assert canary not in str(obj)
    for record in caplog.records:
        assert canary not in record.getMessage()
        assert canary not in repr(record.args)
    assert canary not in caplog.text


# --------------------------------------------------------------------------- streaming


def test_stream_ok_with_usage(simulated_provider):
    sim = simulated_provider("acme", {"m": ok("One two three.", response_model="m-2026")})
    with client_with(sim) as client:
        stream = client.stream("acme", "m", {**BODY, "policy": {"name": "x"}})
        assert not stream.first_chunk_received
        chunks = list(stream)

    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "One two three."
    assert stream.first_chunk_received
    assert stream.response_model == "m-2026"
    assert stream.usage == {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12}
    assert (stream.input_tokens, stream.output_tokens) == (8, 4)
    assert stream.status_code == 200
    sent = sim.requests[0].body
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["model"] == "m" and "policy" not in sent


def test_astream_ok_with_usage(simulated_provider):
    sim = simulated_provider("acme")

    async def run():
        async with client_with(sim) as client:
            stream = client.astream("acme", "m", BODY)
            chunks = [chunk async for chunk in stream]
            return stream, chunks

    stream, chunks = asyncio.run(run())
    assert chunks[-1]["choices"] == []
    assert stream.output_tokens == chunks[-1]["usage"]["completion_tokens"]
    assert stream.response_model == "m"


@HOW
def test_stream_http_error_raises_before_any_chunk(how, simulated_provider):
    sim = simulated_provider("acme", {"m": rate_limit(2)})
    with client_with(sim) as client:
        stream, chunks, exc = streamed(client, how, "acme", "m", BODY)
    assert chunks == []
    assert (exc.kind, exc.error_type, exc.retry_after_s) == ("rate_limit", "429", 2)
    assert not stream.first_chunk_received


@HOW
def test_stream_cut_before_first_token_raises_before_any_chunk(how, simulated_provider):
    sim = simulated_provider("acme", {"m": cut_before_first_token()})
    with client_with(sim) as client:
        stream, chunks, exc = streamed(client, how, "acme", "m", BODY)
    assert chunks == []
    assert (exc.kind, exc.error_type) == ("error", "stream_interrupted")
    assert not stream.first_chunk_received


@HOW
def test_stream_cut_after_tokens_raises_after_the_chunks(how, simulated_provider):
    sim = simulated_provider("acme", {"m": cut_after_tokens(2)})
    with client_with(sim) as client:
        stream, chunks, exc = streamed(client, how, "acme", "m", BODY)
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "This ", "is "]
    assert (exc.kind, exc.error_type, exc.status_code) == ("error", "stream_interrupted", 200)
    assert stream.first_chunk_received
    assert stream.usage is None


def test_astream_cut_cases(simulated_provider):
    sim = simulated_provider("acme", {"cut0": cut_before_first_token(), "cut2": cut_after_tokens(2)})

    async def run():
        async with client_with(sim) as client:
            before = client.astream("acme", "cut0", BODY)
            after = client.astream("acme", "cut2", BODY)
            return before, await adrain(before), after, await adrain(after)

    before, (chunks0, exc0), after, (chunks2, exc2) = asyncio.run(run())
    assert chunks0 == [] and exc0.error_type == "stream_interrupted" and not before.first_chunk_received
    assert len(chunks2) == 3 and exc2.error_type == "stream_interrupted" and after.first_chunk_received


@HOW
def test_stream_without_done_is_interrupted(how, simulated_provider):
    body = 'data: {"id": "x", "object": "chat.completion.chunk", "model": "m", "choices": []}\n\n'
    sim = simulated_provider("acme", {"m": raw(200, body, content_type="text/event-stream")})
    with client_with(sim) as client:
        chunks, exc = streamed(client, how, "acme", "m", BODY)[1:]
    assert len(chunks) == 1
    assert exc.error_type == "stream_interrupted"


@HOW
def test_stream_error_event_and_bad_chunk(how, simulated_provider):
    sim = simulated_provider(
        "acme",
        {
            "err": raw(200, 'data: {"error": {"message": "overloaded"}}\n\n', content_type="text/event-stream"),
            "bad": raw(200, "data: {nope\n\n", content_type="text/event-stream"),
        },
    )
    with client_with(sim) as client:
        _, err = streamed(client, how, "acme", "err", BODY)[1:]
        _, bad = streamed(client, how, "acme", "bad", BODY)[1:]
    assert err.error_type == "stream_error" and "overloaded" in str(err)
    assert bad.error_type == "invalid_response"


@HOW
def test_stream_timeout_before_first_chunk(how, simulated_provider):
    sim = simulated_provider("acme", {"slow": timeout(sleep_s=2)})
    with client_with(sim) as client:
        stream, chunks, exc = streamed(client, how, "acme", "slow", BODY, timeout_s=0.3)
    assert chunks == [] and exc.kind == "timeout" and not stream.first_chunk_received


def test_stream_closed_early_releases_the_connection(simulated_provider):
    sim = simulated_provider("acme", {"m": ok("a b c d e f g h")})
    with client_with(sim) as client:
        with client.stream("acme", "m", BODY) as stream:
            next(stream)
        assert client.chat("acme", "m", BODY).status_code == 200


# --------------------------------------------------------------------------- providers file


def test_load_providers_yaml_and_json(tmp_path):
    yaml_file = tmp_path / "providers.yaml"
    yaml_file.write_text(
        "providers:\n"
        "  - name: openai\n"
        "    base_url: https://api.openai.com/v1\n"
        "    api_key_env: OPENAI_API_KEY\n"
        "    timeout_s: 20\n"
        "  - name: local\n"
        "    base_url: http://127.0.0.1:11434/v1\n"
        "    headers: {x-team: search}\n"
    )
    json_file = tmp_path / "providers.json"
    json_file.write_text(json.dumps(load_providers(yaml_file).model_dump()))

    for path in (yaml_file, json_file):
        config = load_providers(path)
        assert config.names == ["openai", "local"]
        assert config.get("openai").api_key_env == "OPENAI_API_KEY"
        assert config.get("openai").timeout_s == 20
        assert config.get("local").timeout_s == 30
        assert config.get("local").headers == {"x-team": "search"}
        assert config.get("nope") is None
        assert "local" in config


def test_missing_field_names_the_path(tmp_path):
    path = tmp_path / "providers.yaml"
    path.write_text("providers:\n  - {name: a, base_url: 'http://a/v1'}\n  - {name: b}\n")
    with pytest.raises(ProvidersFileError) as caught:
        load_providers(path)
    assert str(path) in str(caught.value)
    assert "providers[1].base_url: field required" in str(caught.value)
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, UnhardcodedError)


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "providers.yml"
    path.write_text("providers:\n  - name: a\n    base_url: [http://a\n  - name: b\n")
    with pytest.raises(ProvidersFileError) as caught:
        load_providers(path)
    assert str(path) in str(caught.value)
    assert caught.value.line is not None
    assert f"line {caught.value.line}" in str(caught.value)


def test_json_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "providers.json"
    path.write_text('{"providers": [\n  {"name": "a",}\n]}')
    with pytest.raises(ProvidersFileError) as caught:
        load_providers(path)
    assert caught.value.line == 2 and "line 2" in str(caught.value)


def test_duplicate_names_are_an_error(tmp_path):
    path = tmp_path / "providers.yaml"
    path.write_text(
        "providers:\n"
        "  - {name: a, base_url: 'http://a/v1'}\n"
        "  - {name: b, base_url: 'http://b/v1'}\n"
        "  - {name: a, base_url: 'http://c/v1'}\n"
    )
    with pytest.raises(ProvidersFileError) as caught:
        load_providers(path)
    assert "providers[2].name: duplicate provider name 'a'" in str(caught.value)
    with pytest.raises(ValueError):
        ProvidersConfig(
            providers=[ProviderConfig(name="a", base_url="http://a"), ProviderConfig(name="a", base_url="http://b")]
        )


def test_unknown_extension_is_read_by_content(tmp_path):
    as_yaml = tmp_path / "providers.conf"
    as_yaml.write_text("providers:\n  - {name: a, base_url: 'http://a/v1'}\n")
    as_json = tmp_path / "providers"
    as_json.write_text('{"providers": [{"name": "b", "base_url": "http://b/v1"}]}')
    broken = tmp_path / "providers.txt"
    broken.write_text('{"providers": [')
    assert load_providers(as_yaml).names == ["a"]
    assert load_providers(as_json).names == ["b"]
    with pytest.raises(ProvidersFileError, match="invalid JSON"):
        load_providers(broken)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "expected a mapping with a 'providers' list, found an empty file"),
        ("- a\n- b\n", "found a list"),
        ("other: 1\n", "providers: field required"),
        ("providers:\n  - {name: a, base_url: 'ftp://a'}\n", "providers[0].base_url: must be an http"),
        ("providers:\n  - {name: a, base_url: 'http://a', timeout_s: 0}\n", "providers[0].timeout_s: input should be"),
        ("providers:\n  - {name: a, base_url: 'http://a', colour: red}\n", "providers[0].colour: unknown field"),
        (
            "providers:\n  - {name: a, base_url: 'http://a', api_key_env: 'sk-live-abc'}\n",
            "providers[0].api_key_env: string should match pattern",
        ),
        (
            "providers:\n  - {name: a, base_url: 'http://a', api_key: 'sk-live-abc'}\n",
            "providers[0].api_key: keys are not written in the providers file",
        ),
    ],
)
def test_invalid_files(tmp_path, text, expected):
    path = tmp_path / "providers.yaml"
    path.write_text(text)
    with pytest.raises(ProvidersFileError) as caught:
        load_providers(path)
    assert expected in str(caught.value)
    assert "sk-live-abc" not in str(caught.value)


def test_missing_file(tmp_path):
    with pytest.raises(ProvidersFileError, match="no such file"):
        load_providers(tmp_path / "absent.yaml")


def test_inline_key_is_not_echoed_by_programmatic_validation():
    with pytest.raises(ValueError) as caught:
        ProviderConfig(name="a", base_url="http://a", api_key="sk-live-abc")
    assert "sk-live-abc" not in str(caught.value)


def test_providers_from_env(tmp_path, monkeypatch):
    monkeypatch.delenv(PROVIDERS_ENV, raising=False)
    assert providers_from_env() == default_providers()
    assert default_providers().providers == []
    path = tmp_path / "p.yaml"
    path.write_text("providers:\n  - {name: a, base_url: 'http://a/v1'}\n")
    monkeypatch.setenv(PROVIDERS_ENV, str(path))
    assert providers_from_env().names == ["a"]
    assert providers_from_env({PROVIDERS_ENV: ""}) == default_providers()


# --------------------------------------------------------------------------- the lean HTTP/1.1 client (async calls)


class ScriptedServer:
    """A loopback HTTP/1.1 server that answers each request with the bytes ``answer`` returns.

    ``answer(index, head, body)`` returns ``(payload, then)``: the raw response
    (or a list of parts, sent a moment apart), and ``"keep"`` (wait for the next request on the connection), ``"close"``
    (close after sending) or ``"stall"`` (send nothing more, hold the connection).
    """

    def __init__(self, answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    data = conn.recv(1 << 20)
                    if not data:
                        return
                    buffer += data
                body, buffer = buffer[:length], buffer[length:]
                with self._lock:
                    index = len(self.requests)
                    self.requests.append((head, body))
                payload, then = self.answer(index, head, body)
                for i, part in enumerate(payload if isinstance(payload, list) else [payload]):
                    if i:
                        time.sleep(0.05)  # a separate read for the client, most likely
                    conn.sendall(part)
                if then == "close":
                    conn.close()
                    self.closed.set()
                    return
                if then == "stall":
                    self.closed.wait(30)
                    return
        except OSError:
            return

    def close(self) -> None:
        self.closed.set()
        self._sock.close()
        with self._lock:
            for conn in self._open:
                try:
                    conn.close()
                except OSError:
                    pass


COMPLETION = json.dumps(
    {
        "id": "c",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
).encode()


def http_answer(
    body: bytes = COMPLETION, *, status: str = "200 OK", headers: tuple[str, ...] = (), length: bool = True
) -> bytes:
    lines = [f"HTTP/1.1 {status}", "content-type: application/json", *headers]
    if length:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.fixture
def scripted():
    servers: list[ScriptedServer] = []

    def start(answer) -> ScriptedServer:
        server = ScriptedServer(answer)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def lean_client(server: ScriptedServer, **config) -> ProviderClient:
    return ProviderClient(ProvidersConfig(providers=[ProviderConfig(name="p", base_url=server.base_url, **config)]))


def achat_all(client: ProviderClient, n: int, **kwargs) -> list[ChatResult]:
    async def run() -> list[ChatResult]:
        try:
            return [await client.achat("p", "m", BODY, **kwargs) for _ in range(n)]
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_async_calls_share_one_keep_alive_connection(scripted):
    server = scripted(lambda i, head, body: (http_answer(), "keep"))
    results = achat_all(lean_client(server), 5)
    assert [r.output_tokens for r in results] == [1] * 5
    assert server.connections == 1
    head, body = server.requests[0]
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert json.loads(body) == {**BODY, "model": "m"}
    assert b"content-type: application/json" in head.lower() and b"user-agent: unhardcoded/" in head.lower()


def test_async_connection_close_and_a_body_that_runs_to_the_end_of_the_connection(scripted):
    server = scripted(lambda i, head, body: (http_answer(headers=("connection: close",), length=False), "close"))
    results = achat_all(lean_client(server), 3)
    assert [r.body["choices"][0]["message"]["content"] for r in results] == ["Hi."] * 3
    assert server.connections == 3


def test_async_call_after_the_server_dropped_the_idle_connection(scripted):
    # The first answer keeps the connection alive, then the server closes it anyway (its keep-alive timeout).
    server = scripted(lambda i, head, body: (http_answer(), "close" if i == 0 else "keep"))
    client = lean_client(server)

    async def run() -> list[int]:
        try:
            first = await client.achat("p", "m", BODY)
            # Blocking the loop on purpose: the close has reached the socket, but the loop has not seen it.
            server.closed.wait(10)
            second = await client.achat("p", "m", BODY)
            return [first.status_code, second.status_code]
        finally:
            await client.aclose()

    assert asyncio.run(run()) == [200, 200]
    assert server.connections == 2


def test_async_chunked_gzip_answer_after_an_informational_response(scripted):
    import gzip

    packed = gzip.compress(COMPLETION)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (packed[:10], packed[10:])) + b"0\r\n\r\n"
    head = http_answer(b"", headers=("content-encoding: gzip", "transfer-encoding: chunked"), length=False)
    answer = [b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n", head, chunked]
    server = scripted(lambda i, head, body: (answer, "keep"))
    [result] = achat_all(lean_client(server), 1)
    assert result.body["choices"][0]["message"]["content"] == "Hi." and result.input_tokens == 3


def test_async_large_request_and_answer_bodies(scripted):
    text = "x" * (3 * 1024 * 1024)
    big_answer = json.dumps(
        {
            "id": "c",
            "object": "chat.completion",
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }
    ).encode()
    server = scripted(lambda i, head, body: (http_answer(big_answer), "keep"))
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    client = lean_client(server)

    async def run() -> ChatResult:
        try:
            return await client.achat("p", "m", body)
        finally:
            await client.aclose()

    result = asyncio.run(run())
    assert result.body["choices"][0]["message"]["content"] == text
    assert json.loads(server.requests[0][1])["messages"][0]["content"] == text


def test_async_stream_split_across_reads_with_crlf_lines(scripted):
    events = [
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}],
        }
        for w in ("One ", "two.")
    ]
    sse = b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in events) + b"data: [DONE]\r\n\r\n"
    # Chunk boundaries fall inside lines and between \r and \n.
    pieces = [sse[:7], sse[7 : sse.index(b"\r\n") + 1], sse[sse.index(b"\r\n") + 1 :]]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    server = scripted(lambda i, head, body: (answer + chunked, "keep"))
    _, chunks, exc = streamed(lean_client(server), "async", "p", "m", BODY)
    assert exc is None
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["One ", "two."]


def test_async_stream_closed_early_frees_its_connection(simulated_provider):
    sim = simulated_provider("acme", {"m": ok("a b c d e f g h")})
    client = client_with(sim)

    async def run() -> int:
        try:
            async with client.astream("acme", "m", BODY) as stream:
                await stream.__anext__()
            return (await client.achat("acme", "m", BODY)).status_code
        finally:
            await client.aclose()

    assert asyncio.run(run()) == 200


def test_async_header_that_would_split_the_request_is_refused_and_nothing_is_sent(scripted):
    server = scripted(lambda i, head, body: (http_answer(), "keep"))
    client = lean_client(server, headers={"x-team": "support\r\nx-injected: 1"})
    with pytest.raises(ProviderCallError) as caught:
        achat_all(client, 1)
    assert (caught.value.kind, caught.value.error_type) == ("error", "transport_error")
    assert server.requests == []


def test_async_calls_go_through_an_http_proxy_set_in_the_environment(scripted, monkeypatch):
    provider = scripted(lambda i, head, body: (http_answer(), "keep"))
    proxy = scripted(lambda i, head, body: (http_answer(), "keep"))  # answers as the provider would
    monkeypatch.setenv("HTTP_PROXY", proxy.base_url.rsplit("/", 1)[0])
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    [result] = achat_all(lean_client(provider), 1)
    assert result.status_code == 200
    assert provider.requests == []
    [(head, _)] = proxy.requests
    assert head.startswith(f"POST {provider.base_url}/chat/completions HTTP/1.1".encode())


def test_a_request_waits_for_a_free_connection_and_gives_up_after_its_timeout(scripted):
    from unhardcoded.router.providers import http11

    server = scripted(lambda i, head, body: (b"", "stall"))
    target = http11.target_of(server.base_url + "/chat/completions")
    assert target is not None

    async def run() -> BaseException:
        pool = http11.ConnectionPool(max_connections=1)
        first = asyncio.ensure_future(pool.request(target, b"", b"{}", 5.0, read=True))
        for _ in range(1000):  # until the first request, holding the only slot, is in
            if server.requests:
                break
            await asyncio.sleep(0.01)
        try:
            await pool.request(target, b"", b"{}", 0.2, read=True)
        except BaseException as exc:  # noqa: BLE001
            return exc
        finally:
            first.cancel()
            await pool.aclose()
        raise AssertionError("the second request did not wait")

    assert isinstance(asyncio.run(run()), httpx.PoolTimeout)


@pytest.mark.parametrize(
    "answer", [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab", b"NOT HTTP\r\n\r\n"], ids=["short-body", "garbage"]
)
def test_async_broken_answers_are_transport_errors(scripted, answer):
    server = scripted(lambda i, head, body: (answer, "close"))
    with pytest.raises(ProviderCallError) as caught:
        achat_all(lean_client(server), 1)
    assert (caught.value.kind, caught.value.error_type, caught.value.status_code) == ("error", "transport_error", None)


# --------------------------------------------------------------------------- limits of what is read


def test_two_answers_in_one_read_are_not_merged(scripted):
    other = COMPLETION.replace(b'"Hi."', b'"Unasked."')
    server = scripted(lambda i, head, body: (http_answer() + http_answer(other), "keep"))
    results = achat_all(lean_client(server), 2)
    assert [r.body["choices"][0]["message"]["content"] for r in results] == ["Hi.", "Hi."]
    # The connection that spoke out of turn is not trusted with the next request.
    assert server.connections == 2


@HOW
def test_a_body_over_the_limit_is_a_provider_error(how, simulated_provider, monkeypatch):
    from unhardcoded.router.providers import http11

    monkeypatch.setattr(http11, "MAX_BODY", 4096)
    padded = json.dumps({**json.loads(COMPLETION), "padding": "x" * 8192})
    sim = simulated_provider("acme", {"big": raw(200, padded)})
    with pytest.raises(ProviderCallError) as caught:
        call(client_with(sim), how, "acme", "big", BODY)
    assert caught.value.error_type == "response_too_large"
    assert caught.value.kind == "error"
    assert "response body over 4096 bytes" in caught.value.message
    # The same answer under the limit is read as ever.
    monkeypatch.setattr(http11, "MAX_BODY", 32 * 1024 * 1024)
    assert call(client_with(sim), how, "acme", "big", BODY).status_code == 200


@HOW
def test_a_streamed_line_over_the_limit_is_a_provider_error(how, simulated_provider, monkeypatch):
    from unhardcoded.router.providers import http11

    monkeypatch.setattr(http11, "MAX_LINE", 2048)
    chunk = {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "y" * 4096}}]}
    events = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n"
    sim = simulated_provider("acme", {"long": raw(200, events, content_type="text/event-stream")})
    stream, chunks, failure = streamed(client_with(sim), how, "acme", "long", BODY)
    assert chunks == []
    assert failure is not None and failure.error_type == "response_too_large", failure
    assert not stream.first_chunk_received
    monkeypatch.setattr(http11, "MAX_LINE", 1024 * 1024)
    _, chunks, failure = streamed(client_with(sim), how, "acme", "long", BODY)
    assert failure is None and len(chunks) == 1
