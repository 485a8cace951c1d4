"""Which policy a request is routed under: inline in the body, by name (body or header), or the default."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..catalog.model import Catalog
from ..errors import ConfigError, PolicyError
from ..policy import load_policy_file, validate_policy
from ..policy.model import Policy
from ..semconv import headers as H
from .errors import APIError, bad_request

POLICY_HEADER = H.X_UNHARDCODED_POLICY
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SUFFIXES = (".yaml", ".yml", ".json")
RESCAN_INTERVAL_S = 1.0
log = logging.getLogger("unhardcoded.server")
MAX_INLINE_RULES = 200
"""The most rules an inline policy may have: validating and compiling one costs ~15 us per rule on the event loop,
so 200 rules stay under 3 ms; a policy that needs more belongs in the policy directory."""
MAX_INLINE_POLICY_BYTES = 64 * 1024
"""The longest inline policy, as compact JSON."""
DEFAULT_INLINE_CACHE_BYTES = 32 * 1024 * 1024
"""The memory the validated inline policies kept for reuse may take, estimated as :data:`POLICY_WEIGHT` times their
JSON."""
POLICY_WEIGHT = 8
"""A validated policy takes about 8 times the length of its JSON in memory (measured with tracemalloc)."""


class PolicyDirectory:
    """The policies in a directory, by the ``name`` each declares; rescanned (at most once a second) on a miss.

    A user's directory is strict: a policy that does not load stops the proxy at start-up. The policies that ship
    with the package are not (``strict=False``): one that names a model the user's catalog lacks is left out and
    the reason kept in :attr:`skipped`, so a catalog of one's own is never blocked by policies one did not write.
    """

    def __init__(self, path: str | Path | None, catalog: Catalog, *, strict: bool = True) -> None:
        self.path = Path(path) if path is not None else None
        self.catalog = catalog
        self._by_name: dict[str, Policy] = {}
        self._lock = threading.Lock()
        self._scanned_at = 0.0
        self.skipped: dict[str, str] = {}
        """File stem -> why that policy was left out (non-strict directories only)."""
        if self.path is not None:
            if not self.path.is_dir():
                raise ConfigError(f"{self.path}: policy directory does not exist")
            self._by_name = self._scan(strict=strict, skipped=self.skipped)
            self._scanned_at = time.monotonic()
            for stem, why in self.skipped.items():
                log.warning("policy %r left out: %s", stem, why)

    @classmethod
    def of(cls, policies: Mapping[str, Policy] | list[Policy], catalog: Catalog) -> PolicyDirectory:
        """A fixed set of policies (no directory), for embedding and tests."""
        book = cls(None, catalog)
        items = policies.values() if isinstance(policies, Mapping) else policies
        book._by_name = {p.name: p for p in items}
        return book

    def _scan(self, strict: bool, skipped: dict[str, str] | None = None) -> dict[str, Policy]:
        found: dict[str, Policy] = {}
        assert self.path is not None
        for file in sorted(self.path.iterdir()):
            if file.suffix.lower() not in _SUFFIXES or not file.is_file():
                continue
            try:
                policy = load_policy_file(file, self.catalog)
            except PolicyError as exc:
                if strict:
                    raise
                if skipped is not None:
                    skipped[file.stem] = str(exc)
                continue  # a file being edited; the last good version stays in force
            if policy.name in found and strict:
                raise ConfigError(f"{file}: policy name {policy.name!r} is also used by another file in {self.path}")
            found.setdefault(policy.name, policy)
        return found

    def get(self, name: str) -> Policy | None:
        policy = self._by_name.get(name)
        if policy is not None or self.path is None:
            return policy
        with self._lock:
            if time.monotonic() - self._scanned_at >= RESCAN_INTERVAL_S:
                self._scanned_at = time.monotonic()
                self._by_name = {**self._by_name, **self._scan(strict=False)}
        return self._by_name.get(name)

    @property
    def names(self) -> list[str]:
        return sorted(self._by_name)

    def missing(self, name: str) -> str:
        """Why there is no policy ``name``: unknown (with the known names), or left out and why."""
        if name in self.skipped:
            return f"policy {name!r} is left out: {self.skipped[name]}"
        return f"unknown policy {name!r} (known: {', '.join(self.names) or 'none'})"


class PolicyResolver:
    """Turns what a request says about its policy into a validated :class:`Policy`, or an APIError."""

    def __init__(
        self,
        directory: PolicyDirectory,
        default: str | None = None,
        max_inline: int = 256,
        max_inline_bytes: int = DEFAULT_INLINE_CACHE_BYTES,
    ) -> None:
        self.directory = directory
        self.default = default
        self._inline: OrderedDict[str, Policy] = OrderedDict()
        self._max_inline = max_inline
        self._max_inline_bytes = max_inline_bytes
        self.inline_bytes = 0
        """The estimated memory of the inline policies kept, in bytes (bounded by ``max_inline_bytes``)."""
        if default is not None and directory.get(default) is None:
            known = ", ".join(directory.names) or "none"
            why = directory.skipped.get(default)
            raise ConfigError(
                f"--default-policy {default}: policy {default!r} is left out: {why}"
                if why is not None
                else f"--default-policy {default}: no policy named {default!r} (known: {known})"
            )

    def resolve(self, body: Mapping[str, Any], header: str | None) -> Policy:
        """Body ``policy`` (object or name) first, then the ``X-Unhardcoded-Policy`` header, then the default."""
        inline = body.get("policy")
        if isinstance(inline, dict):
            return self._inline_policy(inline)
        if isinstance(inline, str):
            return self._named(inline, "policy")
        if inline is not None:
            raise bad_request("policy: must be a policy object (sigma-pol/v1) or a policy name", param="policy")
        if header is not None:
            return self._named(header.strip(), POLICY_HEADER)
        if self.default is not None:
            policy = self.directory.get(self.default)
            if policy is not None:
                return policy
        raise bad_request(
            "no policy: send `policy` in the body (an object or a name), the X-Unhardcoded-Policy header, "
            "or start the proxy with --default-policy",
            param="policy",
            code="missing_policy",
        )

    def _named(self, name: str, where: str) -> Policy:
        if not _NAME.match(name):
            raise bad_request(
                f"{where}: {name[:80]!r} is not a policy name (lowercase letters, digits, '.', '_', '-')",
                param="policy",
            )
        policy = self.directory.get(name)
        if policy is None:
            raise APIError(404, f"{where}: {self.directory.missing(name)}", param="policy", code="policy_not_found")
        return policy

    def _inline_policy(self, doc: dict[str, Any]) -> Policy:
        rules = doc.get("rules")
        if isinstance(rules, list) and len(rules) > MAX_INLINE_RULES:
            raise _too_large(f"policy.rules: {len(rules)} rules; an inline policy may have at most {MAX_INLINE_RULES}")
        key = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
        if len(key) > MAX_INLINE_POLICY_BYTES:
            raise _too_large(
                f"policy: {len(key)} bytes of JSON; an inline policy may have at most {MAX_INLINE_POLICY_BYTES}"
            )
        policy = self._inline.get(key)
        if policy is not None:
            self._inline.move_to_end(key)
            return policy
        try:
            policy = validate_policy(doc, self.directory.catalog, source="policy")
        except PolicyError as exc:
            raise APIError(422, str(exc), param="policy", code="invalid_policy") from None
        self._inline[key] = policy
        self.inline_bytes += POLICY_WEIGHT * len(key)
        while len(self._inline) > self._max_inline or self.inline_bytes > self._max_inline_bytes:
            evicted, _ = self._inline.popitem(last=False)
            self.inline_bytes -= POLICY_WEIGHT * len(evicted)
        return policy


def _too_large(message: str) -> APIError:
    return APIError(
        413,
        message + " (put a larger policy in the policy directory and name it)",
        param="policy",
        code="policy_too_large",
    )
