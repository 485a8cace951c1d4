"""Reading and checking a chat-completions request before anything is sent to a provider."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Collection
from typing import Any

from starlette.requests import ClientDisconnect, Request

from ..errors import RequestError
from ..router.features import (
    RequestFeatures,
    features_from_embeddings,
    features_from_messages,
    features_from_request,
    features_from_responses,
)
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


MAX_NESTING = 64
"""The deepest nesting of objects and arrays a request body may have (OpenAI's own schemas nest a dozen levels)."""


class _Unrepresentable(ValueError):
    """A JSON number or constant no provider can be sent (NaN, Infinity, 1e400): found by the parse, named after it."""


def _finite(text: str) -> float:
    value = float(text)
    if value - value != 0.0:  # inf or nan
        raise _Unrepresentable(text)
    return value


def _no_constant(text: str) -> float:
    raise _Unrepresentable(text)


_DECODER = json.JSONDecoder(parse_float=_finite, parse_constant=_no_constant)
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
"""A JSON escape of a UTF-16 surrogate; most are halves of a pair (an emoji), so a match only starts the check."""


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 naming what is wrong and where (its field path).

    Refused at parse time, so nothing later has to cope with them: text that is not UTF-8 (a lone surrogate
    included, raw or escaped), NaN and Infinity, numbers that overflow to infinity, integers over Python's 4,300
    digits, and nesting deeper than :data:`MAX_NESTING`.
    """
    if not raw:
        raise bad_request("request body is empty; send a JSON object")
    try:
        text = raw.decode(json.detect_encoding(raw))
    except UnicodeDecodeError:
        raise bad_request("request body is not UTF-8 text") from None
    try:
        body = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise bad_request(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except RecursionError:
        raise _too_deep(_deep_path(text, MAX_NESTING)) from None
    except ValueError:  # a non-finite number, or an integer over the digit limit: say which and where
        raise _unrepresentable(text) from None
    if not isinstance(body, dict):
        raise bad_request(f"request body must be a JSON object, got {type(body).__name__}")
    # Cheap upper bounds first: the walk below runs only for bodies that could be deep or hold an escaped surrogate.
    if text.count("{") + text.count("[") > MAX_NESTING and _nested_deeper_than(body, MAX_NESTING):
        raise _too_deep(_deeper_than(body, MAX_NESTING) or "")
    if _ESCAPED_SURROGATE.search(text) is not None:
        path = _lone_surrogate(body)
        if path is not None:
            raise bad_request(f"{path}: a lone UTF-16 surrogate is not text; send valid Unicode", param=path)
    return body


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},:]')


def _deep_path(text: str, limit: int) -> str:
    """The path where ``text`` nests deeper than ``limit``, read from its tokens (the parse gave up before)."""
    path: list[str] = []  # one entry per open container: ".key" or "[i]"
    kinds: list[str] = []
    last_string = ""
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in "{[":
            if len(kinds) >= limit:
                return "".join(path).lstrip(".")
            kinds.append(token)
            path.append("[0]" if token == "[" else "")
        elif token in "}]":
            if kinds:
                kinds.pop()
                path.pop()
        elif token == ",":
            if kinds and kinds[-1] == "[":
                path[-1] = f"[{int(path[-1][1:-1]) + 1}]"
        elif token == ":":
            if kinds:
                path[-1] = f".{last_string}"
        else:
            try:
                last_string = json.loads(token)
            except ValueError:
                last_string = token[1:-1]
    return ""


def _shown(path: str) -> str:
    """A field path fit for a message: surrogates escaped, a path hundreds of levels long cut short."""
    path = path.encode("utf-8", "backslashreplace").decode("utf-8")
    return path if len(path) <= 160 else path[:160] + "..."


def _too_deep(path: str) -> APIError:
    path = _shown(path)
    where = f"{path}: " if path else "request body: "
    return bad_request(
        f"{where}nested more than {MAX_NESTING} levels deep (objects and arrays)",
        param=path or None,
        code="nesting_too_deep",
    )


class _Marked:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _mark_float(text: str) -> Any:
    value = float(text)
    return value if value - value == 0.0 else _Marked(text)


def _mark_int(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        return _Marked(text)


def _unrepresentable(text: str) -> APIError:
    """The 400 for a number no provider can be sent, naming the first one's field path (re-parsed: rare)."""
    try:
        marked = json.loads(text, parse_float=_mark_float, parse_int=_mark_int, parse_constant=_Marked)
    except (ValueError, RecursionError):
        marked = None
    found = _find(marked, lambda value: isinstance(value, _Marked)) if marked is not None else None
    if found is None:
        return bad_request("request body holds a number that cannot be represented (NaN, Infinity or too large)")
    path, value = found
    path = _shown(path)
    shown = value.text if len(value.text) <= 24 else f"{value.text[:12]}...({len(value.text)} digits)"
    return bad_request(
        f"{path or 'request body'}: {shown} is not a finite number that fits (NaN, Infinity, overflow "
        "and integers over 4300 digits are refused)",
        param=path or None,
    )


def _lone_surrogate(body: Any) -> str | None:
    found = _find(body, lambda value: isinstance(value, str) and not _encodable(value))
    return None if found is None else _shown(found[0] or "request body")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _find(value: Any, bad: Any) -> tuple[str, Any] | None:
    """The path (``tools[0].function.name``) and value of the first node ``bad`` says yes to; keys are checked too."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, node = stack.pop()
        if bad(node):
            return path, node
        if isinstance(node, dict):
            children = []
            for key, child in node.items():
                child_path = f"{path}.{key}" if path else str(key)
                if bad(key):
                    return child_path, key
                children.append((child_path, child))
            stack.extend(reversed(children))
        elif isinstance(node, list):
            stack.extend(reversed([(f"{path}[{i}]", child) for i, child in enumerate(node)]))
    return None


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether any object or array sits deeper than ``limit``: containers only, no paths (~30 us for 25 KB)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth >= limit:
            return True
        kind = type(node)
        children = node.values() if kind is dict else node
        depth += 1
        for child in children:
            kind = type(child)
            if kind is dict or kind is list:
                stack.append((child, depth))
    return False


def _deeper_than(value: Any, limit: int) -> str | None:
    """The path of the first node nested deeper than ``limit``, or None (iterative: the body may be ~1000 deep)."""
    stack: list[tuple[str, Any, int]] = [("", value, 0)]
    while stack:
        path, node, depth = stack.pop()
        if isinstance(node, dict):
            if depth >= limit:
                return path
            stack.extend((f"{path}.{k}" if path else str(k), v, depth + 1) for k, v in node.items())
        elif isinstance(node, list):
            if depth >= limit:
                return path
            stack.extend((f"{path}[{i}]", v, depth + 1) for i, v in enumerate(node))
    return None


def _check_fields_and_model(body: dict[str, Any], fields: Collection[str], accepted: str) -> None:
    """Every API's first checks: no field outside ``fields`` (named with the closest known one), and a ``model``
    that is a string when given. ``accepted`` says in the message what the proxy takes."""
    for key in body:
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise bad_request(
                f"{key}: unknown field{hint}; the proxy accepts {accepted} and 'policy'",
                param=key,
                code="unknown_parameter",
            )
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request('model: must be a string (the proxy picks the model; send e.g. "auto")', param="model")


def check_chat_request(body: dict[str, Any]) -> RequestFeatures:
    """Refuse what no provider should be sent; return the features the policy rules read."""
    _check_fields_and_model(body, CHAT_FIELDS, "the OpenAI chat-completions parameters")
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


RESPONSES_FIELDS = frozenset(
    {
        "background",
        "context_management",
        "conversation",
        "include",
        "input",
        "instructions",
        "max_output_tokens",
        "max_tool_calls",
        "metadata",
        "model",
        "parallel_tool_calls",
        "previous_response_id",
        "prompt",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "reasoning",
        "safety_identifier",
        "service_tier",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "text",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "truncation",
        "user",
        "policy",
    }
)
MESSAGES_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_k",
        "top_p",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        "container",
        "mcp_servers",
        "context_management",
        "policy",
    }
)
EMBEDDINGS_FIELDS = frozenset({"input", "model", "dimensions", "encoding_format", "user", "policy"})

_API_CHECKS = {
    "responses": (RESPONSES_FIELDS, "the OpenAI Responses API", features_from_responses),
    "messages": (MESSAGES_FIELDS, "the Anthropic Messages API", features_from_messages),
    "embeddings": (EMBEDDINGS_FIELDS, "the OpenAI embeddings API", features_from_embeddings),
}


def check_api_request(api: str, body: dict[str, Any]) -> RequestFeatures:
    """:func:`check_chat_request` for the other APIs: unknown fields refused, the features read."""
    if api == "chat_completions":
        return check_chat_request(body)
    fields, named, read = _API_CHECKS[api]
    _check_fields_and_model(body, fields, f"the parameters of {named}")
    try:
        return read(body)
    except RequestError as exc:
        text = str(exc)
        param = text.split(":", 1)[0] if ":" in text else None
        raise bad_request(text, param=param) from None
