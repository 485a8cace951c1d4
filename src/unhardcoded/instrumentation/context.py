"""The policy in force for the openai and anthropic calls made in this context: ``with policy("support"):``."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

POLICY_ENV = "UNHARDCODED_POLICY"
"""Policy name sent when no ``policy(...)`` block is in force."""

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_policy: ContextVar[str | None] = ContextVar("unhardcoded_policy", default=None)


@contextmanager
def policy(name: str) -> Iterator[str]:
    """Route the openai and anthropic calls made inside the block under the router's policy ``name``.

    Works across threads started inside it only if they copy the context; works
    across ``await`` as any context variable does.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"{name!r} is not a policy name: lowercase letters, digits, '.', '_', '-', at most 64, "
            "starting with a letter or digit"
        )
    token = _policy.set(name)
    try:
        yield name
    finally:
        _policy.reset(token)


def current_policy() -> str | None:
    """The policy of the innermost ``policy(...)`` block, else ``$UNHARDCODED_POLICY``, else None."""
    name = _policy.get()
    if name is not None:
        return name
    return os.environ.get(POLICY_ENV, "").strip() or None
