"""Exception classes: every error a user can cause names what is wrong and where."""

from __future__ import annotations


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
    """No model in the catalog passes the policy for this request."""
