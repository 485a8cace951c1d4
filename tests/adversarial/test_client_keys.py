"""Hostile client keys at the proxy's door (`serve --keys`): odd Authorization and x-api-key headers, keys that
are almost right, policies a key may not use, and keys files that are not what they should be.

Each request goes over a raw socket, so the bytes are exactly the hostile ones (no client library tidies them).
For each: the documented status (401 with ``WWW-Authenticate: Bearer``, 403 ``policy_not_allowed``, or the HTTP
parser's own 400 for bytes HTTP does not allow), never a 500 nor a traceback, no canary key in the answer, nothing
sent to a provider, no decision kept, and the proxy still serving afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.proxy_harness import HELLO, providers_for, serving
from unhardcoded.catalog import Catalog
from unhardcoded.router import Router
from unhardcoded.router.providers import ProviderClient
from unhardcoded.server import create_app
from unhardcoded.server.auth import ClientKeys, ClientKeysError
from unhardcoded.testing.simulator import SimulatedProvider

KEY = "sk-CANARY-clientkey-5b1e0c9d7a3f2e48"
"""The key of ``support-bot``, which may use the support policy only."""
OPS_KEY = "sk-CANARY-ops-1f2e3d4c5b6a7988"
"""The key of ``ops``, which may use any policy and send inline ones."""
CANARIES = (KEY, OPS_KEY)
DIGEST = hashlib.sha256(KEY.encode()).hexdigest()
KEYS_YAML = f"""\
keys:
  - name: support-bot
    sha256: {DIGEST}
    policies: [support]
  - name: ops
    sha256: {hashlib.sha256(OPS_KEY.encode()).hexdigest()}
    policies: ["*"]
    inline: true
"""
BODY = json.dumps({"messages": HELLO}).encode()
UNAUTHORIZED, FORBIDDEN = 401, 403
PARSER = 400
"""What the HTTP parser itself answers for bytes HTTP does not allow in a header (before the proxy sees them)."""
AUTH = b"authorization"
API_KEY = b"x-api-key"


@dataclass(frozen=True)
class Hostile:
    headers: tuple[tuple[bytes, bytes], ...]
    statuses: frozenset[int]
    body: bytes = BODY
    code: str | None = None


def _h(*headers: tuple[bytes, bytes], status: int | tuple[int, ...] = UNAUTHORIZED, **kw: Any) -> Hostile:
    statuses = frozenset(status if isinstance(status, tuple) else (status,))
    return Hostile(tuple(headers), statuses, **kw)


def _with(policy: Any, key: str = KEY) -> Hostile:
    return Hostile(
        ((AUTH, b"Bearer " + key.encode()),),
        frozenset({FORBIDDEN}),
        json.dumps({"messages": HELLO, "policy": policy}).encode(),
        "policy_not_allowed",
    )


K = KEY.encode()
CORPUS: dict[str, Hostile] = {
    # No key at all, or a header that carries none.
    "no-header": _h(),
    "authorization-empty": _h((AUTH, b"")),
    "authorization-spaces-only": _h((AUTH, b"     ")),
    "bearer-alone": _h((AUTH, b"Bearer")),
    "bearer-and-a-space": _h((AUTH, b"Bearer ")),
    "bearer-and-two-spaces": _h((AUTH, b"Bearer  ")),
    "x-api-key-empty": _h((API_KEY, b"")),
    # Another scheme, or the key where a scheme should be.
    "basic-scheme": _h((AUTH, b"Basic " + base64.b64encode(b"user:" + K))),
    "token-scheme": _h((AUTH, b"Token " + K)),
    "key-without-scheme": _h((AUTH, K)),
    "bearer-tab-key": _h((AUTH, b"Bearer\t" + K)),
    "bearerkey-no-space": _h((AUTH, b"Bearer" + K)),
    "x-api-key-with-bearer-prefix": _h((API_KEY, b"Bearer " + K)),
    # Almost the key.
    "wrong-key": _h((AUTH, b"Bearer sk-CANARY-not-ours")),
    "key-minus-last-char": _h((AUTH, b"Bearer " + K[:-1])),
    "key-plus-a-char": _h((AUTH, b"Bearer " + K + b"x")),
    "key-uppercased": _h((AUTH, b"Bearer " + K.upper())),
    "key-twice": _h((AUTH, b"Bearer " + K + b" " + K)),
    "the-keys-digest-as-key": _h((AUTH, b"Bearer " + DIGEST.encode())),
    "the-keys-digest-upper": _h((AUTH, b"Bearer " + DIGEST.upper().encode())),
    "empty-string-digest": _h((AUTH, b"Bearer " + hashlib.sha256(b"").hexdigest().encode())),
    # Bytes that are not ASCII, or not text.
    "latin-1-bytes": _h((AUTH, b"Bearer \xff\xfe\xfd" + K)),
    "utf-8-cyrillic": _h((AUTH, "Bearer ключ-сервиса".encode())),
    "utf-8-key-lookalike": _h((AUTH, "Bearer sk\u2010CANARY".encode())),
    "nul-in-key": _h((AUTH, b"Bearer sk-\x00" + K), status=(PARSER, UNAUTHORIZED)),
    "escape-sequences": _h((AUTH, b"Bearer \x1b[31m" + K), status=(PARSER, UNAUTHORIZED)),
    # Sizes.
    "key-4-kib-plus-one": _h((AUTH, b"Bearer " + b"k" * 4097)),
    "key-60-kib": _h((AUTH, b"Bearer " + b"k" * 60_000), status=(PARSER, UNAUTHORIZED, 431)),
    # Many headers.
    "two-authorization-same-key": _h((AUTH, b"Bearer " + K), (AUTH, b"Bearer " + K)),
    "two-authorization-right-then-wrong": _h((AUTH, b"Bearer " + K), (AUTH, b"Bearer sk-x")),
    "hundred-authorization-headers": _h(*[(AUTH, b"Bearer sk-%d" % i) for i in range(100)]),
    "two-x-api-key": _h((API_KEY, K), (API_KEY, K)),
    "bearer-and-x-api-key-differ": _h((AUTH, b"Bearer " + K), (API_KEY, OPS_KEY.encode())),
    "right-x-api-key-wrong-bearer": _h((AUTH, b"Bearer sk-x"), (API_KEY, K)),
    # A right key, asking for what it may not have.
    "policy-not-allowed-in-body": _with("triage"),
    "policy-star-as-a-name": _with("*"),
    "policy-name-10k-chars": _with("s" * 10_000),
    "policy-name-non-ascii": _with("suppört"),
    "inline-policy-not-allowed": _with({"schema": "sigma-pol/v1", "name": "mine", "rules": []}),
    "inline-policy-not-allowed-2mib": _with(
        {"schema": "sigma-pol/v1", "name": "big", "rules": [{"id": f"r{i}"} for i in range(40_000)]}
    ),
    "header-policy-not-allowed": Hostile(
        ((AUTH, b"Bearer " + K), (b"x-unhardcoded-policy", b"triage")),
        frozenset({FORBIDDEN}),
        code="policy_not_allowed",
    ),
    "header-policy-latin-1": Hostile(
        ((AUTH, b"Bearer " + K), (b"x-unhardcoded-policy", b"\xe9t\xe9")),
        frozenset({FORBIDDEN}),
        code="policy_not_allowed",
    ),
    # The key that may use any policy still gets the resolver's 400 for what is not a policy name.
    "any-key-policy-star": Hostile(
        ((AUTH, b"Bearer " + OPS_KEY.encode()),),
        frozenset({400}),
        json.dumps({"messages": HELLO, "policy": "*"}).encode(),
    ),
}
HOSTILE_INPUTS = len(CORPUS)


def raw_request(
    port: int, headers: tuple[tuple[bytes, bytes], ...], body: bytes = BODY, path: bytes = b"/v1/chat/completions"
) -> tuple[int, dict[str, str], bytes]:
    """One request, written byte for byte; the status, headers and body of the answer."""
    head = b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" % path
    head += b"Content-Length: %d\r\nConnection: close\r\n" % len(body)
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(head + b"\r\n" + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before the whole request was written: the answer is still to be read
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    first, _, rest = data.partition(b"\r\n\r\n")
    lines = first.split(b"\r\n")
    assert lines and lines[0].startswith(b"HTTP/1.1 "), data[:200]
    status = int(lines[0].split(b" ", 2)[1])
    answer_headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        answer_headers[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
    return status, answer_headers, rest


class Door:
    """The proxy with client keys, its simulated providers, and what it has spent and kept so far."""

    def __init__(self, server: Any, sims: dict[str, SimulatedProvider]) -> None:
        self.server = server
        self.sims = sims

    @property
    def port(self) -> int:
        return int(self.server.port)

    def spent(self) -> int:
        return sum(len(sim.requests) for sim in self.sims.values())

    def kept(self) -> int:
        return len(self.server.proxy.recent._items)

    def serving(self) -> bool:
        return httpx.get(f"{self.server.base_url}/healthz", timeout=10).status_code == 200


@pytest.fixture(scope="module")
def door() -> Iterator[Door]:
    sims = {}
    for name in sorted({str(m.get("provider")) for m in Catalog.builtin().models}):
        sims[name] = SimulatedProvider(name).start()
    client = ProviderClient(providers_for(sims, timeout_s=5.0))
    app = create_app(
        Router(Catalog.builtin(), client), default_policy="support", client_keys=ClientKeys.parse(KEYS_YAML, "keys")
    )
    try:
        with serving(app, closing=[client]) as server:
            yield Door(server, sims)
    finally:
        client.close()
        for sim in sims.values():
            sim.close()


def assert_refused(door: Door, hostile: Hostile, status: int, headers: dict[str, str], body: bytes) -> None:
    assert status in hostile.statuses, (status, body[:300])
    assert b"Traceback" not in body and b"Internal Server Error" not in body
    for key in CANARIES:
        assert key.encode() not in body and all(key not in v for v in headers.values())
    if not body.startswith(b"{"):
        assert status in (PARSER, 431), (status, body[:300])
        return  # the HTTP parser's own answer: the request never reached the proxy
    error = json.loads(body)["error"]  # OpenAI's shape
    assert error["type"] == "invalid_request_error" and error["message"]
    if status == UNAUTHORIZED:
        assert headers["www-authenticate"] == "Bearer" and error["code"] == "invalid_api_key"
    if hostile.code is not None:
        assert error["code"] == hostile.code


@pytest.mark.parametrize("name", list(CORPUS))
def test_hostile_client_key_is_refused(door: Door, name: str) -> None:
    hostile = CORPUS[name]
    spent, kept = door.spent(), door.kept()
    status, headers, body = raw_request(door.port, hostile.headers, hostile.body)
    assert_refused(door, hostile, status, headers, body)
    assert door.spent() == spent, "a refused request reached a provider"
    assert door.kept() == kept, "a refused request left a decision behind"
    assert door.serving()


def test_the_right_key_still_gets_in_after_the_corpus(door: Door) -> None:
    """The corpus above refuses by key, not by accident: the same door lets the right key through."""
    for headers in (((AUTH, b"Bearer " + K),), ((AUTH, b"bearer " + K),), ((API_KEY, K),)):
        status, answer, body = raw_request(door.port, headers)
        assert status == 200, body[:300]
        assert answer["x-unhardcoded-policy"] == "support"
        assert K not in body


@settings(max_examples=150, deadline=None)
@given(value=st.binary(max_size=200).filter(lambda b: b"\r" not in b and b"\n" not in b))
def test_fuzzed_authorization_values_are_401_or_the_parsers_400(door: Door, value: bytes) -> None:
    status, headers, body = raw_request(door.port, ((AUTH, value),))
    assert status in (UNAUTHORIZED, PARSER), (value, status, body[:200])
    assert b"Traceback" not in body
    if status == UNAUTHORIZED:
        assert json.loads(body)["error"]["code"] == "invalid_api_key"


@settings(max_examples=150, deadline=None)
@given(value=st.text(max_size=80))
def test_fuzzed_x_unhardcoded_policy_with_a_right_key_is_never_a_500(door: Door, value: str) -> None:
    header = value.encode("utf-8").replace(b"\r", b"").replace(b"\n", b"")
    status, _, body = raw_request(door.port, ((AUTH, b"Bearer " + K), (b"x-unhardcoded-policy", header)))
    # support-bot may use "support" alone: that is 200; anything else is 403, or the parser's 400 for odd bytes.
    assert status in (200, FORBIDDEN, PARSER), (value, status, body[:200])
    assert b"Traceback" not in body


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=16), inner, max_size=6),
    max_leaves=30,
)
_ENTRY = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=70) | st.integers(),
        "sha256": st.text(alphabet="0123456789abcdefABCDEF", min_size=60, max_size=66) | _JSON,
        "policies": st.lists(st.sampled_from(["support", "*", "Triage", "", "a b"]), max_size=3) | _JSON,
        "default_policy": st.sampled_from(["support", "triage", "*"]) | _JSON,
        "inline": st.booleans() | _JSON,
        "key": st.text(max_size=20),
        "extra": _JSON,
    },
)


@settings(max_examples=200, deadline=None)
@given(doc=st.one_of(_JSON, st.fixed_dictionaries({"keys": st.lists(_ENTRY, max_size=4) | _JSON})))
def test_fuzzed_keys_files_load_or_say_what_is_wrong(doc: Any) -> None:
    for text, json_only in ((json.dumps(doc), True), (json.dumps(doc, indent=2), False)):
        try:
            loaded = ClientKeys.parse(text, "keys.json", json_only=json_only)
        except ClientKeysError as exc:
            message = str(exc)
            assert message.startswith("keys.json: ") and "\n" not in message.strip()
            continue
        for entry in loaded.entries:  # what loads is what the proxy can use
            assert len(entry.digest) == 32 and entry.name and (entry.policies or entry.inline)
