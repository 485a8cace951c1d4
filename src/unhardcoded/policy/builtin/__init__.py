"""Policies that ship with the package: used by `unhardcoded demo` and as the proxy's default directory."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def builtin_policy_dir() -> Path:
    """The directory holding the built-in policies (``support.yaml``, ``triage.yaml``)."""
    return Path(str(resources.files(__name__)))
