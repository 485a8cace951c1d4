"""Signed decisions: with a signing key configured, each decision span ends carrying the router's Ed25519 signature.

The key comes from :func:`use_signing_key` (``configure(signing_key=...)``,
``unhardcoded serve --signing-key``) or, when none was given, from the file
``UNHARDCODED_SIGNING_KEY`` names. What is signed is defined once, in
:mod:`unhardcoded._signature`; docs/signing.md says how to verify.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Final

from .._construct import construct
from .._signature import SIGNATURE_VERSION, SigningKey, signed_content
from ..router.decision import Signature
from ..semconv import attributes as A

if TYPE_CHECKING:
    from ..router.decision import Decision

SIGNING_KEY_ENV: Final = "UNHARDCODED_SIGNING_KEY"

_VALUE, _KEY_ID, _VERSION = (
    A.UNHARDCODED_SIGNATURE_VALUE,
    A.UNHARDCODED_SIGNATURE_KEY_ID,
    A.UNHARDCODED_SIGNATURE_VERSION,
)


class DecisionSigner:
    """Signs a decision's receipt content (version :data:`SIGNATURE_VERSION`) with one key."""

    __slots__ = ("key",)

    def __init__(self, key: SigningKey) -> None:
        self.key = key

    @property
    def key_id(self) -> str:
        return self.key.key_id

    def sign(self, decision: Decision, outcome: str | None = None) -> Signature:
        """The signature of ``decision`` as recorded (``outcome``: the one on its span, when it differs)."""
        value = self.key.sign(signed_content(decision.receipt_fields(outcome)))
        return construct(Signature, {"version": SIGNATURE_VERSION, "key_id": self.key.key_id, "value": value})


def signature_attributes(signature: Signature) -> dict[str, Any]:
    """The decision span's attributes for ``signature``."""
    return {_VALUE: signature.value, _KEY_ID: signature.key_id, _VERSION: signature.version}


class _Configured:
    __slots__ = ("explicit", "signer")

    def __init__(self) -> None:
        self.explicit = False
        self.signer: DecisionSigner | None = None


_CONFIGURED = _Configured()


def use_signing_key(key: SigningKey | str | os.PathLike[str] | None) -> DecisionSigner | None:
    """Sign every decision from now on with ``key`` (a :class:`~unhardcoded._signature.SigningKey` or the path of
    a PEM private key); None stops signing. Raises :class:`~unhardcoded._signature.SigningKeyError` for a key
    file that cannot be used."""
    signer = None if key is None else DecisionSigner(key if isinstance(key, SigningKey) else SigningKey.load(key))
    _CONFIGURED.signer, _CONFIGURED.explicit = signer, True
    return signer


def configured_signer() -> DecisionSigner | None:
    """The signer decisions are signed with: the one :func:`use_signing_key` set, else the key in
    ``UNHARDCODED_SIGNING_KEY`` (read once), else None."""
    if not _CONFIGURED.explicit:
        path = os.environ.get(SIGNING_KEY_ENV)
        use_signing_key(path or None)
    return _CONFIGURED.signer


def signer_of(key: SigningKey | str | os.PathLike[str] | None) -> DecisionSigner | None:
    """A signer for one :class:`RouterTelemetry` of its own (not the process-wide one)."""
    if key is None:
        return None
    return DecisionSigner(key if isinstance(key, SigningKey) else SigningKey.load(key))
