"""The caller's own provider key, forwarded only to the providers the operator named.

The proxy normally answers over the keys in its environment (``api_key_env`` in
the providers file). ``--forward-client-key PROVIDER`` lets a caller bring its
own key instead: the ``Authorization: Bearer`` key of the incoming request is
sent to that provider and to no other, so a fallback hop to another provider
can never carry one provider's key to a third party. A provider named there
must not also name ``api_key_env``. The key lives in a context variable for
the length of the request and is scrubbed from everything the provider sends
back; it never reaches spans, receipts, logs or error messages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from typing import Any, cast

from ..errors import ConfigError
from ..router.providers import (
    AsyncChatStream,
    ChatResult,
    ProviderCallError,
    ProviderClient,
    ProvidersConfig,
)
from ..router.providers.calls import PreparedCall
from ..router.providers.classify import replace_outside_marker, scrub_json
from .errors import APIError

REDACTED = "[REDACTED]"

client_key: ContextVar[str | None] = ContextVar("unhardcoded_client_key", default=None)
"""The caller's key for the request being served, or None."""


MIN_KEY_CHARS = 8
"""The shortest caller key forwarded: a shorter one is no provider's key, and scrubbing it from answers would rewrite
ordinary words (a key ``e`` would turn ``"model"`` into ``"mod[REDACTED]l"``)."""


def bearer_key(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


def forwarded_key(authorization: str | None) -> str | None:
    """The caller's key to forward, or None; a 401 in OpenAI's shape for one too short to be a provider's key."""
    key = bearer_key(authorization)
    if key is not None and len(key) < MIN_KEY_CHARS:
        raise APIError(
            401,
            f"Authorization: the Bearer key is {len(key)} characters; a provider key forwarded by this proxy has at "
            f"least {MIN_KEY_CHARS}",
            code="invalid_api_key",
            type="authentication_error",
        )
    return key


def redact(text: str) -> str:
    """``text`` (decoded text) with the current request's key (if any) replaced."""
    key = client_key.get()
    return replace_outside_marker(text, key) if key and key in text else text


def redact_json(value: Any) -> Any:
    """A decoded JSON value with the current request's key replaced in its strings (the value itself if none held it)."""
    key = client_key.get()
    if not key:
        return value
    return scrub_json(value, key)


def _redacted_error(exc: ProviderCallError) -> ProviderCallError:
    exc.message = redact(exc.message)
    exc.args = (exc.message,)
    return exc


class ClientKeyForwarding(ProviderClient):
    """A ProviderClient that sends the caller's key to the providers in ``forward_to``."""

    def __init__(self, providers: ProvidersConfig, forward_to: Iterable[str], **kwargs: Any) -> None:
        super().__init__(providers, **kwargs)
        self.forward_to = frozenset(forward_to)
        for name in sorted(self.forward_to):
            config = providers.get(name)
            if config is None:
                known = ", ".join(providers.names) or "none configured"
                raise ConfigError(f"--forward-client-key {name}: no provider named {name!r} (known: {known})")
            if config.api_key_env is not None:
                raise ConfigError(
                    f"--forward-client-key {name}: provider {name!r} names api_key_env {config.api_key_env}; "
                    "a provider that takes the caller's key must not also take one from the environment"
                )

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
        # Every call, plain or streamed, sync or async, is prepared here: the one place the caller's key goes in.
        caller_key = client_key.get()
        if caller_key is not None and provider in self.forward_to:
            headers = {k: v for k, v in (headers or {}).items() if k.lower() not in ("authorization", "x-api-key")}
            config = self.providers.get(provider)
            if config is not None and config.auth == "x-api-key":
                headers["x-api-key"] = caller_key
            else:
                headers["authorization"] = f"Bearer {caller_key}"
        return super()._prepare(provider, model, body, headers, timeout_s, stream=stream, api=api, key=key)

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
        try:
            result = super().chat(provider, model, body, headers=headers, timeout_s=timeout_s, api=api, key=key)
        except ProviderCallError as exc:
            raise _redacted_error(exc) from None
        return dataclasses.replace(result, body=redact_json(result.body))

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
        try:
            result = await super().achat(provider, model, body, headers=headers, timeout_s=timeout_s, api=api, key=key)
        except ProviderCallError as exc:
            raise _redacted_error(exc) from None
        return dataclasses.replace(result, body=redact_json(result.body))

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
        stream = super().astream(provider, model, body, headers=headers, timeout_s=timeout_s, api=api, key=key)
        # The wrapper is the stream to its caller: what it does not redact it hands to the stream (__getattr__).
        return cast("AsyncChatStream", _RedactingStream(stream))


class _RedactingStream:
    """An AsyncChatStream whose chunks and errors carry no trace of the caller's key."""

    def __init__(self, inner: AsyncChatStream) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __aiter__(self) -> _RedactingStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            chunk = await self._inner.__anext__()
        except ProviderCallError as exc:
            raise _redacted_error(exc) from None
        redacted: dict[str, Any] = redact_json(chunk)
        return redacted

    async def aclose(self) -> None:
        await self._inner.aclose()
