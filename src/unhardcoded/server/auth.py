"""Client keys: who may call the proxy, and under which policies (``unhardcoded serve --keys FILE``).

The keys file names each client and holds the SHA-256 of its key, never the key::

    keys:
      - name: support-bot
        sha256: 5e8848...          # `unhardcoded keys hash` prints it
        policies: [support]        # the policies it may name; "*" for any
        default_policy: support    # used when its request names none
        inline: false              # whether it may send a policy in the body (default false)
        budget: {usd: 20, window: 24h}   # what its requests may spend per window (optional; docs/budgets.md)

A request's ``Authorization: Bearer`` key (or ``x-api-key``, as Anthropic clients send it) is hashed and
looked up by digest, so no comparison runs over a stored key; it is the caller's key to this proxy and is
never forwarded to a provider. A missing or unknown key gets 401 and a policy the key may not use 403, both
in OpenAI's error shape. Only the key's name goes further: onto the decision span and the receipt.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from starlette.types import ASGIApp, Receive, Scope, Send

from .._documents import key_path, parse_document
from ..errors import ConfigError
from ..policy.load import budget_problems
from ..policy.model import Budget, Policy
from .errors import APIError

CLIENT_SCOPE_KEY = "unhardcoded.client"
"""Where :class:`ClientAuth` leaves the caller's :class:`ClientKey` in the ASGI scope."""

ANY_POLICY = "*"
MAX_KEY_BYTES = 4096
"""A presented key longer than this is refused without being hashed."""
OPEN_PATHS = frozenset({"/healthz"})
"""Paths answered without a key: the health check spends nothing and reveals no decision."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_POLICY_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")
_FIELDS = ("name", "sha256", "policies", "default_policy", "inline", "budget")
_RAW_KEY_FIELDS = frozenset({"key", "api_key", "apikey", "client_key", "secret", "token", "password", "bearer"})
_HASH_HINT = "run `unhardcoded keys hash` and give it the key on stdin"


class ClientKeysError(ConfigError):
    """A keys file cannot be read or is invalid; the message names the file, the line and the field path."""


@dataclass(frozen=True)
class ClientKey:
    """One entry of the keys file: a client's name, its key's digest and what it may route under."""

    name: str
    digest: bytes
    policies: frozenset[str]
    default_policy: str | None = None
    inline: bool = False
    line: int | None = None
    budget: Budget | None = None
    """What requests with this key may spend per window, whatever policy they route under."""

    def may_use(self, policy: str) -> bool:
        return ANY_POLICY in self.policies or policy in self.policies

    @property
    def allowed(self) -> str:
        """The policies it may name, for a message."""
        if ANY_POLICY in self.policies:
            return "any"
        return ", ".join(sorted(self.policies)) or "none"


def key_digest(key: str | bytes) -> str:
    """The hex SHA-256 of a key, as a keys file holds it."""
    return hashlib.sha256(key.encode("utf-8") if isinstance(key, str) else key).hexdigest()


class ClientKeys:
    """The entries of a keys file, by digest."""

    def __init__(self, entries: list[ClientKey], source: str = "keys") -> None:
        self.source = source
        self.entries = entries
        self._by_digest = {e.digest: e for e in entries}

    @classmethod
    def load(cls, path: str | Path) -> ClientKeys:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ClientKeysError(f"{p}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ClientKeysError(f"{p}: cannot read: {exc.__class__.__name__}") from None
        return cls.parse(text, str(p), json_only=p.suffix.lower() == ".json")

    @classmethod
    def parse(cls, text: str, source: str, *, json_only: bool = False) -> ClientKeys:
        doc = parse_document(text, source, ClientKeysError, json_only=json_only)
        return cls(_entries(doc, source, _field_lines(text)), source)

    def identify(self, presented: bytes) -> ClientKey | None:
        """The entry whose key was presented, or None. The key is hashed first: what is looked up is its digest."""
        digest = hashlib.sha256(presented).digest()
        entry = self._by_digest.get(digest)
        if entry is not None and hmac.compare_digest(entry.digest, digest):
            return entry
        return None

    def check_policies(self, known: Callable[[str], Policy | None], names: list[str]) -> None:
        """Every policy an entry names, its default included, is one ``known`` has (refused at start-up if not)."""
        for i, entry in enumerate(self.entries):
            where = f"{self.source}: " + (f"line {entry.line}: " if entry.line else "")
            wanted = sorted(p for p in entry.policies if p != ANY_POLICY)
            if entry.default_policy is not None and entry.default_policy not in wanted:
                wanted.append(entry.default_policy)
            for policy in wanted:
                if known(policy) is None:
                    field = "default_policy" if policy == entry.default_policy else "policies"
                    raise ClientKeysError(
                        f"{where}keys[{i}].{field}: no policy named {policy!r} (known: {', '.join(names) or 'none'})"
                    )


def _field_lines(text: str) -> dict[str, int]:
    """The 1-based line of each entry and field of a keys file (``keys[0]``, ``keys[0].sha256``), as far as the
    document composes as YAML (JSON does too); empty when it does not."""
    lines: dict[str, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return lines
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key_node, value in root.value:
        if key_node.value != "keys":
            lines[str(key_node.value)] = key_node.start_mark.line + 1
            continue
        lines["keys"] = key_node.start_mark.line + 1
        if not isinstance(value, yaml.SequenceNode):
            continue
        for i, item in enumerate(value.value[:10_000]):
            lines[f"keys[{i}]"] = item.start_mark.line + 1
            if isinstance(item, yaml.MappingNode):
                for field, _ in item.value[:64]:
                    lines[f"keys[{i}].{field.value}"] = field.start_mark.line + 1
    return lines


def _entries(doc: Any, source: str, lines: Mapping[str, int]) -> list[ClientKey]:
    def fail(path: str, message: str) -> ClientKeysError:
        line = lines.get(path)
        if line is None and "." in path:
            line = lines.get(path.split(".", 1)[0])
        return ClientKeysError(f"{source}: " + (f"line {line}: " if line else "") + f"{path}: {message}")

    if not isinstance(doc, Mapping):
        found = "an empty file" if doc is None else f"a {type(doc).__name__}"
        raise ClientKeysError(f"{source}: expected a mapping with a 'keys' list, found {found}")
    for field in doc:
        if field != "keys":
            raise fail(key_path("", field), "unknown field (a keys file holds one field, keys)")
    entries = doc.get("keys")
    if not isinstance(entries, list) or not entries:
        raise fail("keys", "must be a list of entries, each with name, sha256 and policies")
    out: list[ClientKey] = []
    names: dict[str, int] = {}
    digests: dict[bytes, int] = {}
    for i, entry in enumerate(entries):
        at = f"keys[{i}]"
        if not isinstance(entry, Mapping):
            raise fail(at, "must be a mapping with name, sha256 and policies")
        for field in entry:
            if str(field).lower() in _RAW_KEY_FIELDS:
                # Said before anything else, and the value is never repeated: it may be a live key.
                raise fail(
                    key_path(at, field),
                    "a keys file holds the SHA-256 of each key, never the key itself; remove the key from this "
                    f"file (and treat it as exposed) and write its digest as sha256 ({_HASH_HINT})",
                )
            if field not in _FIELDS:
                raise fail(key_path(at, field), f"unknown field (expected: {', '.join(_FIELDS)})")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise fail(
                f"{at}.name",
                "required: a name of 1-64 letters, digits, '.', '_', '-' or '@' (it goes on spans and receipts)",
            )
        if name in names:
            raise fail(f"{at}.name", f"{name!r} is also the name of keys[{names[name]}]")
        names[name] = i
        sha = entry.get("sha256")
        if not isinstance(sha, str) or not _HEX_DIGEST.match(sha):
            raise fail(
                f"{at}.sha256",
                "required: the 64 hex digits of the key's SHA-256, never the key itself "
                f"({_HASH_HINT}); if the key was written here, treat it as exposed",
            )
        digest = bytes.fromhex(sha)
        if digest in digests:
            raise fail(f"{at}.sha256", f"the same key as keys[{digests[digest]}]: each client needs its own key")
        digests[digest] = i
        inline = entry.get("inline", False)
        if not isinstance(inline, bool):
            raise fail(f"{at}.inline", "must be true or false")
        policies = entry.get("policies", [])
        if not isinstance(policies, list) or not all(isinstance(p, str) for p in policies):
            raise fail(f"{at}.policies", 'must be a list of policy names ("*" for any)')
        for j, policy in enumerate(policies):
            if policy != ANY_POLICY and not _POLICY_NAME.match(policy):
                raise fail(f"{at}.policies", f'[{j}] {policy[:80]!r} is not a policy name (or "*" for any)')
        if not policies and not inline:
            raise fail(f"{at}.policies", 'names no policy: list the ones this key may use, "*" for any')
        default = entry.get("default_policy")
        if default is not None:
            if not isinstance(default, str) or not _POLICY_NAME.match(default):
                raise fail(f"{at}.default_policy", "must be a policy name")
            if ANY_POLICY not in policies and default not in policies:
                raise fail(f"{at}.default_policy", f"{default!r} is not among the policies this key may use")
        budget = None
        if entry.get("budget") is not None:
            problems = budget_problems(entry["budget"], fallback=False)
            if problems:
                sub, message = problems[0]
                raise fail(f"{at}.budget{sub}", message)
            budget = Budget.model_validate(entry["budget"])
        out.append(ClientKey(name, digest, frozenset(policies), default, inline, lines.get(at), budget))
    return out


# --------------------------------------------------------------------------- requests


def unauthorized(message: str) -> APIError:
    """401 in OpenAI's shape (``invalid_api_key``), with the challenge RFC 9110 asks of a 401."""
    return APIError(
        401, message, code="invalid_api_key", type="invalid_request_error", headers={"WWW-Authenticate": "Bearer"}
    )


def presented_key(scope: Scope) -> tuple[bytes | None, str]:
    """The key a request presents, or None and why none could be taken. Never says what the key was."""
    authorization: list[bytes] = []
    api_key: list[bytes] = []
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            authorization.append(value)
        elif name == b"x-api-key":
            api_key.append(value)
    if not authorization and not api_key:
        return None, "no client key: send it as Authorization: Bearer <key> (or x-api-key: <key>)"
    if len(authorization) > 1 or len(api_key) > 1:
        return None, "more than one Authorization or x-api-key header: send the client key once"
    key = None
    if authorization:
        scheme, _, rest = authorization[0].strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return None, "Authorization: expected the Bearer scheme (Authorization: Bearer <key>)"
        key = rest.strip()
        if not key:
            return None, "Authorization: Bearer carries no key"
    if api_key:
        other = api_key[0].strip()
        if key is not None and other != key:
            return None, "Authorization and x-api-key carry different keys: send one client key"
        key = other
        if not key:
            return None, "x-api-key carries no key"
    assert key is not None
    if len(key) > MAX_KEY_BYTES:
        return None, f"the client key is longer than {MAX_KEY_BYTES} bytes"
    return key, ""


class ClientAuth:
    """ASGI middleware: a request with no valid client key is answered 401 here; one with a key goes on, its
    :class:`ClientKey` in the scope under :data:`CLIENT_SCOPE_KEY`."""

    def __init__(self, app: ASGIApp, keys: ClientKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        key, problem = presented_key(scope)
        client = self.keys.identify(key) if key is not None else None
        if client is None:
            response = unauthorized(problem or "unknown client key: the proxy's keys file has no entry for it")
            await response.response()(scope, receive, send)
            return
        scope[CLIENT_SCOPE_KEY] = client
        await self.app(scope, receive, send)


def client_of(scope: Scope) -> ClientKey | None:
    """The client key :class:`ClientAuth` took the request with, or None on a proxy without keys."""
    client: ClientKey | None = scope.get(CLIENT_SCOPE_KEY)
    return client


def not_allowed(client: ClientKey, what: str) -> APIError:
    return APIError(
        403,
        f"client key {client.name!r} may not use {what} (allowed: {client.allowed}"
        + ("; inline policies allowed" if client.inline else "")
        + ")",
        param="policy",
        code="policy_not_allowed",
        type="invalid_request_error",
    )


def check_policy_request(
    client: ClientKey, body: Mapping[str, Any], header: str | None, proxy_default: str | None
) -> str | None:
    """Refuse (403) what ``client`` may not route under, before the policy is looked up or validated.

    Returns the policy name to route under when the request names none and the key has a default of its own
    (the caller resolves it as if named); None to resolve the request as it is.
    """
    inline = body.get("policy")
    if isinstance(inline, dict):
        if not client.inline:
            raise not_allowed(client, "inline policies")
        return None
    if isinstance(inline, str):
        name = inline
    elif inline is not None:
        return None  # not a policy: the resolver says what is wrong with it
    elif header is not None:
        name = header.strip()
    elif client.default_policy is not None:
        return client.default_policy
    elif proxy_default is not None:
        name = proxy_default
    else:
        return None  # no policy at all: the resolver's 400
    if not client.may_use(name):
        raise not_allowed(client, f"policy {name[:80]!r}")
    return None
