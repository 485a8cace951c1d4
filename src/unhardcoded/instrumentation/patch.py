"""The wrappers the instrumentor installs, in both forms, and the decision headers they read.

Written once in ``_async/patch.py`` (the ``_sync/`` twin is generated from it); what a client span records
is in :mod:`.client_span`.
"""

from __future__ import annotations

from ._async.patch import async_chat_completions_create, async_httpx_send
from ._sync.patch import chat_completions_create, httpx_send
from .client_span import (
    FALLBACK_HEADER,
    FINGERPRINT_HEADER,
    MODEL_HEADER,
    POLICY_HEADER,
    POLICY_NAME_HEADER,
    PROVIDER_NAME,
    REQUEST_ID_HEADER,
    decision_attributes,
    openai_v2_active,
)

__all__ = [
    "FALLBACK_HEADER",
    "FINGERPRINT_HEADER",
    "MODEL_HEADER",
    "POLICY_HEADER",
    "POLICY_NAME_HEADER",
    "PROVIDER_NAME",
    "REQUEST_ID_HEADER",
    "async_chat_completions_create",
    "async_httpx_send",
    "chat_completions_create",
    "decision_attributes",
    "httpx_send",
    "openai_v2_active",
]
