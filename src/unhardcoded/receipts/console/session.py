"""Signing in to a console behind a token: the cookie a browser keeps instead of a bearer header.

The cookie holds an HMAC of the token (never the token), so it is as good as the token for the console's pages
and changes when the token does. It is ``HttpOnly`` (no script reads it) and ``SameSite=Strict`` (no other site's
page sends it), and ``Secure`` when the console is served over HTTPS.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qs

COOKIE = "unhardcoded_console"
MAX_FORM_BYTES = 8192
_CONTEXT = b"unhardcoded console session v1"


def session_value(token: str) -> str:
    return hmac.new(token.encode("utf-8"), _CONTEXT, hashlib.sha256).hexdigest()


def cookie_matches(value: str | None, token: str | None) -> bool:
    """Whether a request's cookie value signs it in; no token configured lets everyone in."""
    if token is None:
        return True
    if not value:
        return False
    return hmac.compare_digest(value.encode("utf-8", "surrogateescape"), session_value(token).encode())


def token_matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode("utf-8"))


def set_cookie(token: str, secure: bool, path: str = "/") -> str:
    """The ``Set-Cookie`` value that signs a browser in for the session (no Max-Age: it ends with the browser)."""
    return f"{COOKIE}={session_value(token)}; Path={path}; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")


def clear_cookie(secure: bool, path: str = "/") -> str:
    return f"{COOKIE}=; Path={path}; Max-Age=0; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")


def read_form(body: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body's fields (the first of each); a body over 8 KiB or not UTF-8
    reads as empty."""
    if len(body) > MAX_FORM_BYTES:
        return {}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return {}
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True, max_num_fields=20).items()}


def local_path(target: str | None, default: str) -> str:
    """``target`` when it is a path on this server (``/...``, not ``//host`` nor a URL), else ``default``: a sign-in
    never sends the browser elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    if any(ord(c) < 0x20 for c in target):
        return default
    return target
