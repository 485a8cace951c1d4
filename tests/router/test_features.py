"""Request features: what the rules see of a chat-completions body, and the errors a bad body gets."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from unhardcoded.errors import RequestError
from unhardcoded.router import RequestFeatures, features_from_request
from unhardcoded.router.features import DEFAULT_OUTPUT_TOKENS, IMAGE_TOKENS


def user(content: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}]}


def test_text_tokens_are_a_quarter_of_the_characters_plus_four_per_message():
    body = {
        "messages": [
            {"role": "system", "content": "x" * 10},  # 3 tokens
            {"role": "user", "content": "y" * 8},  # 2 tokens
        ]
    }
    features = features_from_request(body)
    assert features == RequestFeatures(input_tokens=4 + 3 + 4 + 2, output_tokens=DEFAULT_OUTPUT_TOKENS)
    assert DEFAULT_OUTPUT_TOKENS == 512
    assert (features.uses_tools, features.has_images, features.max_tokens, features.stream) == (
        False,
        False,
        None,
        False,
    )


def test_null_content_counts_only_the_message_overhead():
    assert features_from_request(user(None)).input_tokens == 4


@pytest.mark.parametrize("kind", ["image_url", "input_image", "image"])
def test_image_parts_set_has_images_and_count_fixed_tokens(kind: str):
    features = features_from_request(
        user([{"type": "text", "text": "abcd" * 3}, {"type": kind, "image_url": {"url": "u"}}])
    )
    assert features.has_images is True
    assert IMAGE_TOKENS == 765
    assert features.input_tokens == 4 + 3 + 765


def test_unknown_parts_are_counted_by_their_json():
    part = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    features = features_from_request(user([part]))
    assert features.input_tokens == 4 + math.ceil(len(json.dumps(part)) / 4)
    assert features.has_images is False


def test_tools_set_uses_tools_and_count_their_definitions():
    tools = [{"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}]
    features = features_from_request({**user("hi"), "tools": tools})
    assert features.uses_tools is True
    assert features.input_tokens == 4 + 1 + math.ceil(len(json.dumps(tools)) / 4)


def test_legacy_functions_count_as_tools_and_an_empty_list_does_not():
    assert features_from_request({**user("hi"), "functions": [{"name": "f"}]}).uses_tools is True
    assert features_from_request({**user("hi"), "tools": []}).uses_tools is False
    assert features_from_request({**user("hi"), "tools": None}).uses_tools is False


def test_tool_calls_in_history_are_counted():
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    body = {"messages": [{"role": "assistant", "content": None, "tool_calls": calls}]}
    assert features_from_request(body).input_tokens == 4 + math.ceil(len(json.dumps(calls)) / 4)


def test_max_tokens_sets_the_output_estimate():
    features = features_from_request({**user("hi"), "max_tokens": 300})
    assert (features.max_tokens, features.output_tokens) == (300, 300)


def test_max_completion_tokens_wins_over_max_tokens():
    features = features_from_request({**user("hi"), "max_tokens": 300, "max_completion_tokens": 200})
    assert (features.max_tokens, features.output_tokens) == (200, 200)


def test_a_null_max_completion_tokens_does_not_hide_max_tokens():
    features = features_from_request({**user("hi"), "max_completion_tokens": None, "max_tokens": 300})
    assert (features.max_tokens, features.output_tokens) == (300, 300)


def test_stream_is_recorded():
    assert features_from_request({**user("hi"), "stream": True}).stream is True


def test_other_keys_are_ignored():
    plain = features_from_request(user("hi"))
    assert (
        features_from_request({**user("hi"), "temperature": 0.2, "model": "ignored", "policy": {"name": "x"}}) == plain
    )


def test_canonical_features_are_stable_json():
    features = features_from_request({**user("hi"), "max_tokens": 7})
    assert features.canonical() == (
        '{"has_images":false,"input_tokens":5,"max_tokens":7,"output_tokens":7,"stream":false,"uses_tools":false}'
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "request body must be a JSON object"),
        ("hi", "request body must be a JSON object"),
        ({}, "messages: must be a non-empty array of chat messages"),
        ({"messages": []}, "messages: must be a non-empty array of chat messages"),
        ({"messages": {"role": "user"}}, "messages: must be a non-empty array of chat messages"),
        ({"messages": ["hi"]}, "messages[0]: must be an object with role and content"),
        ({"messages": [{"role": "user", "content": "a"}, {"content": "b"}]}, "messages[1].role: must be a string"),
        (
            {"messages": [{"role": "user", "content": 5}]},
            "messages[0].content: must be a string, an array of parts or null",
        ),
        ({"messages": [{"role": "user", "content": ["x"]}]}, "messages[0].content[0]: must be a content part object"),
        ({**user("hi"), "tools": {"type": "function"}}, "tools: must be an array"),
        ({**user("hi"), "max_tokens": 0}, "max_tokens: must be a positive integer"),
        ({**user("hi"), "max_tokens": True}, "max_tokens: must be a positive integer"),
        ({**user("hi"), "max_tokens": "100"}, "max_tokens: must be a positive integer"),
        ({**user("hi"), "max_tokens": 10.0}, "max_tokens: must be a positive integer"),
        ({**user("hi"), "max_completion_tokens": -5}, "max_completion_tokens: must be a positive integer"),
        ({**user("hi"), "stream": "yes"}, "stream: must be true or false"),
    ],
)
def test_bad_bodies_name_the_path(body: Any, message: str):
    with pytest.raises(RequestError) as info:
        features_from_request(body)
    assert str(info.value) == message
