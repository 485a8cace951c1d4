"""OpenTelemetry auto-instrumentation of the ``openai`` client for services that call the unhardcoded router.

``UnhardcodedInstrumentor().instrument()`` (or ``opentelemetry-instrument``,
which finds it through the ``opentelemetry_instrumentor`` entry point) makes
every chat completion send the policy in force (``with policy("support"):`` or
``$UNHARDCODED_POLICY``) as ``X-Unhardcoded-Policy``, carry the trace context,
and record the router's decision (request id, answering model, fingerprint,
fallback) on the client span. Against a plain OpenAI endpoint it records
nothing extra and changes nothing.
"""

from __future__ import annotations

from collections.abc import Collection
from importlib import import_module
from typing import Any

# instrumentor.py starts with a file-wide "# type: ignore": to mypy the module is empty and BaseInstrumentor is Any.
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import unwrap
from opentelemetry.trace import get_tracer
from wrapt import wrap_function_wrapper

from .._version import package_version
from .context import POLICY_ENV, current_policy, policy
from .package import _instruments
from .patch import async_chat_completions_create, async_httpx_send, chat_completions_create, httpx_send

__all__ = ["POLICY_ENV", "UnhardcodedInstrumentor", "current_policy", "policy"]


# openai 1.x and 2.x send through httpx; openai 3.x through its own fork, httpx2. We read the
# router's response headers at the transport, so wrap whichever of them is installed.
HTTP_CLIENT_MODULES = ("httpx", "httpx2")


def _http_modules() -> list[Any]:
    found = []
    for name in HTTP_CLIENT_MODULES:
        try:
            found.append(import_module(name))
        except ImportError:
            continue
    return found


class UnhardcodedInstrumentor(BaseInstrumentor):  # type: ignore[misc]  # subclassing Any, as above
    """Instruments ``openai`` chat completions (sync, async, streamed) for the unhardcoded router."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        tracer = get_tracer(__name__, package_version(), kwargs.get("tracer_provider"))
        wrap_function_wrapper(
            "openai.resources.chat.completions", "Completions.create", chat_completions_create(tracer)
        )
        wrap_function_wrapper(
            "openai.resources.chat.completions", "AsyncCompletions.create", async_chat_completions_create(tracer)
        )
        for module in _http_modules():
            wrap_function_wrapper(module, "Client.send", httpx_send)
            wrap_function_wrapper(module, "AsyncClient.send", async_httpx_send)

    def _uninstrument(self, **kwargs: Any) -> None:
        from openai.resources.chat import completions

        unwrap(completions.Completions, "create")
        unwrap(completions.AsyncCompletions, "create")
        for module in _http_modules():
            unwrap(module.Client, "send")
            unwrap(module.AsyncClient, "send")
