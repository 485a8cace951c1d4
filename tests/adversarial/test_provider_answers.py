"""Hostile provider answers, from loopback providers: each is a failed attempt the cascade falls back from.

With a fallback configured the caller gets the fallback's answer; without one, a 502 in OpenAI's error shape;
never a 500, and the provider's key (a canary) never reaches the caller, plain or streamed, on the lean client
(the proxy's async calls) and on the httpx path (sync calls).
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import socket
import threading
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from apps.proxy_harness import FIRST_FALLBACK, HELLO, SECOND_FALLBACK, SELECTED, Stack, make_stack
from unhardcoded.router.providers import ProviderCallError, ProviderClient, ProvidersConfig, http11
from unhardcoded.router.providers.calls import PreparedCall
from unhardcoded.router.providers.classify import error_detail, scrub, scrub_json
from unhardcoded.router.providers.sse import StreamState
from unhardcoded.testing.simulator import Raw, ok, raw

pytest_plugins = ["conftest_providers"]

CANARY = "sk-CANARY-provider-0123456789"
ESCAPED_CANARY = "\\u0073k-CANARY-provider-0123456789"  # the key as a JSON escape spells it: decoded, the key itself
KEY_ENV = {"xai": "ADV_XAI_KEY", "mistral": "ADV_MISTRAL_KEY", "openai": "ADV_OPENAI_KEY"}
DEEP = 100_000
SSE = "text/event-stream"


@functools.cache
def _bomb() -> bytes:
    """64 MiB of zeros gzipped to ~64 KiB: over the 32 MiB a body may inflate to."""
    return gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=6)


@functools.cache
def _stream_bomb() -> bytes:
    """A stream whose one SSE line inflates to 64 MiB (the line limit is 1 MiB)."""
    return gzip.compress(b"data: " + b"a" * (64 * 1024 * 1024), compresslevel=6)


def _sse(*events: str) -> bytes:
    return "".join(f"data: {e}\n\n" for e in events).encode()


def _chunk(content: str) -> str:
    return '{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"' + content + '"}}]}'


@dataclass(frozen=True)
class Hostile:
    """One hostile answer: the behaviour for a plain call and for a streamed one, and the error_type it gets."""

    plain: Callable[[], Raw]
    streamed: Callable[[], Raw]
    error_type: str
    streamed_error_type: str | None = None

    def expected(self, stream: bool) -> str:
        return (self.streamed_error_type or self.error_type) if stream else self.error_type


def _both(make: Callable[[], Raw], error_type: str) -> Hostile:
    return Hostile(make, make, error_type)


CORPUS: dict[str, Hostile] = {
    "deep-json-body": Hostile(
        lambda: raw(200, "[" * DEEP + "]" * DEEP),
        lambda: raw(200, _sse("[" * DEEP + "]" * DEEP), content_type=SSE),
        "invalid_response",
    ),
    "deep-json-error-body": _both(lambda: raw(500, '{"error":' + "[" * DEEP + "]" * DEEP + "}"), "500"),
    "deep-json-in-stream-after-a-chunk": Hostile(
        lambda: raw(200, '{"choices":' + "[" * DEEP + "]" * DEEP + "}"),
        lambda: raw(200, _sse("[" * DEEP + "]" * DEEP, "[DONE]"), content_type=SSE),
        "invalid_response",
    ),
    "charset-zlib_codec": Hostile(
        lambda: raw(200, json.dumps({"choices": []}), content_type="application/json; charset=zlib_codec"),
        lambda: raw(200, _sse(_chunk("hi"), "[DONE]"), content_type=f"{SSE}; charset=zlib_codec"),
        "invalid_response",
    ),
    "charset-rot13": Hostile(
        lambda: raw(200, json.dumps({"choices": []}), content_type="application/json; charset=rot13"),
        lambda: raw(200, _sse(_chunk("hi"), "[DONE]"), content_type=f"{SSE}; charset=rot13"),
        "invalid_response",
    ),
    "charset-base64": Hostile(
        lambda: raw(200, json.dumps({"choices": []}), content_type="application/json; charset=base64"),
        lambda: raw(200, _sse(_chunk("hi"), "[DONE]"), content_type=f"{SSE}; charset=base64"),
        "invalid_response",
    ),
    "gzip-bomb": Hostile(
        lambda: raw(200, _bomb(), headers={"Content-Encoding": "gzip"}),
        lambda: raw(200, _stream_bomb(), content_type=SSE, headers={"Content-Encoding": "gzip"}),
        "response_too_large",
    ),
    "deflate-bomb": Hostile(
        lambda: raw(200, zlib.compress(b" " * (64 * 1024 * 1024)), headers={"Content-Encoding": "deflate"}),
        lambda: raw(
            200,
            zlib.compress(b"data: " + b"b" * (64 * 1024 * 1024)),
            content_type=SSE,
            headers={"Content-Encoding": "deflate"},
        ),
        "response_too_large",
    ),
    "body-over-32-MiB": Hostile(
        lambda: raw(200, b" " * (33 * 1024 * 1024)),
        lambda: raw(200, b"data: " + b"x" * (2 * 1024 * 1024), content_type=SSE),
        "response_too_large",
    ),
    "header-of-1-MiB": _both(lambda: raw(200, "{}", headers={"X-Padding": "p" * (1024 * 1024)}), "response_too_large"),
    "bad-gzip": _both(lambda: raw(200, b"not gzip at all", headers={"Content-Encoding": "gzip"}), "invalid_response"),
    "not-json": Hostile(
        lambda: raw(200, "<html>oops</html>"),
        lambda: raw(200, _sse("<html>oops</html>"), content_type=SSE),
        "invalid_response",
    ),
    "no-choices": Hostile(
        lambda: raw(200, '{"choices":"none"}'),
        lambda: raw(200, _sse("[1,2]"), content_type=SSE),
        "invalid_response",
    ),
    "nan-in-answer": Hostile(
        lambda: raw(200, '{"choices":NaN}'),
        lambda: raw(200, _sse("NaN"), content_type=SSE),
        "invalid_response",
    ),
    "error-echoing-the-key-escaped": _both(
        lambda: raw(401, '{"detail":"bad key ' + ESCAPED_CANARY + '"}'),
        "401",
    ),
    "error-message-with-the-key-escaped": _both(
        lambda: raw(400, '{"error":{"message":"Authorization: Bearer ' + ESCAPED_CANARY + '"}}'),
        "400",
    ),
    "stream-error-event-with-the-key": Hostile(
        lambda: raw(500, '{"error":{"message":"Incorrect API key provided: ' + ESCAPED_CANARY + '"}}'),
        lambda: raw(200, _sse('{"error":{"message":"key ' + ESCAPED_CANARY + '"}}'), content_type=SSE),
        "500",
        "stream_error",
    ),
}

# Answers that are not failures: passed on, with the key scrubbed from the decoded text.
PASSED_ON: dict[str, Hostile] = {
    "answer-with-the-key-escaped": Hostile(
        lambda: raw(
            200,
            '{"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"finish_reason":"stop",'
            '"message":{"role":"assistant","content":"your key: ' + ESCAPED_CANARY + '"}}]}',
        ),
        lambda: raw(200, _sse(_chunk("your key: " + ESCAPED_CANARY), "[DONE]"), content_type=SSE),
        "",
    ),
    "answer-with-a-lone-surrogate": Hostile(
        lambda: raw(
            200,
            '{"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"finish_reason":"stop",'
            '"message":{"role":"assistant","content":"half \\ud800 a pair"}}]}',
        ),
        lambda: raw(200, _sse(_chunk("half \\ud800 a pair"), "[DONE]"), content_type=SSE),
        "",
    ),
}
HOSTILE_INPUTS = 2 * len(CORPUS) + 2 * len(PASSED_ON) + 1  # plain and streamed each, and two answers in one read


@pytest.fixture
def stack(simulated_provider: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    for env in KEY_ENV.values():
        monkeypatch.setenv(env, CANARY)
    yield from make_stack(simulated_provider, timeout_s=5.0, api_key_env=KEY_ENV)


def _no_canary(*texts: str) -> None:
    for text in texts:
        assert "CANARY" not in text


def _ask(stack: Stack, stream: bool) -> httpx.Response:
    body = {"model": "auto", "messages": HELLO, "stream": stream}
    with httpx.Client(timeout=30) as client:
        return client.post(f"{stack.server.base_url}/v1/chat/completions", json=body)


def _serving(stack: Stack) -> None:
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{stack.server.base_url}/healthz").status_code == 200


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("name", list(CORPUS))
def test_hostile_answer_falls_back(stack: Stack, name: str, stream: bool, caplog: pytest.LogCaptureFixture) -> None:
    hostile = CORPUS[name]
    stack.behave(SELECTED, hostile.streamed() if stream else hostile.plain())

    answer = _ask(stack, stream)

    assert answer.status_code == 200, answer.text
    assert answer.headers["x-unhardcoded-model"] == FIRST_FALLBACK
    if stream:
        assert answer.text.rstrip().endswith("data: [DONE]")
    receipt = stack.receipt(answer.headers["x-unhardcoded-request-id"])
    assert [a["status"] for a in receipt["attempts"]] == ["error", "ok"]
    assert receipt["attempts"][0]["error_type"] == hostile.expected(stream)
    _no_canary(answer.text, json.dumps(receipt), caplog.text)
    _serving(stack)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize(
    "name",
    [
        "deep-json-body",
        "charset-zlib_codec",
        "gzip-bomb",
        "stream-error-event-with-the-key",
        "error-message-with-the-key-escaped",
    ],
)
def test_hostile_answer_without_a_fallback_is_a_502(
    stack: Stack, name: str, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    hostile = CORPUS[name]
    for model in (SELECTED, FIRST_FALLBACK, SECOND_FALLBACK):
        stack.behave(model, hostile.streamed() if stream else hostile.plain())

    answer = _ask(stack, stream)

    assert answer.status_code == 502, answer.text
    error = answer.json()["error"]
    assert error["type"] == "api_error" and error["code"] == "upstream_error"
    assert hostile.expected(stream) in error["message"]
    assert "[REDACTED]]" not in error["message"]  # the marker is never scrubbed again
    _no_canary(answer.text, caplog.text)
    _serving(stack)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_answer_spelling_the_key_with_escapes_reaches_the_caller_scrubbed(stack: Stack, stream: bool) -> None:
    hostile = PASSED_ON["answer-with-the-key-escaped"]
    stack.behave(SELECTED, hostile.streamed() if stream else hostile.plain())

    answer = _ask(stack, stream)

    assert answer.status_code == 200 and answer.headers["x-unhardcoded-model"] == SELECTED
    assert "your key: [REDACTED]" in answer.text
    _no_canary(answer.text, answer.text.encode().decode("unicode_escape", "replace"))


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_answer_with_a_lone_surrogate_is_passed_on_escaped(stack: Stack, stream: bool) -> None:
    hostile = PASSED_ON["answer-with-a-lone-surrogate"]
    stack.behave(SELECTED, hostile.streamed() if stream else hostile.plain())

    answer = _ask(stack, stream)

    assert answer.status_code == 200, answer.text
    assert "half \\ud800 a pair" in answer.text
    _serving(stack)


def test_openai_client_gets_the_fallback_answer(stack: Stack) -> None:
    stack.behave(SELECTED, CORPUS["charset-rot13"].plain())

    completion = stack.client().chat.completions.create(model="auto", messages=HELLO)  # type: ignore[arg-type]

    assert completion.model == FIRST_FALLBACK


def test_openai_client_sees_a_502_without_fallback(stack: Stack) -> None:
    for model in (SELECTED, FIRST_FALLBACK, SECOND_FALLBACK):
        stack.behave(model, CORPUS["deep-json-body"].plain())

    with pytest.raises(openai.InternalServerError) as raised:
        stack.client().chat.completions.create(model="auto", messages=HELLO)  # type: ignore[arg-type]

    assert raised.value.status_code == 502


# --------------------------------------------------------------------------- the httpx path (sync calls)


@pytest.fixture
def sync_client(simulated_provider: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, ProviderClient]]:
    monkeypatch.setenv("ADV_SIM_KEY", CANARY)
    sim = simulated_provider("sim")
    client = ProviderClient(ProvidersConfig(providers=[sim.provider_config(timeout_s=5, api_key_env="ADV_SIM_KEY")]))
    yield sim, client
    client.close()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("name", list(CORPUS))
def test_hostile_answer_on_the_httpx_path_is_a_classified_failure(
    sync_client: tuple[Any, ProviderClient], name: str, stream: bool
) -> None:
    sim, client = sync_client
    hostile = CORPUS[name]
    sim.set_behavior("m", hostile.streamed() if stream else hostile.plain())

    with pytest.raises(ProviderCallError) as raised:
        if stream:
            with client.stream("sim", "m", {"messages": HELLO}) as chunks:
                list(chunks)
        else:
            client.chat("sim", "m", {"messages": HELLO})

    assert raised.value.kind == "error"
    assert raised.value.error_type == hostile.expected(stream)
    _no_canary(str(raised.value), repr(raised.value))


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_key_spelled_with_escapes_is_scrubbed_on_the_httpx_path(
    sync_client: tuple[Any, ProviderClient], stream: bool
) -> None:
    sim, client = sync_client
    hostile = PASSED_ON["answer-with-the-key-escaped"]
    sim.set_behavior("m", hostile.streamed() if stream else hostile.plain())

    if stream:
        with client.stream("sim", "m", {"messages": HELLO}) as chunks:
            text = json.dumps(list(chunks), ensure_ascii=False)
    else:
        text = json.dumps(client.chat("sim", "m", {"messages": HELLO}).body, ensure_ascii=False)

    assert "your key: [REDACTED]" in text
    _no_canary(text)


# --------------------------------------------------------------------------- two answers in one read (lean client)


@pytest.fixture
def two_answers() -> Iterator[int]:
    """A server that answers each request with a 200 and, in the same write, a forged 201 nobody asked for."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    conns: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conns.append(conn)
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 6\r\n\r\nFORGED"
            )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.close()
    thread.join(5)
    for conn in conns:
        conn.close()


def test_two_answers_in_one_read_are_not_merged_and_the_connection_is_not_reused(two_answers: int) -> None:
    async def go() -> tuple[int, bytes, int]:
        pool = http11.ConnectionPool()
        target = http11.target_of(f"http://127.0.0.1:{two_answers}/v1/chat/completions")
        assert target is not None
        try:
            reply = await pool.request(target, b"", b"{}", 5.0, read=True)
            await reply.aclose()
            return reply.status_code, reply.content, pool._idle_count
        finally:
            await pool.aclose()

    status, content, idle = asyncio.run(go())

    assert (status, content) == (200, b"")
    assert idle == 0


# --------------------------------------------------------------------------- the answer parsers, fuzzed


def _call(secret: str | None = CANARY) -> PreparedCall:
    return PreparedCall(
        provider="p",
        model="m",
        url="http://127.0.0.1:9/v1/chat/completions",
        body={},
        headers={},
        timeout=httpx.Timeout(1.0),
        timeout_s=1.0,
        secret=secret,
    )


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.text(max_size=200) | st.sampled_from(["", "data: [DONE]", "data: {", ": ping"]), max_size=20))
def test_sse_state_raises_only_classified_failures(lines: list[str]) -> None:
    state = StreamState(_call())
    try:
        for line in lines:
            chunk = state.feed(line)
            if chunk is not None:
                assert "CANARY" not in json.dumps(chunk, ensure_ascii=False)
        state.finish()
    except ProviderCallError as exc:
        assert exc.kind == "error"


@settings(max_examples=150, deadline=None)
@given(value=_json_values, at=st.integers(min_value=0, max_value=3), ascii_only=st.booleans())
def test_key_never_survives_scrubbing_however_the_json_spells_it(value: Any, at: int, ascii_only: bool) -> None:
    holder = {"a": [value, f"x{CANARY}y"], "b": {"c": CANARY}} if at % 2 else [CANARY, value]
    text = json.dumps(holder, ensure_ascii=ascii_only)
    decoded = json.loads(text)

    assert "CANARY" not in json.dumps(scrub_json(decoded, CANARY), ensure_ascii=False)
    assert "CANARY" not in error_detail(decoded, text, CANARY)


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=200))
def test_scrubbing_twice_changes_nothing(text: str) -> None:
    once = scrub(text, CANARY)
    assert scrub(once, CANARY) == once


def test_scrub_leaves_a_redacted_bearer_as_it_is() -> None:
    assert scrub(scrub("Authorization: Bearer abcdef123456", None), None) == "Authorization: Bearer [REDACTED]"


def test_a_simulator_behaving_well_still_answers(sync_client: tuple[Any, ProviderClient]) -> None:
    sim, client = sync_client
    sim.set_behavior("m", ok())
    assert client.chat("sim", "m", {"messages": HELLO}).body["choices"]


# --------------------------------------------------------------------------- a decompression bomb is never held whole


@functools.cache
def _big_bomb() -> bytes:
    return gzip.compress(b"\0" * (128 * 1024 * 1024), compresslevel=1)


@pytest.mark.parametrize("path", ["lean", "httpx"])
def test_gzip_bomb_is_refused_without_inflating_it(simulated_provider: Any, path: str) -> None:
    sim = simulated_provider("sim", {"m": raw(200, _big_bomb(), headers={"Content-Encoding": "gzip"})})
    client = ProviderClient(ProvidersConfig(providers=[sim.provider_config(timeout_s=10)]))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with pytest.raises(ProviderCallError) as raised:
            if path == "lean":
                asyncio.run(_achat_then_close(client))
            else:
                client.chat("sim", "m", {"messages": HELLO})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        client.close()

    assert raised.value.error_type == "response_too_large"
    assert peak < 40 * 1024 * 1024  # the 32 MiB a body may hold, and one piece over


async def _achat_then_close(client: ProviderClient) -> None:
    try:
        await client.achat("sim", "m", {"messages": HELLO})
    finally:
        await client.aclose()


@settings(max_examples=100, deadline=None)
@given(
    data=st.binary(max_size=2000) | st.binary(max_size=2000).map(gzip.compress),
    encoding=st.sampled_from(["gzip", "deflate"]),
    cut=st.integers(min_value=1, max_value=64),
)
def test_inflater_gives_bounded_pieces_or_a_zlib_error(data: bytes, encoding: str, cut: int) -> None:
    inflater = http11.Inflater.of(encoding)
    assert inflater is not None
    try:
        for start in range(0, len(data), cut):
            for piece in inflater.feed(data[start : start + cut]):
                assert 0 < len(piece) <= 256 * 1024
    except zlib.error:
        pass


@settings(max_examples=100, deadline=None)
@given(charset=st.text(max_size=30))
@example(charset="undefined")  # a codec that calls itself text and refuses every byte
def test_any_charset_is_a_text_encoding_or_a_decoding_error(charset: str) -> None:
    try:
        name = http11.text_encoding(f"application/json; charset={charset}")
    except httpx.DecodingError:
        return
    assert isinstance(b"{}".decode(name), str)
