"""Reading and checking a chat-completions request before anything is sent to a provider."""

from __future__ import annotations

import difflib
import json
from typing import Any

from starlette.requests import ClientDisconnect, Request

from ..errors import RequestError
from ..router.features import RequestFeatures, features_from_request
from .errors import APIError, bad_request

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024

# Every parameter of OpenAI's chat-completions API, plus our own `policy`. Anything else is
# refused rather than silently forwarded: a typo must not change what a provider is asked.
CHAT_FIELDS = frozenset(
    {
        "messages",
        "model",
        "stream",
        "stream_options",
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "metadata",
        "modalities",
        "moderation",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
        "policy",
    }
)
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes.

    Read from the ASGI messages as ``request.stream()`` reads them, without building the request's header
    mapping or an async generator for a body that nearly always comes in one message.
    """
    for name, value in request.scope["headers"]:
        if name == b"content-length":
            try:
                size = int(value)
            except ValueError:
                raise bad_request("Content-Length: not a number") from None
            if size > limit:
                raise _too_large(limit)
            break
    chunks: list[bytes] = []
    total = 0
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if chunk:
            total += len(chunk)
            if total > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"request body is larger than the proxy's limit of {limit} bytes", code="request_too_large")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise bad_request("request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise bad_request("request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise bad_request(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    if not isinstance(body, dict):
        raise bad_request(f"request body must be a JSON object, got {type(body).__name__}")
    return body


def check_chat_request(body: dict[str, Any]) -> RequestFeatures:
    """Refuse what no provider should be sent; return the features the policy rules read."""
    for key in body:
        if key not in CHAT_FIELDS:
            close = difflib.get_close_matches(key, sorted(CHAT_FIELDS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise bad_request(
                f"{key}: unknown field{hint}; the proxy accepts the OpenAI chat-completions parameters and 'policy'",
                param=key,
                code="unknown_parameter",
            )
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request('model: must be a string (the proxy picks the model; send e.g. "auto")', param="model")
    if "messages" not in body:
        raise bad_request("messages: field required", param="messages", code="missing_required_parameter")
    messages = body["messages"]
    if isinstance(messages, list):
        for i, message in enumerate(messages):
            if isinstance(message, dict) and isinstance(message.get("role"), str) and message["role"] not in ROLES:
                raise bad_request(
                    f"messages[{i}].role: {message['role']!r} is not one of {', '.join(sorted(ROLES))}",
                    param=f"messages[{i}].role",
                )
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("stream_options: must be an object", param="stream_options")
    tools = body.get("tools")
    if isinstance(tools, list):
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise bad_request(f"tools[{i}]: must be an object with type and function", param=f"tools[{i}]")
    try:
        return features_from_request(body)
    except RequestError as exc:
        text = str(exc)
        param = text.split(":", 1)[0] if ":" in text else None
        raise bad_request(text, param=param) from None
