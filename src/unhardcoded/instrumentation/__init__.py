"""OpenTelemetry auto-instrumentation of the ``openai`` and ``anthropic`` clients for services that call the router.

``UnhardcodedInstrumentor().instrument()`` (or ``opentelemetry-instrument``,
which finds it through the ``opentelemetry_instrumentor`` entry point) makes
every call of either client (chat completions, Responses, embeddings, Anthropic
Messages; created, parsed or streamed) send the policy in force
(``with policy("support"):`` or ``$UNHARDCODED_POLICY``) as
``X-Unhardcoded-Policy``, carry the trace context, and record the router's
decision (request id, answering model, fingerprint, fallback) on the client
span. It instruments whichever of the two clients is installed. Against a plain
provider endpoint it records nothing extra and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from typing import Any

# instrumentor.py starts with a file-wide "# type: ignore": to mypy the module is empty and BaseInstrumentor is Any.
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import unwrap
from opentelemetry.trace import get_tracer
from wrapt import wrap_function_wrapper

from .._version import package_version
from .client_span import ANTHROPIC_APIS, OPENAI_APIS, Api
from .context import POLICY_ENV, current_policy, policy
from .package import _instruments
from .patch import async_client_request, async_httpx_send, client_request, httpx_send

__all__ = ["POLICY_ENV", "UnhardcodedInstrumentor", "current_policy", "policy"]

_log = logging.getLogger(__name__)

# The clients instrumented when installed: the package, and the POST paths of its calls that get a client span.
CLIENTS: Mapping[str, Mapping[str, Api]] = {"openai": OPENAI_APIS, "anthropic": ANTHROPIC_APIS}

# openai 1.x and 2.x send through httpx; openai 3.x through its own fork, httpx2 (anthropic too). We read the
# router's response headers at the transport, so wrap whichever of them is installed.
HTTP_CLIENT_MODULES = ("httpx", "httpx2")

OPENAI_V2 = "opentelemetry-instrumentation-openai-v2"
# The newest pair known to load together (openai-v2 2.4b0 imports names util-genai dropped after 1.1b0).
OPENAI_V2_PINS = "'opentelemetry-instrumentation-openai-v2==2.4b0' 'opentelemetry-util-genai==1.1b0'"


def _installed(names: Collection[str]) -> list[Any]:
    found = []
    for name in names:
        if find_spec(name) is None:
            continue
        try:
            found.append(import_module(name))
        except ImportError:
            continue
    return found


def _version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def openai_v2_load_failure() -> str | None:
    """Why an installed opentelemetry-instrumentation-openai-v2 cannot load, None if it can or is not installed.

    ``opentelemetry-instrument`` skips an instrumentor whose import fails with only a debug line, so without this
    a user who installed it sees neither its spans nor a reason.
    """
    installed = _version(OPENAI_V2)
    if installed is None:
        return None
    try:
        import_module("opentelemetry.instrumentation.openai_v2")
    except Exception as error:  # noqa: BLE001 - whatever stops it loading is what the user needs to read
        util = _version("opentelemetry-util-genai") or "not installed"
        return (
            f"{OPENAI_V2} {installed} is installed but does not load ({type(error).__name__}: {error}; "
            f"opentelemetry-util-genai {util}); unhardcoded's client spans stand in for its spans. "
            f"Versions that load together: pip install {OPENAI_V2_PINS}"
        )
    return None


class UnhardcodedInstrumentor(BaseInstrumentor):  # type: ignore[misc]  # subclassing Any, as above
    """Instruments the ``openai`` and ``anthropic`` clients (sync, async, streamed) for the unhardcoded router."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        tracer = get_tracer(__name__, package_version(), kwargs.get("tracer_provider"))
        self._clients = []
        for name, apis in CLIENTS.items():
            if find_spec(name) is None:
                continue
            module = import_module(f"{name}._base_client")
            wrap_function_wrapper(module, "SyncAPIClient.request", client_request(tracer, apis))
            wrap_function_wrapper(module, "AsyncAPIClient.request", async_client_request(tracer, apis))
            self._clients.append(module)
        for module in _installed(HTTP_CLIENT_MODULES):
            wrap_function_wrapper(module, "Client.send", httpx_send)
            wrap_function_wrapper(module, "AsyncClient.send", async_httpx_send)
        failure = openai_v2_load_failure()
        if failure:
            _log.warning(failure)

    def _uninstrument(self, **kwargs: Any) -> None:
        for module in getattr(self, "_clients", ()):
            unwrap(module.SyncAPIClient, "request")
            unwrap(module.AsyncAPIClient, "request")
        self._clients = []
        for module in _installed(HTTP_CLIENT_MODULES):
            unwrap(module.Client, "send")
            unwrap(module.AsyncClient, "send")
