"""Calling OpenAI-compatible chat-completions providers over the user's own keys.

A provider call either returns a :class:`ChatResult` (or a stream of chunks) or
raises a :class:`ProviderCallError` whose ``kind`` the fallback cascade acts on.
API keys are read from the environment at call time and never leave this
module except in the ``Authorization`` header of the request itself.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .._documents import read_document
from ..errors import ConfigError, UnhardcodedError
from . import http11

__all__ = [
    "PROVIDERS_ENV",
    "ChatResult",
    "ChatStream",
    "AsyncChatStream",
    "ErrorKind",
    "ProviderCallError",
    "ProviderClient",
    "ProviderConfig",
    "ProvidersConfig",
    "ProvidersFileError",
    "default_providers",
    "load_providers",
    "providers_from_env",
]

logger = logging.getLogger(__name__)

PROVIDERS_ENV = "UNHARDCODED_PROVIDERS"
"""Environment variable naming the default providers file."""

ErrorKind = Literal["error", "timeout", "rate_limit"]

_REDACTED = "[REDACTED]"
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',;}\]]+")
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_DETAIL_LIMIT = 300
_FRAMING_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("unhardcoded")
    except Exception:  # noqa: BLE001 - a source tree that was never installed
        return "0"


_USER_AGENT = {"user-agent": f"unhardcoded/{_package_version()}"}
_USER_AGENT_LINE = f"user-agent: {_USER_AGENT['user-agent']}\r\n".encode("ascii")


# --------------------------------------------------------------------------- config


class ProviderConfig(BaseModel):
    """One OpenAI-compatible endpoint; catalog models name it in their ``provider`` field."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str = Field(min_length=1)
    base_url: str
    api_key_env: str | None = Field(default=None, pattern=_ENV_NAME)
    """Name of the environment variable holding the key; ``None`` sends no key."""
    timeout_s: float = Field(default=30.0, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_key(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "api_key" in data:
            # Said before pydantic can quote the value back in an error.
            raise ValueError(
                "api_key: keys are not written in the providers file; put the key in an "
                "environment variable and name that variable in api_key_env"
            )
        return data

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except Exception:
            raise ValueError("not a valid URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http:// or https:// URL")
        return value

    @property
    def chat_completions_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


class ProvidersConfig(BaseModel):
    """The providers file: every endpoint the router may call, unique by name."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    providers: list[ProviderConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> ProvidersConfig:
        seen: dict[str, int] = {}
        for index, provider in enumerate(self.providers):
            if provider.name in seen:
                raise ValueError(
                    f"providers[{index}].name: duplicate provider name {provider.name!r} "
                    f"(first defined at providers[{seen[provider.name]}])"
                )
            seen[provider.name] = index
        return self

    def get(self, name: str) -> ProviderConfig | None:
        for provider in self.providers:
            if provider.name == name:
                return provider
        return None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.providers]


class ProvidersFileError(ConfigError):
    """A providers file cannot be read or is invalid; the message names file, field path and line."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


def default_providers() -> ProvidersConfig:
    """No providers: ranking works, calls fail with ``unknown_provider``."""
    return ProvidersConfig(providers=[])


def load_providers(path: str | os.PathLike[str]) -> ProvidersConfig:
    """Read a providers file: YAML or JSON, read like policies and catalogs (a `.json` file must be strict JSON)."""
    source = str(Path(path))
    data = read_document(path, ProvidersFileError)

    if not isinstance(data, Mapping):
        found = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ProvidersFileError(f"{source}: expected a mapping with a 'providers' list, found {found}", path=source)
    if "providers" not in data:
        raise ProvidersFileError(f"{source}: providers: field required", path=source)
    try:
        return ProvidersConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe_validation_error(err) for err in exc.errors())
        raise ProvidersFileError(f"{source}: {problems}", path=source) from None


def providers_from_env(environ: Mapping[str, str] | None = None) -> ProvidersConfig:
    """The providers file named by ``$UNHARDCODED_PROVIDERS``, or no providers when unset."""
    env = os.environ if environ is None else environ
    path = env.get(PROVIDERS_ENV, "").strip()
    if not path:
        return default_providers()
    return load_providers(path)


def _describe_validation_error(err: Mapping[str, Any]) -> str:
    # Only location and message: pydantic's input_value could be a pasted secret.
    if err.get("type") == "value_error":
        ctx_error = err.get("ctx", {}).get("error")
        message = str(ctx_error) if ctx_error is not None else str(err.get("msg", ""))
    elif err.get("type") == "missing":
        message = "field required"
    elif err.get("type") == "extra_forbidden":
        message = "unknown field"
    else:
        message = str(err.get("msg", "invalid"))
        message = message[:1].lower() + message[1:]
    path = _field_path(err.get("loc", ()))
    # Our own validators already put the path in front of the message.
    if not path or message.startswith(("providers[", "api_key:")):
        if message.startswith("api_key:") and path:
            return f"{path}.{message}"
        return message
    return f"{path}: {message}"


def _field_path(loc: Any) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


# --------------------------------------------------------------------------- results and errors


class ProviderCallError(UnhardcodedError):
    """A provider call failed; ``kind`` says which fallback trigger it is.

    ``error_type`` is a short, low-cardinality class for the OpenTelemetry
    ``error.type`` attribute: the HTTP status as a string (``"500"``,
    ``"429"``) or one of ``timeout``, ``connect_error``, ``transport_error``,
    ``invalid_response``, ``missing_api_key``, ``unknown_provider``,
    ``stream_interrupted``, ``stream_error``.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind,
        error_type: str,
        provider: str,
        model: str,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind: ErrorKind = kind
        self.error_type = error_type
        self.provider = provider
        self.model = model
        self.status_code = status_code
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"ProviderCallError(kind={self.kind!r}, error_type={self.error_type!r}, "
            f"provider={self.provider!r}, model={self.model!r}, status_code={self.status_code!r}, "
            f"retry_after_s={self.retry_after_s!r}, message={self.message!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_call_error, (self.message, self._fields()))

    def _fields(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "error_type": self.error_type,
            "provider": self.provider,
            "model": self.model,
            "status_code": self.status_code,
            "retry_after_s": self.retry_after_s,
        }


def _rebuild_call_error(message: str, fields: dict[str, Any]) -> ProviderCallError:
    return ProviderCallError(message, **fields)


@dataclass(frozen=True)
class ChatResult:
    """A successful non-streaming chat completion."""

    body: dict[str, Any]
    status_code: int
    response_model: str | None
    input_tokens: int | None
    output_tokens: int | None
    duration_ms: float


# --------------------------------------------------------------------------- client


class AsyncReply(Protocol):
    """The parts of a whole, read response the client uses (``httpx.Response`` and the lean client's reply have them)."""

    @property
    def status_code(self) -> int: ...
    @property
    def is_success(self) -> bool: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def text(self) -> str: ...


class AsyncSender(Protocol):
    """Another HTTP client for the async non-streamed calls, so ``bench/proxy.py --client`` can measure it in place of
    the lean one; it fails with the ``httpx`` exception each failure corresponds to, as the lean client does."""

    async def send(self, url: str, headers: Mapping[str, str], content: bytes, timeout: float) -> AsyncReply: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class _PreparedCall:
    provider: str
    model: str
    url: str
    body: dict[str, Any]
    headers: dict[str, str]
    timeout: httpx.Timeout
    secret: str | None
    target: http11.Target | None = None
    """Where the lean client sends the call; None when only httpx can (framing headers set by hand, say)."""

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
        return _scrub(text, self.secret)

    def failure(
        self,
        message: str,
        *,
        kind: ErrorKind,
        error_type: str,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> ProviderCallError:
        return ProviderCallError(
            self.scrub(f"provider {self.provider!r}, model {self.model!r}: {message}"),
            kind=kind,
            error_type=error_type,
            provider=self.provider,
            model=self.model,
            status_code=status_code,
            retry_after_s=retry_after_s,
        )


class ProviderClient:
    """Sends chat-completions requests to configured providers, pooling connections.

    Sync calls go through one :class:`httpx.Client`. Async calls go through the
    lean HTTP/1.1 client of :mod:`unhardcoded.router.http11` (per event loop),
    or through an :class:`httpx.AsyncClient` when a ``transport`` is given, an
    HTTP proxy is set in the environment, or httptools is missing; both behave
    the same to the caller. ``transport`` is handed to whichever httpx client it
    fits (``httpx.MockTransport`` fits both). Async connections belong to one
    event loop: call :meth:`aclose` before that loop ends (``async with
    ProviderClient(...)``); a call from a new loop opens a new pool.
    """

    def __init__(
        self,
        providers: ProvidersConfig,
        *,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
        async_sender: AsyncSender | None = None,
    ) -> None:
        self.providers = providers
        self._transport = transport
        self._sender = async_sender
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._async_client: httpx.AsyncClient | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._pool: http11.ConnectionPool | None = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None
        self._targets: dict[str, http11.Target | None] = {}
        self._closed = False

    # ---- lifecycle

    def close(self) -> None:
        """Close the sync connection pool (the async one is closed by :meth:`aclose`)."""
        with self._lock:
            client, self._client = self._client, None
            self._closed = True
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close every connection pool."""
        with self._lock:
            async_client, self._async_client = self._async_client, None
            loop, self._async_loop = self._async_loop, None
            pool, self._pool = self._pool, None
            pool_loop, self._pool_loop = self._pool_loop, None
        # A pool opened on another (possibly closed) loop cannot be closed from this one.
        running = asyncio.get_running_loop()
        if async_client is not None and loop is running:
            await async_client.aclose()
        if pool is not None and pool_loop is running:
            await pool.aclose()
        if self._sender is not None:
            await self._sender.aclose()
        self.close()

    def __enter__(self) -> ProviderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> ProviderClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _sync_client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                transport = self._transport if isinstance(self._transport, httpx.BaseTransport) else None
                self._client = httpx.Client(transport=transport, follow_redirects=False, headers=_USER_AGENT)
            return self._client

    def _async_http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            # An AsyncClient's pooled connections belong to the loop that opened
            # them; a call from another loop (asyncio.run twice) gets a fresh pool.
            if self._async_client is None or self._async_loop is not loop:
                transport = self._transport if isinstance(self._transport, httpx.AsyncBaseTransport) else None
                self._async_client = httpx.AsyncClient(transport=transport, follow_redirects=False, headers=_USER_AGENT)
                self._async_loop = loop
            return self._async_client

    def _lean_pool(self) -> http11.ConnectionPool | None:
        """The lean client's pool for the running loop, or None when calls must go through httpx."""
        loop = asyncio.get_running_loop()
        if self._pool_loop is loop:
            return self._pool
        with self._lock:
            if self._pool_loop is not loop:
                # Decided once per loop, as httpx reads the proxy settings once per client.
                lean = self._transport is None and self._sender is None and http11.lean_client_available()
                self._pool = http11.ConnectionPool() if lean else None
                self._pool_loop = loop
            return self._pool

    def _target(self, config: ProviderConfig) -> http11.Target | None:
        url = config.chat_completions_url
        if url not in self._targets:
            self._targets[url] = http11.target_of(url)
        return self._targets[url]

    # ---- request building

    def _prepare(
        self,
        provider: str,
        model: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str] | None,
        timeout_s: float | None,
        *,
        stream: bool,
    ) -> _PreparedCall:
        config = self.providers.get(provider)
        if config is None:
            known = ", ".join(self.providers.names) or "none configured"
            raise ProviderCallError(
                f"provider {provider!r}, model {model!r}: unknown provider (known: {known})",
                kind="error",
                error_type="unknown_provider",
                provider=provider,
                model=model,
            )
        secret: str | None = None
        if config.api_key_env is not None:
            secret = os.environ.get(config.api_key_env) or None
            if secret is None:
                raise ProviderCallError(
                    f"provider {provider!r}, model {model!r}: environment variable "
                    f"{config.api_key_env} is not set (api_key_env of provider {provider!r})",
                    kind="error",
                    error_type="missing_api_key",
                    provider=provider,
                    model=model,
                )

        payload = {k: v for k, v in body.items() if k != "policy"}
        payload["model"] = model
        if stream:
            payload["stream"] = True
            options = payload.get("stream_options")
            payload["stream_options"] = {**(options if isinstance(options, Mapping) else {}), "include_usage": True}
        else:
            payload.pop("stream", None)
            payload.pop("stream_options", None)

        sent_headers = {"accept": "text/event-stream" if stream else "application/json"}
        sent_headers.update(config.headers)
        if headers:
            sent_headers.update(headers)
        if secret is not None:
            for name in [h for h in sent_headers if h.lower() == "authorization"]:
                del sent_headers[name]
            sent_headers["authorization"] = f"Bearer {secret}"

        timeout = httpx.Timeout(timeout_s if timeout_s is not None else config.timeout_s)
        target = self._target(config)
        if target is not None and any(name.lower() in _FRAMING_HEADERS for name in sent_headers):
            target = None  # framing set by hand: httpx decides what that means
        return _PreparedCall(
            provider=provider,
            model=model,
            url=config.chat_completions_url,
            body=payload,
            headers=sent_headers,
            timeout=timeout,
            secret=secret,
            target=target,
        )

    # ---- non-streaming

    def chat(
        self,
        provider: str,
        model: str,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> ChatResult:
        """One chat completion; raises :class:`ProviderCallError` on any failure."""
        call = self._prepare(provider, model, body, headers, timeout_s, stream=False)
        client = self._sync_client()
        started = time.perf_counter()
        failure: ProviderCallError | None = None
        try:
            response = client.post(call.url, json=call.body, headers=call.headers, timeout=call.timeout)
        except httpx.HTTPError as exc:
            failure = _transport_failure(call, exc)
        if failure is not None:
            # Raised outside the handler so no httpx exception, and the request
            # with its Authorization header, hangs off it as __context__.
            raise failure
        return _chat_result(call, response, started)

    async def achat(
        self,
        provider: str,
        model: str,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> ChatResult:
        """Async :meth:`chat`."""
        call = self._prepare(provider, model, body, headers, timeout_s, stream=False)
        pool = self._lean_pool() if call.target is not None else None
        started = time.perf_counter()
        failure: ProviderCallError | None = None
        response: httpx.Response | http11.Reply | AsyncReply
        try:
            if pool is not None:
                head, content = call.encoded()
                response = await pool.request(call.target, head, content, call.timeout.read, read=True)  # type: ignore[arg-type]
            elif self._sender is not None:
                content = call.encoded()[1]
                sent = {**_USER_AGENT, "content-type": "application/json", **call.headers}
                response = await self._sender.send(call.url, sent, content, call.timeout.read)
            else:
                response = await self._async_http().post(
                    call.url, json=call.body, headers=call.headers, timeout=call.timeout
                )
        except httpx.HTTPError as exc:
            failure = _transport_failure(call, exc)
        if failure is not None:
            raise failure
        return _chat_result(call, response, started)

    # ---- streaming

    def stream(
        self,
        provider: str,
        model: str,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> ChatStream:
        """A streamed chat completion: iterate the returned :class:`ChatStream` for chunks.

        The request is sent on the first ``next()``; every failure up to the
        first chunk raises from there, with ``first_chunk_received`` still
        ``False`` so a caller knows it may fall back.
        """
        call = self._prepare(provider, model, body, headers, timeout_s, stream=True)
        return ChatStream(self._sync_client(), call)

    def astream(
        self,
        provider: str,
        model: str,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> AsyncChatStream:
        """Async :meth:`stream`: ``async for chunk in client.astream(...)``."""
        call = self._prepare(provider, model, body, headers, timeout_s, stream=True)
        return AsyncChatStream(self, call)


class _StreamState:
    """What a stream learned so far; shared by the sync and async iterators."""

    def __init__(self, call: _PreparedCall) -> None:
        self._call = call
        self.first_chunk_received = False
        self.done = False
        self.status_code: int | None = None
        self.usage: dict[str, Any] | None = None
        self.response_model: str | None = None
        self.duration_ms: float | None = None
        self.time_to_first_chunk_ms: float | None = None
        self._started = time.perf_counter()
        self._data: list[str] = []

    @property
    def input_tokens(self) -> int | None:
        return _int_or_none(self.usage, "prompt_tokens")

    @property
    def output_tokens(self) -> int | None:
        return _int_or_none(self.usage, "completion_tokens")

    def start(self) -> None:
        self._started = time.perf_counter()

    def check_status(self, response: httpx.Response | http11.Reply, error_text: str) -> None:
        self.status_code = response.status_code
        if not response.is_success:
            raise _status_failure(self._call, response, error_text)

    def feed(self, line: str) -> dict[str, Any] | None:
        """One SSE line in; a parsed chunk out when an event completes."""
        if line == "":
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return self._event(data)
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def finish(self) -> dict[str, Any] | None:
        """The stream's bytes ended: flush a last event missing its blank line."""
        chunk = None
        if self._data and not self.done:
            data, self._data = "\n".join(self._data), []
            chunk = self._event(data)
        self.duration_ms = (time.perf_counter() - self._started) * 1000
        if not self.done:
            raise self._call.failure(
                "stream ended before data: [DONE]"
                + ("" if self.first_chunk_received else " and before the first chunk"),
                kind="error",
                error_type="stream_interrupted",
                status_code=self.status_code,
            )
        return chunk

    def interrupted(self, exc: httpx.HTTPError) -> ProviderCallError:
        self.duration_ms = (time.perf_counter() - self._started) * 1000
        if isinstance(exc, httpx.TimeoutException) and not self.first_chunk_received:
            return _transport_failure(self._call, exc)
        if isinstance(exc, httpx.TimeoutException):
            return self._call.failure(
                f"stream stalled: {exc.__class__.__name__}",
                kind="timeout",
                error_type="timeout",
                status_code=self.status_code,
            )
        if self.status_code is None:
            return _transport_failure(self._call, exc)
        return self._call.failure(
            f"connection dropped mid-stream: {exc.__class__.__name__}"
            + ("" if self.first_chunk_received else " before the first chunk"),
            kind="error",
            error_type="stream_interrupted",
            status_code=self.status_code,
        )

    def _event(self, data: str) -> dict[str, Any] | None:
        if self.done:
            return None
        if data.strip() == "[DONE]":
            self.done = True
            self.duration_ms = (time.perf_counter() - self._started) * 1000
            return None
        chunk = _json_or_none(data)
        if chunk is None and data.strip() != "null":
            raise self._call.failure(
                "stream chunk is not JSON",
                kind="error",
                error_type="invalid_response",
                status_code=self.status_code,
            )
        if not isinstance(chunk, dict):
            raise self._call.failure(
                "stream chunk is not a JSON object",
                kind="error",
                error_type="invalid_response",
                status_code=self.status_code,
            )
        if isinstance(chunk.get("error"), Mapping):
            raise self._call.failure(
                f"error event in stream: {_error_detail(chunk, data, self._call.secret)}",
                kind="error",
                error_type="stream_error",
                status_code=self.status_code,
            )
        if self._call.secret and self._call.secret in data:
            chunk = _scrub_json(chunk, self._call.secret)
        if self.response_model is None and isinstance(chunk.get("model"), str):
            self.response_model = chunk["model"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        if not self.first_chunk_received:
            self.first_chunk_received = True
            self.time_to_first_chunk_ms = (time.perf_counter() - self._started) * 1000
        return chunk


class _StreamView:
    """What a stream has read so far, the same for the sync and the async stream."""

    _call: _PreparedCall
    _state: _StreamState

    provider = property(lambda self: self._call.provider)
    model = property(lambda self: self._call.model)
    first_chunk_received = property(lambda self: self._state.first_chunk_received)
    status_code = property(lambda self: self._state.status_code)
    usage = property(lambda self: self._state.usage)
    input_tokens = property(lambda self: self._state.input_tokens)
    output_tokens = property(lambda self: self._state.output_tokens)
    response_model = property(lambda self: self._state.response_model)
    duration_ms = property(lambda self: self._state.duration_ms)
    time_to_first_chunk_ms = property(lambda self: self._state.time_to_first_chunk_ms)


class ChatStream(_StreamView):
    """Iterator of parsed SSE chunks (dicts) of one streamed chat completion.

    After exhaustion ``usage``, ``input_tokens``, ``output_tokens`` and
    ``response_model`` hold what the final chunks reported. Use it as a context
    manager (or call :meth:`close`) when you may stop iterating early.
    """

    def __init__(self, client: httpx.Client, call: _PreparedCall) -> None:
        self._client = client
        self._call = call
        self._state = _StreamState(call)
        self._iterator: Iterator[dict[str, Any]] | None = None

    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._iterator is None:
            self._iterator = self._chunks()
        return next(self._iterator)

    def _chunks(self) -> Iterator[dict[str, Any]]:
        call, state = self._call, self._state
        state.start()
        request = self._client.build_request(
            "POST", call.url, json=call.body, headers=call.headers, timeout=call.timeout
        )
        failure: ProviderCallError | None = None
        try:
            response = self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            failure = _transport_failure(call, exc)
        if failure is not None:
            raise failure  # outside the handler: see ProviderClient.chat
        try:
            if not response.is_success:
                text = ""
                try:
                    response.read()
                    text = response.text
                except httpx.HTTPError:
                    pass
                state.check_status(response, text)
            state.status_code = response.status_code
            lines = response.iter_lines()
            while not state.done:
                try:
                    line = next(lines)
                except StopIteration:
                    break
                except httpx.HTTPError as exc:
                    failure = state.interrupted(exc)
                if failure is not None:
                    raise failure
                chunk = state.feed(line)
                if chunk is not None:
                    yield chunk
            last = state.finish()
            if last is not None:
                yield last
        finally:
            response.close()
        logger.debug(
            "stream %s/%s -> %s in %.1f ms", call.provider, call.model, state.status_code, state.duration_ms or 0.0
        )

    def close(self) -> None:
        if self._iterator is not None:
            self._iterator.close()  # type: ignore[attr-defined]

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"ChatStream(provider={self.provider!r}, model={self.model!r}, "
            f"first_chunk_received={self.first_chunk_received!r}, usage={self.usage!r})"
        )


class AsyncChatStream(_StreamView):
    """Async iterator counterpart of :class:`ChatStream`."""

    def __init__(self, owner: ProviderClient, call: _PreparedCall) -> None:
        self._owner = owner
        self._call = call
        self._state = _StreamState(call)
        self._iterator: AsyncIterator[dict[str, Any]] | None = None

    def __aiter__(self) -> AsyncChatStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._iterator is None:
            self._iterator = self._chunks()
        return await self._iterator.__anext__()

    async def _chunks(self) -> AsyncIterator[dict[str, Any]]:
        call, state = self._call, self._state
        pool = self._owner._lean_pool() if call.target is not None else None
        state.start()
        failure: ProviderCallError | None = None
        response: httpx.Response | http11.Reply
        try:
            if pool is not None:
                head, content = call.encoded()
                response = await pool.request(call.target, head, content, call.timeout.read, read=False)  # type: ignore[arg-type]
            else:
                client = self._owner._async_http()
                request = client.build_request(
                    "POST", call.url, json=call.body, headers=call.headers, timeout=call.timeout
                )
                response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            failure = _transport_failure(call, exc)
        if failure is not None:
            raise failure  # outside the handler: see ProviderClient.chat
        try:
            if not response.is_success:
                text = ""
                try:
                    await response.aread()
                    text = response.text
                except httpx.HTTPError:
                    pass
                state.check_status(response, text)
            state.status_code = response.status_code
            lines = response.aiter_lines()
            while not state.done:
                try:
                    line = await lines.__anext__()
                except StopAsyncIteration:
                    break
                except httpx.HTTPError as exc:
                    failure = state.interrupted(exc)
                if failure is not None:
                    raise failure
                chunk = state.feed(line)
                if chunk is not None:
                    yield chunk
            last = state.finish()
            if last is not None:
                yield last
        finally:
            await response.aclose()
        logger.debug(
            "stream %s/%s -> %s in %.1f ms", call.provider, call.model, state.status_code, state.duration_ms or 0.0
        )

    async def aclose(self) -> None:
        if self._iterator is not None:
            await self._iterator.aclose()  # type: ignore[attr-defined]

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"AsyncChatStream(provider={self.provider!r}, model={self.model!r}, "
            f"first_chunk_received={self.first_chunk_received!r}, usage={self.usage!r})"
        )


# --------------------------------------------------------------------------- classification


def _chat_result(
    call: _PreparedCall, response: httpx.Response | http11.Reply | AsyncReply, started: float
) -> ChatResult:
    duration_ms = (time.perf_counter() - started) * 1000
    if not response.is_success:
        logger.debug("chat %s/%s -> HTTP %s in %.1f ms", call.provider, call.model, response.status_code, duration_ms)
        raise _status_failure(call, response, response.text)
    # No exception context may hold the body: providers sometimes echo the key in it.
    body = _json_or_none(response.text)
    if body is None and response.text.strip() != "null":
        raise call.failure(
            f"HTTP {response.status_code} with a body that is not JSON",
            kind="error",
            error_type="invalid_response",
            status_code=response.status_code,
        )
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise call.failure(
            f"HTTP {response.status_code} without a 'choices' list",
            kind="error",
            error_type="invalid_response",
            status_code=response.status_code,
        )
    if call.secret and call.secret in response.text:
        body = _scrub_json(body, call.secret)
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
    model = body.get("model")
    logger.debug("chat %s/%s -> HTTP %s in %.1f ms", call.provider, call.model, response.status_code, duration_ms)
    return ChatResult(
        body=body,
        status_code=response.status_code,
        response_model=model if isinstance(model, str) else None,
        input_tokens=_int_or_none(usage, "prompt_tokens"),
        output_tokens=_int_or_none(usage, "completion_tokens"),
        duration_ms=duration_ms,
    )


def _status_failure(
    call: _PreparedCall, response: httpx.Response | http11.Reply | AsyncReply, text: str
) -> ProviderCallError:
    status = response.status_code
    retry_after = _retry_after_s(response.headers)
    kind: ErrorKind
    if status == 429:
        kind = "rate_limit"
    elif status in (408, 504):
        kind = "timeout"
    else:
        kind = "error"
    detail = _error_detail(_json_or_none(text), text, call.secret)
    message = f"HTTP {status}" + (f": {detail}" if detail else "")
    if retry_after is not None:
        message += f" (retry after {retry_after:g} s)"
    return call.failure(message, kind=kind, error_type=str(status), status_code=status, retry_after_s=retry_after)


def _transport_failure(call: _PreparedCall, exc: httpx.HTTPError) -> ProviderCallError:
    name = exc.__class__.__name__
    if isinstance(exc, httpx.TimeoutException):
        timeout = call.timeout.read
        return call.failure(f"timed out ({name}, timeout {timeout:g} s)", kind="timeout", error_type="timeout")
    if isinstance(exc, httpx.ConnectError):
        return call.failure(f"cannot connect to {call.url} ({name}: {exc})", kind="error", error_type="connect_error")
    return call.failure(f"transport failure ({name}: {exc})", kind="error", error_type="transport_error")


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """``retry-after-ms`` first (OpenAI's), then ``Retry-After`` as seconds or an HTTP-date."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            value = float(raw_ms) / 1000
            if value >= 0:
                return value
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
        return value if value >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _error_detail(parsed: Any, text: str, secret: str | None) -> str:
    """The provider's own error message, scrubbed of the key BEFORE it is cut, so no part of a key survives."""
    detail = ""
    if isinstance(parsed, Mapping):
        error = parsed.get("error")
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            detail = error["message"]
        elif isinstance(error, str):
            detail = error
        elif isinstance(parsed.get("message"), str):
            detail = parsed["message"]
    if not detail:
        detail = text.strip()
    detail = _scrub(" ".join(detail.split()), secret)
    if len(detail) > _DETAIL_LIMIT:
        detail = detail[:_DETAIL_LIMIT] + "..."
    return detail


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:  # JSONDecodeError is one
        return None


def _int_or_none(usage: Mapping[str, Any] | None, key: str) -> int | None:
    if not usage:
        return None
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _scrub(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, _REDACTED)
    return _BEARER.sub(lambda m: m.group(1) + _REDACTED, text)


def _scrub_json(value: Any, secret: str) -> Any:
    if isinstance(value, str):
        return _scrub(value, secret)
    if isinstance(value, list):
        return [_scrub_json(v, secret) for v in value]
    if isinstance(value, dict):
        return {_scrub_json(k, secret): _scrub_json(v, secret) for k, v in value.items()}
    return value
