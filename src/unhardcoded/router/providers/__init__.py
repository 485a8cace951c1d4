"""Calling OpenAI-compatible chat-completions providers over the user's own keys.

A provider call either returns a :class:`ChatResult` (or a stream of chunks) or
raises a :class:`ProviderCallError` whose ``kind`` the fallback cascade acts on.
API keys are read from the environment at call time and never leave this
package except in the ``Authorization`` header of the request itself.

``config`` reads the providers file, ``errors`` holds the call error, ``calls``,
``sse`` and ``classify`` are the sans-IO halves of a call (request building,
answer and stream parsing, failure classification, key scrubbing) that both HTTP
paths share, ``http11`` is the lean async HTTP/1.1 client and ``client`` the
:class:`ProviderClient` and its streams.
"""

from __future__ import annotations

from .calls import ChatResult
from .client import AsyncChatStream, AsyncSender, ChatStream, ProviderClient
from .config import (
    PROVIDERS_ENV,
    ProviderConfig,
    ProviderKey,
    ProvidersConfig,
    ProvidersFileError,
    default_providers,
    load_providers,
    providers_from_env,
)
from .errors import ErrorKind, ProviderCallError

__all__ = [
    "PROVIDERS_ENV",
    "AsyncChatStream",
    "AsyncSender",
    "ChatResult",
    "ChatStream",
    "ErrorKind",
    "ProviderCallError",
    "ProviderClient",
    "ProviderConfig",
    "ProviderKey",
    "ProvidersConfig",
    "ProvidersFileError",
    "default_providers",
    "load_providers",
    "providers_from_env",
]
