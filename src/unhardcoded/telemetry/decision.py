"""Decision telemetry: the decision span around each routing decision, an attempt span per provider call, the metrics.

Only the OpenTelemetry API is used; the application (or :func:`configure`)
chooses the SDK. With none installed no span is started and no attribute built;
with one, nothing is built for a span that does not record (sampled out).
Nothing here raises into the request: what fails is counted in
:func:`unhardcoded.telemetry.losses`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import Span, Status, StatusCode

from ..router.attempts import PlannedAttempt
from ..router.decision import iso_ms
from ..router.observe import NO_OBSERVER, UNOBSERVED, AttemptObserver, ObservedDecision
from ..semconv import attributes as A
from ..semconv import gen_ai as G
from ..semconv import spans as S
from .instruments import DecisionMetrics
from .late import LateSpan, LateSpans
from .layout import PolicyLayout
from .losses import count_error, count_loss
from .scope import INSTRUMENTATION_SCOPE, VERSION, error_type
from .signing import DecisionSigner, configured_signer, signature_attributes, signer_of
from .workflows import current_workflow

if TYPE_CHECKING:
    from .._signature import SigningKey
    from ..router.decision import Attempt, AttemptUsage, Decision
    from ..router.engine import CompiledPolicy
    from ..router.observe import Answer

_LAYOUTS_MAX = 512
_CHAT = G.GenAiOperationNameValues.CHAT.value
_EMBEDDINGS = G.GenAiOperationNameValues.EMBEDDINGS.value
_ERROR = Status(StatusCode.ERROR)


class _ProcessWide:
    """The default of ``RouterTelemetry(signing_key=...)``: the process-wide key, if any."""


PROCESS_WIDE = _ProcessWide()


class RouterTelemetry:
    """Spans and metrics for routing decisions, from the given providers or, when None, the global ones.

    The router's default :class:`~unhardcoded.router.observe.DecisionObserver`:
    ``Router(tracer_provider=..., meter_provider=...)`` builds one; callers that
    drive the cascade themselves use :meth:`decision` directly.
    """

    current_workflow = staticmethod(current_workflow)
    """The workflow run and node a decision made now records (see :mod:`unhardcoded.telemetry.workflows`)."""
    count_error = staticmethod(count_error)
    """A failure in an observer hook the router caught, counted with the other telemetry losses."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        *,
        signing_key: SigningKey | str | os.PathLike[str] | _ProcessWide | None = PROCESS_WIDE,
    ) -> None:
        """``signing_key``: sign every decision with this key (a path or a loaded key), None never; by default
        the process-wide key (``configure(signing_key=...)`` or ``UNHARDCODED_SIGNING_KEY``), read when a decision
        ends."""
        self._signer: DecisionSigner | None = None
        self._process_signer = signing_key is PROCESS_WIDE
        if isinstance(signing_key, _ProcessWide):
            configured_signer()  # a bad UNHARDCODED_SIGNING_KEY fails here, at start, not in a request
        else:
            self._signer = signer_of(signing_key)
        self.tracer = trace.get_tracer(INSTRUMENTATION_SCOPE, VERSION, tracer_provider)
        self.metrics = DecisionMetrics(metrics.get_meter(INSTRUMENTATION_SCOPE, VERSION, meter_provider))
        self._layouts: dict[CompiledPolicy, PolicyLayout] = {}
        self._tracer_noop = isinstance(self.tracer, trace.NoOpTracer)
        # The global proxy tracer is a no-op until an SDK provider is installed, then delegates to it.
        self._tracer_proxy = isinstance(self.tracer, trace.ProxyTracer)
        self.late = LateSpans(self.tracer)

    def layout(self, compiled: CompiledPolicy) -> PolicyLayout:
        layout = self._layouts.get(compiled)
        if layout is None:
            if len(self._layouts) >= _LAYOUTS_MAX:
                self._layouts.clear()
            layout = self._layouts[compiled] = PolicyLayout(compiled)
        return layout

    def signer(self) -> DecisionSigner | None:
        """What signs this telemetry's decisions, if anything."""
        return configured_signer() if self._process_signer else self._signer

    def tracing(self) -> bool:
        """Whether spans can record: False while the tracer is the API's no-op (no SDK installed, or disabled)."""
        if self._tracer_proxy:
            return not isinstance(getattr(self.tracer, "_tracer", None), trace.NoOpTracer)
        return not self._tracer_noop

    def decision(self, compiled: CompiledPolicy, *, activate: bool = False, late: bool = False) -> ObservedDecision:
        """Start the decision span now; ``activate`` makes it the current span until the scope finishes.

        Use as ``with telemetry.decision(compiled, activate=True) as scope: ...
        scope.finish(decision)``; leaving the block unfinished (an exception)
        records the span as failed. With ``late`` (for a caller that will pass
        ``later`` to :meth:`DecisionScope.finish`), the decision and attempt
        spans get their ids, sampling and start times now and their SDK spans
        when they are recorded (see :mod:`unhardcoded.telemetry.late`).
        """
        if not activate and not self.metrics.live() and not self.tracing():
            return UNOBSERVED  # no SDK: nothing to start, nothing to record
        return DecisionScope(self, self.layout(compiled), activate, late)


class DecisionScope:
    """One decision span from start to end; stamps the Decision with the span's ids and start time.

    With no SDK (no-op tracer and meter) it does next to nothing: no span is
    started, no clock read, no attribute built.
    """

    __slots__ = (
        "_observers",
        "_pending",
        "_t0",
        "_token",
        "decision",
        "finished",
        "last_end_ns",
        "late",
        "layout",
        "metered",
        "recording",
        "span",
        "start_ns",
        "telemetry",
    )

    def __init__(self, telemetry: RouterTelemetry, layout: PolicyLayout, activate: bool, late: bool = False) -> None:
        self.telemetry = telemetry
        self.layout = layout
        self.decision: Decision | None = None
        self.finished = False
        self._token = None
        self._observers: list[AttemptSpans] | None = None
        self._pending: list[Callable[[], None]] = []
        self.metered = telemetry.metrics.live()
        self._t0 = time.perf_counter()
        self.recording = False
        self.start_ns = 0
        self.last_end_ns = 0
        """When the last attempt span ended (wall clock): the decision span never ends before its children."""
        self.late: LateSpan | None = None
        if not telemetry.tracing():
            # No span, but the current one (a remote parent, say) still reaches the provider calls' headers.
            self.span = trace.get_current_span() if activate else trace.INVALID_SPAN
            return
        try:
            if late:
                self.late = telemetry.late.begin(layout.span_name, None, S.DECISION_SPAN_KIND)
            if self.late is not None:
                self.start_ns = self.late.start_ns
                self.span = self.late.current
                self.recording = self.late.recording
            else:
                self.start_ns = time.time_ns()
                self.span = telemetry.tracer.start_span(
                    layout.span_name, kind=S.DECISION_SPAN_KIND, start_time=self.start_ns
                )
                self.recording = self.span.is_recording()
        except Exception:  # noqa: BLE001 - e.g. a span processor that raises in on_start
            count_error("starting a decision span")
            self.start_ns = self.start_ns or time.time_ns()
            self.span = trace.INVALID_SPAN
            self.late = None
        if activate:
            self._token = otel_context.attach(trace.set_span_in_context(self.span))

    def __enter__(self) -> DecisionScope:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.finished:
            self._end(self.decision, exc if exc is not None else RuntimeError("decision scope left unfinished"))

    def attempts(self, observer: AttemptObserver = NO_OBSERVER) -> AttemptSpans:
        """The cascade's observer: an attempt span per provider call (then ``observer``'s own hooks)."""
        spans = AttemptSpans(self, observer)
        if self._observers is None:
            self._observers = []
        self._observers.append(spans)
        return spans

    def made(self) -> Span:
        """The decision span, its SDK span made now if it was begun late."""
        if self.late is not None:
            self.span = self.late.make()
            self.late = None
        return self.span

    def _defer(self, record: Callable[[], None]) -> None:
        """Record with the decision (an attempt span's attributes and end), or now if it is already finished."""
        if self.finished:
            record()
        else:
            self._pending.append(record)

    def stamp(self, decision: Decision) -> None:
        """Give the decision the span's trace and span ids and its start time as ``timestamp``."""
        if self.recording:
            ctx = self.span.get_span_context()
            decision.trace_id = format(ctx.trace_id, "032x")
            decision.span_id = format(ctx.span_id, "016x")
            decision.timestamp = iso_ms(self.start_ns)

    def finish(self, decision: Decision, *, later: list[Callable[[], None]] | None = None) -> None:
        """Record the decision on the span and in the metrics, and end the span.

        With ``later``, only what cannot wait happens now: the decision gets the
        span's ids, the span stops being current and its duration is fixed. The
        rest (attributes, events, metrics, ending the span at the time it ends
        now) is appended to ``later`` as one call, for a server to make once its
        answer is on the way.
        """
        if self.finished:
            return
        if self.start_ns or self.metered or self._token is not None or self._observers:
            self._end(decision, None, later)
        else:  # nothing to record: no SDK
            self.finished = True

    def _end(
        self, decision: Decision | None, error: BaseException | None, later: list[Callable[[], None]] | None = None
    ) -> None:
        self.finished = True
        duration_s = time.perf_counter() - self._t0
        observers, self._observers = self._observers, None  # they point back here: no cycle left to collect
        for observer in observers or ():
            observer.abandon(error)
        outcome = decision.outcome if decision is not None else "failed"
        if error is not None and decision is not None and decision.outcome != "no_candidate":
            outcome = "failed"  # the cascade was cut short: nothing was answered
        if self.start_ns and decision is not None:
            try:
                self.stamp(decision)
            except Exception:  # noqa: BLE001 - telemetry never breaks a request
                count_error("recording a decision span")
        pending, self._pending = self._pending, []
        if later is not None and error is None:
            activated = self._token is not None
            self._detach()
            # Two pieces, so a server can let a request that came in meanwhile go between them.
            later.append(lambda: self._record_spans(decision, outcome, None, duration_s, pending))
            later.append(lambda: self._record_metrics(decision, outcome, duration_s, activated))
        else:
            self._record_spans(decision, outcome, error, duration_s, pending)
            self._record_metrics(decision, outcome, duration_s, False)
            self._detach()

    def _detach(self) -> None:
        if self._token is not None:
            try:
                otel_context.detach(self._token)
            except Exception:  # noqa: BLE001 - detached from another context; the API logs it
                count_error("detaching the decision context")
            self._token = None

    def _record_spans(
        self,
        decision: Decision | None,
        outcome: str,
        error: BaseException | None,
        duration_s: float,
        pending: list[Callable[[], None]],
    ) -> None:
        """The attempt spans, then the decision span's attributes, events and end."""
        span = self.made()  # a parent before its children, for span processors that look
        for record in pending:
            record()
        if self.start_ns:
            try:
                if self.recording:
                    if decision is not None:
                        self._record(decision, outcome)
                    if error is not None:
                        span.set_attribute(G.ERROR_TYPE, error_type(error))
                        span.record_exception(error)
                        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                # Start (wall clock) plus the measured duration (monotonic); the attempt spans end on the wall clock,
                # which a slewing NTP can move ahead of it by microseconds: a parent never ends before a child.
                span.end(end_time=max(self.start_ns + int(duration_s * 1e9), self.last_end_ns))
            except Exception:  # noqa: BLE001 - telemetry never breaks a request
                count_error("recording a decision span")

    def _record_metrics(self, decision: Decision | None, outcome: str, duration_s: float, reactivate: bool) -> None:
        """The decision metrics; ``reactivate`` makes the span current again meanwhile, as it was when the decision
        finished (metric exemplars point at it)."""
        if decision is not None and self.metered:
            token = otel_context.attach(trace.set_span_in_context(self.span)) if reactivate else None
            try:
                self.telemetry.metrics.record(self.layout, decision, outcome, duration_s)
            except Exception:  # noqa: BLE001
                count_error("recording decision metrics")
            finally:
                if token is not None:
                    otel_context.detach(token)

    def _record(self, decision: Decision, outcome: str) -> None:
        span = self.span
        attrs, events, lost = self.layout.decision_attributes(decision, outcome)
        if lost:
            count_loss("unencodable", lost)
        span.set_attributes(attrs)
        add_event = span.add_event
        name = S.REJECTION_EVENT
        at = self.start_ns
        for event in events:
            add_event(name, event, at)
        if outcome in ("failed", "no_candidate", "over_budget"):
            span.set_status(_ERROR)
        lost += _losses_on(span, attrs, events, self.layout.body_length)
        if lost:
            span.set_attribute(A.UNHARDCODED_TELEMETRY_DROPPED, lost)
        signer = self.telemetry.signer()
        if signer is not None:
            # Last, as the span ends: the content is complete (attempts, answer, cost) and off the caller's path
            # where the caller records late (the proxy).
            try:
                decision.signature = signature = signer.sign(decision, outcome)
                span.set_attributes(signature_attributes(signature))
            except Exception:  # noqa: BLE001 - telemetry never breaks a request: the decision goes unsigned
                count_error("signing a decision")


def _losses_on(span: Span, attrs: Mapping[str, Any], events: list[dict[str, str]], body_length: int) -> int:
    """Count what the SDK's span limits cut from the span (duck-typed: the API has no such notion)."""
    lost = 0
    dropped_attributes = getattr(span, "dropped_attributes", 0) or 0
    dropped_events = getattr(span, "dropped_events", 0) or 0
    if dropped_attributes:
        count_loss("dropped_attributes", dropped_attributes)
        lost += dropped_attributes
    if dropped_events:
        count_loss("dropped_events", dropped_events)
        lost += dropped_events
    stored = getattr(span, "attributes", None)
    if stored is not None:
        # The policy body is among the longest values: if it survived whole, a value length limit (if any)
        # cut nothing shorter; only the summarized rejections can be longer.
        body = stored.get(A.UNHARDCODED_POLICY_BODY)
        summary = attrs.get(A.UNHARDCODED_REJECTIONS_JSON)
        if isinstance(body, str) and len(body) < body_length:
            cut = sum(1 for k, v in attrs.items() if isinstance(v, str) and len(stored.get(k) or "") < len(v))
            kept = tuple(getattr(span, "events", ()))[-len(events) :] if events else ()
            for stored_event, event in zip(kept, events):
                got = stored_event.attributes
                cut += sum(1 for k, v in event.items() if len(got.get(k) or "") < len(v))
            count_loss("truncated", cut)
            lost += cut
        elif summary is not None and len(stored.get(A.UNHARDCODED_REJECTIONS_JSON) or "") < len(summary):
            count_loss("truncated")
            lost += 1
    return lost


class _AttemptToken:
    __slots__ = ("decision", "inner", "late", "response_model", "span", "t0")

    def __init__(self, span: Span, inner: Any, late: LateSpan | None = None, decision: Decision | None = None) -> None:
        self.span = span  # current during the call (for a late span, the context it will have)
        self.decision = decision
        self.late = late
        self.inner = inner
        self.response_model: str | None = None
        self.t0 = time.time_ns()

    def made(self) -> Span:
        """The attempt's span, its SDK span made now if it was begun late."""
        return self.late.make() if self.late is not None else self.span


class AttemptSpans(AttemptObserver):
    """A CLIENT span ``{operation} {model}`` (``chat …``, ``embeddings …``) per provider call, child of the decision span; chains another observer."""

    def __init__(self, scope: DecisionScope, inner: AttemptObserver = NO_OBSERVER) -> None:
        self.scope = scope
        self.inner = inner if inner is not NO_OBSERVER else None
        self._parent = trace.set_span_in_context(scope.span)
        self._open: set[_AttemptToken] = set()

    def abandon(self, error: BaseException | None) -> None:
        """End the attempt spans still open when the decision ends (the call raised something unexpected)."""
        for token in list(self._open):
            self._open.discard(token)
            try:
                self.scope.made()
                span = token.made()
                if error is not None and span.is_recording():
                    span.set_attribute(G.ERROR_TYPE, error_type(error))
                    span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                span.end()
            except Exception:  # noqa: BLE001
                count_error("ending an abandoned attempt span")

    def start(self, decision: Decision, planned: PlannedAttempt) -> Any:
        span: Span = trace.INVALID_SPAN
        late = None
        try:
            operation = _EMBEDDINGS if decision.features.kind == "embedding" else _CHAT
            attrs: dict[str, Any] = {
                G.GEN_AI_OPERATION_NAME: operation,
                G.GEN_AI_PROVIDER_NAME: planned.provider,
                G.GEN_AI_REQUEST_MODEL: planned.model,
                A.UNHARDCODED_REQUEST_ID: decision.request_id,
                A.UNHARDCODED_ATTEMPT_INDEX: planned.index,
                A.UNHARDCODED_ATTEMPT_ROLE: planned.role,
            }
            if planned.reason is not None:
                attrs[A.UNHARDCODED_FALLBACK_REASON] = planned.reason
            if planned.key is not None:
                attrs[A.UNHARDCODED_ATTEMPT_KEY] = planned.key
            name = S.ATTEMPT_SPAN_NAME.format(operation=operation, model=planned.model)
            if self.scope.late is not None:
                late = self.scope.telemetry.late.begin(name, self._parent, S.ATTEMPT_SPAN_KIND, attrs)
            if late is not None:
                span = late.current
            else:
                span = self.scope.telemetry.tracer.start_span(
                    name, context=self._parent, kind=S.ATTEMPT_SPAN_KIND, attributes=attrs
                )
        except Exception:  # noqa: BLE001
            count_error("starting an attempt span")
        token = _AttemptToken(span, None, late, decision)
        self._open.add(token)
        if self.inner is not None:
            token.inner = self.inner.start(decision, planned)
        return token

    def calling(self, token: Any) -> contextlib.AbstractContextManager[Any]:
        span = token.span
        if span is trace.INVALID_SPAN:
            return contextlib.nullcontext()
        return _Current(span)

    def headers(self, token: Any) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.inner is not None:
            out.update(self.inner.headers(token.inner))
        try:
            if token.span.get_span_context().is_valid:
                # The provider's own span (if it traces) becomes a child of this attempt.
                propagate.inject(out, context=trace.set_span_in_context(token.span))
        except Exception:  # noqa: BLE001
            count_error("injecting trace context into a provider call")
        return out

    def answered(self, token: Any, result: Answer) -> None:
        token.response_model = getattr(result, "response_model", None)
        if self.inner is not None:
            self.inner.answered(token.inner, result)

    def end(self, token: Any, attempt: Attempt, error: BaseException | None) -> None:
        self._open.discard(token)
        # The span ends now; what it records is written when the decision is (see DecisionScope.finish).
        end_ns = time.time_ns()
        if end_ns > self.scope.last_end_ns:
            self.scope.last_end_ns = end_ns
        billing = token.decision.billing if token.decision is not None else None
        usage = None
        if billing is not None:
            usage = next((u for u in billing.attempts if u.index == attempt.index), None)
        self.scope._defer(partial(_end_attempt_span, token, attempt, token.response_model, end_ns, usage))
        if self.inner is not None:
            self.inner.end(token.inner, attempt, error)


class _Current:
    """The span current for a block (``trace.use_span`` without ending or status, as a plain class: it is entered
    for every read of a provider's stream)."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.token: Any = None

    def __enter__(self) -> Span:
        self.token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, *exc: Any) -> None:
        otel_context.detach(self.token)


def _end_attempt_span(
    token: _AttemptToken, attempt: Attempt, response_model: str | None, end_ns: int, usage: AttemptUsage | None = None
) -> None:
    try:
        span = token.made()
        if span.is_recording():
            attrs: dict[str, Any] = {
                A.UNHARDCODED_ATTEMPT_STATUS: attempt.status,
                A.UNHARDCODED_ATTEMPT_DURATION_MS: float(attempt.duration_ms),
            }
            if attempt.status == "ok":
                attrs[G.GEN_AI_RESPONSE_MODEL] = response_model or attempt.model
            if attempt.start_ms is not None:
                attrs[A.UNHARDCODED_ATTEMPT_START_MS] = float(attempt.start_ms)
            if attempt.input_tokens is not None:
                attrs[G.GEN_AI_USAGE_INPUT_TOKENS] = attempt.input_tokens
            if attempt.output_tokens is not None:
                attrs[G.GEN_AI_USAGE_OUTPUT_TOKENS] = attempt.output_tokens
            if usage is not None:
                if usage.cached_input_tokens is not None:
                    attrs[G.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = usage.cached_input_tokens
                if usage.cache_write_tokens is not None:
                    attrs[G.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] = usage.cache_write_tokens
                if usage.reasoning_tokens is not None:
                    attrs[A.UNHARDCODED_ATTEMPT_USAGE_REASONING_TOKENS] = usage.reasoning_tokens
                if usage.cost_usd is not None:
                    attrs[G.GEN_AI_USAGE_COST] = usage.cost_usd
            if attempt.error_type is not None:
                attrs[G.ERROR_TYPE] = attempt.error_type
            span.set_attributes(attrs)
            if attempt.status == "error":
                span.set_status(Status(StatusCode.ERROR, attempt.error_type))
        span.end(end_time=end_ns)
    except Exception:  # noqa: BLE001
        count_error("ending an attempt span")
