"""Canonical JSON: the one byte form that fingerprints and content versions are computed over."""

from __future__ import annotations

import json
import math
from typing import Any


def normalize(value: Any) -> Any:
    """Fold values that mean the same into one form: integral floats become ints."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        return value
    if isinstance(value, dict):
        return {str(k): normalize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    raise TypeError(f"cannot canonicalize {type(value).__name__}")


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 characters kept as they are."""
    return json.dumps(normalize(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
