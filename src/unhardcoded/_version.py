"""The installed package's version: one lookup for the CLI, the User-Agent and the instrumentation scope."""

from __future__ import annotations

from functools import cache

UNKNOWN = "0+unknown"
"""The version of a source tree that was never installed (a PEP 440 local version, so tools that parse it can)."""


@cache
def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("unhardcoded")
    except PackageNotFoundError:
        return UNKNOWN
