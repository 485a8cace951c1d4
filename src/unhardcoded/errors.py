"""Exception classes: every error a user can cause names what is wrong and where."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .router.decision import Decision


class UnhardcodedError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(UnhardcodedError):
    """A configuration file or setting is invalid."""


class PolicyError(UnhardcodedError):
    """A policy document is invalid; the message names the field path and the fix."""


class CatalogError(UnhardcodedError):
    """A catalog document is invalid; the message names the field path."""


class RequestError(UnhardcodedError):
    """A chat-completions request body is invalid."""


class NoCandidateError(UnhardcodedError):
    """No model in the catalog passes the policy for this request; ``decision`` says which rule rejected each one."""

    def __init__(self, message: str, decision: Decision | None = None) -> None:
        super().__init__(message)
        self.decision = decision
