"""The Router: a catalog, a compile cache, a provider client and an observer of decisions, put together for callers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..catalog.model import Catalog
from ..policy.model import Policy
from ._async import cascade as async_cascade
from ._sync import cascade as sync_cascade
from .attempts import decide_observed
from .decision import BudgetUse, Cost, Decision, WorkflowRef
from .engine import CompiledPolicy, PolicyCompiler
from .features import RequestFeatures, features_from_request
from .observe import NO_OBSERVER, AttemptObserver, DecisionObserver, default_observer

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
    node unless ``workflow=`` says otherwise. ``telemetry`` replaces that
    default observer with any :class:`~unhardcoded.router.observe.DecisionObserver`
    (``NO_TELEMETRY`` records nothing); ``observer`` adds an application's own
    hooks around each provider call, after the attempt spans'.
    """

    def __init__(
        self,
        catalog: Catalog | None = None,
        client: ProviderClient | None = None,
        *,
        observer: AttemptObserver = NO_OBSERVER,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        telemetry: DecisionObserver | None = None,
    ) -> None:
        self.catalog = catalog if catalog is not None else Catalog.builtin()
        self.client = client
        self.observer = observer
        self.telemetry: DecisionObserver = (
            telemetry if telemetry is not None else default_observer(tracer_provider, meter_provider)
        )
        self._compiler = PolicyCompiler()

    def compile(self, policy: Policy) -> CompiledPolicy:
        return self._compiler.compile(policy, self.catalog)

    @property
    def compiled_bytes(self) -> int:
        """The canonical JSON of the policies kept compiled, in bytes (bounded by the compiler's ``max_bytes``)."""
        return self._compiler.size_bytes

    def decide(
        self,
        policy: Policy,
        request: Mapping[str, Any] | RequestFeatures,
        *,
        request_id: str | None = None,
        workflow: WorkflowRef | None = None,
        client_name: str | None = None,
        budget: BudgetUse | None = None,
    ) -> Decision:
        """The would-be decision, with no provider call.

        ``budget``: the spent budget the request is refused for (a proxy's 429 ``budget_exceeded``): the decision
        is recorded with outcome ``over_budget``, the budget on it, and a cost of nothing.
        """
        features = request if isinstance(request, RequestFeatures) else features_from_request(request)
        compiled = self.compile(policy)
        with self.telemetry.decision(compiled) as observed:
            decision = decide_observed(observed, self.telemetry, compiled, features, request_id, workflow, client_name)
            if decision.selected is not None:  # else finished already: no model passes, whatever the budget
                if budget is not None:
                    decision.outcome = "over_budget"
                    decision.budget = budget
                    decision.cost = Cost(usd=0.0)  # nothing was called, nothing paid (the estimate is in the 429)
                observed.finish(decision)
        return decision

    def _client(self) -> ProviderClient:
        if self.client is None:
            from .providers import ProviderClient, providers_from_env

            self.client = ProviderClient(providers_from_env())
        return self.client

    def route(
        self,
        policy: Policy,
        body: Mapping[str, Any],
        *,
        request_id: str | None = None,
        workflow: WorkflowRef | None = None,
        client_name: str | None = None,
        features: RequestFeatures | None = None,
        later: list[Callable[[], None]] | None = None,
    ) -> tuple[Decision, ChatResult | None, ProviderCallError | None]:
        """Decide, call the selected model, fall back as the policy says.

        Raises NoCandidateError, carrying the decision (every rejection, recorded like any other) when no
        model passes the policy. ``features`` are the body's, when the caller has read them already.
        With ``later`` (a list), recording the decision span and metrics is left there as one call to
        make once the answer is on its way (see :meth:`~unhardcoded.router.observe.ObservedDecision.finish`).
        """
        return sync_cascade.route(
            self.telemetry,
            self.compile(policy),
            features if features is not None else features_from_request(body),
            body,
            self._client(),
            self.observer,
            request_id=request_id,
            workflow=workflow,
            client_name=client_name,
            later=later,
        )

    async def aroute(
        self,
        policy: Policy,
        body: Mapping[str, Any],
        *,
        request_id: str | None = None,
        workflow: WorkflowRef | None = None,
        client_name: str | None = None,
        features: RequestFeatures | None = None,
        later: list[Callable[[], None]] | None = None,
    ) -> tuple[Decision, ChatResult | None, ProviderCallError | None]:
        """The async form of :meth:`route`."""
        return await async_cascade.aroute(
            self.telemetry,
            self.compile(policy),
            features if features is not None else features_from_request(body),
            body,
            self._client(),
            self.observer,
            request_id=request_id,
            workflow=workflow,
            client_name=client_name,
            later=later,
        )

    def streamed(
        self,
        compiled: CompiledPolicy,
        features: RequestFeatures,
        body: Mapping[str, Any],
        *,
        request_id: str | None = None,
        workflow: WorkflowRef | None = None,
        client_name: str | None = None,
    ) -> async_cascade.AsyncStreamCascade:
        """A streamed decision under ``compiled``: enter it, ``aopen`` it, relay its ``chunks`` (see the class)."""
        return async_cascade.AsyncStreamCascade(
            self.telemetry,
            compiled,
            features,
            body,
            self._client(),
            self.observer,
            request_id=request_id,
            workflow=workflow,
            client_name=client_name,
        )
