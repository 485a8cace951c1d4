"""The provider client: pooled HTTP calls (the lean HTTP/1.1 client on an event loop, httpx otherwise) and the streams.

Everything the two paths share, the request as sent, the answer read, the SSE
state and the failure classification, is written once in the sans-IO modules
beside this one; this module only moves bytes.
"""

from __future__ import annotations

import asyncio
import codecs
import threading
import time
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Mapping
from types import TracebackType
from typing import Any, Protocol, Self

import httpx

from . import http11
from .calls import USER_AGENT, ChatResult, HttpReply, PreparedCall, chat_result, logger, prepare_call
from .classify import transport_failure
from .config import ProvidersConfig
from .errors import ProviderCallError
from .sse import StreamState, StreamView

__all__ = ["AsyncChatStream", "AsyncSender", "ChatStream", "ProviderClient"]

_HTTPX_HEADERS = {**USER_AGENT, "accept-encoding": "gzip, deflate"}
"""httpx would ask for br and zstd when their packages are installed; the bounded inflater reads gzip and deflate."""


class AsyncSender(Protocol):
    """Another HTTP client for the async non-streamed calls, so ``bench/proxy.py --client`` can measure it in place of
    the lean one; it fails with the ``httpx`` exception each failure corresponds to, as the lean client does."""

    async def send(self, url: str, headers: Mapping[str, str], content: bytes, timeout: float) -> HttpReply: ...

    async def aclose(self) -> None: ...


class ProviderClient:
    """Sends chat-completions requests to configured providers, pooling connections.

    Sync calls go through one :class:`httpx.Client`. Async calls go through the
    lean HTTP/1.1 client of :mod:`unhardcoded.router.providers.http11` (per event loop),
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _sync_client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                transport = self._transport if isinstance(self._transport, httpx.BaseTransport) else None
                self._client = httpx.Client(transport=transport, follow_redirects=False, headers=_HTTPX_HEADERS)
            return self._client

    def _async_http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            # An AsyncClient's pooled connections belong to the loop that opened
            # them; a call from another loop (asyncio.run twice) gets a fresh pool.
            if self._async_client is None or self._async_loop is not loop:
                transport = self._transport if isinstance(self._transport, httpx.AsyncBaseTransport) else None
                self._async_client = httpx.AsyncClient(
                    transport=transport, follow_redirects=False, headers=_HTTPX_HEADERS
                )
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

    def _target(self, url: str) -> http11.Target | None:
        if url not in self._targets:
            self._targets[url] = http11.target_of(url)
        return self._targets[url]

    def _prepare(
        self,
        provider: str,
        model: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str] | None,
        timeout_s: float | None,
        *,
        stream: bool,
        api: str = "chat_completions",
        key: str | None = None,
    ) -> PreparedCall:
        return prepare_call(
            self.providers,
            provider,
            model,
            body,
            headers,
            timeout_s,
            stream=stream,
            target_of=self._target,
            api=api,
            key=key,
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
        api: str = "chat_completions",
        key: str | None = None,
    ) -> ChatResult:
        """One answer (a chat completion, or of ``api``); raises :class:`ProviderCallError` on any failure. ``key``:
        the name of the provider key to send (a provider with ``keys:``; the first when None)."""
        call = self._prepare(provider, model, body, headers, timeout_s, stream=False, api=api, key=key)
        client = self._sync_client()
        started = time.perf_counter()
        failure: ProviderCallError | None = None
        request = client.build_request("POST", call.url, json=call.body, headers=call.headers, timeout=call.timeout)
        try:
            response = client.send(request, stream=True)
            try:
                answer = _read(response)
            finally:
                response.close()
        except httpx.HTTPError as exc:
            failure = transport_failure(call, exc)
        if failure is not None:
            # Raised outside the handler so no httpx exception, and the request
            # with its Authorization header, hangs off it as __context__.
            raise failure
        return chat_result(call, answer, started)

    async def achat(
        self,
        provider: str,
        model: str,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        api: str = "chat_completions",
        key: str | None = None,
    ) -> ChatResult:
        """Async :meth:`chat`."""
        call = self._prepare(provider, model, body, headers, timeout_s, stream=False, api=api, key=key)
        target = call.target
        pool = self._lean_pool() if target is not None else None
        started = time.perf_counter()
        failure: ProviderCallError | None = None
        response: HttpReply
        try:
            if pool is not None and target is not None:
                head, content = call.encoded()
                response = await pool.request(target, head, content, call.timeout_s, read=True)
            elif self._sender is not None:
                content = call.encoded()[1]
                sent = {**USER_AGENT, "content-type": "application/json", **call.headers}
                response = await self._sender.send(call.url, sent, content, call.timeout_s)
            else:
                client = self._async_http()
                request = client.build_request(
                    "POST", call.url, json=call.body, headers=call.headers, timeout=call.timeout
                )
                streamed = await client.send(request, stream=True)
                try:
                    response = await _aread(streamed)
                finally:
                    await streamed.aclose()
        except httpx.HTTPError as exc:
            failure = transport_failure(call, exc)
        if failure is not None:
            raise failure
        return chat_result(call, response, started)

    # ---- streaming

    def stream(
        self,
        provider: str,
        model: str,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        api: str = "chat_completions",
        key: str | None = None,
    ) -> ChatStream:
        """A streamed chat completion: iterate the returned :class:`ChatStream` for chunks.

        The request is sent on the first ``next()``; every failure up to the
        first chunk raises from there, with ``first_chunk_received`` still
        ``False`` so a caller knows it may fall back.
        """
        call = self._prepare(provider, model, body, headers, timeout_s, stream=True, api=api, key=key)
        return ChatStream(self._sync_client(), call)

    def astream(
        self,
        provider: str,
        model: str,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        api: str = "chat_completions",
        key: str | None = None,
    ) -> AsyncChatStream:
        """Async :meth:`stream`: ``async for chunk in client.astream(...)``."""
        call = self._prepare(provider, model, body, headers, timeout_s, stream=True, api=api, key=key)
        return AsyncChatStream(self, call)


class ChatStream(StreamView):
    """Iterator of parsed SSE chunks (dicts) of one streamed chat completion.

    After exhaustion ``usage``, ``input_tokens``, ``output_tokens`` and
    ``response_model`` hold what the final chunks reported. Use it as a context
    manager (or call :meth:`close`) when you may stop iterating early.
    """

    def __init__(self, client: httpx.Client, call: PreparedCall) -> None:
        self._client = client
        self._call = call
        self._state = StreamState(call)
        self._iterator: Generator[dict[str, Any]] | None = None

    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._iterator is None:
            self._iterator = self._chunks()
        return next(self._iterator)

    def _chunks(self) -> Generator[dict[str, Any]]:
        call, state = self._call, self._state
        state.start()
        request = self._client.build_request(
            "POST", call.url, json=call.body, headers=call.headers, timeout=call.timeout
        )
        failure: ProviderCallError | None = None
        try:
            response = self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            failure = transport_failure(call, exc)
        if failure is not None:
            raise failure  # outside the handler: see ProviderClient.chat
        try:
            if not response.is_success:
                text = ""
                try:
                    text = _read(response).text
                except httpx.HTTPError:
                    pass
                state.check_status(response, text)
            state.status_code = response.status_code
            lines = _lines(response)
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
                    yield from state.relayed(chunk)
            last = state.finish()
            if last is not None:
                yield from state.relayed(last)
            yield from state.closing()
        finally:
            response.close()
        logger.debug(
            "stream %s/%s -> %s in %.1f ms", call.provider, call.model, state.status_code, state.duration_ms or 0.0
        )

    def close(self) -> None:
        if self._iterator is not None:
            self._iterator.close()

    def __enter__(self) -> Self:
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


class AsyncChatStream(StreamView):
    """Async iterator counterpart of :class:`ChatStream`."""

    def __init__(self, owner: ProviderClient, call: PreparedCall) -> None:
        self._owner = owner
        self._call = call
        self._state = StreamState(call)
        self._iterator: AsyncGenerator[dict[str, Any]] | None = None

    def __aiter__(self) -> AsyncChatStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._iterator is None:
            self._iterator = self._chunks()
        return await self._iterator.__anext__()

    async def _chunks(self) -> AsyncGenerator[dict[str, Any]]:
        call, state = self._call, self._state
        target = call.target
        pool = self._owner._lean_pool() if target is not None else None
        state.start()
        failure: ProviderCallError | None = None
        response: httpx.Response | http11.Reply
        try:
            if pool is not None and target is not None:
                head, content = call.encoded()
                response = await pool.request(target, head, content, call.timeout_s, read=False)
            else:
                client = self._owner._async_http()
                request = client.build_request(
                    "POST", call.url, json=call.body, headers=call.headers, timeout=call.timeout
                )
                response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            failure = transport_failure(call, exc)
        if failure is not None:
            raise failure  # outside the handler: see ProviderClient.chat
        try:
            if not response.is_success:
                text = ""
                try:
                    if isinstance(response, http11.Reply):
                        await response.aread()
                        text = response.text
                    else:
                        text = (await _aread(response)).text
                except httpx.HTTPError:
                    pass
                state.check_status(response, text)
            state.status_code = response.status_code
            lines = response.aiter_lines() if isinstance(response, http11.Reply) else _alines(response)
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
                    for event in state.relayed(chunk):
                        yield event
            last = state.finish()
            if last is not None:
                for event in state.relayed(last):
                    yield event
            for event in state.closing():
                yield event
        finally:
            await response.aclose()
        logger.debug(
            "stream %s/%s -> %s in %.1f ms", call.provider, call.model, state.status_code, state.duration_ms or 0.0
        )

    async def aclose(self) -> None:
        if self._iterator is not None:
            await self._iterator.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"AsyncChatStream(provider={self.provider!r}, model={self.model!r}, "
            f"first_chunk_received={self.first_chunk_received!r}, usage={self.usage!r})"
        )


# --------------------------------------------------------------------------- httpx responses, read within the limits


class _Answer:
    """An httpx response read whole within :data:`~.http11.MAX_BODY`, as :func:`~.calls.chat_result` reads it."""

    __slots__ = ("headers", "status_code", "text")

    def __init__(self, response: httpx.Response, content: bytes) -> None:
        self.status_code = response.status_code
        self.headers = response.headers
        self.text = content.decode(http11.text_encoding(response.headers.get("content-type")), errors="replace")

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300


# httpx's own decoders inflate a compressed chunk whole, however large it grows, and decode text in any codec the
# charset names: both paths read the raw bytes through the lean client's bounded inflater and text encodings instead.


def _inflated(response: httpx.Response, raw: bytes, inflater: http11.Inflater | None) -> Iterator[bytes]:
    if inflater is None:
        if raw:
            yield raw
        return
    try:
        yield from inflater.feed(raw)
    except zlib.error as exc:
        raise httpx.DecodingError(f"cannot decode the response body: {exc}", request=response.request) from None


def _read(response: httpx.Response) -> _Answer:
    parts: list[bytes] = []
    size = 0
    inflater = http11.Inflater.of(response.headers.get("content-encoding"))
    for raw in response.iter_raw():
        for chunk in _inflated(response, raw, inflater):
            size += len(chunk)
            if size > http11.MAX_BODY:
                raise http11.body_too_large()
            parts.append(chunk)
    return _Answer(response, b"".join(parts))


async def _aread(response: httpx.Response) -> _Answer:
    parts: list[bytes] = []
    size = 0
    inflater = http11.Inflater.of(response.headers.get("content-encoding"))
    async for raw in response.aiter_raw():
        for chunk in _inflated(response, raw, inflater):
            size += len(chunk)
            if size > http11.MAX_BODY:
                raise http11.body_too_large()
            parts.append(chunk)
    return _Answer(response, b"".join(parts))


def _lines(response: httpx.Response) -> Iterator[str]:
    """Stream lines split as the lean client splits them, so both paths refuse a line over MAX_LINE alike."""
    splitter = http11.LineSplitter()
    inflater = http11.Inflater.of(response.headers.get("content-encoding"))
    decoder = codecs.getincrementaldecoder(http11.text_encoding(response.headers.get("content-type")))("replace")
    for raw in response.iter_raw():
        for chunk in _inflated(response, raw, inflater):
            yield from splitter.feed(decoder.decode(chunk))
    yield from splitter.feed(decoder.decode(b"", final=True))
    yield from splitter.flush()


async def _alines(response: httpx.Response) -> AsyncIterator[str]:
    splitter = http11.LineSplitter()
    inflater = http11.Inflater.of(response.headers.get("content-encoding"))
    decoder = codecs.getincrementaldecoder(http11.text_encoding(response.headers.get("content-type")))("replace")
    async for raw in response.aiter_raw():
        for chunk in _inflated(response, raw, inflater):
            for line in splitter.feed(decoder.decode(chunk)):
                yield line
    for line in splitter.feed(decoder.decode(b"", final=True)):
        yield line
    for line in splitter.flush():
        yield line
