"""The routing engine: request features, filter -> rank -> select, the fallback cascade, the Decision."""

from .decision import Attempt, Cost, Decision, FallbackHop, Rejection, Selection, WorkflowRef
from .engine import CompiledPolicy, PolicyCompiler
from .features import RequestFeatures, features_from_request
from .observe import NO_TELEMETRY, AttemptObserver, DecisionObserver, NoTelemetry, ObservedDecision
from .providers import (
    ChatResult,
    ProviderCallError,
    ProviderClient,
    ProviderConfig,
    ProvidersConfig,
    load_providers,
    providers_from_env,
)
from .router import Router

__all__ = [
    "NO_TELEMETRY",
    "Attempt",
    "AttemptObserver",
    "ChatResult",
    "CompiledPolicy",
    "Cost",
    "Decision",
    "DecisionObserver",
    "FallbackHop",
    "NoTelemetry",
    "ObservedDecision",
    "PolicyCompiler",
    "ProviderCallError",
    "ProviderClient",
    "ProviderConfig",
    "ProvidersConfig",
    "Rejection",
    "RequestFeatures",
    "Router",
    "Selection",
    "WorkflowRef",
    "features_from_request",
    "load_providers",
    "providers_from_env",
]
