"""Verifying a receipt's signature with the router's public keys: verified, invalid (and why) or unsigned.

The status is the verifier's answer about a receipt, never part of the receipt
(two receipts are equal whatever keys a reader holds). The content is the one
:func:`unhardcoded._signature.signed_content` defines for the signature's
version, computed from the receipt as it stands, so any field changed since the
router signed it, or a signature copied from another decision (the trace and
span ids are signed), makes it ``invalid``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .._signature import CONTENT_FIELDS, PublicKeys, SigningKeyError, UnknownSignatureVersion, signed_content
from .model import Receipt

__all__ = ["PublicKeys", "SignatureCheck", "SigningKeyError", "verify_receipt"]

SignatureStatus = Literal["verified", "invalid", "unsigned"]


@dataclass(frozen=True)
class SignatureCheck:
    """A verifier's answer for one receipt."""

    status: SignatureStatus
    reason: str | None = None
    """Why it is not verified (None when it is)."""
    key_id: str | None = None
    version: int | None = None

    def to_json_dict(self) -> dict[str, object]:
        return {"status": self.status, "reason": self.reason, "key_id": self.key_id, "version": self.version}

    def line(self) -> str:
        """One line for a terminal: ``verified (key …, v1)`` or ``invalid: why``."""
        if self.status == "verified":
            return f"signature verified (key {self.key_id}, version {self.version})"
        return f"signature {self.status}: {self.reason}"


def verify_receipt(receipt: Receipt, keys: PublicKeys) -> SignatureCheck:
    """Check ``receipt``'s signature against ``keys`` (the router's public keys, current and retired)."""
    signature = receipt.signature
    if signature is None:
        return SignatureCheck("unsigned", "the decision span carries no signature")
    key_id, version = signature.key_id, signature.version
    if version not in CONTENT_FIELDS:
        return SignatureCheck("invalid", f"unknown signature version {version}", key_id or None, version)
    if key_id not in keys:
        known = ", ".join(sorted(keys)) or "none given"
        return SignatureCheck(
            "invalid", f"unknown key id {key_id[:64]!r} (public keys held: {known})", key_id or None, version
        )
    try:
        content = signed_content(receipt.signed_fields(), version)
    except (UnknownSignatureVersion, ValueError, TypeError) as exc:  # a value pydantic cannot write as JSON
        return SignatureCheck("invalid", f"the receipt's content cannot be read: {exc}", key_id, version)
    if not keys.check(key_id, signature.value, content):
        reason = "signature does not match the receipt's content"
        if not receipt.complete:
            reason += " (the receipt is incomplete: some of the decision's telemetry is missing)"
        return SignatureCheck("invalid", reason, key_id, version)
    return SignatureCheck("verified", None, key_id, version)
