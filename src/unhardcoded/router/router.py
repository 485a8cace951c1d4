"""The Router: a catalog, a compile cache and a provider client, put together for callers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from ..catalog.model import Catalog
from ..errors import NoCandidateError
from ..policy.model import Policy
from . import cascade
from .decision import Decision, WorkflowRef
from .engine import CompiledPolicy, PolicyCompiler
from .features import RequestFeatures, features_from_request

if TYPE_CHECKING:
    from .providers import ChatResult, ProviderCallError, ProviderClient


class Router:
    """Decides (dry run) or routes (decide + call + cascade) requests under a policy."""

    def __init__(
        self,
        catalog: Catalog | None = None,
        client: "ProviderClient | None" = None,
        *,
        observer: cascade.AttemptObserver = cascade.NO_OBSERVER,
    ) -> None:
        self.catalog = catalog if catalog is not None else Catalog.builtin()
        self.client = client
        self.observer = observer
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
        return self.compile(policy).decide(features, request_id=request_id, workflow=workflow)

    def _client(self) -> "ProviderClient":
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
    ) -> tuple[Decision, "ChatResult | None", "ProviderCallError | None"]:
        """Decide, call the selected model, fall back as the policy says. Raises NoCandidateError."""
        compiled = self.compile(policy)
        decision = compiled.decide(features_from_request(body), request_id=request_id, workflow=workflow)
        if decision.selected is None:
            raise NoCandidateError(f"no model in catalog {compiled.catalog_version} passes policy {policy.name!r}")
        return cascade.execute(decision, compiled, body, self._client(), self.observer)

    async def aroute(
        self,
        policy: Policy,
        body: Mapping[str, Any],
        *,
        request_id: str | None = None,
        workflow: WorkflowRef | None = None,
    ) -> tuple[Decision, "ChatResult | None", "ProviderCallError | None"]:
        compiled = self.compile(policy)
        decision = compiled.decide(features_from_request(body), request_id=request_id, workflow=workflow)
        if decision.selected is None:
            raise NoCandidateError(f"no model in catalog {compiled.catalog_version} passes policy {policy.name!r}")
        return await cascade.aexecute(decision, compiled, body, self._client(), self.observer)
