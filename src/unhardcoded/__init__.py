"""unhardcoded: route each LLM request to the model a policy picks, and make every decision observable and replayable.

>>> import unhardcoded                                    # doctest: +SKIP
>>> unhardcoded.configure(service_name="triage-api")      # only if the app has no OpenTelemetry SDK yet
>>> router = unhardcoded.Router()
>>> policy = unhardcoded.load_policy(open("support.yaml").read())
>>> with unhardcoded.workflow("triage") as wf:
...     with wf.node("classify"):
...         decision, result, error = router.route(policy, body)

Names are imported on first use, so ``import unhardcoded`` (and the CLI) stay quick.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .catalog import Catalog
    from .errors import ConfigError, NoCandidateError, PolicyError, RequestError, UnhardcodedError
    from .policy import Policy, load_policy, load_policy_file
    from .receipts import Receipt, rebuild_receipts
    from .router import (
        Decision,
        ProviderCallError,
        ProviderClient,
        ProvidersConfig,
        Router,
        WorkflowRef,
        load_providers,
    )
    from .telemetry import configure, continue_from, current_workflow, extract_context, inject_headers, losses, workflow

_EXPORTS = {
    "Catalog": ".catalog",
    "ConfigError": ".errors",
    "NoCandidateError": ".errors",
    "PolicyError": ".errors",
    "RequestError": ".errors",
    "UnhardcodedError": ".errors",
    "Policy": ".policy",
    "load_policy": ".policy",
    "load_policy_file": ".policy",
    "Receipt": ".receipts",
    "rebuild_receipts": ".receipts",
    "Decision": ".router",
    "ProviderCallError": ".router",
    "ProviderClient": ".router",
    "ProvidersConfig": ".router",
    "Router": ".router",
    "WorkflowRef": ".router",
    "load_providers": ".router",
    "configure": ".telemetry",
    "continue_from": ".telemetry",
    "current_workflow": ".telemetry",
    "extract_context": ".telemetry",
    "inject_headers": ".telemetry",
    "losses": ".telemetry",
    "workflow": ".telemetry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
