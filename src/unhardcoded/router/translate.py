"""Translation between the APIs, without I/O: a Responses or Messages request to a provider that speaks only chat
completions, and its answer (whole or streamed) back.

Pure functions and one small state machine per stream: a request in, the provider's request out; the provider's
answer or chunks in, the caller's answer or events out. What is translated and what is refused is listed in
``docs/proxy.md``; a request holding something with no chat-completions form raises :class:`Untranslatable`,
naming the field path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["ChatToMessagesEvents", "ChatToResponsesEvents", "Untranslatable", "answer", "events", "request"]


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _array(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise Untranslatable(f"{where}: must be an array")
    return value


def _index(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _list(value: Any) -> list[Any]:
    """A list, or nothing: a provider (or a caller) sending another type here gets no 500 for it."""
    return value if isinstance(value, list) else []


class Untranslatable(ValueError):
    """A request field with no chat-completions form; the message names the field path."""


# --------------------------------------------------------------------------- requests

RESPONSES_PASSED = {
    "temperature": "temperature",
    "top_p": "top_p",
    "parallel_tool_calls": "parallel_tool_calls",
    "user": "user",
    "service_tier": "service_tier",
    "safety_identifier": "safety_identifier",
    "prompt_cache_key": "prompt_cache_key",
    "top_logprobs": "top_logprobs",
    "stream": "stream",
    "max_output_tokens": "max_tokens",
}
RESPONSES_IGNORED = frozenset({"store", "include", "truncation", "metadata", "stream_options", "policy", "model"})
"""Fields with nothing to do on a chat provider: ``store`` (a translated answer is never stored), ``include``
(no hidden items to include), ``truncation``, ``metadata`` (kept by a Responses provider only)."""


def request(api: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The chat-completions request for ``body``, a request of ``api`` (``responses`` or ``messages``)."""
    if api == "responses":
        return _responses_request(body)
    if api == "messages":
        return _messages_request(body)
    raise Untranslatable(f"the {api} API is not translated to chat completions")


def _responses_request(body: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    items = body.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
    elif isinstance(items, list):
        for i, item in enumerate(items):
            _responses_item(item, f"input[{i}]", messages)
    out["messages"] = messages
    for key, value in body.items():
        if key in ("input", "instructions") or key in RESPONSES_IGNORED:
            continue
        if key in RESPONSES_PASSED:
            if value is not None:
                out[RESPONSES_PASSED[key]] = value
        elif key == "tools":
            if value:
                out["tools"] = [_responses_tool(t, f"tools[{j}]") for j, t in enumerate(_array(value, "tools"))]
        elif key == "tool_choice":
            out["tool_choice"] = _responses_tool_choice(value)
        elif key == "text":
            _responses_text(value, out)
        elif key == "reasoning":
            if isinstance(value, Mapping) and value.get("effort") is not None:
                out["reasoning_effort"] = value["effort"]
        elif key == "previous_response_id" and value is None:
            continue
        elif value is not None:
            raise Untranslatable(f"{key}: has no chat-completions form (only a provider speaking the Responses API)")
    return out


def _responses_item(item: Any, where: str, messages: list[dict[str, Any]]) -> None:
    if not isinstance(item, Mapping):
        raise Untranslatable(f"{where}: must be an object")
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise Untranslatable(f"{where}.role: {role!r} has no chat-completions form")
        messages.append({"role": role, "content": _responses_content(item.get("content"), f"{where}.content", role)})
    elif kind == "function_call":
        call = {
            "id": item.get("call_id"),
            "type": "function",
            "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"},
        }
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant" and "tool_calls" in last:
            last["tool_calls"].append(call)
        elif last is not None and last["role"] == "assistant" and isinstance(last.get("content"), str):
            last["tool_calls"] = [call]
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        if not isinstance(output, str):
            output = json.dumps(output)
        messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": output})
    elif kind == "reasoning":
        return  # a chat provider keeps no reasoning items; sent back to one, they are left out
    else:
        raise Untranslatable(f"{where}.type: {kind!r} items have no chat-completions form")


def _responses_content(content: Any, where: str, role: str) -> Any:
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Untranslatable(f"{where}: must be a string or an array of parts")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text", "")})
        elif kind == "refusal":
            parts.append({"type": "text", "text": part.get("refusal", "")})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise Untranslatable(f"{where}[{j}].type: {kind!r} parts have no chat-completions form")
    if role != "user" and all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _responses_tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, Mapping) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        raise Untranslatable(
            f"{where}.type: {kind!r} tools are run by a Responses provider; only function tools are translated"
        )
    function: dict[str, Any] = {"name": tool.get("name")}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def _responses_tool_choice(choice: Any) -> Any:
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    if choice in ("auto", "none", "required") or choice is None:
        return choice
    raise Untranslatable(f"tool_choice: {choice!r} has no chat-completions form")


def _responses_text(text: Any, out: dict[str, Any]) -> None:
    if not isinstance(text, Mapping):
        return
    fmt = text.get("format")
    if isinstance(fmt, Mapping):
        if fmt.get("type") == "json_schema":
            schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
            out["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif fmt.get("type") == "json_object":
            out["response_format"] = {"type": "json_object"}
    if text.get("verbosity") is not None:
        out["verbosity"] = text["verbosity"]


MESSAGES_IGNORED = frozenset({"thinking", "top_k", "service_tier", "policy", "model", "container", "mcp_servers"})
"""Fields a chat provider has no use for: extended ``thinking`` and ``top_k`` are left out (see docs/proxy.md)."""


def _messages_request(body: Mapping[str, Any]) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if isinstance(system, str):
        messages.append({"role": "system", "content": system})
    elif isinstance(system, list):
        messages.append({"role": "system", "content": _text_of(system, "system")})
    for i, message in enumerate(_list(body.get("messages"))):
        _messages_message(message, f"messages[{i}]", messages)
    out: dict[str, Any] = {"messages": messages}
    for key, value in body.items():
        if key in ("system", "messages") or key in MESSAGES_IGNORED:
            continue
        if key in ("max_tokens", "temperature", "top_p", "stream"):
            out[key] = value
        elif key == "stop_sequences":
            if value:
                out["stop"] = value
        elif key == "metadata":
            if isinstance(value, Mapping) and isinstance(value.get("user_id"), str):
                out["user"] = value["user_id"]
        elif key == "tools":
            if value:
                out["tools"] = [_messages_tool(t, f"tools[{j}]") for j, t in enumerate(_array(value, "tools"))]
        elif key == "tool_choice":
            choice = _messages_tool_choice(value)
            if choice is not None:
                out["tool_choice"] = choice
            if isinstance(value, Mapping) and value.get("disable_parallel_tool_use") is True:
                out["parallel_tool_calls"] = False
        elif value is not None:
            raise Untranslatable(f"{key}: has no chat-completions form (only a provider speaking the Messages API)")
    return out


def _text_of(blocks: list[Any], where: str) -> str:
    texts = []
    for j, block in enumerate(blocks):
        if not isinstance(block, Mapping) or block.get("type") != "text":
            raise Untranslatable(f"{where}[{j}]: only text blocks are translated here")
        texts.append(str(block.get("text", "")))
    return "\n".join(texts)


def _messages_message(message: Any, where: str, messages: list[dict[str, Any]]) -> None:
    role = message.get("role")
    content = message.get("content")
    if isinstance(content, str):
        messages.append({"role": role, "content": content})
        return
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(_list(content)):
        kind = block.get("type") if isinstance(block, Mapping) else None
        at = f"{where}.content[{j}]"
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image" and role == "user":
            source = _map(block.get("source"))
            if source.get("type") == "base64":
                url = f"data:{source.get('media_type')};base64,{source.get('data')}"
            elif source.get("type") == "url":
                url = str(source.get("url"))
            else:
                raise Untranslatable(f"{at}.source.type: {source.get('type')!r} images are not translated")
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif kind == "tool_use" and role == "assistant":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": json.dumps(block.get("input") or {})},
                }
            )
        elif kind == "tool_result" and role == "user":
            result = block.get("content")
            text = result if isinstance(result, str) else _text_of(_list(result), f"{at}.content")
            if block.get("is_error") is True:
                text = f"Error: {text}"
            messages.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text})
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise Untranslatable(f"{at}.type: {kind!r} blocks have no chat-completions form")
    if role == "assistant":
        text = "".join(p["text"] for p in parts if p["type"] == "text")
        out: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            out["tool_calls"] = calls
        messages.append(out)
    elif parts:
        messages.append({"role": role, "content": parts})


def _messages_tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, Mapping) or tool.get("type") not in (None, "custom") or "input_schema" not in tool:
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        raise Untranslatable(f"{where}.type: {kind!r} tools are run by Anthropic; only client tools are translated")
    function: dict[str, Any] = {"name": tool.get("name"), "parameters": tool["input_schema"]}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _messages_tool_choice(choice: Any) -> Any:
    kind = choice.get("type") if isinstance(choice, Mapping) else None
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise Untranslatable(f"tool_choice: {choice!r} has no chat-completions form")


# --------------------------------------------------------------------------- answers


def answer(api: str, chat: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The ``api`` answer for a chat-completions answer."""
    choice = _first_choice(chat)
    message = _map(choice.get("message"))
    usage = _map(chat.get("usage"))
    text = message.get("content") if isinstance(message.get("content"), str) else None
    calls = [c for c in _list(message.get("tool_calls")) if isinstance(c, Mapping)]
    finish = choice.get("finish_reason")
    ident = str(chat.get("id") or f"sim{time.time_ns()}")
    if api == "responses":
        output: list[dict[str, Any]] = []
        if text is not None or not calls:
            output.append(_message_item(f"msg_{ident}", text or "", "completed"))
        for k, call in enumerate(calls):
            function = _map(call.get("function"))
            output.append(
                _call_item(
                    f"fc_{ident}_{k}", call.get("id"), function.get("name"), function.get("arguments"), "completed"
                )
            )
        return _response(ident, chat.get("created"), model, output, _responses_usage(usage), finish)
    content: list[dict[str, Any]] = []
    if text:
        content.append({"type": "text", "text": text})
    for call in calls:
        function = _map(call.get("function"))
        content.append(
            {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": _args(function)}
        )
    return {
        "id": f"msg_{ident}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _stop_reason(finish, bool(calls)),
        "stop_sequence": None,
        "usage": _messages_usage(usage),
    }


def _first_choice(chat: Mapping[str, Any]) -> Mapping[str, Any]:
    choices = chat.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        return choices[0]
    return {}


def _args(function: Mapping[str, Any]) -> Any:
    try:
        parsed = json.loads(function.get("arguments") or "{}")
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _stop_reason(finish: Any, calls: bool) -> str:
    if calls or finish == "tool_calls":
        return "tool_use"
    return {"length": "max_tokens", "content_filter": "refusal"}.get(str(finish), "end_turn")


def _tokens(usage: Mapping[str, Any], key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _responses_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    i, o = _tokens(usage, "prompt_tokens"), _tokens(usage, "completion_tokens")
    return {
        "input_tokens": i,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": o,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": i + o,
    }


def _messages_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    return {"input_tokens": _tokens(usage, "prompt_tokens"), "output_tokens": _tokens(usage, "completion_tokens")}


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _call_item(item_id: str, call_id: Any, name: Any, arguments: Any, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments or "",
        "status": status,
    }


def _response(
    ident: str, created: Any, model: str, output: list[dict[str, Any]], usage: dict[str, Any] | None, finish: Any
) -> dict[str, Any]:
    incomplete = finish == "length"
    return {
        "id": f"resp_{ident}",
        "object": "response",
        "created_at": created if isinstance(created, int) else int(time.time()),
        "status": "incomplete" if incomplete else ("completed" if usage is not None else "in_progress"),
        "model": model,
        "output": output,
        "usage": usage,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": None,
        "metadata": {},
        "parallel_tool_calls": True,
        "temperature": None,
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "text": {"format": {"type": "text"}},
    }


# --------------------------------------------------------------------------- streams


def events(api: str, model: str) -> ChatToResponsesEvents | ChatToMessagesEvents:
    """The state machine turning a chat-completions stream into ``api`` events."""
    return ChatToResponsesEvents(model) if api == "responses" else ChatToMessagesEvents(model)


class ChatToResponsesEvents:
    """Chat chunks in, Responses API events out (``response.created`` ... ``response.completed``)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.seq = 0
        self.ident = ""
        self.created: Any = None
        self.started = False
        self.text: str | None = None  # the message item's text so far; None until one is open
        self.text_index = -1
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> {output_index, item}
        self.outputs: list[dict[str, Any]] = []
        self.finish: Any = None
        self.usage: Mapping[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        return {"type": kind, "sequence_number": self.seq - 1, **fields}

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self.started:
            self.started = True
            self.ident = str(chunk.get("id") or f"sim{time.time_ns()}")
            self.created = chunk.get("created")
            shell = _response(self.ident, self.created, self.model, [], None, None)
            out.append(self._event("response.created", response=shell))
            out.append(self._event("response.in_progress", response=shell))
        if isinstance(chunk.get("usage"), Mapping):
            self.usage = chunk["usage"]
        choice = _first_choice(chunk)
        delta = _map(choice.get("delta"))
        piece = delta.get("content")
        if isinstance(piece, str) and piece:
            if self.text is None:
                self.text = ""
                self.text_index = len(self.outputs)
                item = _message_item(f"msg_{self.ident}", "", "in_progress")
                self.outputs.append(item)
                out.append(self._event("response.output_item.added", output_index=self.text_index, item=item))
                out.append(
                    self._event(
                        "response.content_part.added",
                        item_id=item["id"],
                        output_index=self.text_index,
                        content_index=0,
                        part={"type": "output_text", "text": "", "annotations": []},
                    )
                )
            self.text += piece
            out.append(
                self._event(
                    "response.output_text.delta",
                    item_id=f"msg_{self.ident}",
                    output_index=self.text_index,
                    content_index=0,
                    delta=piece,
                    logprobs=[],
                )
            )
        for call in _list(delta.get("tool_calls")):
            if not isinstance(call, Mapping):
                continue
            index = _index(call.get("index"))
            function = _map(call.get("function"))
            held = self.calls.get(index)
            if held is None:
                item = _call_item(f"fc_{self.ident}_{index}", call.get("id"), function.get("name"), "", "in_progress")
                held = self.calls[index] = {"output_index": len(self.outputs), "item": item}
                self.outputs.append(item)
                out.append(self._event("response.output_item.added", output_index=held["output_index"], item=item))
            arguments = function.get("arguments")
            if isinstance(arguments, str) and arguments:
                held["item"]["arguments"] += arguments
                out.append(
                    self._event(
                        "response.function_call_arguments.delta",
                        item_id=held["item"]["id"],
                        output_index=held["output_index"],
                        delta=arguments,
                    )
                )
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]
        return out

    def close(self) -> list[dict[str, Any]]:
        """The events after the provider's last chunk: each item done, then ``response.completed``."""
        out: list[dict[str, Any]] = []
        if not self.started:
            self.feed({})
        if self.text is not None:
            item = self.outputs[self.text_index]
            item_id, index = item["id"], self.text_index
            part = {"type": "output_text", "text": self.text, "annotations": []}
            out.append(
                self._event(
                    "response.output_text.done",
                    item_id=item_id,
                    output_index=index,
                    content_index=0,
                    text=self.text,
                    logprobs=[],
                )
            )
            out.append(
                self._event(
                    "response.content_part.done", item_id=item_id, output_index=index, content_index=0, part=part
                )
            )
            self.outputs[index] = _message_item(item_id, self.text, "completed")
            out.append(self._event("response.output_item.done", output_index=index, item=self.outputs[index]))
        for held in self.calls.values():
            item = held["item"]
            item["status"] = "completed"
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=held["output_index"],
                    arguments=item["arguments"],
                )
            )
            out.append(self._event("response.output_item.done", output_index=held["output_index"], item=item))
        final = _response(
            self.ident, self.created, self.model, self.outputs, _responses_usage(self.usage or {}), self.finish
        )
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        out.append(self._event(kind, response=final))
        return out


class ChatToMessagesEvents:
    """Chat chunks in, Anthropic Messages events out (``message_start`` ... ``message_stop``)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.started = False
        self.block = -1  # the index of the open content block
        self.text_open = False
        self.calls: dict[int, int] = {}  # chat tool-call index -> content block index
        self.finish: Any = None
        self.usage: Mapping[str, Any] | None = None
        self.any_call = False

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self.started:
            self.started = True
            usage = _map(chunk.get("usage"))
            message: dict[str, Any] = {
                "id": f"msg_{chunk.get('id') or time.time_ns()}",
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": _tokens(usage, "prompt_tokens"), "output_tokens": 0},
            }
            out.append({"type": "message_start", "message": message})
        if isinstance(chunk.get("usage"), Mapping):
            self.usage = chunk["usage"]
        choice = _first_choice(chunk)
        delta = _map(choice.get("delta"))
        piece = delta.get("content")
        if isinstance(piece, str) and piece:
            if not self.text_open:
                out.extend(self._stop_block())
                self.block += 1
                self.text_open = True
                out.append(
                    {"type": "content_block_start", "index": self.block, "content_block": {"type": "text", "text": ""}}
                )
            out.append(
                {"type": "content_block_delta", "index": self.block, "delta": {"type": "text_delta", "text": piece}}
            )
        for call in _list(delta.get("tool_calls")):
            if not isinstance(call, Mapping):
                continue
            index = _index(call.get("index"))
            function = _map(call.get("function"))
            if index not in self.calls:
                out.extend(self._stop_block())
                self.text_open = False
                self.block += 1
                self.calls[index] = self.block
                self.any_call = True
                block: dict[str, Any] = {
                    "type": "tool_use",
                    "id": call.get("id"),
                    "name": function.get("name"),
                    "input": {},
                }
                out.append({"type": "content_block_start", "index": self.block, "content_block": block})
            arguments = function.get("arguments")
            if isinstance(arguments, str) and arguments:
                out.append(
                    {
                        "type": "content_block_delta",
                        "index": self.calls[index],
                        "delta": {"type": "input_json_delta", "partial_json": arguments},
                    }
                )
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]
        return out

    def _stop_block(self) -> list[dict[str, Any]]:
        return [{"type": "content_block_stop", "index": self.block}] if self.block >= 0 else []

    def close(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self.started:
            out.extend(self.feed({}))
        out.extend(self._stop_block())
        usage = self.usage or {}
        out.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": _stop_reason(self.finish, self.any_call), "stop_sequence": None},
                "usage": {"output_tokens": _tokens(usage, "completion_tokens")},
            }
        )
        out.append({"type": "message_stop"})
        return out
