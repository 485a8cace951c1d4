"""What the router reports as it works, and to whom: the observer interfaces it defines and telemetry implements.

The router never imports :mod:`unhardcoded.telemetry` (that layer sits above it). A
:class:`DecisionObserver` opens an :class:`ObservedDecision` around each decision, and that
hands the cascade an :class:`AttemptObserver` for each provider call. :func:`default_observer`
is the one place the router reaches up: it loads ``unhardcoded.telemetry`` by name, so a plain
``Router()`` still emits spans and metrics. :data:`NO_TELEMETRY` records nothing.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeAlias

if TYPE_CHECKING:
    from types import TracebackType

    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from .attempts import PlannedAttempt
    from .decision import Attempt, Decision, WorkflowRef
    from .engine import CompiledPolicy
    from .providers import AsyncChatStream, ChatResult, ChatStream

    Answer: TypeAlias = ChatResult | ChatStream | AsyncChatStream
    """What answered an attempt: a whole result, or a stream (read to its end, ``response_model`` and usage known)."""

TELEMETRY_MODULE = "unhardcoded.telemetry"
"""The module :func:`default_observer` loads by name; it provides ``RouterTelemetry``."""


class AttemptObserver:
    """Hooks around each provider call of the cascade; the default does nothing.

    Per attempt: ``start``, then ``headers`` (sent with the call) and ``calling``
    (the context the call runs in), then ``answered`` if it succeeded, then ``end``.
    """

    def start(self, decision: Decision, planned: PlannedAttempt) -> Any:
        return None

    def end(self, token: Any, attempt: Attempt, error: BaseException | None) -> None:
        return None

    def headers(self, token: Any) -> dict[str, str]:
        return {}

    def calling(self, token: Any) -> AbstractContextManager[Any]:
        """Entered around the provider call, e.g. to make the attempt's span current for instrumented HTTP clients."""
        return _NO_CONTEXT

    def answered(self, token: Any, result: Answer) -> None:
        """The call succeeded with ``result``; called before ``end``."""
        return


_NO_CONTEXT = contextlib.nullcontext()


NO_OBSERVER = AttemptObserver()


class ObservedDecision(Protocol):
    """One decision as its observer follows it: entered before the decision is made, finished once it is settled.

    Leaving the block unfinished (an exception) records the decision as failed.
    """

    decision: Decision | None
    """The decision made in the block, so an exception leaving it is recorded against it."""

    def __enter__(self) -> Self: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def attempts(self, observer: AttemptObserver = NO_OBSERVER) -> AttemptObserver:
        """The cascade's observer for this decision, chaining ``observer``'s own hooks after its own."""
        ...

    def finish(self, decision: Decision, *, later: list[Callable[[], None]] | None = None) -> None:
        """Record the settled decision; with ``later``, leave what can wait there as calls to make afterwards."""
        ...


class DecisionObserver(Protocol):
    """What a Router reports its decisions to; ``unhardcoded.telemetry.RouterTelemetry`` is the default one."""

    def decision(self, compiled: CompiledPolicy, *, activate: bool = False, late: bool = False) -> ObservedDecision:
        """Begin observing one decision under ``compiled``; ``activate`` makes it current for the calls made in it,
        ``late`` says the caller will pass ``later`` to :meth:`ObservedDecision.finish`."""
        ...

    def current_workflow(self) -> WorkflowRef | None:
        """The workflow run (and node) the calling code runs in, which a decision made now records; None outside."""
        ...

    def count_error(self, what: str) -> None:
        """Count a failure of the observer's own hooks that the router caught so the request could go on."""
        ...


class _Unobserved:
    """A decision nothing records: every method does nothing."""

    __slots__ = ()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    @property
    def decision(self) -> Decision | None:
        return None

    @decision.setter
    def decision(self, value: Decision | None) -> None:
        return None

    def attempts(self, observer: AttemptObserver = NO_OBSERVER) -> AttemptObserver:
        return observer

    def finish(self, decision: Decision, *, later: list[Callable[[], None]] | None = None) -> None:
        return None


UNOBSERVED: ObservedDecision = _Unobserved()
"""The observed decision of an observer with nothing to record (telemetry also returns it when no SDK is set up)."""


class NoTelemetry:
    """A DecisionObserver that records nothing: ``Router(telemetry=NO_TELEMETRY)`` emits no span and no metric.

    Decisions it sees carry no workflow unless the caller passes ``workflow=``.
    """

    __slots__ = ()

    def decision(self, compiled: CompiledPolicy, *, activate: bool = False, late: bool = False) -> ObservedDecision:
        return UNOBSERVED

    def current_workflow(self) -> WorkflowRef | None:
        return None

    def count_error(self, what: str) -> None:
        return None


NO_TELEMETRY = NoTelemetry()


def default_observer(
    tracer_provider: TracerProvider | None = None, meter_provider: MeterProvider | None = None
) -> DecisionObserver:
    """The telemetry a plain ``Router()`` reports to: ``unhardcoded.telemetry.RouterTelemetry``, loaded by name.

    This is the only link from the router up to the telemetry layer, made when a Router is built (not per
    request), the same way the package's lazy public re-exports are.
    """
    telemetry = importlib.import_module(TELEMETRY_MODULE)
    observer: DecisionObserver = telemetry.RouterTelemetry(tracer_provider, meter_provider)
    return observer
