"""The wrappers the instrumentor installs, in both forms, and the decision headers they read.

Written once in ``_async/patch.py`` (the ``_sync/`` twin is generated from it); what a client span records
is in :mod:`.client_span`.
"""

from __future__ import annotations

from ._async.patch import async_client_request, async_httpx_send
from ._sync.patch import client_request, httpx_send
from .client_span import (
    ANTHROPIC_APIS,
    FALLBACK_HEADER,
    FINGERPRINT_HEADER,
    MODEL_HEADER,
    OPENAI_APIS,
    POLICY_HEADER,
    POLICY_NAME_HEADER,
    PROVIDER_NAME,
    REQUEST_ID_HEADER,
    Api,
    decision_attributes,
    openai_v2_active,
)

__all__ = [
    "ANTHROPIC_APIS",
    "FALLBACK_HEADER",
    "FINGERPRINT_HEADER",
    "MODEL_HEADER",
    "OPENAI_APIS",
    "POLICY_HEADER",
    "POLICY_NAME_HEADER",
    "PROVIDER_NAME",
    "REQUEST_ID_HEADER",
    "Api",
    "async_client_request",
    "async_httpx_send",
    "client_request",
    "decision_attributes",
    "httpx_send",
    "openai_v2_active",
]
