"""The state proxies share (``unhardcoded serve --state``): budget spending and live events.

Two backends behind one interface: :class:`InProcessState` (the default: this process alone) and
:class:`RedisState` (``redis://HOST:PORT/DB``: every proxy pointed at the same Redis counts the same spending
and hears the others' live events).

What sits on a request's path is one pipelined round trip at most: :meth:`reserve` (one Lua script, run
atomically: every budget checked, then every budget charged, or none). Settling a reservation with the
actual cost and publishing live events happen off the path, after the answer, batched: one pipeline carries
whatever has queued up meanwhile. When Redis cannot be reached
the proxy keeps going on its local view (an :class:`InProcessState` inside the Redis one), counts each such
operation in ``unhardcoded.state.degraded``, and tries Redis again after :data:`RETRY_AFTER_S`; the
subscription reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from ..errors import ConfigError

logger = logging.getLogger("unhardcoded.server.state")

KEY_PREFIX = "unhardcoded:"
EVENTS_CHANNEL = "unhardcoded:live"
RETRY_AFTER_S = 1.0
"""After Redis failed, how long the proxy works from its local view before trying Redis again."""
TIMEOUT_S = 0.5
"""A Redis round trip that takes longer than this counts as Redis being down."""
OUTBOX_LIMIT = 10_000
"""Live events waiting to be published; past this the oldest are dropped (and counted as degraded)."""

LiveEvent = dict[str, Any]
"""A live-state change as a plain JSON-able dict (what ``LiveState`` emits and applies)."""


class StateError(ConfigError):
    """A ``--state`` URL that cannot be used."""


@dataclass(frozen=True)
class Charge:
    """One budget a request is charged to: its key (window included), its limit and how long the key lives."""

    key: str
    limit_usd: float
    ttl_s: int


@dataclass(frozen=True)
class Reservation:
    """The answer to :meth:`SharedState.reserve`: ``refused`` is the index of the first charge that would go over
    its limit (nothing was charged), or None (every charge was made). ``spent`` is each budget's spending:
    after the charge when made, before it when refused (as far as the check went)."""

    refused: int | None
    spent: tuple[float, ...]
    shared: bool
    """Whether the shared store answered (False: the local view, Redis being down)."""


class SharedState(Protocol):
    """What the proxy needs of its state backend."""

    description: str
    degraded: int
    """Operations served from the local view because the shared store could not be reached."""
    on_degraded: Callable[[int], None] | None
    """Told how many more operations were degraded, as they are (the ``unhardcoded.state.degraded`` counter)."""

    async def start(self) -> None: ...
    async def aclose(self) -> None: ...
    async def reserve(self, charges: Sequence[Charge], amount_usd: float) -> Reservation: ...
    def settle(self, adjustments: Sequence[tuple[Charge, float]]) -> None:
        """Add each delta to its budget, in the background (never waits)."""
        ...

    @property
    def settling(self) -> int:
        """Adjustments handed to :meth:`settle` and not yet applied."""
        ...

    async def drain(self) -> None:
        """Wait until every adjustment handed to :meth:`settle` is applied."""
        ...

    def publish(self, event: LiveEvent) -> None: ...
    def subscribe(self, callback: Callable[[LiveEvent], None]) -> None: ...


def window_key(scope: str, name: str, window: str, window_s: int, now: float) -> tuple[str, int, float]:
    """The key a budget's current window is counted under, its time to live, and when the window resets.

    Windows are aligned to the Unix epoch, so every proxy names the same window the same way.
    """
    index = math.floor(now / window_s)
    resets_at = (index + 1) * window_s
    ttl = max(1, math.ceil(resets_at - now)) + 60
    return f"{KEY_PREFIX}budget:{scope}:{name}:{window}:{index}", ttl, float(resets_at)


class InProcessState:
    """Spending counted in this process; live events go nowhere (there is no one else to tell)."""

    description = "in-process"

    def __init__(self) -> None:
        self.degraded = 0
        self.on_degraded: Callable[[int], None] | None = None
        self._spent: dict[str, tuple[float, float]] = {}  # key -> (spent, expires at on the monotonic clock)
        self._callbacks: list[Callable[[LiveEvent], None]] = []

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def _get(self, key: str, now: float) -> float:
        item = self._spent.get(key)
        if item is None:
            return 0.0
        if item[1] <= now:
            del self._spent[key]
            return 0.0
        return item[0]

    def reserve_now(self, charges: Sequence[Charge], amount_usd: float) -> Reservation:
        """:meth:`reserve`, synchronously: nothing here waits."""
        now = time.monotonic()
        spent = []
        for i, charge in enumerate(charges):
            value = self._get(charge.key, now)
            spent.append(value)
            if _over(value, amount_usd, charge.limit_usd):
                return Reservation(i, tuple(spent), False)
        after = []
        for charge in charges:
            value = self._get(charge.key, now) + amount_usd
            self._spent[charge.key] = (value, now + charge.ttl_s)
            after.append(value)
        if len(self._spent) > 4096:
            for key in [k for k, (_, expires) in self._spent.items() if expires <= now]:
                del self._spent[key]
        return Reservation(None, tuple(after), False)

    async def reserve(self, charges: Sequence[Charge], amount_usd: float) -> Reservation:
        return self.reserve_now(charges, amount_usd)

    def mirror(self, charges: Sequence[Charge], spent: Sequence[float]) -> None:
        """Take what the shared store said of these budgets as the local view (for when it cannot be reached)."""
        now = time.monotonic()
        for charge, value in zip(charges, spent, strict=False):
            self._spent[charge.key] = (value, now + charge.ttl_s)

    def settle_now(self, adjustments: Sequence[tuple[Charge, float]]) -> None:
        now = time.monotonic()
        for charge, delta in adjustments:
            value = max(0.0, self._get(charge.key, now) + delta)
            self._spent[charge.key] = (value, now + charge.ttl_s)

    def settle(self, adjustments: Sequence[tuple[Charge, float]]) -> None:
        self.settle_now(adjustments)

    @property
    def settling(self) -> int:
        return 0

    async def drain(self) -> None:
        return None

    def publish(self, event: LiveEvent) -> None:
        return None  # in one process the live state is already where every request reads it

    def subscribe(self, callback: Callable[[LiveEvent], None]) -> None:
        self._callbacks.append(callback)


def _over(spent: float, amount: float, limit: float) -> bool:
    return spent >= limit or spent + amount > limit


# KEYS: one budget key per charge. ARGV[1]: the amount; then per key its limit and its time to live.
# Checks every budget first and charges none if one would go over; numbers come back as strings (Lua numbers
# would be cut to integers on the way out).
_RESERVE_LUA = """
local amount = tonumber(ARGV[1])
local spent = {}
for i, key in ipairs(KEYS) do
  local value = tonumber(redis.call('GET', key) or '0')
  spent[i] = tostring(value)
  local limit = tonumber(ARGV[2 * i])
  if value >= limit or value + amount > limit then
    return {i, spent}
  end
end
for i, key in ipairs(KEYS) do
  spent[i] = redis.call('INCRBYFLOAT', key, ARGV[1])
  if redis.call('TTL', key) < 0 then
    redis.call('EXPIRE', key, ARGV[2 * i + 1])
  end
end
return {0, spent}
"""


class RedisState:
    """Budget spending and live events shared through Redis (``redis://HOST:PORT/DB``)."""

    def __init__(self, url: str, *, instance: str | None = None, channel: str = EVENTS_CHANNEL) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:  # pragma: no cover - redis is a dependency; said plainly if it went missing
            raise StateError("--state redis://...: the redis package is not installed (pip install redis)") from None
        self._aioredis = aioredis
        self.url = url
        self.description = redacted_url(url)
        self.instance = instance or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.channel = channel
        self.degraded = 0
        self.on_degraded: Callable[[int], None] | None = None
        self.local = InProcessState()
        """The local view: the spending Redis last reported, charged on while Redis is down."""
        self._client: Any = None
        self._script: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        """The loop it was started on: :meth:`publish` is called there (it is not thread-safe)."""
        self._down_until = 0.0
        self._outbox: deque[str] = deque()
        self._settle_queue: dict[str, tuple[Charge, float]] = {}
        self._flushing = 0
        self._flush_lock = asyncio.Lock()
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._callbacks: list[Callable[[LiveEvent], None]] = []
        self.subscribed: asyncio.Event | None = None
        """Set while the subscription is listening (made in :meth:`start`, on the serving loop)."""
        self.received = 0
        """Live events from other processes handed to the subscribers."""

    def _connect(self, **options: Any) -> Any:
        """A client that tries once: a dead Redis costs a request one refused connection (or :data:`TIMEOUT_S`),
        never redis-py's default of ten retries with backoff, after which the local view answers anyway."""
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        return self._aioredis.Redis.from_url(
            self.url,
            socket_connect_timeout=TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            decode_responses=False,
            **options,
        )

    async def start(self) -> None:
        """Connect and start the publisher and the subscription, on the loop that serves requests."""
        self.loop = asyncio.get_running_loop()
        self._client = self._connect(socket_timeout=TIMEOUT_S)
        self._script = self._client.register_script(_RESERVE_LUA)
        self._wake = asyncio.Event()
        self.subscribed = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._publisher(), name="unhardcoded-state-publisher"),
            asyncio.create_task(self._subscriber(), name="unhardcoded-state-subscriber"),
        ]
        try:
            await asyncio.wait_for(self._client.ping(), TIMEOUT_S * 2)
        except Exception as exc:  # noqa: BLE001 - a proxy starts without Redis and uses it once it is there
            self._failed("connecting", exc)

    async def aclose(self) -> None:
        """Apply what is still queued, then stop."""
        if self._client is not None:
            await self.drain()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks = []
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ---- budgets

    def _usable(self) -> bool:
        return self._client is not None and time.monotonic() >= self._down_until

    def _degrade(self, n: int) -> None:
        if n > 0:
            self.degraded += n
            if self.on_degraded is not None:
                self.on_degraded(n)

    def _failed(self, what: str, exc: BaseException) -> None:
        self._degrade(1)
        if time.monotonic() >= self._down_until:
            logger.warning(
                "shared state %s unreachable while %s (%s): working from the local view, retrying in %.0f s",
                self.description,
                what,
                type(exc).__name__,
                RETRY_AFTER_S,
            )
        self._down_until = time.monotonic() + RETRY_AFTER_S

    async def reserve(self, charges: Sequence[Charge], amount_usd: float) -> Reservation:
        if self._usable():
            args: list[Any] = [repr(float(amount_usd))]
            for charge in charges:
                args += [repr(float(charge.limit_usd)), charge.ttl_s]
            try:
                refused, spent = await self._script(keys=[c.key for c in charges], args=args)
            except (TimeoutError, self._aioredis.RedisError, OSError) as exc:
                self._failed("reserving budget", exc)
            else:
                values = tuple(float(v) for v in spent)
                self.local.mirror(charges, values)
                return Reservation(int(refused) - 1 if int(refused) else None, values, True)
        else:
            self._degrade(1)
        return self.local.reserve_now(charges, amount_usd)

    def settle(self, adjustments: Sequence[tuple[Charge, float]]) -> None:
        """Queue the adjustments; the flusher sends whatever is queued in one pipeline (one delta per budget key),
        so settling costs Redis one round trip per batch, not per request, and never the caller's time."""
        pending = self._settle_queue
        for charge, delta in adjustments:
            held = pending.get(charge.key)
            pending[charge.key] = (charge, delta + (held[1] if held is not None else 0.0))
        if self._wake is None:  # not started: nowhere to send it
            self.local.settle_now(list(pending.values()))
            pending.clear()
            return
        self._wake.set()

    @property
    def settling(self) -> int:
        return len(self._settle_queue) + self._flushing

    async def drain(self) -> None:
        """Wait until every queued settlement is applied (in Redis, or on the local view)."""
        while self._settle_queue or self._flushing:
            await self._flush_settlements()

    async def _flush_settlements(self) -> None:
        async with self._flush_lock:
            await self._flush_batch()

    async def _flush_batch(self) -> None:
        pending = self._settle_queue
        if not pending:
            return
        batch = list(pending.values())
        pending.clear()
        self._flushing = len(batch)
        try:
            if self._usable():
                try:
                    async with self._client.pipeline(transaction=False) as pipe:
                        for charge, delta in batch:
                            pipe.incrbyfloat(charge.key, repr(float(delta)))
                        totals = await pipe.execute()
                    self.local.mirror([c for c, _ in batch], [float(t) for t in totals])
                    return
                except (TimeoutError, self._aioredis.RedisError, OSError) as exc:
                    self._failed("settling budget", exc)
            else:
                self._degrade(1)
            self.local.settle_now(batch)
        finally:
            self._flushing = 0

    # ---- live events

    def publish(self, event: LiveEvent) -> None:
        """Queue ``event`` for the other proxies; it is sent after the caller's answer, in one pipeline with
        whatever else is queued."""
        if self._wake is None:
            return
        if len(self._outbox) >= OUTBOX_LIMIT:
            self._outbox.popleft()
            self._degrade(1)
        self._outbox.append(json.dumps({"origin": self.instance, "event": event}, separators=(",", ":")))
        self._wake.set()

    def subscribe(self, callback: Callable[[LiveEvent], None]) -> None:
        """Call ``callback`` with each live event another proxy publishes (never with this one's own)."""
        self._callbacks.append(callback)

    async def _publisher(self) -> None:
        """Sends, after the answers that made them, the queued settlements and live events."""
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush_settlements()
            if not self._outbox:
                continue
            if not self._usable():
                self._degrade(len(self._outbox))
                self._outbox.clear()  # a live fact this stale would mislead the others; they observe their own
                continue
            batch = list(self._outbox)
            self._outbox.clear()
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for message in batch:
                        pipe.publish(self.channel, message)
                    await pipe.execute()
            except (TimeoutError, self._aioredis.RedisError, OSError) as exc:
                self._degrade(len(batch) - 1)
                self._failed("publishing live events", exc)

    async def _subscriber(self) -> None:
        delay = 0.05
        while True:
            client = self._connect()  # no read timeout: it waits for events
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    assert self.subscribed is not None
                    self.subscribed.set()
                    delay = 0.05
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None and message.get("type") == "message":
                            self._deliver(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the subscription comes back when Redis does
                if self.subscribed is not None and self.subscribed.is_set():
                    self.subscribed.clear()
                    self._failed("listening for live events", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_AFTER_S)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()

    def _deliver(self, data: bytes) -> None:
        try:
            message = json.loads(data)
            origin, event = message["origin"], message["event"]
        except (ValueError, TypeError, KeyError):
            logger.warning("shared state: ignored a live event that is not one (%d bytes)", len(data))
            return
        if origin == self.instance or not isinstance(event, dict):
            return
        self.received += 1
        for callback in self._callbacks:
            try:
                callback(event)
            except Exception:
                logger.exception("shared state: applying a live event failed")


def redacted_url(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def open_state(url: str | None) -> SharedState:
    """The state backend a ``--state`` value names: none or ``memory:`` for in-process, ``redis://`` (or
    ``rediss://``, ``unix://``) for Redis."""
    if url is None or url in ("", "memory", "memory:", "in-process"):
        return InProcessState()
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise StateError(
            f"--state {redacted_url(url)!r}: expected redis://HOST:PORT/DB (or rediss://, unix://), or nothing "
            "for the in-process state"
        )
    if scheme != "unix":
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise StateError(f"--state {redacted_url(url)!r}: the port is not a number") from None
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise StateError(f"--state {redacted_url(url)!r}: the database is a number (redis://HOST:PORT/0)")
    return RedisState(url)
