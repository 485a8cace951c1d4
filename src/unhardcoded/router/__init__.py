"""The routing engine: request features, filter -> rank -> select, the fallback cascade, the Decision."""

from .decision import Attempt, Cost, Decision, FallbackHop, Rejection, Selection, WorkflowRef
from .engine import CompiledPolicy, PolicyCompiler
from .features import RequestFeatures, features_from_request
from .router import Router

__all__ = [
    "Attempt", "CompiledPolicy", "Cost", "Decision", "FallbackHop", "PolicyCompiler", "Rejection",
    "RequestFeatures", "Router", "Selection", "WorkflowRef", "features_from_request",
]
