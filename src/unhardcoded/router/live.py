"""What the router observes of its providers as it calls them: failures, cooldowns, latency, in-flight calls,
rate-limit headroom, per model and per provider key; read by the engine at decide time as the ``live.`` fields.

All live state is one :class:`LiveState`. Every change goes through a few methods taking plain values
(:meth:`~LiveState.begin_call`, :meth:`~LiveState.record_success`, :meth:`~LiveState.record_failure`,
:meth:`~LiveState.open_circuit`, :meth:`~LiveState.close_circuit`); each change that another process
should know is handed, as a plain dict, to the optional ``publish`` callback, and :meth:`~LiveState.apply`
takes such a dict from elsewhere without publishing it again. The events (times are seconds since the
epoch, floats; ``key`` is a provider key's *name* or None, never its value):

``{"type": "success", "model": str, "key": str|None, "at": float, "latency_ms": float,
   "ratelimit": {...} | None}``
    a call answered; ``ratelimit`` is the headroom read from the answer's headers (below).
``{"type": "failure", "model": str, "key": str|None, "at": float, "error_type": str,
   "ratelimit": {...} | None}``
    a call failed.
``{"type": "circuit_open", "model": str, "at": float, "until": float, "failures": int}``
    the model was cooled down until ``until`` after ``failures`` failures within the policy's window.
``{"type": "circuit_close", "model": str, "at": float}``
    a probe after the cooldown answered: the model is routed to again.

``ratelimit`` is ``{"remaining_requests": int|None, "remaining_tokens": int|None,
"reset_requests": float|None, "reset_tokens": float|None}`` (resets as absolute times). In-flight counts
and the half-open probe are local to a process and are not published.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol


def iso_ms(ns: int) -> str:
    """Nanoseconds since the epoch as ISO 8601 UTC with milliseconds, as decision timestamps are written."""
    secs, rem = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(secs)) + f"{rem // 1_000_000:03d}Z"


__all__ = [
    "CLOSED",
    "DEFAULT_HEALTH",
    "HALF_OPEN",
    "OPEN",
    "HealthSettings",
    "KeyLive",
    "LiveState",
    "LiveView",
    "ModelLive",
    "NoLive",
    "RecordedLive",
    "compact_snapshot",
    "parse_duration_s",
    "ratelimit_from_headers",
]

CLOSED: Final = 0
OPEN: Final = 1
HALF_OPEN: Final = 2
"""Circuit states, as the ``unhardcoded.live.circuit.state`` gauge reports them."""

LATENCY_SAMPLES = 64
"""Successful calls whose latency makes ``live.latency_p50_ms``."""
ERROR_WINDOW_S = 60.0
"""The window of ``live.error_rate``."""


@dataclass(frozen=True)
class HealthSettings:
    """When a model is cooled down: ``failures`` failures within ``window_s``, for ``cooldown_s``."""

    failures: int = 5
    window_s: float = 60.0
    cooldown_s: float = 30.0


DEFAULT_HEALTH: Final = HealthSettings()
"""The settings of a policy without ``health``."""


_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration_s(text: str) -> float | None:
    """``6m0s``, ``20ms``, ``1h2m3.5s``, ``1.5`` (seconds) as seconds; None when unreadable."""
    text = text.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _GO_DURATION.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    return total if pos == len(text) else None


def _reset_at(value: str | None, now: float) -> float | None:
    """A reset header as an absolute time: a duration from now (OpenAI) or an RFC 3339 time (Anthropic)."""
    if not value:
        return None
    seconds = parse_duration_s(value)
    if seconds is not None:
        return now + seconds
    try:
        return datetime.fromisoformat(value.strip()).timestamp()
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return max(0, int(value.strip()))
    except ValueError:
        return None


_HEADER_SETS = (
    (
        "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
    ),
    (
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-tokens-reset",
    ),
)


def ratelimit_from_headers(headers: Mapping[str, str] | None, now: float) -> dict[str, Any] | None:
    """The headroom a provider reported in its response headers, or None when it reported none."""
    if not headers:
        return None
    for req, tok, reset_req, reset_tok in _HEADER_SETS:
        remaining_requests = _int(headers.get(req))
        remaining_tokens = _int(headers.get(tok))
        if remaining_requests is None and remaining_tokens is None:
            continue
        return {
            "remaining_requests": remaining_requests,
            "remaining_tokens": remaining_tokens,
            "reset_requests": _reset_at(headers.get(reset_req), now),
            "reset_tokens": _reset_at(headers.get(reset_tok), now),
        }
    return None


class KeyLive:
    """What one provider key (or the model's only key, ``None``) last reported, and its own cooldown."""

    __slots__ = (
        "consecutive_failures",
        "cooldown_until",
        "remaining_requests",
        "remaining_tokens",
        "reset_requests",
        "reset_tokens",
    )

    def __init__(self) -> None:
        self.remaining_requests: int | None = None
        self.remaining_tokens: int | None = None
        self.reset_requests: float | None = None
        self.reset_tokens: float | None = None
        self.consecutive_failures = 0
        self.cooldown_until = 0.0

    def headroom(self, now: float) -> tuple[int | None, int | None, float | None]:
        """(remaining requests, remaining tokens, the reset that ends the shortage) as they stand at ``now``."""
        requests = self.remaining_requests
        if requests is not None and self.reset_requests is not None and now >= self.reset_requests:
            requests = None
        tokens = self.remaining_tokens
        if tokens is not None and self.reset_tokens is not None and now >= self.reset_tokens:
            tokens = None
        return requests, tokens, None

    def usable(self, now: float, needed_tokens: int) -> bool:
        if now < self.cooldown_until:
            return False
        requests, tokens, _ = self.headroom(now)
        return not ((requests is not None and requests <= 0) or (tokens is not None and tokens < needed_tokens))


class ModelLive:
    """What calls to one model showed. The attributes named like the ``live.`` fields are what rules read."""

    __slots__ = (
        "circuit",
        "consecutive_failures",
        "error_rate",
        "failed_in_window",
        "failures",
        "in_flight",
        "keys",
        "latencies",
        "latency_p50_ms",
        "open_failures",
        "open_since",
        "open_until",
        "outcomes",
        "probe_taken",
        "row",
    )

    def __init__(self) -> None:
        self.consecutive_failures = 0
        self.failures: deque[float] = deque(maxlen=256)
        self.outcomes: deque[tuple[float, bool]] = deque(maxlen=256)
        self.error_rate = 0.0
        self.failed_in_window = 0
        """How many of ``outcomes`` are failures."""
        self.latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.latency_p50_ms: float | None = None
        self.in_flight = 0
        self.circuit = CLOSED
        self.open_since = 0.0
        self.open_until = 0.0
        self.open_failures = 0
        self.probe_taken = False
        self.keys: dict[str | None, KeyLive] = {}
        self.row: dict[str, Any] = {}

    def refresh_row(self) -> None:
        """A new dict of the values rules read without a clock (a decision keeps the old one as it saw it)."""
        self.row = {
            "live.latency_p50_ms": self.latency_p50_ms,
            "live.error_rate": self.error_rate,
            "live.consecutive_failures": self.consecutive_failures,
            "live.in_flight": self.in_flight,
        }

    def key(self, name: str | None) -> KeyLive:
        k = self.keys.get(name)
        if k is None:
            k = self.keys[name] = KeyLive()
        return k

    def headroom(self, now: float) -> tuple[int | None, int | None, float | None]:
        """The best headroom among the model's keys (a model is out of headroom only when every key is)."""
        best_req: int | None = None
        best_tok: int | None = None
        reset: float | None = None
        unknown_req = unknown_tok = not self.keys
        for k in self.keys.values():
            req, tok, _ = k.headroom(now)
            if req is None:
                unknown_req = True
            elif best_req is None or req > best_req:
                best_req = req
            if tok is None:
                unknown_tok = True
            elif best_tok is None or tok > best_tok:
                best_tok = tok
            for r in (k.reset_requests, k.reset_tokens):
                if r is not None and r > now and (reset is None or r < reset):
                    reset = r
        return (None if unknown_req else best_req), (None if unknown_tok else best_tok), reset

    @property
    def cooldown(self) -> bool:
        return self.circuit != CLOSED


class LiveState:
    """The live state of one router (or one proxy): per model, per provider key. Thread-safe.

    ``clock`` gives the time in seconds since the epoch (``time.time`` unless a test injects one);
    ``publish`` receives every change other processes should know (see the module docstring).
    """

    all_dynamic = False

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        publish: Callable[[dict[str, Any]], None] | None = None,
        error_window_s: float = ERROR_WINDOW_S,
    ) -> None:
        self.clock = clock
        self.publish = publish
        self.error_window_s = error_window_s
        self.models: dict[str, ModelLive] = {}
        self.rows: dict[str, dict[str, Any]] = {}
        """Per model seen, the values rules read without a clock (replaced, never changed, on each update)."""
        self.blocked: set[str] = set()
        """Models with an open or half-open circuit, or whose headroom ran out: the ones decide looks at."""
        self._credit: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def model(self, model: str) -> ModelLive:
        m = self.models.get(model)
        if m is None:
            with self._lock:
                m = self.models.setdefault(model, ModelLive())
        return m

    # ---- what the cascade calls

    def begin_call(self, model: str) -> None:
        """A call to ``model`` starts: one more in flight; after a cooldown, this call is the probe."""
        m = self.model(model)
        with self._lock:
            m.in_flight += 1
            m.refresh_row()
            self.rows[model] = m.row
            if m.circuit == OPEN and self.clock() >= m.open_until:
                m.circuit = HALF_OPEN
                m.probe_taken = True

    def release_probe(self, model: str) -> None:
        """The probe after a cooldown ended without an outcome (the caller left): the next call may probe."""
        m = self.model(model)
        with self._lock:
            if m.circuit == HALF_OPEN:
                m.circuit = OPEN
                m.open_until = min(m.open_until, self.clock())
                m.probe_taken = False

    def end_call(self, model: str) -> None:
        m = self.model(model)
        with self._lock:
            m.in_flight = max(0, m.in_flight - 1)
            m.refresh_row()
            self.rows[model] = m.row

    def record_success(
        self, model: str, key: str | None, latency_ms: float, headers: Mapping[str, str] | None = None
    ) -> None:
        now = self.clock()
        event = {
            "type": "success",
            "model": model,
            "key": key,
            "at": now,
            "latency_ms": float(latency_ms),
            "ratelimit": ratelimit_from_headers(headers, now),
        }
        self._apply(event)
        if self.publish is not None:
            self.publish(event)
        if self.models[model].circuit != CLOSED:
            self.close_circuit(model)

    def record_failure(
        self,
        model: str,
        key: str | None,
        error_type: str,
        headers: Mapping[str, str] | None = None,
        health: HealthSettings = DEFAULT_HEALTH,
    ) -> None:
        """A failed call; cools the model down when ``health.failures`` fell within ``health.window_s``
        (at once when it was the probe after a cooldown)."""
        now = self.clock()
        event = {
            "type": "failure",
            "model": model,
            "key": key,
            "at": now,
            "error_type": error_type,
            "ratelimit": ratelimit_from_headers(headers, now),
        }
        self._apply(event)
        if self.publish is not None:
            self.publish(event)
        m = self.models[model]
        k = m.key(key)
        if key is not None and k.consecutive_failures >= health.failures:
            k.cooldown_until = now + health.cooldown_s
        recent = sum(1 for t in m.failures if t > now - health.window_s)
        if m.circuit == HALF_OPEN or (m.circuit == CLOSED and recent >= health.failures):
            self.open_circuit(model, now + health.cooldown_s, max(recent, 1))

    def open_circuit(self, model: str, until: float, failures: int) -> None:
        event = {"type": "circuit_open", "model": model, "at": self.clock(), "until": until, "failures": failures}
        self._apply(event)
        if self.publish is not None:
            self.publish(event)

    def close_circuit(self, model: str) -> None:
        event = {"type": "circuit_close", "model": model, "at": self.clock()}
        self._apply(event)
        if self.publish is not None:
            self.publish(event)

    def apply(self, event: Mapping[str, Any]) -> bool:
        """Apply an event published by another process (not published again). An event it cannot read (of a
        newer version, or malformed: it came over the network) is left out: False."""
        try:
            self._apply(event)
        except (KeyError, TypeError, ValueError, AttributeError):
            return False
        return True

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind = event["type"]
        m = self.model(event["model"])
        at = float(event["at"])
        with self._lock:
            if kind == "success" or kind == "failure":
                ok = kind == "success"
                outcomes = m.outcomes
                # The failures in the window are counted as outcomes come and go: no pass over the window per call.
                if len(outcomes) == outcomes.maxlen and not outcomes[0][1]:
                    m.failed_in_window -= 1  # the oldest is about to be pushed out
                outcomes.append((at, ok))
                if not ok:
                    m.failed_in_window += 1
                cutoff = at - self.error_window_s
                while outcomes and outcomes[0][0] < cutoff:
                    if not outcomes.popleft()[1]:
                        m.failed_in_window -= 1
                m.error_rate = m.failed_in_window / len(outcomes)
                k = m.key(event.get("key"))
                if ok:
                    m.consecutive_failures = 0
                    k.consecutive_failures = 0
                    m.latencies.append(float(event["latency_ms"]))
                    ordered = sorted(m.latencies)
                    m.latency_p50_ms = ordered[(len(ordered) - 1) // 2]
                else:
                    m.consecutive_failures += 1
                    k.consecutive_failures += 1
                    m.failures.append(at)
                rl = event.get("ratelimit")
                if rl:
                    k.remaining_requests = rl.get("remaining_requests")
                    k.remaining_tokens = rl.get("remaining_tokens")
                    k.reset_requests = rl.get("reset_requests")
                    k.reset_tokens = rl.get("reset_tokens")
                    self.blocked.add(event["model"])
                m.refresh_row()
                self.rows[event["model"]] = m.row
            elif kind == "circuit_open":
                m.circuit = OPEN
                m.open_since = at
                m.open_until = float(event["until"])
                m.open_failures = int(event["failures"])
                m.probe_taken = False
                self.blocked.add(event["model"])
            elif kind == "circuit_close":
                m.circuit = CLOSED
                m.probe_taken = False
                m.failures.clear()

    # ---- what decide reads

    def cooldown_of(self, model: str, now: float) -> dict[str, Any] | None:
        """The observed cooldown that rejects ``model`` now (failures, since, until), or None."""
        m = self.models.get(model)
        if m is None or m.circuit == CLOSED:
            return None
        if m.circuit == OPEN and now >= m.open_until:
            return None  # the cooldown is over: this decision may send the probe
        return {
            "failures": m.open_failures,
            "since": iso_ms(int(m.open_since * 1e9)),
            "until": iso_ms(int(m.open_until * 1e9)),
            **({"probing": True} if m.circuit == HALF_OPEN else {}),
        }

    def rate_limit_of(self, model: str, now: float, needed_tokens: int) -> dict[str, Any] | None:
        """The exhausted headroom that rejects ``model`` for a request of ``needed_tokens``, or None."""
        m = self.models.get(model)
        if m is None or not m.keys:
            return None
        requests, tokens, reset = m.headroom(now)
        if requests is not None and requests <= 0:
            return {"remaining_requests": requests, "reset": _iso(reset)}
        if tokens is not None and tokens < needed_tokens:
            return {"remaining_tokens": tokens, "needed_tokens": needed_tokens, "reset": _iso(reset)}
        return None

    def value(self, model: str, field: str, now: float) -> Any:
        """A ``live.`` field's observed value for ``model`` (None when nothing was observed)."""
        m = self.models.get(model)
        if m is None:
            return None
        if field == "live.ratelimit_remaining_requests":
            return m.headroom(now)[0]
        if field == "live.ratelimit_remaining_tokens":
            return m.headroom(now)[1]
        if field == "live.cooldown":
            return self.cooldown_of(model, now) is not None
        if field == "live.latency_p50_ms":
            return m.latency_p50_ms
        return getattr(m, field[5:])

    def pick_key(self, model: str, keys: list[tuple[str, float]], needed_tokens: int) -> str | None:
        """The provider key for a call to ``model``: weighted among the keys not cooling down or out of headroom
        (smooth weighted round robin, so the split follows the weights from the first calls on)."""
        now = self.clock()
        m = self.model(model)
        with self._lock:
            usable = [(n, w) for n, w in keys if (k := m.keys.get(n)) is None or k.usable(now, needed_tokens)]
            if not usable:
                usable = keys
            credit = self._credit.setdefault(model, {})
            total = sum(w for _, w in usable)
            best, best_credit = usable[0][0], None
            for name, weight in usable:
                c = credit.get(name, 0.0) + weight
                credit[name] = c
                if best_credit is None or c > best_credit:
                    best, best_credit = name, c
            credit[best] -= total
            return best

    def state_rows(self) -> list[tuple[str, int]]:
        """(model, circuit state) for each model seen, for the circuit gauge."""
        now = self.clock()
        out = []
        for name, m in list(self.models.items()):
            state = m.circuit
            if state == OPEN and now >= m.open_until:
                state = HALF_OPEN
            out.append((name, state))
        return out

    def headroom_rows(self) -> list[tuple[str, str | None, str, int]]:
        """(model, key, "requests" | "tokens", remaining) for each headroom reported and not yet reset."""
        now = self.clock()
        out = []
        for name, m in list(self.models.items()):
            for key, k in list(m.keys.items()):
                req, tok, _ = k.headroom(now)
                if req is not None:
                    out.append((name, key, "requests", req))
                if tok is not None:
                    out.append((name, key, "tokens", tok))
        return out


def _iso(t: float | None) -> str | None:
    return None if t is None else iso_ms(int(t * 1e9))


UNKNOWN: Final = object()
"""A live value a recorded snapshot never held (a rule added since): the rule is not applied, and replay says so."""

DYNAMIC_FIELDS: Final = frozenset(
    {"live.cooldown", "live.ratelimit_remaining_requests", "live.ratelimit_remaining_tokens"}
)
"""Live fields whose value depends on the time of the decision: read through ``value``, not from a row."""

COOLDOWN_RULE: Final = "live:cooldown"
RATE_LIMIT_RULE: Final = "live:rate_limit"


class NoLive(LiveState):
    """A live state that keeps nothing it is told: no cooldown, no headroom, no latency, ever; every model reads as
    never observed. For routers that replay or generate history (``demo --history``, the bulk receipts of
    ``unhardcoded.testing.bulk``), where a run of simulated failures must not cool a model down for the next
    thousand requests."""

    def record_success(
        self, model: str, key: str | None, latency_ms: float, headers: Mapping[str, str] | None = None
    ) -> None:
        return None

    def record_failure(
        self,
        model: str,
        key: str | None,
        error_type: str,
        headers: Mapping[str, str] | None = None,
        health: HealthSettings = DEFAULT_HEALTH,
    ) -> None:
        return None

    def apply(self, event: Mapping[str, Any]) -> bool:
        return False


class LiveView(Protocol):
    """What the engine reads at decide time: a :class:`LiveState`, or a recorded snapshot (:class:`RecordedLive`)."""

    all_dynamic: bool
    rows: dict[str, dict[str, Any]]
    blocked: set[str]

    def clock(self) -> float: ...
    def cooldown_of(self, model: str, now: float) -> dict[str, Any] | None: ...
    def rate_limit_of(self, model: str, now: float, needed_tokens: int) -> dict[str, Any] | None: ...
    def value(self, model: str, field: str, now: float) -> Any: ...


class _RecordedRows(dict[str, dict[str, Any]]):
    """The recorded models; with fields never recorded, every model has a row (empty), so rules read UNKNOWN."""

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key, {})


class RecordedLive:
    """A decision span's live snapshot, read by the engine as it read the live state then (``replay --live recorded``)."""

    all_dynamic = True

    def __init__(self, snapshot: Mapping[str, Any] | None, fields: frozenset[str] = frozenset()) -> None:
        snapshot = snapshot or {}
        models = snapshot.get("models") or {}
        self.recorded_fields = frozenset(snapshot.get("fields") or ())
        self.unknown_fields = frozenset(f for f in fields if f not in self.recorded_fields)
        """The live fields the replayed policy reads that the snapshot never held."""
        self.unknown_read: set[str] = set()
        self.rows: dict[str, dict[str, Any]] = _RecordedRows(models) if self.unknown_fields else dict(models)
        self.blocked = {m for m, e in models.items() if COOLDOWN_RULE in e or RATE_LIMIT_RULE in e}
        at = snapshot.get("at")
        self._at = 0.0
        if isinstance(at, str):
            try:
                self._at = datetime.fromisoformat(at).timestamp()
            except ValueError:
                pass

    def clock(self) -> float:
        return self._at

    def cooldown_of(self, model: str, now: float) -> dict[str, Any] | None:
        observed = self.rows.get(model, {}).get(COOLDOWN_RULE)
        return observed if isinstance(observed, dict) else None

    def rate_limit_of(self, model: str, now: float, needed_tokens: int) -> dict[str, Any] | None:
        observed = self.rows.get(model, {}).get(RATE_LIMIT_RULE)
        return observed if isinstance(observed, dict) else None

    def value(self, model: str, field: str, now: float) -> Any:
        if field in self.unknown_fields:
            self.unknown_read.add(field)
            return UNKNOWN
        return self.rows.get(model, {}).get(field)


def compact_snapshot(live: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The snapshot as recorded: per model only the fields rules and rank read and the implicit rules' findings."""
    if live is None:
        return None
    keep = set(live.get("fields") or ()) | {COOLDOWN_RULE, RATE_LIMIT_RULE}
    models = {
        model: {k: v for k, v in entry.items() if k in keep} for model, entry in (live.get("models") or {}).items()
    }
    return {**live, "models": {m: e for m, e in models.items() if e}}
