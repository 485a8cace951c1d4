"""The proxy: ``POST /v1/chat/completions``, ``/v1/responses``, ``/v1/messages`` (Anthropic) and ``/v1/embeddings``
routed by policy through one cascade, ``GET /v1/models``, plus the ``/x/`` endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..catalog.model import Catalog
from ..errors import ConfigError, NoCandidateError, UnhardcodedError
from ..policy.builtin import builtin_policy_dir
from ..policy.model import Policy
from ..receipts.model import Receipt
from ..router import Router
from ..router.decision import BudgetUse, Decision
from ..router.engine import PolicyCompiler, new_request_id
from ..router.providers import ProviderCallError, ProviderClient, providers_from_env
from ..semconv import attributes as A
from ..semconv import gen_ai as G
from ..semconv import headers as H
from ..semconv import metrics as M
from ..telemetry.losses import count_error
from ..telemetry.scope import INSTRUMENTATION_SCOPE, VERSION
from .access import CLIENT_CLOSED_REQUEST, SERVER_LOGGER_NAME
from .auth import ClientAuth, ClientKey, ClientKeys, check_policy_request, client_of
from .budgets import Budgets, Held, Refusal, budget_exceeded, budget_owners
from .console import console_routes
from .errors import APIError
from .keys import ClientKeyForwarding, client_key, forwarded_key, redact
from .policies import DEFAULT_INLINE_CACHE_BYTES, POLICY_HEADER, POLICY_WEIGHT, PolicyDirectory, PolicyResolver
from .request import DEFAULT_MAX_BODY_BYTES, check_api_request, check_chat_request, parse_json_object, read_body
from .state import InProcessState, SharedState
from .streamed import StreamedDecision, Wire, wire_for
from .tracing import ServerSpans

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from ..receipts import ReceiptStore

REQUEST_ID_HEADER = H.X_UNHARDCODED_REQUEST_ID
MODEL_HEADER = H.X_UNHARDCODED_MODEL
POLICY_NAME_HEADER = H.X_UNHARDCODED_POLICY
FINGERPRINT_HEADER = H.X_UNHARDCODED_POLICY_FINGERPRINT
FALLBACK_HEADER = H.X_UNHARDCODED_FALLBACK

logger = logging.getLogger(SERVER_LOGGER_NAME)

FAILURE_STATUS = {"rate_limit": 429, "timeout": 504, "error": 502}
FAILURE_CODE = {"rate_limit": "upstream_rate_limited", "timeout": "upstream_timeout", "error": "upstream_error"}


DEFAULT_RECENT_BYTES = 32 * 1024 * 1024
"""The memory the recent decisions may take: their JSON, plus each distinct policy they hold counted once as
:data:`~.policies.POLICY_WEIGHT` times its canonical JSON."""


class RecentDecisions:
    """The last decisions by request id, so ``GET /x/receipts/{id}`` answers with no store.

    Bounded by count (``capacity``) and by bytes (``max_bytes``): each decision's JSON, plus the estimated
    memory of each distinct policy the kept decisions hold (a request's inline policy lives as long as its
    decision is kept here; a named policy shared by thousands is counted once).

    Each is kept as its JSON (with its policy, shared by many, kept aside): ten
    thousand decisions as live models are a few hundred thousand objects for
    every full garbage collection to walk, which would stall the server for
    tens of milliseconds at a time. ``add(decision, compact=False)`` keeps the
    model as it is until :meth:`compact` is called, so a server can turn it into
    JSON after its answer has gone out.
    """

    def __init__(self, capacity: int = 10_000, max_bytes: int = DEFAULT_RECENT_BYTES) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.size_bytes = 0
        """What is kept, in bytes, as counted above."""
        self._items: OrderedDict[str, Decision | tuple[Policy, str]] = OrderedDict()
        self._policies: dict[int, list[Any]] = {}  # id(policy) -> [policy, decisions holding it]

    def add(self, decision: Decision, *, compact: bool = True) -> None:
        replaced = self._items.pop(decision.request_id, None)
        if replaced is not None:
            self._release(replaced)
        self._items[decision.request_id] = decision
        held = self._policies.get(id(decision.policy))
        if held is None:
            self._policies[id(decision.policy)] = [decision.policy, 1]
            self.size_bytes += POLICY_WEIGHT * len(decision.policy.canonical)
        else:
            held[1] += 1
        if compact:
            self.compact(decision.request_id)
        else:
            self._trim()

    def compact(self, request_id: str) -> None:
        item = self._items.get(request_id)
        if isinstance(item, Decision):
            data = item.model_dump_json(exclude=_POLICY)
            self._items[request_id] = (item.policy, data)
            self.size_bytes += len(data)
            self._trim()

    def _trim(self) -> None:
        items = self._items
        while len(items) > 1 and (len(items) > self.capacity or self.size_bytes > self.max_bytes):
            self._release(items.popitem(last=False)[1])

    def _release(self, item: Decision | tuple[Policy, str]) -> None:
        if isinstance(item, Decision):
            policy = item.policy
        else:
            policy = item[0]
            self.size_bytes -= len(item[1])
        held = self._policies[id(policy)]
        held[1] -= 1
        if held[1] == 0:
            del self._policies[id(policy)]
            self.size_bytes -= POLICY_WEIGHT * len(policy.canonical)

    def get(self, request_id: str) -> Decision | None:
        item = self._items.get(request_id)
        if item is None or isinstance(item, Decision):
            return item
        policy, data = item
        fields = json.loads(data)
        fields["policy"] = policy
        return Decision.model_validate(fields)


_POLICY = {"policy"}


def fallback_header(decision: Decision) -> str:
    """``false``, or the models tried in order joined by ``>`` (``gemini-3.5-flash>claude-sonnet-4-6``)."""
    if not decision.hops:
        return "false"
    return ">".join([decision.hops[0].from_, *(hop.to for hop in decision.hops)])


def decision_headers(decision: Decision, model: str | None = None) -> dict[str, str]:
    """The X-Unhardcoded-* headers; ``model`` names the answering model while its stream is still open."""
    headers = {
        REQUEST_ID_HEADER: decision.request_id,
        POLICY_NAME_HEADER: decision.policy.name,
        FINGERPRINT_HEADER: decision.policy.fingerprint,
        FALLBACK_HEADER: fallback_header(decision),
    }
    model = model or decision.answered_by
    if model:
        headers[MODEL_HEADER] = model
    return headers


def no_candidate_error(decision: Decision) -> APIError:
    by_rule = Counter(r.rule for r in decision.rejected)
    counts = ", ".join(f"{rule} ×{n}" for rule, n in by_rule.most_common())
    examples = "; ".join(f"{r.model}: {r.message}" for r in decision.rejected[:3])
    message = (
        f"no model in catalog {decision.catalog_version} passes policy {decision.policy.name!r} for this request: "
        f"{len(decision.rejected)} rejected ({counts})" + (f", e.g. {examples}" if examples else "")
    )
    return APIError(422, message, param="policy", code="no_candidate")


def upstream_error(decision: Decision, last: ProviderCallError | None) -> APIError:
    kind = last.kind if last is not None else "error"
    tried = ", ".join(f"{a.model} ({a.error_type})" for a in decision.attempts) or "none"
    message = f"every attempt failed under policy {decision.policy.name!r}: {tried}"
    if last is not None:
        message += f"; last: {last.message}"
    headers = {}
    if kind == "rate_limit" and last is not None and last.retry_after_s is not None:
        headers["Retry-After"] = f"{max(1, round(last.retry_after_s))}"
    return APIError(FAILURE_STATUS[kind], redact(message), code=FAILURE_CODE[kind], headers=headers)


class Proxy:
    """The endpoints, over one Router, one policy resolver and the recent decisions."""

    def __init__(
        self,
        router: Router,
        resolver: PolicyResolver,
        *,
        max_body_bytes: int,
        forwarding: bool,
        recent: RecentDecisions,
        store: ReceiptStore | None = None,
        budgets: Budgets | None = None,
        embedding_resolver: PolicyResolver | None = None,
    ) -> None:
        self.router = router
        self.resolver = resolver
        self.embedding_resolver = embedding_resolver
        self.max_body_bytes = max_body_bytes
        self.forwarding = forwarding
        self.recent = recent
        self.store = store
        self.impact_compiler = PolicyCompiler()
        """Policies compiled for ``POST /x/impact``, apart from the router's (which routes on one catalog)."""
        self.budgets = budgets

    async def _read(self, request: Request) -> dict[str, Any]:
        return parse_json_object(await read_body(request, self.max_body_bytes))

    def _policy(
        self, request: Request, body: dict[str, Any], api: str = "chat_completions"
    ) -> tuple[Policy, str | None]:
        """The policy to route under and the name of the client key (None on a proxy without ``--keys``).

        An embeddings request without a policy of its own takes the proxy's default embedding policy, never the
        chat default (whose rules were written for chat models).
        """
        header = request.headers.get(POLICY_HEADER)
        resolver = self.resolver
        if api == "embeddings":
            resolver = self.embedding_resolver or resolver
        client = client_of(request.scope)
        if client is None:
            return resolver.resolve(body, header), None
        named = check_policy_request(client, body, header, resolver.default)
        return resolver.resolve(body, named if named is not None else header), client.name

    async def chat_completions(self, request: Request) -> Response:
        return await self.routed(request, "chat_completions")

    async def responses(self, request: Request) -> Response:
        return await self.routed(request, "responses")

    async def messages(self, request: Request) -> Response:
        return await self.routed(request, "messages")

    async def embeddings(self, request: Request) -> Response:
        return await self.routed(request, "embeddings")

    async def routed(self, request: Request, api: str) -> Response:
        """One routed call of ``api``: the same decision, cascade, receipt and headers for every API."""
        anthropic = api == "messages"
        request_id = new_request_id()
        try:
            body = await self._read(request)
        except ClientDisconnect:
            return disconnected(request)
        except APIError as exc:
            return exc.response({REQUEST_ID_HEADER: request_id}, anthropic=anthropic)
        try:
            features = check_api_request(api, body)
            policy, client_name = self._policy(request, body, api)
            key = self._forwarded_key(request) if self.forwarding else None
        except APIError as exc:
            return exc.response({REQUEST_ID_HEADER: request_id}, anthropic=anthropic)
        held: Held | None = None
        fallback_use: BudgetUse | None = None
        if self.budgets is not None:
            within = await self._within_budget(
                policy, client_of(request.scope), features, request_id, client_name, anthropic
            )
            if isinstance(within, Response):
                return within
            policy, held, fallback_use = within
        if features.stream:
            return self._stream(policy, body, features, request_id, key, client_name, wire_for(api), held, fallback_use)
        token = client_key.set(key)
        later: list[Callable[[], None]] = []
        decision: Decision | None = None
        try:
            try:
                decision, result, error = await self.router.aroute(
                    policy, body, request_id=request_id, client_name=client_name, features=features, later=later
                )
            except NoCandidateError as exc:
                rejected = exc.decision  # the one the router recorded, span and metrics included
                assert rejected is not None
                self.recent.add(rejected)
                return no_candidate_error(rejected).response(decision_headers(rejected), anthropic=anthropic)
            if fallback_use is not None:
                decision.budget = fallback_use  # recorded with the span, after the answer
            self.recent.add(decision, compact=False)
            later.append(partial(self.recent.compact, decision.request_id))
            headers = decision_headers(decision)
            if result is None:
                response = upstream_error(decision, error).response(headers, anthropic=anthropic)
            else:
                answer = dict(result.body)
                answer["model"] = decision.answered_by
                response = Response(json_bytes(answer), 200, headers, media_type="application/json")
            # The decision span and metrics are recorded once the answer has been sent: the caller does not wait.
            # Awaited as a BackgroundTask is, without the task's own layer on every answer.
            response.background = RecordLater(later)  # type: ignore[assignment]  # duck-types BackgroundTask
            return response
        finally:
            client_key.reset(token)
            if held is not None:
                assert self.budgets is not None
                self.budgets.settle_decision(held, decision)

    async def _within_budget(
        self,
        policy: Policy,
        client: ClientKey | None,
        features: Any,
        request_id: str,
        client_name: str | None,
        anthropic: bool = False,
    ) -> tuple[Policy, Held | None, BudgetUse | None] | Response:
        """Reserve the request's estimated cost on every budget it falls under (one round trip to the state).

        Returns the policy to route under (the policy's ``budget.fallback_policy`` when its own budget is spent),
        the reservation to settle once answered, and the spent budget that sent it to the fallback; or the 429
        ``budget_exceeded`` answer, its decision recorded with outcome ``over_budget``.
        """
        assert self.budgets is not None
        fallback_use: BudgetUse | None = None
        tried = {policy.name}
        while True:
            owners = budget_owners(policy, client)
            if not owners:
                return policy, None, fallback_use
            estimate = self.router.compile(policy).decide(features)
            if estimate.selected is None:
                return policy, None, fallback_use  # no model passes: the route answers that, spending nothing
            outcome = await self.budgets.reserve(owners, estimate.cost.usd or 0.0)
            if isinstance(outcome, Held):
                return policy, outcome, fallback_use
            refusal: Refusal = outcome
            other_name = refusal.owner.budget.fallback_policy if refusal.owner.scope == "policy" else None
            other = self.resolver.directory.get(other_name) if other_name is not None else None
            if other is not None and other.name not in tried:
                tried.add(other.name)
                fallback_use = refusal.use("fallback")
                policy = other
                continue
            decision = self.router.decide(
                policy, features, request_id=request_id, client_name=client_name, budget=refusal.use("refused")
            )
            self.recent.add(decision)
            return budget_exceeded(refusal, self.budgets.clock()).response(
                decision_headers(decision), anthropic=anthropic
            )

    def _stream(
        self,
        policy: Policy,
        body: dict[str, Any],
        features: Any,
        request_id: str,
        key: str | None,
        client_name: str | None,
        wire: Wire,
        held: Held | None = None,
        fallback_use: BudgetUse | None = None,
    ) -> Response:
        options = body.get("stream_options")
        done: Callable[[Decision], None] = self.recent.add
        if held is not None:
            budgets = self.budgets
            assert budgets is not None

            def done(decision: Decision) -> None:
                self.recent.add(decision)
                budgets.settle_decision(held, decision)

        return StreamedDecision(  # type: ignore[return-value]
            self.router,
            self.router.compile(policy),
            features,
            body,
            request_id,
            headers=decision_headers,
            no_candidate=no_candidate_error,
            failure=upstream_error,
            done=done,
            include_usage=isinstance(options, dict) and options.get("include_usage") is True,
            key=key,
            client_name=client_name,
            budget=fallback_use,
            wire=wire,
        )

    def _forwarded_key(self, request: Request) -> str | None:
        """The caller's key to forward: ``Authorization: Bearer``, or Anthropic's ``x-api-key``."""
        authorization = request.headers.get("authorization")
        if authorization is None and "x-api-key" in request.headers:
            authorization = f"Bearer {request.headers['x-api-key']}"
        return forwarded_key(authorization)

    async def models(self, request: Request) -> Response:
        """``GET /v1/models``: the catalog's models; with a policy (``?policy=`` or the policy header), only those
        it lets through."""
        allowed = self._allowed_models(request)
        data = [_model_entry(m) for m in self.router.catalog.models if allowed is None or m.id in allowed]
        return _json({"object": "list", "data": data})

    async def model(self, request: Request) -> Response:
        model_id = request.path_params["model_id"]
        allowed = self._allowed_models(request)
        if model_id in self.router.catalog and (allowed is None or model_id in allowed):
            return _json(_model_entry(self.router.catalog.model(model_id)))
        where = "" if allowed is None else " that the policy lets through"
        return APIError(
            404,
            f"model {model_id[:120]!r}: no such model in catalog {self.router.catalog.version}{where}",
            param="model",
            code="model_not_found",
        ).response()

    def _allowed_models(self, request: Request) -> set[str] | None:
        name = request.query_params.get("policy") or request.headers.get(POLICY_HEADER)
        client = client_of(request.scope)
        if name is None and client is not None:
            name = client.default_policy
        if name is None:
            return None
        body = {"policy": name.strip()}
        if client is not None:
            check_policy_request(client, body, None, None)
        policy = self.resolver.resolve(body, None)
        compiled = self.router.compile(policy)
        return {s.id for s in compiled.survivors if s is not None}

    async def completions(self, request: Request) -> Response:
        """The legacy completions API: not routed; a clear error naming what to use instead."""
        return APIError(
            404,
            "POST /v1/completions: the legacy completions API is not served by this proxy; send the prompt as "
            "messages to POST /v1/chat/completions (or input to POST /v1/responses)",
            code="unsupported_endpoint",
        ).response()

    async def rank(self, request: Request) -> Response:
        request_id = new_request_id()
        try:
            body = await self._read(request)
        except ClientDisconnect:
            return disconnected(request)
        except APIError as exc:
            return exc.response({REQUEST_ID_HEADER: request_id})
        try:
            features = check_chat_request(body)
            policy, client_name = self._policy(request, body)
        except APIError as exc:
            return exc.response({REQUEST_ID_HEADER: request_id})
        decision = self.router.decide(policy, features, request_id=request_id, client_name=client_name)
        self.recent.add(decision)
        return _json(Receipt.from_decision(decision).to_json_dict(), headers=decision_headers(decision))

    async def fields(self, request: Request) -> Response:
        catalog = self.router.catalog
        rows = [
            {"name": f.name, "type": f.type, "unit": f.unit, "builtin": f.builtin, "description": f.description}
            | ({"live": True, "unobserved": f.unobserved} if f.live else {})
            for f in catalog.fields.values()
        ]
        return _json({"catalog_version": catalog.version, "fields": rows})

    async def receipt(self, request: Request) -> Response:
        request_id = request.path_params["request_id"]
        # With client keys, a client reads the receipts of its own requests; another's are not found.
        client = client_of(request.scope)
        decision = self.recent.get(request_id)
        if decision is not None and (client is None or decision.client == client.name):
            return _json(Receipt.from_decision(decision).to_json_dict())
        if decision is None and self.store is not None:
            # On a worker thread: the store's reads wait for its writer (the receipts being recorded), and the
            # event loop serving every other request must not wait with them.
            stored = await anyio.to_thread.run_sync(self.store.get, request_id)
            if stored is not None and (client is None or stored.receipt.client == client.name):
                return _json(stored.receipt.to_json_dict())
        return APIError(
            404, f"no receipt for request id {request_id[:80]!r}", param="request_id", code="receipt_not_found"
        ).response()

    async def impact(self, request: Request) -> Response:
        """``POST /x/impact``: every decision in the proxy's store since a time decided again under a policy (inline or
        by name from the proxy's policies) and/or catalog (inline or a kept version; default: the proxy's). With
        client keys, a client measures its own requests only."""
        from ..receipts.impact import ImpactError

        try:
            body = await self._read(request)
        except ClientDisconnect:
            return disconnected(request)
        except APIError as exc:
            return exc.response()
        if self.store is None:
            return APIError(
                404,
                "this proxy keeps no receipt store to measure impact on: start it with --store (or UNHARDCODED_STORE)",
                code="no_receipt_store",
            ).response()
        client = client_of(request.scope)
        try:
            if client is not None and body.get("policy") is not None:
                check_policy_request(client, body, None, None)
            report = await anyio.to_thread.run_sync(self._measure, self.store, body, client.name if client else None)
        except APIError as exc:
            return exc.response()
        except ImpactError as exc:
            return APIError(400, str(exc), param=exc.field, code="invalid_impact_request").response()
        except UnhardcodedError as exc:
            return APIError(503, f"the receipt store cannot be read: {exc}", code="store_unavailable").response()
        return _json(report)

    def _measure(self, store: ReceiptStore, body: dict[str, Any], client_name: str | None) -> dict[str, Any]:
        from ..receipts.impact import impact_request, measure_impact, resolve_catalog, resolve_policy

        asked = impact_request(body)
        catalog = resolve_catalog(asked.catalog, store, self.router.catalog)
        policy = resolve_policy(asked.policy, catalog, self.resolver.directory.get)
        report = measure_impact(
            store, catalog, asked.since, policy=policy, client=client_name, compiler=self.impact_compiler
        )
        return report.to_json_dict()

    async def healthz(self, request: Request) -> Response:
        return _json(
            {
                "status": "ok",
                "catalog_version": self.router.catalog.version,
                "policies": self.resolver.directory.names,
                "default_policy": self.resolver.default,
            }
        )


def _model_entry(model: Any) -> dict[str, Any]:
    return {"id": model.id, "object": "model", "created": 0, "owned_by": model.provider}


class EmbeddingResolver(PolicyResolver):
    """Resolves an embeddings request's policy: the request's, else the default embedding policy."""

    def resolve(self, body: Mapping[str, Any], header: str | None) -> Policy:
        if self.default is None and body.get("policy") is None and header is None:
            raise APIError(
                400,
                "no policy for this embeddings request: send `policy` in the body or the X-Unhardcoded-Policy header, "
                "or start the proxy with --default-embedding-policy (the default chat policy is not used for "
                "embeddings)",
                param="policy",
                code="missing_policy",
            )
        return super().resolve(body, header)


class _Disconnected(Response):
    """Nothing to send: the caller went away before its request was read."""

    def __init__(self) -> None:
        super().__init__(status_code=CLIENT_CLOSED_REQUEST)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return None


def disconnected(request: Request) -> Response:
    """One INFO line for a caller that dropped mid-body (not a traceback: nothing went wrong here); no answer is sent,
    and the access log writes 499, nginx's "client closed request"."""
    client = request.scope.get("client")
    logger.info(
        "client %s disconnected before its request body was read (%s %s)",
        f"{client[0]}:{client[1]}" if client else "?",
        request.method,
        request.url.path,
    )
    return _Disconnected()


RECORD_DELAY_S = 0.001
"""How long an answer's telemetry waits after its last byte is written.

Writing the answer wakes the caller, and the scheduler often wakes it on the
CPU the proxy runs on: recording the decision span and metrics there at once
(a few hundred microseconds of CPU) would keep the caller from reading its
answer until the proxy is done. A millisecond's pause lets it go first.
"""


class RecordLater:
    """An answer's background: its telemetry, recorded :data:`RECORD_DELAY_S` after its last byte.

    The pieces are recorded one at a time, and a request that came in meanwhile
    is let in between them rather than wait for them all.
    """

    __slots__ = ("later",)

    def __init__(self, later: list[Callable[[], None]]) -> None:
        self.later = later

    async def __call__(self) -> None:
        later = self.later
        try:
            await asyncio.sleep(RECORD_DELAY_S)
            while later:
                _record(later.pop(0))
                if later:
                    await asyncio.sleep(0)
        finally:  # cancelled (the server is stopping): record the rest at once rather than lose it
            while later:
                _record(later.pop(0))


def _record(record: Callable[[], None]) -> None:
    try:
        record()
    except Exception:  # noqa: BLE001 - telemetry never breaks a request; its failures are counted as telemetry/'s are
        count_error("recording an answer's telemetry")


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer in OpenAI's error shape too."""
    assert isinstance(exc, HTTPException)
    message = f"{request.method} {request.url.path}: " + (
        "no such endpoint" if exc.status_code == 404 else "method not allowed" if exc.status_code == 405 else exc.detail
    )
    return APIError(
        exc.status_code,
        message,
        code="unknown_url" if exc.status_code == 404 else None,
        headers=dict(exc.headers or {}),
    ).response()


def json_bytes(value: Any) -> bytes:
    """``value`` as UTF-8 JSON; a provider's lone surrogate (``"\\ud800"``, not text) is sent back escaped as it came."""
    try:
        return json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value).encode("ascii")


def _json(value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        json_bytes(value),
        status,
        dict(headers or {}),
        media_type="application/json",
    )


def create_app(
    router: Router | None = None,
    policies: PolicyDirectory | Mapping[str, Policy] | Iterable[Policy] | str | Path | None = None,
    *,
    catalog: Catalog | None = None,
    client: ProviderClient | None = None,
    default_policy: str | None = None,
    default_embedding_policy: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    forward_client_key: Iterable[str] = (),
    client_keys: ClientKeys | None = None,
    store: ReceiptStore | None = None,
    receipts_kept: int = 10_000,
    receipts_kept_bytes: int = DEFAULT_RECENT_BYTES,
    inline_policy_bytes: int = DEFAULT_INLINE_CACHE_BYTES,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    state: SharedState | None = None,
) -> Starlette:
    """The proxy as an ASGI app.

    ``policies`` is a directory (path), a mapping or list of Policy objects, or a
    PolicyDirectory; by default the policies that ship with the package.
    ``default_embedding_policy`` serves embeddings requests that name no policy (never ``default_policy``).
    ``forward_client_key`` names the providers that get the caller's own
    ``Authorization: Bearer`` key (see :mod:`unhardcoded.server.keys`).
    ``client_keys`` (``serve --keys``) makes every route but ``/healthz`` take a client key (see
    :mod:`unhardcoded.server.auth`); it cannot be combined with ``forward_client_key``.
    ``store`` (a ReceiptStore) answers ``GET /x/receipts/{id}`` for decisions no
    longer held in memory. The caches are bounded in bytes: ``receipts_kept_bytes`` for the recent
    decisions, ``inline_policy_bytes`` for validated inline policies; their sizes are the
    ``unhardcoded.proxy.*.size`` gauges. ``state`` (``serve --state``, see :mod:`unhardcoded.server.state`)
    counts budget spending and carries live events; by default in this process. The app starts and closes it
    with the server.
    """
    # The app closes, on the server's loop at shutdown, the provider clients it made; a client it was given
    # (directly or inside a router) belongs to the caller.
    made_router = router is None and client is None
    if router is None:
        router = Router(catalog, client)
    owned: list[ProviderClient] = []
    forward = tuple(forward_client_key)
    if forward and client_keys is not None:
        raise ConfigError(
            "--forward-client-key cannot be used with --keys: with client keys the caller's Authorization header "
            "is its key to this proxy and is never sent to a provider"
        )
    if forward:
        providers = router.client.providers if router.client is not None else providers_from_env()
        router.client = ClientKeyForwarding(providers, forward)
        owned.append(router.client)
    if isinstance(policies, PolicyDirectory):
        directory = policies
    elif policies is None:
        # The shipped policies name the built-in catalog's models: against a user's catalog, those that do not
        # fit are left out (and say why when asked for), never a reason not to start.
        directory = PolicyDirectory(builtin_policy_dir(), router.catalog, strict=False)
    elif isinstance(policies, (str, Path)):
        directory = PolicyDirectory(policies, router.catalog)
    else:
        directory = PolicyDirectory.of(policies if isinstance(policies, Mapping) else list(policies), router.catalog)
    resolver = PolicyResolver(directory, default_policy, max_inline_bytes=inline_policy_bytes)
    embedding_resolver = EmbeddingResolver(directory, default_embedding_policy, max_inline_bytes=inline_policy_bytes)
    if client_keys is not None:
        client_keys.check_policies(directory.get, directory.names)
    _check_budget_fallbacks(directory)
    shared = state if state is not None else InProcessState()
    if state is not None:
        # Proxies sharing a state hear each other's live changes: failures, cooldowns, headroom (never a key).
        router.live.publish = shared.publish
        shared.subscribe(router.live.apply)
    proxy = Proxy(
        router,
        resolver,
        max_body_bytes=max_body_bytes,
        forwarding=bool(forward),
        recent=RecentDecisions(receipts_kept, receipts_kept_bytes),
        store=store,
        budgets=Budgets(shared, meter_provider=meter_provider),
        embedding_resolver=embedding_resolver,
    )
    routes = [
        Route("/v1/chat/completions", proxy.chat_completions, methods=["POST"]),
        Route("/v1/responses", proxy.responses, methods=["POST"]),
        Route("/v1/messages", proxy.messages, methods=["POST"]),
        Route("/v1/embeddings", proxy.embeddings, methods=["POST"]),
        Route("/v1/models", proxy.models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", proxy.model, methods=["GET"]),
        Route("/v1/completions", proxy.completions, methods=["POST"]),
        Route("/x/rank", proxy.rank, methods=["POST"]),
        Route("/x/fields", proxy.fields, methods=["GET"]),
        Route("/x/receipts/{request_id}", proxy.receipt, methods=["GET"]),
        Route("/x/impact", proxy.impact, methods=["POST"]),
        Route("/healthz", proxy.healthz, methods=["GET"]),
        *console_routes(store),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await shared.start()
        try:
            yield
        finally:
            await shared.aclose()
        if made_router and router.client is not None and router.client not in owned:
            owned.append(router.client)  # made on the first request, from the environment
        for made in owned:
            await made.aclose()

    _observe_cache_sizes(proxy, meter_provider)
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error}, lifespan=lifespan)
    app.state.proxy = proxy
    app.state.shared_state = shared
    app.add_middleware(ChatCompletionsFirst, proxy=proxy)
    if client_keys is not None:
        app.add_middleware(ClientAuth, keys=client_keys)
    app.add_middleware(ServerSpans, tracer_provider=tracer_provider)
    return app


def _check_budget_fallbacks(directory: PolicyDirectory) -> None:
    """Every ``budget.fallback_policy`` a named policy gives is a policy the proxy has (refused at start-up)."""
    for name in directory.names:
        policy = directory.get(name)
        fallback = policy.budget.fallback_policy if policy is not None and policy.budget is not None else None
        if fallback is not None and directory.get(fallback) is None:
            raise ConfigError(
                f"policy {name!r}: budget.fallback_policy names {fallback!r}, which is not one of the proxy's "
                f"policies ({', '.join(directory.names) or 'none'})"
            )


def _observe_cache_sizes(proxy: Proxy, meter_provider: MeterProvider | None) -> None:
    """The ``unhardcoded.proxy.*.size`` gauges, read at each collection; they hold the proxy weakly."""
    ref = weakref.ref(proxy)

    def gauge(size: Callable[[Proxy], int]) -> list[Callable[[CallbackOptions], Iterable[Observation]]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            alive = ref()
            return [] if alive is None else [Observation(size(alive))]

        return [observe]

    meter = metrics.get_meter(INSTRUMENTATION_SCOPE, VERSION, meter_provider)
    M.create_unhardcoded_proxy_inline_policies_size(meter, gauge(lambda p: p.resolver.inline_bytes))
    M.create_unhardcoded_proxy_recent_decisions_size(meter, gauge(lambda p: p.recent.size_bytes))
    M.create_unhardcoded_proxy_compiled_policies_size(meter, gauge(lambda p: p.router.compiled_bytes))

    # The live state's gauges: circuit state per model, rate-limit headroom per model and key.
    def circuits(options: CallbackOptions) -> Iterable[Observation]:
        alive = ref()
        if alive is None:
            return []
        return [Observation(state, {G.GEN_AI_REQUEST_MODEL: model}) for model, state in alive.router.live.state_rows()]

    def headroom(options: CallbackOptions) -> Iterable[Observation]:
        alive = ref()
        if alive is None:
            return []
        out = []
        for model, key, kind, remaining in alive.router.live.headroom_rows():
            attrs = {G.GEN_AI_REQUEST_MODEL: model, A.UNHARDCODED_LIVE_RATELIMIT_KIND: kind}
            if key is not None:
                attrs[A.UNHARDCODED_ATTEMPT_KEY] = key
            out.append(Observation(remaining, attrs))
        return out

    M.create_unhardcoded_live_circuit(meter, [circuits])
    M.create_unhardcoded_live_ratelimit_remaining(meter, [headroom])


class ChatCompletionsFirst:
    """``POST /v1/chat/completions``, nearly every request the proxy gets, goes straight to its handler.

    The same handler the route names, minus the routing and exception-mapping
    layers it never needs (it raises no HTTPException); every other request
    goes on through Starlette.
    """

    def __init__(self, app: ASGIApp, proxy: Proxy) -> None:
        self.app = app
        self.proxy = proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/chat/completions" and scope["method"] == "POST":
            response = await self.proxy.chat_completions(Request(scope, receive, send))
            await response(scope, receive, send)
        else:
            await self.app(scope, receive, send)
