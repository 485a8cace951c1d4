"""Streams handed back to the caller unchanged, ending the client span when they end (both forms)."""

from __future__ import annotations

from ._async.streams import AsyncStreamWrapper
from ._sync.streams import StreamWrapper

__all__ = ["AsyncStreamWrapper", "StreamWrapper"]
