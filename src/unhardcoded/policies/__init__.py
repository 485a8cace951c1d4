"""Policies that ship with the package: used by `unhardcoded demo` and as the proxy's default directory."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def builtin_policy_dir() -> Path:
    return Path(str(resources.files("unhardcoded.policies")))
