"""The cascade, in one place to import it from: plain and streamed, async (the source) and sync (generated).

The steps live in :mod:`.attempts`, the observer hooks in :mod:`.observe`, the loops in
``_async/cascade.py`` (and its generated twin ``_sync/cascade.py``).
"""

from ._async.cascade import AsyncStreamCascade, aexecute, aroute
from ._sync.cascade import StreamCascade, execute, route
from .attempts import CLIENT_DISCONNECTED, MAX_RETRY_AFTER_WAIT_S, PlannedAttempt, carries_output, plan
from .observe import NO_OBSERVER, AttemptObserver

__all__ = [
    "CLIENT_DISCONNECTED",
    "MAX_RETRY_AFTER_WAIT_S",
    "NO_OBSERVER",
    "AsyncStreamCascade",
    "AttemptObserver",
    "PlannedAttempt",
    "StreamCascade",
    "aexecute",
    "aroute",
    "carries_output",
    "execute",
    "plan",
    "route",
]
