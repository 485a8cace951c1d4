"""Hostile requests to the proxy: bodies, headers, policies and keys, plain and streamed.

Each is refused with its documented 4xx in OpenAI's error shape (never a 500, never a traceback), the proxy
still serves afterwards, no decision is kept for it, nothing reaches a provider, and the caller's key (a canary)
is in no answer or log line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.proxy_harness import HELLO, SELECTED, Stack, all_requests, make_stack
from unhardcoded.receipts.stores import SQLiteReceiptStore
from unhardcoded.server.errors import APIError
from unhardcoded.server.request import MAX_NESTING, check_chat_request, parse_json_object

pytest_plugins = ["conftest_providers"]

CANARY = "sk-CANARY-client-0123456789abcdef"
DEEP = 100_000
HELLO_JSON = json.dumps(HELLO)


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def _body(fields: str) -> bytes:
    return ("{" + fields + "}").encode()


@dataclass(frozen=True)
class Hostile:
    body: bytes
    status: int
    param: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    code: str | None = None


CORPUS: dict[str, Hostile] = {
    # Finding 3: inputs that gave a plain-text 500.
    "temperature-NaN": Hostile(_body(f'"messages":{HELLO_JSON},"temperature":NaN'), 400, "temperature"),
    "temperature-minus-Infinity": Hostile(
        _body(f'"messages":{HELLO_JSON},"temperature":-Infinity'), 400, "temperature"
    ),
    "top_p-Infinity": Hostile(_body(f'"messages":{HELLO_JSON},"top_p":Infinity'), 400, "top_p"),
    "seed-1e400": Hostile(_body(f'"messages":{HELLO_JSON},"seed":1e400'), 400, "seed"),
    "lone-surrogate-in-content": Hostile(
        _body('"messages":[{"role":"user","content":"\\ud800"}]'), 400, "messages[0].content"
    ),
    "lone-low-surrogate-in-a-key": Hostile(_body(f'"messages":{HELLO_JSON},"metadata":{{"\\udc00":"x"}}'), 400),
    "integer-of-5000-digits": Hostile(_body(f'"messages":{HELLO_JSON},"seed":' + "9" * 5000), 400, "seed"),
    "body-nested-100k-deep": Hostile(_deep(DEEP).encode(), 400, code="nesting_too_deep"),
    "tools-nested-50k-deep": Hostile(
        _body(f'"messages":{HELLO_JSON},"tools":' + _deep(50_000)), 400, code="nesting_too_deep"
    ),
    "policy-nested-50k-deep": Hostile(
        _body(f'"messages":{HELLO_JSON},"policy":{{"rules":' + _deep(50_000) + "}"), 400, code="nesting_too_deep"
    ),
    "content-nested-100k-deep": Hostile(
        _body('"messages":[{"role":"user","content":' + _deep(DEEP) + "}]"), 400, code="nesting_too_deep"
    ),
    "response_format-nested-200-deep": Hostile(
        _body(f'"messages":{HELLO_JSON},"response_format":' + '{"a":' * 200 + "1" + "}" * 200),
        400,
        code="nesting_too_deep",
    ),
    # The rest of the door.
    "empty-body": Hostile(b"", 400),
    "not-json": Hostile(b"{nope", 400),
    "json-array": Hostile(b"[]", 400),
    "not-utf-8": Hostile(b'{"messages":"\xff\xfe"}', 400),
    "raw-encoded-surrogate": Hostile(b'{"messages":[{"role":"user","content":"\xed\xa0\x80"}]}', 400),
    "unknown-field": Hostile(_body(f'"messages":{HELLO_JSON},"temprature":1'), 400, "temprature"),
    "no-messages": Hostile(b'{"model":"auto"}', 400, "messages"),
    "bad-role": Hostile(_body('"messages":[{"role":"root","content":"x"}]'), 400, "messages[0].role"),
    "model-not-a-string": Hostile(_body(f'"messages":{HELLO_JSON},"model":{{"a":1}}'), 400, "model"),
    "tools-not-objects": Hostile(_body(f'"messages":{HELLO_JSON},"tools":[1]'), 400, "tools[0]"),
    "stream_options-not-an-object": Hostile(_body(f'"messages":{HELLO_JSON},"stream_options":[]'), 400),
    "policy-a-number": Hostile(_body(f'"messages":{HELLO_JSON},"policy":7'), 400, "policy"),
    "policy-name-with-a-path": Hostile(_body(f'"messages":{HELLO_JSON},"policy":"../../etc/passwd"'), 400, "policy"),
    "policy-unknown": Hostile(_body(f'"messages":{HELLO_JSON},"policy":"nope"'), 404, "policy"),
    "policy-invalid": Hostile(_body(f'"messages":{HELLO_JSON},"policy":{{"rules":"x"}}'), 422, "policy"),
    "policy-header-with-control-characters": Hostile(
        _body(f'"messages":{HELLO_JSON}'), 400, "policy", headers=(("x-unhardcoded-policy", "a\tb"),)
    ),
    # Finding 14: a key so short that scrubbing it would rewrite the answer.
    "forwarded-key-of-one-character": Hostile(
        _body(f'"messages":{HELLO_JSON}'), 401, headers=(("authorization", "Bearer e"),), code="invalid_api_key"
    ),
}
HOSTILE_INPUTS = 2 * len(CORPUS)  # each plain and streamed


def _streamed(body: bytes) -> bytes:
    return b'{"stream":true,' + body[1:] if body.startswith(b"{") and body != b"{}" else body


@pytest.fixture
def stack(simulated_provider: Any) -> Iterator[Stack]:
    yield from make_stack(simulated_provider, forward_client_key=["xai"])


def _post(stack: Stack, body: bytes, headers: dict[str, str]) -> httpx.Response:
    with httpx.Client(timeout=30) as client:
        return client.post(f"{stack.server.base_url}/v1/chat/completions", content=body, headers=headers)


def _assert_refused(stack: Stack, answer: httpx.Response, status: int, caplog: pytest.LogCaptureFixture) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "Traceback" not in answer.text
    assert "CANARY" not in answer.text and "CANARY" not in caplog.text
    with httpx.Client(timeout=10) as client:
        request_id = answer.headers["x-unhardcoded-request-id"]
        assert client.get(f"{stack.server.base_url}/x/receipts/{request_id}").status_code == 404
        assert client.get(f"{stack.server.base_url}/healthz").status_code == 200
    assert all_requests(stack.sims) == []


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("name", list(CORPUS))
def test_hostile_request_is_refused(stack: Stack, name: str, stream: bool, caplog: pytest.LogCaptureFixture) -> None:
    hostile = CORPUS[name]
    headers = {"content-type": "application/json", "authorization": f"Bearer {CANARY}", **dict(hostile.headers)}
    body = _streamed(hostile.body) if stream else hostile.body

    answer = _post(stack, body, headers)

    _assert_refused(stack, answer, hostile.status, caplog)
    error = answer.json()["error"]
    if hostile.param is not None:
        assert error["param"] == hostile.param
        assert hostile.param in error["message"]
    if hostile.code is not None:
        assert error["code"] == hostile.code


def test_nesting_message_names_the_path(stack: Stack) -> None:
    body = _body('"messages":[{"role":"user","content":' + _deep(DEEP) + "}]")

    error = _post(stack, body, {}).json()["error"]

    assert error["message"].startswith("messages[0].content[0][0]")
    assert f"nested more than {MAX_NESTING} levels" in error["message"]


def test_openai_client_sees_a_bad_request_for_a_deeply_nested_field(stack: Stack) -> None:
    nested: Any = {}
    for _ in range(MAX_NESTING + 5):
        nested = {"a": nested}

    with pytest.raises(openai.BadRequestError) as raised:
        stack.client().chat.completions.create(
            model="auto",
            messages=HELLO,  # type: ignore[arg-type]
            extra_body={"metadata": nested},
        )

    assert raised.value.status_code == 400
    assert "metadata.a.a" in str(raised.value)


def test_a_key_long_enough_is_forwarded_and_the_answer_is_not_mangled(stack: Stack) -> None:
    key = "sk-e-CANARY-long-enough"
    answer = _post(stack, _body(f'"messages":{HELLO_JSON}'), {"authorization": f"Bearer {key}"})

    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == SELECTED and "[REDACTED]" not in answer.text
    [sent] = stack.sim_for(SELECTED).requests
    assert sent.headers["authorization"] == f"Bearer {key}"


# --------------------------------------------------------------------------- the parser, fuzzed


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_parser_answers_any_bytes_with_a_body_or_a_400(raw: bytes) -> None:
    try:
        body = parse_json_object(raw)
    except APIError as exc:
        assert exc.status == 400
        exc.response()  # renders, whatever the message quotes
    else:
        json.dumps(body, allow_nan=False, ensure_ascii=False).encode("utf-8")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_json_values, depth=st.integers(min_value=0, max_value=3 * MAX_NESTING))
def test_a_body_the_parser_accepts_can_be_sent_to_a_provider(value: Any, depth: int) -> None:
    nested: Any = value
    for _ in range(depth):
        nested = [nested]
    raw = json.dumps({"messages": HELLO, "metadata": {"x": nested}}).encode()
    try:
        body = parse_json_object(raw)
    except APIError as exc:
        assert exc.status == 400
        return
    json.dumps(body, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    try:
        check_chat_request(body)
    except APIError as exc:
        assert exc.status == 400


# --------------------------------------------------------------------------- a receipt read never holds the loop


def test_a_receipt_read_waiting_for_the_store_writer_does_not_hold_the_event_loop(
    simulated_provider: Any, tmp_path: Path
) -> None:
    store = SQLiteReceiptStore(tmp_path / "receipts.db")
    _, writer_lock = store.shared_connection()
    try:
        for stack in make_stack(simulated_provider, store=store):
            base = stack.server.base_url
            with ThreadPoolExecutor(1) as pool:
                with writer_lock:  # the writer holds the store meanwhile
                    pending = pool.submit(httpx.get, f"{base}/x/receipts/req_not_in_memory", timeout=60)
                    time.sleep(0.3)  # let the read reach the store and wait there
                    healthz = httpx.get(f"{base}/healthz", timeout=10).status_code
                assert pending.result().status_code == 404
            assert healthz == 200
    finally:
        store.close()
