"""What the rules need to know about a chat-completions request: token estimates, tools, images, limits."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from .._canonical import canonical_json
from ..errors import RequestError

DEFAULT_OUTPUT_TOKENS = 512
"""Output tokens assumed for cost estimates when the request sets no max_tokens."""
IMAGE_TOKENS = 765
"""Input tokens counted per image part (one high-detail 512px tile plus base, as OpenAI bills it)."""
MESSAGE_OVERHEAD_TOKENS = 4
CHARS_PER_TOKEN = 4


class RequestFeatures(BaseModel):
    """The request as the rules see it; recorded with every decision so it can be replayed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_tokens: int = 0
    output_tokens: int = DEFAULT_OUTPUT_TOKENS
    uses_tools: bool = False
    has_images: bool = False
    max_tokens: int | None = None
    stream: bool = False

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
