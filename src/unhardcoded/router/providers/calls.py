"""A provider call without I/O: the request as sent (body, headers, bytes for the lean client) and the answer read.

Both HTTP paths, the lean async client and httpx, build their request here and
hand their response to :func:`chat_result`, so the two behave the same.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from ..._version import package_version
from .. import translate
from . import http11
from .classify import int_or_none, json_or_none, ratelimit_headers, scrub, scrub_json, status_failure
from .errors import ErrorKind, ProviderCallError

if TYPE_CHECKING:
    from collections.abc import Callable

    from .config import ProvidersConfig

__all__ = ["ChatResult", "HttpReply", "PreparedCall", "chat_result", "prepare_call"]

logger = logging.getLogger("unhardcoded.router.providers")

USER_AGENT = {"user-agent": f"unhardcoded/{package_version()}"}
_USER_AGENT_LINE = f"user-agent: {USER_AGENT['user-agent']}\r\n".encode("ascii")
ANTHROPIC_VERSION = "2023-06-01"
"""Sent to a Messages provider unless its ``headers`` in the providers file set another ``anthropic-version``."""
_FRAMING_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class HttpReply(Protocol):
    """The parts of a whole, read response a call reads (``httpx.Response`` and the lean client's reply have them)."""

    @property
    def status_code(self) -> int: ...
    @property
    def is_success(self) -> bool: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def text(self) -> str: ...


@dataclass(frozen=True)
class ChatResult:
    """A successful non-streaming chat completion."""

    body: dict[str, Any]
    status_code: int
    response_model: str | None
    input_tokens: int | None
    output_tokens: int | None
    duration_ms: float
    ratelimit: dict[str, str] | None = None
    """The rate-limit headers of the answer (``x-ratelimit-*``, ``anthropic-ratelimit-*``), when it had any."""


@dataclass(frozen=True)
class PreparedCall:
    provider: str
    model: str
    url: str
    body: dict[str, Any]
    headers: dict[str, str]
    timeout: httpx.Timeout
    timeout_s: float
    """The call's timeout: for the connect and each wait for data (``timeout.read``, as a plain number)."""
    secret: str | None
    target: http11.Target | None = None
    key: str | None = None
    """The name of the provider key the call is sent with (a provider with ``keys:``); never its value."""
    """Where the lean client sends the call; None when only httpx can (framing headers set by hand, say)."""
    api: str = "chat_completions"
    """The API the caller asked in."""
    sent_api: str = "chat_completions"
    """The API the provider is asked in: ``api``, or chat completions when the call is translated."""

    @property
    def translated(self) -> bool:
        return self.api != self.sent_api

    def encoded(self) -> tuple[bytes, bytes]:
        """The header lines and the JSON body as the lean client sends them (the body as httpx encodes ``json=``)."""
        names = {name.lower() for name in self.headers}
        head = b"".join(
            (
                b"" if "user-agent" in names else _USER_AGENT_LINE,
                b"" if "content-type" in names else b"content-type: application/json\r\n",
                http11.encode_headers(self.headers),
            )
        )
        body = json.dumps(self.body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
        return head, body

    def scrub(self, text: str) -> str:
        return scrub(text, self.secret)

    def failure(
        self,
        message: str,
        *,
        kind: ErrorKind,
        error_type: str,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        ratelimit: dict[str, str] | None = None,
    ) -> ProviderCallError:
        return ProviderCallError(
            self.scrub(f"provider {self.provider!r}, model {self.model!r}: {message}"),
            kind=kind,
            error_type=error_type,
            provider=self.provider,
            model=self.model,
            status_code=status_code,
            retry_after_s=retry_after_s,
            ratelimit=ratelimit,
        )


def prepare_call(
    providers: ProvidersConfig,
    provider: str,
    model: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str] | None,
    timeout_s: float | None,
    *,
    stream: bool,
    target_of: Callable[[str], http11.Target | None],
    api: str = "chat_completions",
    key: str | None = None,
) -> PreparedCall:
    """The call as it will be sent; ``target_of`` says where the lean client can send to a URL (cached by the caller).

    A request of ``api`` goes out as it is to a provider that speaks ``api``, translated to chat completions
    (:mod:`unhardcoded.router.translate`) to one that speaks only that, and is refused before anything is sent
    (``error_type`` ``unsupported_api`` or ``untranslatable``) otherwise.
    """
    config = providers.get(provider)
    if config is None:
        known = ", ".join(providers.names) or "none configured"
        raise ProviderCallError(
            f"provider {provider!r}, model {model!r}: unknown provider (known: {known})",
            kind="error",
            error_type="unknown_provider",
            provider=provider,
            model=model,
        )
    secret: str | None = None
    key_env, key_name = config.api_key_env, None
    if config.keys:
        chosen = next((k for k in config.keys if k.name == key), config.keys[0])
        key_env, key_name = chosen.env, chosen.name
    if key_env is not None:
        secret = os.environ.get(key_env) or None
        if secret is None:
            where = f"key {key_name!r}" if key_name is not None else "api_key_env"
            raise ProviderCallError(
                f"provider {provider!r}, model {model!r}: environment variable "
                f"{key_env} is not set ({where} of provider {provider!r})",
                kind="error",
                error_type="missing_api_key",
                provider=provider,
                model=model,
            )

    sent_api = api
    if api != "chat_completions":
        if not config.serves(api):
            raise ProviderCallError(
                f"provider {provider!r}, model {model!r}: does not speak the {api} API (apis: {', '.join(config.apis)})",
                kind="error",
                error_type="unsupported_api",
                provider=provider,
                model=model,
            )
        sent_api = config.sent_api(api)
        if sent_api != api:
            try:
                body = translate.request(api, body)
            except Exception as exc:  # noqa: BLE001 - Untranslatable names the field; anything else is a malformed body
                why = str(exc) if isinstance(exc, translate.Untranslatable) else "the request is malformed"
                raise ProviderCallError(
                    f"provider {provider!r}, model {model!r}: speaks chat completions only, and the request cannot "
                    f"be translated: {why}",
                    kind="error",
                    error_type="untranslatable",
                    provider=provider,
                    model=model,
                ) from None

    payload = {k: v for k, v in body.items() if k != "policy"}
    payload["model"] = model
    if sent_api == "chat_completions" and stream:
        payload["stream"] = True
        options = payload.get("stream_options")
        payload["stream_options"] = {**(options if isinstance(options, Mapping) else {}), "include_usage": True}
    elif stream:
        payload["stream"] = True
    else:
        payload.pop("stream", None)
        payload.pop("stream_options", None)

    sent_headers = {"accept": "text/event-stream" if stream else "application/json"}
    sent_headers.update(config.headers)
    if headers:
        sent_headers.update(headers)
    if sent_api == "messages" and not any(h.lower() == "anthropic-version" for h in sent_headers):
        sent_headers["anthropic-version"] = ANTHROPIC_VERSION
    if secret is not None:
        for name in [h for h in sent_headers if h.lower() in ("authorization", "x-api-key")]:
            del sent_headers[name]
        if config.auth == "x-api-key":
            sent_headers["x-api-key"] = secret
        else:
            sent_headers["authorization"] = f"Bearer {secret}"

    seconds = timeout_s if timeout_s is not None else config.timeout_s
    url = config.chat_completions_url if sent_api == "chat_completions" else config.url_for(sent_api)
    target = target_of(url)
    if target is not None and any(name.lower() in _FRAMING_HEADERS for name in sent_headers):
        target = None  # framing set by hand: httpx decides what that means
    return PreparedCall(
        provider=provider,
        model=model,
        url=url,
        body=payload,
        headers=sent_headers,
        timeout=httpx.Timeout(seconds),
        timeout_s=seconds,
        secret=secret,
        target=target,
        api=api,
        sent_api=sent_api,
        key=key_name,
    )


def chat_result(call: PreparedCall, response: HttpReply, started: float) -> ChatResult:
    duration_ms = (time.perf_counter() - started) * 1000
    if not response.is_success:
        logger.debug("chat %s/%s -> HTTP %s in %.1f ms", call.provider, call.model, response.status_code, duration_ms)
        raise status_failure(call, response, response.text)
    # No exception context may hold the body: providers sometimes echo the key in it.
    body = json_or_none(response.text)
    if body is None and response.text.strip() != "null":
        raise call.failure(
            f"HTTP {response.status_code} with a body that is not JSON",
            kind="error",
            error_type="invalid_response",
            status_code=response.status_code,
        )
    sent = call.sent_api
    shape = ANSWER_SHAPES[sent]
    if not isinstance(body, dict) or not isinstance(body.get(shape), list):
        raise call.failure(
            f"HTTP {response.status_code} without a {shape!r} list",
            kind="error",
            error_type="invalid_response",
            status_code=response.status_code,
        )
    if call.secret:  # on the decoded strings: the raw text may spell the key with escapes
        body = scrub_json(body, call.secret)
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
    model = body.get("model")
    input_key, output_key = USAGE_KEYS[sent]
    logger.debug("%s %s/%s -> HTTP %s in %.1f ms", sent, call.provider, call.model, response.status_code, duration_ms)
    return ChatResult(
        body=translate.answer(call.api, body, call.model) if call.translated else body,
        status_code=response.status_code,
        response_model=model if isinstance(model, str) else None,
        input_tokens=int_or_none(usage, input_key),
        output_tokens=int_or_none(usage, output_key) if output_key else 0,
        duration_ms=duration_ms,
        ratelimit=ratelimit_headers(response.headers),
    )


ANSWER_SHAPES = {"chat_completions": "choices", "responses": "output", "messages": "content", "embeddings": "data"}
"""The list every answer of an API holds; an answer without it is not one."""
USAGE_KEYS: dict[str, tuple[str, str | None]] = {
    "chat_completions": ("prompt_tokens", "completion_tokens"),
    "responses": ("input_tokens", "output_tokens"),
    "messages": ("input_tokens", "output_tokens"),
    "embeddings": ("prompt_tokens", None),
}
"""Where each API's usage gives the input and output tokens (an embedding has no output)."""
