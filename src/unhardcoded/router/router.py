"""The Router: a catalog, a compile cache, a provider client and decision telemetry, put together for callers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..catalog.model import Catalog
from ..errors import NoCandidateError
from ..policy.model import Policy
from ..telemetry import decision as decision_telemetry
from ..telemetry import workflows
from . import cascade
from .decision import Decision, WorkflowRef
from .engine import CompiledPolicy, PolicyCompiler
from .features import RequestFeatures, features_from_request

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from .providers import ChatResult, ProviderCallError, ProviderClient


class Router:
    """Decides (dry run) or routes (decide + call + cascade) requests under a policy.

    Every decision is a span (``route {policy}``) with an attempt span per
    provider call, and is counted in the decision metrics, through
    ``tracer_provider`` / ``meter_provider`` or, when None, the global ones.
    Inside a workflow node (``unhardcoded.workflow``) a decision records the
    node unless ``workflow=`` says otherwise.
    """

    def __init__(
        self,
        catalog: Catalog | None = None,
        client: "ProviderClient | None" = None,
        *,
        observer: cascade.AttemptObserver = cascade.NO_OBSERVER,
        tracer_provider: "TracerProvider | None" = None,
        meter_provider: "MeterProvider | None" = None,
    ) -> None:
        self.catalog = catalog if catalog is not None else Catalog.builtin()
        self.client = client
        self.observer = observer
        self.telemetry = decision_telemetry.RouterTelemetry(tracer_provider, meter_provider)
        self._compiler = PolicyCompiler()

    def compile(self, policy: Policy) -> CompiledPolicy:
        return self._compiler.compile(policy, self.catalog)

    def decide(
        self,
        policy: Policy,
        request: Mapping[str, Any] | RequestFeatures,
        *,
        request_id: str | None = None,
        workflow: WorkflowRef | None = None,
    ) -> Decision:
        """The would-be decision, with no provider call."""
        features = request if isinstance(request, RequestFeatures) else features_from_request(request)
        compiled = self.compile(policy)
        with self.telemetry.decision(compiled) as scope:
            decision = compiled.decide(
                features,
                request_id=request_id,
                workflow=workflow if workflow is not None else workflows.current_workflow(),
            )
            scope.finish(decision)
        return decision

    def _client(self) -> "ProviderClient":
        if self.client is None:
            from .providers import ProviderClient, providers_from_env

            self.client = ProviderClient(providers_from_env())
        return self.client

    def _decide_to_call(
        self,
        scope: decision_telemetry.DecisionScope,
        compiled: CompiledPolicy,
        features: RequestFeatures,
        request_id: str | None,
        workflow: WorkflowRef | None,
    ) -> Decision:
        decision = compiled.decide(
            features, request_id=request_id, workflow=workflow if workflow is not None else workflows.current_workflow()
        )
        scope.decision = decision
        if decision.selected is None:
            scope.finish(decision)
            raise NoCandidateError(
                f"no model in catalog {compiled.catalog_version} passes policy {compiled.policy.name!r}", decision
            )
        return decision

    def route(
        self,
        policy: Policy,
        body: Mapping[str, Any],
        *,
        request_id: str | None = None,
        workflow: WorkflowRef | None = None,
        features: RequestFeatures | None = None,
        later: list[Callable[[], None]] | None = None,
    ) -> tuple[Decision, "ChatResult | None", "ProviderCallError | None"]:
        """Decide, call the selected model, fall back as the policy says.

        Raises NoCandidateError, carrying the decision (every rejection, recorded like any other) when no
        model passes the policy. ``features`` are the body's, when the caller has read them already.
        With ``later`` (a list), recording the decision span and metrics is left there as one call to
        make once the answer is on its way (see :meth:`DecisionScope.finish`).
        """
        if features is None:
            features = features_from_request(body)
        compiled = self.compile(policy)
        with self.telemetry.decision(compiled, activate=True, late=later is not None) as scope:
            decision = self._decide_to_call(scope, compiled, features, request_id, workflow)
            out = cascade.execute(decision, compiled, body, self._client(), scope.attempts(self.observer))
            scope.finish(decision, later=later)
        return out

    async def aroute(
        self,
        policy: Policy,
        body: Mapping[str, Any],
        *,
        request_id: str | None = None,
        workflow: WorkflowRef | None = None,
        features: RequestFeatures | None = None,
        later: list[Callable[[], None]] | None = None,
    ) -> tuple[Decision, "ChatResult | None", "ProviderCallError | None"]:
        """The async form of :meth:`route`."""
        if features is None:
            features = features_from_request(body)
        compiled = self.compile(policy)
        with self.telemetry.decision(compiled, activate=True, late=later is not None) as scope:
            decision = self._decide_to_call(scope, compiled, features, request_id, workflow)
            out = await cascade.aexecute(decision, compiled, body, self._client(), scope.attempts(self.observer))
            scope.finish(decision, later=later)
        return out
