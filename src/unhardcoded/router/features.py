"""What the rules need to know about a request: its API and kind, token estimates, tools, images, limits.

One reader per API the proxy serves (chat completions, Responses, Anthropic Messages, embeddings); each
gives the same :class:`RequestFeatures`, so one compiled policy decides for all of them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .._canonical import canonical_json
from ..errors import RequestError

DEFAULT_OUTPUT_TOKENS = 512
"""Output tokens assumed for cost estimates when the request sets no max_tokens."""
IMAGE_TOKENS = 765
"""Input tokens counted per image part (one high-detail 512px tile plus base, as OpenAI bills it)."""
MESSAGE_OVERHEAD_TOKENS = 4
CHARS_PER_TOKEN = 4

Api = Literal["chat_completions", "responses", "messages", "embeddings"]
APIS: tuple[str, ...] = ("chat_completions", "responses", "messages", "embeddings")
"""The APIs a provider may speak and a request may use (the providers file's ``apis``)."""
Kind = Literal["chat", "embedding"]


class RequestFeatures(BaseModel):
    """The request as the rules see it; recorded with every decision so it can be replayed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_tokens: int = 0
    output_tokens: int = DEFAULT_OUTPUT_TOKENS
    uses_tools: bool = False
    has_images: bool = False
    max_tokens: int | None = None
    stream: bool = False
    # Left out of the JSON at their defaults, so a chat-completions request's features (and every receipt and
    # signature made before these fields) read the same as before.
    api: Api = Field(default="chat_completions", exclude_if=lambda v: v == "chat_completions")
    """The API the request came in on; a model whose provider cannot serve it is rejected (``request:api``)."""
    kind: Kind = Field(default="chat", exclude_if=lambda v: v == "chat")
    """``embedding`` for an embeddings request; a model of the other kind is rejected (``request:kind``)."""
    stateful: bool = Field(default=False, exclude_if=lambda v: v is False)
    """A Responses request relying on state a provider holds (``previous_response_id``): only a provider speaking
    the Responses API itself can serve it, and it never falls back to another provider."""

    def canonical(self) -> str:
        return canonical_json(self.model_dump())


def _text_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def features_from_request(body: Any) -> RequestFeatures:
    """Estimate the features of an OpenAI chat-completions request body; bad bodies raise RequestError."""
    if not isinstance(body, Mapping):
        raise RequestError("request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: must be a non-empty array of chat messages")
    tokens = 0
    has_images = False
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise RequestError(f"messages[{i}]: must be an object with role and content")
        role = message.get("role")
        if not isinstance(role, str):
            raise RequestError(f"messages[{i}].role: must be a string")
        tokens += MESSAGE_OVERHEAD_TOKENS
        content = message.get("content")
        if isinstance(content, str):
            tokens += _text_tokens(content)
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, Mapping):
                    raise RequestError(f"messages[{i}].content[{j}]: must be a content part object")
                kind = part.get("type")
                if kind == "text":
                    tokens += _text_tokens(str(part.get("text", "")))
                elif kind in ("image_url", "input_image", "image"):
                    has_images = True
                    tokens += IMAGE_TOKENS
                else:
                    tokens += _text_tokens(json.dumps(part, default=str))
        elif content is not None:
            raise RequestError(f"messages[{i}].content: must be a string, an array of parts or null")
        if message.get("tool_calls"):
            tokens += _text_tokens(json.dumps(message["tool_calls"], default=str))
    tools = body.get("tools") or body.get("functions")
    if tools is not None and not isinstance(tools, list):
        raise RequestError("tools: must be an array")
    if tools:
        tokens += _text_tokens(json.dumps(tools, default=str))
    # An explicit `max_completion_tokens: null` means unset, so it must not hide `max_tokens`.
    limit_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(limit_key)
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise RequestError(f"{limit_key}: must be a positive integer")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("stream: must be true or false")
    return RequestFeatures(
        input_tokens=tokens,
        output_tokens=max_tokens if max_tokens is not None else DEFAULT_OUTPUT_TOKENS,
        uses_tools=bool(tools),
        has_images=has_images,
        max_tokens=max_tokens,
        stream=stream,
    )


def _content_tokens(content: Any, where: str) -> tuple[int, bool]:
    """Tokens and whether images are in a content value: a string, or a list of typed parts (any API's)."""
    if content is None:
        return 0, False
    if isinstance(content, str):
        return _text_tokens(content), False
    if not isinstance(content, list):
        raise RequestError(f"{where}: must be a string or an array of content parts")
    tokens = 0
    images = False
    for j, part in enumerate(content):
        if not isinstance(part, Mapping):
            raise RequestError(f"{where}[{j}]: must be a content part object")
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text"):
            tokens += _text_tokens(str(part.get("text", "")))
        elif kind in ("image_url", "input_image", "image"):
            images = True
            tokens += IMAGE_TOKENS
        else:
            tokens += _text_tokens(json.dumps(part, default=str))
    return tokens, images


def _limit(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise RequestError(f"{key}: must be a positive integer")
    return value


def _stream(body: Mapping[str, Any]) -> bool:
    stream = body.get("stream", False)
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise RequestError("stream: must be true or false")
    return stream


def _tools(body: Mapping[str, Any]) -> int:
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise RequestError("tools: must be an array")
    return _text_tokens(json.dumps(tools, default=str)) if tools else 0


def features_from_responses(body: Mapping[str, Any]) -> RequestFeatures:
    """The features of a Responses API request (``input`` as text or items, ``instructions``, ``tools``)."""
    if "input" not in body:
        raise RequestError("input: field required")
    items = body["input"]
    tokens = _text_tokens(body["instructions"]) if isinstance(body.get("instructions"), str) else 0
    images = False
    if isinstance(items, str):
        tokens += _text_tokens(items) + MESSAGE_OVERHEAD_TOKENS
    elif isinstance(items, list):
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise RequestError(f"input[{i}]: must be an object (a message or an item)")
            tokens += MESSAGE_OVERHEAD_TOKENS
            if "content" in item:
                more, img = _content_tokens(item.get("content"), f"input[{i}].content")
                tokens += more
                images = images or img
            else:
                tokens += _text_tokens(json.dumps(item, default=str))
    else:
        raise RequestError("input: must be a string or an array of items")
    tools = _tools(body)
    max_tokens = _limit(body, "max_output_tokens")
    return RequestFeatures(
        input_tokens=tokens + tools,
        output_tokens=max_tokens if max_tokens is not None else DEFAULT_OUTPUT_TOKENS,
        uses_tools=tools > 0,
        has_images=images,
        max_tokens=max_tokens,
        stream=_stream(body),
        api="responses",
        stateful=body.get("previous_response_id") is not None,
    )


def features_from_messages(body: Mapping[str, Any]) -> RequestFeatures:
    """The features of an Anthropic Messages request (``system``, ``messages``, ``tools``, ``max_tokens``)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: must be a non-empty array of messages")
    system = body.get("system")
    tokens, images = _content_tokens(system, "system") if system is not None else (0, False)
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise RequestError(f"messages[{i}]: must be an object with role and content")
        if message.get("role") not in ("user", "assistant"):
            raise RequestError(f"messages[{i}].role: must be 'user' or 'assistant'")
        more, img = _content_tokens(message.get("content"), f"messages[{i}].content")
        tokens += MESSAGE_OVERHEAD_TOKENS + more
        images = images or img
    tools = _tools(body)
    if "max_tokens" not in body:
        raise RequestError("max_tokens: field required")
    max_tokens = _limit(body, "max_tokens")
    return RequestFeatures(
        input_tokens=tokens + tools,
        output_tokens=max_tokens if max_tokens is not None else DEFAULT_OUTPUT_TOKENS,
        uses_tools=tools > 0,
        has_images=images,
        max_tokens=max_tokens,
        stream=_stream(body),
        api="messages",
    )


def features_from_embeddings(body: Mapping[str, Any]) -> RequestFeatures:
    """The features of an embeddings request: the input's tokens, no output."""
    if "input" not in body:
        raise RequestError("input: field required")
    given = body["input"]
    if isinstance(given, str):
        tokens = _text_tokens(given)
    elif isinstance(given, list) and given:
        tokens = 0
        for i, item in enumerate(given):
            if isinstance(item, str):
                tokens += _text_tokens(item)
            elif isinstance(item, int) and not isinstance(item, bool):
                tokens += 1  # a token id
            elif isinstance(item, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
                tokens += len(item)
            else:
                raise RequestError(f"input[{i}]: must be a string or an array of token ids")
    else:
        raise RequestError("input: must be a string or a non-empty array of strings or token ids")
    return RequestFeatures(input_tokens=tokens, output_tokens=0, api="embeddings", kind="embedding")
