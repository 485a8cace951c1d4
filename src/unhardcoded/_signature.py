"""Signed decisions: what a signature covers (one definition per version), Ed25519 keys, signing and checking bytes.

The signer (telemetry) and the verifiers (receipts, the processor, the CLI) sit
in different layers; both reach this module, so the signed content is defined
once: :func:`signed_content` over the receipt's fields by name, which a
Decision (``Decision.receipt_fields()``) and a rebuilt Receipt both give. The
``cryptography`` package is imported only when a key is loaded or made.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydantic_core import to_json

from .errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE_VERSION: Final = 2
"""The version new signatures are made under."""

_V1: Final = (
    "request_id",
    "trace_id",
    "span_id",
    "timestamp",
    "policy",
    "catalog_version",
    "candidates",
    "rejected",
    "selected",
    "fallback",
    "attempts",
    "answered_by",
    "latency_ms",
    "cost",
    "workflow",
    "client",
    "outcome",
    "features",
)
CONTENT_FIELDS: Final[Mapping[int, tuple[str, ...]]] = {
    # v1: the complete receipt as the router knows it when the decision ends. The trace and span ids bind the
    # signature to the decision span it travels on.
    1: _V1,
    # v2: v1, the live state the decision read (which replay decides from, docs/live.md), the cost as billed
    # with the source of the catalog's prices, and the budget that refused or redirected it. Fields a later
    # change adds to the receipt join under v3.
    2: (*_V1, "live", "billing", "budget"),
}
"""The receipt fields each signature version covers; a verifier knows exactly these versions."""

PRIVATE_KEY_SUFFIX: Final = ".key"
PUBLIC_KEY_SUFFIX: Final = ".pub"


class SigningKeyError(ConfigError):
    """A signing or public key file cannot be read, or is not an Ed25519 key."""


class UnknownSignatureVersion(ValueError):
    def __init__(self, version: object) -> None:
        super().__init__(f"unknown signature version {version!r}")


def signed_content(receipt: Mapping[str, Any], version: int = SIGNATURE_VERSION) -> bytes:
    """The canonical content a signature of ``version`` covers: ``{"v": version}`` then the version's fields of
    ``receipt``, in the version's order, as compact JSON (pydantic's serializer; a field it lacks counts as null).

    ``receipt`` maps receipt field names to their values, as receipt models or as receipt-shaped JSON (what
    ``Receipt.to_json_dict()`` gives): both serialize to the same bytes. Objects inside keep the key order of the
    receipt schema (docs/receipt.schema.json); ``tests/receipts/test_signing.py`` pins the v1 bytes of a known
    decision, so a change to that order, which would break every signature made before it, cannot go unnoticed.
    """
    fields = CONTENT_FIELDS.get(version) if version.__class__ is int else None
    if fields is None:
        raise UnknownSignatureVersion(version)
    get = receipt.get
    body: dict[str, Any] = {"v": version}
    for name in fields:
        body[name] = get(name)
    return to_json(body, by_alias=True, exclude=_NOT_COVERED.get(version))


_NOT_COVERED: Final[Mapping[int, Any]] = {
    # Added to the receipt after v1 was defined: a v1 signature's bytes stay what they were.
    1: {"attempts": {"__all__": {"start_ms"}}},
}


def signed_message(content: bytes) -> bytes:
    """What the Ed25519 key signs: a context label and the SHA-256 of the content (signing 2-4 KB directly costs
    the hashing twice over inside Ed25519; this is the same guarantee for 8 us less per decision)."""
    return _CONTEXT + hashlib.sha256(content).digest()


_CONTEXT: Final = b"unhardcoded.decision-signature\x00"


def key_id_of(public_raw: bytes) -> str:
    """A key's id: the first 16 hex characters of the SHA-256 of its raw 32-byte public key."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def from_b64url(text: str) -> bytes:
    """Decode base64url with or without padding; ValueError on anything else."""
    if not isinstance(text, str) or len(text) > 256:
        raise ValueError("not base64url text")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("not base64url text") from exc


def _raw_public(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    if len(data) > 64 * 1024:
        raise SigningKeyError(f"{path}: not a PEM {what} (over 64 KiB)")
    return data


class SigningKey:
    """An Ed25519 private key and its key id; :meth:`sign` gives a signature as base64url."""

    __slots__ = ("_sign", "key_id", "public_key")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self.public_key = private_key.public_key()
        self.key_id = key_id_of(_raw_public(self.public_key))
        self._sign = private_key.sign

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SigningKey:
        """Read a PKCS#8 PEM Ed25519 private key (unencrypted), as ``unhardcoded keys generate`` writes it."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        path = Path(path)
        data = _read(path, "signing key")
        try:
            key = load_pem_private_key(data, password=None)
        except (ValueError, TypeError):  # the library's reason is not repeated: nothing of the file is echoed
            raise SigningKeyError(
                f"{path}: not an unencrypted PEM private key (PKCS#8 Ed25519, as `unhardcoded keys generate` writes it)"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError(f"{path}: not an Ed25519 key (a {type(key).__name__})")
        return cls(key)

    @classmethod
    def generate(cls) -> SigningKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    def sign(self, content: bytes) -> str:
        """The signature of :func:`signed_content` bytes, as base64url."""
        return b64url(self._sign(signed_message(content)))


class PublicKeys(Mapping[str, "Ed25519PublicKey"]):
    """Public keys by key id: a verifier holds every key whose receipts it may be shown (old keys after rotation)."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for key in keys:
            self._keys[key_id_of(_raw_public(key))] = key

    def __getitem__(self, key_id: str) -> Ed25519PublicKey:
        return self._keys[key_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def check(self, key_id: str, value: str, content: bytes) -> bool:
        """Whether ``value`` (base64url) is the signature of ``content`` by the key ``key_id`` (which must be here)."""
        from cryptography.exceptions import InvalidSignature

        try:
            raw = from_b64url(value)
        except ValueError:
            return False
        if len(raw) != 64:
            return False
        try:
            self._keys[key_id].verify(raw, signed_message(content))
        except InvalidSignature:
            return False
        return True

    @classmethod
    def load(cls, paths: Iterable[str | os.PathLike[str]]) -> PublicKeys:
        """Read public keys (SubjectPublicKeyInfo PEM): each path a file, or a directory whose ``*.pub`` are read."""
        keys: list[Ed25519PublicKey] = []
        for given in paths:
            path = Path(given)
            if path.is_dir():
                found = sorted(p for p in path.iterdir() if p.name.endswith(PUBLIC_KEY_SUFFIX) and p.is_file())
                if not found:
                    raise SigningKeyError(f"{path}: no *{PUBLIC_KEY_SUFFIX} public key files in this directory")
                keys.extend(_load_public(p) for p in found)
            else:
                keys.append(_load_public(path))
        return cls(keys)


def _load_public(path: Path) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = _read(path, "public key")
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError):
        raise SigningKeyError(
            f"{path}: not a PEM public key (SubjectPublicKeyInfo Ed25519, as `unhardcoded keys generate` writes it)"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path}: not an Ed25519 public key (a {type(key).__name__})")
    return key


def write_key_pair(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path, str]:
    """Make an Ed25519 key pair: ``NAME.key`` (PKCS#8 PEM, mode 0600) and ``NAME.pub`` (SubjectPublicKeyInfo PEM)
    in ``directory``. Neither file may exist already. Returns both paths and the key id."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise SigningKeyError(f"--name: {name!r} is not a plain file name")
    directory = Path(directory)
    private_path = directory / f"{name}{PRIVATE_KEY_SUFFIX}"
    public_path = directory / f"{name}{PUBLIC_KEY_SUFFIX}"
    for path in (private_path, public_path):
        if path.exists():
            raise SigningKeyError(f"{path}: already exists; keys are never overwritten (choose another --name)")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    public = key.public_key()
    public_pem = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private_pem)
        os.chmod(private_path, 0o600)  # whatever the umask
        fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(public_pem)
    except FileExistsError as exc:
        raise SigningKeyError(f"{exc.filename}: already exists; keys are never overwritten") from None
    except OSError as exc:
        raise SigningKeyError(f"{exc.filename or directory}: cannot write the key: {exc.strerror or exc}") from None
    return private_path, public_path, key_id_of(_raw_public(public))
