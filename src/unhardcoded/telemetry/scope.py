"""The instrumentation scope our tracers and meters are named by, and how an exception becomes an ``error.type``."""

from __future__ import annotations

from .._version import package_version

INSTRUMENTATION_SCOPE = "unhardcoded"

VERSION = package_version()


def error_type(error: BaseException) -> str:
    """The exception's class, qualified by its module unless it is a builtin: low-cardinality, as ``error.type`` wants."""
    cls = type(error)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
