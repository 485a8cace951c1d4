"""The translation layer on hostile input: a request either translates or raises Untranslatable naming its field;
a provider's answer or chunk of any shape gives an answer or events, never an exception."""

from __future__ import annotations

from typing import Any

import pytest

from unhardcoded.router import translate

JUNK: list[Any] = [None, 1, "x", [], {}, [1], {"a": 1}, [{"type": 3}], True]


@pytest.mark.parametrize("api", ["responses", "messages"])
def test_requests_translate_or_say_which_field(api: str) -> None:
    fields = ["input", "instructions", "tools", "tool_choice", "text", "reasoning", "previous_response_id"]
    if api == "messages":
        fields = ["messages", "system", "tools", "tool_choice", "stop_sequences", "metadata", "thinking"]
    for name in fields:
        for value in JUNK:
            body = {"messages": [{"role": "user", "content": "hi"}]} if api == "messages" else {"input": "hi"}
            body[name] = value
            if api == "messages" and name == "messages":
                body[name] = [{"role": "user", "content": value}]
            try:
                out = translate.request(api, body)
            except translate.Untranslatable as exc:
                assert ":" in str(exc), (name, value)
                continue
            except (TypeError, AttributeError) as exc:  # the proxy reports these as a malformed request
                pytest.fail(f"{api} {name}={value!r}: {exc!r}")
            assert isinstance(out["messages"], list)


def test_answers_and_streams_of_any_shape() -> None:
    shapes: list[Any] = [
        {"choices": JUNK},
        {"choices": [{"message": junk, "finish_reason": junk} for junk in JUNK]},
        {"choices": [{"message": {"content": junk, "tool_calls": junk}} for junk in JUNK]},
        {"choices": [{"message": {"tool_calls": [{"function": junk}]}} for junk in JUNK]},
        {"choices": [{"delta": {"tool_calls": [{"index": junk, "function": {"arguments": junk}}]}} for junk in JUNK]},
        {"usage": "x", "id": [], "created": "now"},
    ]
    for api in ("responses", "messages"):
        for shape in shapes:
            assert isinstance(translate.answer(api, shape, "m"), dict)
            events = translate.events(api, "m")
            out = events.feed(shape) + events.feed({"choices": [{"delta": {"content": "a"}}]}) + events.close()
            assert all(isinstance(e, dict) and "type" in e for e in out)
