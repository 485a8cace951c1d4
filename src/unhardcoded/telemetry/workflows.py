"""Workflows: a named run of nodes whose decisions all land in one trace, in one process or across services.

``with workflow("triage") as wf:`` starts a run (a ``workflow {name}`` span,
the workflow id in W3C baggage); ``with wf.node("classify"):`` starts a node
(a ``node {name}`` span). A decision made inside a node carries the
``unhardcoded.workflow.*`` attributes and its Decision gets
``workflow=WorkflowRef(...)``. Both are decorators too, sync or async:
``@workflow("triage")`` runs each call as a new run, ``@workflow.node("classify")``
makes each call a node of whichever run is current when it is called (and
``@wf.node("classify")`` a node of ``wf``). The current run and node live in
a context variable, so threads started with a copied context and asyncio tasks
inherit them.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
from collections.abc import Callable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, TypeVar

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import Span, Status, StatusCode

from ..router.decision import WorkflowRef
from ..semconv import attributes as A
from ..semconv import gen_ai as G
from ..semconv import spans as S
from .losses import count_error
from .scope import INSTRUMENTATION_SCOPE, VERSION, error_type

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

BAGGAGE_WORKFLOW_ID = A.UNHARDCODED_WORKFLOW_ID
BAGGAGE_WORKFLOW_NAME = A.UNHARDCODED_WORKFLOW_NAME
BAGGAGE_WORKFLOW_STEP = A.UNHARDCODED_WORKFLOW_STEP
"""Baggage key of the next node step, so a service that continues a run numbers its nodes after the caller's."""


def new_workflow_id() -> str:
    return "wf_" + os.urandom(8).hex()


class _Position:
    """Where the code runs: a workflow run and, inside a node, the node's name and step."""

    __slots__ = ("_ref", "node", "run", "step")

    def __init__(self, run: workflow, node: str | None, step: int | None) -> None:
        self.run = run
        self.node = node
        self.step = step
        self._ref: WorkflowRef | None = None

    @property
    def ref(self) -> WorkflowRef:
        if self._ref is None:
            self._ref = WorkflowRef.model_construct(id=self.run.id, name=self.run.name, node=self.node, step=self.step)
        return self._ref


_CURRENT: ContextVar[_Position | None] = ContextVar("unhardcoded_workflow_position", default=None)


def current_workflow() -> WorkflowRef | None:
    """The workflow run (and node) the calling code runs in, as a Decision records it; None outside any."""
    position = _CURRENT.get()
    if position is not None:
        return position.ref
    ctx = otel_context.get_current()
    if not ctx:  # nothing attached at all: no baggage to look in
        return None
    run = workflow_from_context(ctx)
    return None if run is None else WorkflowRef.model_construct(id=run.id, name=run.name, node=None, step=None)


def current_run() -> workflow | None:
    """The current run: entered here, continued with :func:`continue_from`, or carried in the current context's baggage."""
    position = _CURRENT.get()
    if position is not None:
        return position.run
    # A context attached by hand (extract_context) rather than continue_from: the run is in its baggage.
    return workflow_from_context(otel_context.get_current())


def workflow_from_context(ctx: Context, *, tracer_provider: trace.TracerProvider | None = None) -> workflow | None:
    """The run a context's baggage names (one started in another service), or None."""
    workflow_id = baggage.get_baggage(BAGGAGE_WORKFLOW_ID, ctx)
    if not isinstance(workflow_id, str) or not workflow_id:
        return None
    name = baggage.get_baggage(BAGGAGE_WORKFLOW_NAME, ctx)
    step = baggage.get_baggage(BAGGAGE_WORKFLOW_STEP, ctx)
    try:
        first_step = max(0, int(step)) if isinstance(step, str) else 0
    except ValueError:
        first_step = 0
    return workflow._continued(workflow_id, name if isinstance(name, str) else "", first_step, tracer_provider)


class _Steps:
    """Node steps of one run: 0-based, in the order nodes start, shared by every thread and task of the run."""

    __slots__ = ("_lock", "_next")

    def __init__(self, first: int = 0) -> None:
        self._next = first
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            step = self._next
            self._next += 1
            return step

    def peek(self) -> int:
        return self._next


def _decorate(fn: F, scope_factory: Callable[[], Any]) -> F:
    """``fn`` run inside a fresh ``scope_factory()`` per call (sync or async)."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            async with scope_factory():
                return await fn(*args, **kwargs)

        return run_async  # type: ignore[return-value]

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with scope_factory():
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]


def _end_span(span: Span, error: BaseException | None) -> None:
    try:
        if error is not None and span.is_recording():
            span.set_attribute(G.ERROR_TYPE, error_type(error))
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()
    except Exception:  # noqa: BLE001 - telemetry never breaks the workflow
        count_error("ending a workflow span")


class _Scope:
    """What entering a run or node changed, undone on exit: the span, the OpenTelemetry context, the position."""

    __slots__ = ("_otel", "_position", "span")

    def __init__(self, span: Span, ctx: Context, position: _Position) -> None:
        self.span = span
        self._otel = otel_context.attach(ctx)
        self._position: Token[_Position | None] = _CURRENT.set(position)

    def close(self, error: BaseException | None) -> None:
        _end_span(self.span, error)
        try:
            _CURRENT.reset(self._position)
        except ValueError:  # exited in another context than entered: leave that context as it is
            count_error("resetting the workflow position")
        try:
            otel_context.detach(self._otel)
        except Exception:  # noqa: BLE001
            count_error("detaching the workflow context")


class Node:
    """One node of a workflow run; a context manager (sync and async) or a decorator.

    Made by ``wf.node(name)`` (a node of ``wf``) or ``workflow.node(name)`` (a
    node of the run current when the node starts). Outside any run a node only
    runs its code: no span, and decisions in it carry no workflow.
    """

    def __init__(self, name: str, run: workflow | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a workflow node needs a non-empty name")
        self.name = name
        self.run = run
        self.step: int | None = None
        self._scope: _Scope | None = None
        self._used = False

    def __call__(self, fn: F) -> F:
        return _decorate(fn, lambda: Node(self.name, self.run))

    def __enter__(self) -> Node:
        if self._used:
            raise RuntimeError(f"node {self.name!r} was already entered; make a new one per use (wf.node(...))")
        self._used = True
        run = self.run if self.run is not None else current_run()
        if run is None:
            logger.debug("node %r runs outside any workflow: no node span", self.name)
            return self
        self.run = run
        self.step = step = run._steps.take()
        span: Span = trace.INVALID_SPAN
        ctx = otel_context.get_current()
        try:
            span = run._tracer().start_span(
                S.NODE_SPAN_NAME.format(name=self.name),
                kind=S.NODE_SPAN_KIND,
                attributes={
                    A.UNHARDCODED_WORKFLOW_ID: run.id,
                    A.UNHARDCODED_WORKFLOW_NAME: run.name,
                    A.UNHARDCODED_WORKFLOW_NODE: self.name,
                    A.UNHARDCODED_WORKFLOW_STEP: step,
                },
            )
            ctx = run._baggage(trace.set_span_in_context(span), next_step=step + 1)
        except Exception:  # noqa: BLE001
            count_error("starting a node span")
        self._scope = _Scope(span, ctx, _Position(run, self.name, step))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        scope, self._scope = self._scope, None
        if scope is not None:
            scope.close(exc)

    async def __aenter__(self) -> Node:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        run = f"{self.run.name}/{self.run.id}" if self.run is not None else "current"
        return f"Node({self.name!r}, workflow={run}, step={self.step})"


class _NodeFactory:
    """``workflow.node(name)``: a node of whichever run is current when it starts; ``wf.node(name)``: a node of ``wf``."""

    def __get__(self, instance: workflow | None, owner: type) -> Callable[[str], Node]:
        if instance is None:
            return Node
        return functools.partial(Node, run=instance)


class workflow:
    """One run of a named workflow; a context manager (sync and async) or, on a function, a decorator.

    >>> with workflow("triage") as wf:          # doctest: +SKIP
    ...     with wf.node("classify"):
    ...         router.route(policy, body)

    ``id`` defaults to a fresh ``wf_...`` id; give one to name the run yourself.
    ``tracer_provider`` defaults to the global one. A run is entered once; as a
    decorator it starts a new run (a new id, unless ``id`` was given) per call.
    """

    node = _NodeFactory()

    def __init__(
        self, name: str, *, id: str | None = None, tracer_provider: trace.TracerProvider | None = None
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a workflow needs a non-empty name")
        self.name = name
        self.id = id if id is not None else new_workflow_id()
        self._fixed_id = id is not None
        self._tracer_provider = tracer_provider
        self._steps = _Steps()
        self._scope: _Scope | None = None
        self._state = "new"
        self.span: Span = trace.INVALID_SPAN

    @classmethod
    def _continued(
        cls, workflow_id: str, name: str, first_step: int, tracer_provider: trace.TracerProvider | None
    ) -> workflow:
        """A run started by another service: its nodes here number on from ``first_step``."""
        run = cls.__new__(cls)
        run.name = name
        run.id = workflow_id
        run._fixed_id = True
        run._tracer_provider = tracer_provider
        run._steps = _Steps(first_step)
        run._scope = None
        run._state = "continued"
        run.span = trace.INVALID_SPAN
        return run

    def _tracer(self) -> trace.Tracer:
        return trace.get_tracer(INSTRUMENTATION_SCOPE, VERSION, self._tracer_provider)

    def _baggage(self, ctx: Context, *, next_step: int | None = None) -> Context:
        ctx = baggage.set_baggage(BAGGAGE_WORKFLOW_ID, self.id, ctx)
        ctx = baggage.set_baggage(BAGGAGE_WORKFLOW_NAME, self.name, ctx)
        return baggage.set_baggage(
            BAGGAGE_WORKFLOW_STEP, str(self._steps.peek() if next_step is None else next_step), ctx
        )

    @property
    def trace_id(self) -> str | None:
        """The run's trace id (lowercase hex), when it is traced."""
        ctx = self.span.get_span_context()
        return format(ctx.trace_id, "032x") if ctx.is_valid else None

    @property
    def ref(self) -> WorkflowRef:
        return WorkflowRef(id=self.id, name=self.name)

    def __call__(self, fn: F) -> F:
        fixed = self.id if self._fixed_id else None
        return _decorate(fn, lambda: workflow(self.name, id=fixed, tracer_provider=self._tracer_provider))

    def __enter__(self) -> workflow:
        if self._state != "new":
            raise RuntimeError(
                f"workflow {self.name!r} run {self.id} was already started; use a new workflow(...) per run"
            )
        self._state = "running"
        span: Span = trace.INVALID_SPAN
        ctx = otel_context.get_current()
        try:
            span = self._tracer().start_span(
                S.WORKFLOW_SPAN_NAME.format(name=self.name),
                kind=S.WORKFLOW_SPAN_KIND,
                attributes={A.UNHARDCODED_WORKFLOW_ID: self.id, A.UNHARDCODED_WORKFLOW_NAME: self.name},
            )
            ctx = trace.set_span_in_context(span)
        except Exception:  # noqa: BLE001
            count_error("starting a workflow span")
        self.span = span
        self._scope = _Scope(span, self._baggage(ctx), _Position(self, None, None))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        scope, self._scope = self._scope, None
        self._state = "done"
        if scope is not None:
            scope.close(exc)

    async def __aenter__(self) -> workflow:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"workflow({self.name!r}, id={self.id!r}, {self._state})"
