"""Errors the proxy answers with, in the OpenAI error body shape so every OpenAI client can read them."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from ..errors import UnhardcodedError

ERROR_TYPES = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "api_error",
    503: "api_error",
    504: "api_error",
}


ANTHROPIC_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class APIError(UnhardcodedError):
    """A request the proxy answers with an error: status, message naming what is wrong, and OpenAI's fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def anthropic_body(self) -> dict[str, Any]:
        """The error in Anthropic's shape, for ``/v1/messages``."""
        kind = ANTHROPIC_TYPES.get(self.status, "api_error" if self.status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": self.message}}

    def response(self, extra_headers: dict[str, str] | None = None, *, anthropic: bool = False) -> Response:
        headers = {**self.headers, **(extra_headers or {})}
        body = self.anthropic_body() if anthropic else self.body()
        try:
            content = json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:  # a message quoting a lone surrogate from the request: escaped, still JSON
            content = json.dumps(body).encode("ascii")
        return Response(
            content,
            status_code=self.status,
            headers=headers,
            media_type="application/json",
        )


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)
