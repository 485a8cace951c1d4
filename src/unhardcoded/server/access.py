"""The proxy's access log: uvicorn's line, written once a request is over instead of before its body is sent.

uvicorn logs a request as its response starts, on the caller's path: the
formatting and the write to stdout come before the answer's body goes out. The
same line written after the request (for a chat completion, after its telemetry)
costs the caller nothing.
"""

from __future__ import annotations

import copy
import logging
from typing import Any
from urllib.parse import quote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOGGER_NAME = "unhardcoded.access"
SERVER_LOGGER_NAME = "unhardcoded.server"
CLIENT_CLOSED_REQUEST = 499
"""The status logged for a request whose caller went away before it was answered (nginx's convention); never sent."""
logger = logging.getLogger(LOGGER_NAME)


def log_config(base: dict[str, Any]) -> dict[str, Any]:
    """uvicorn's logging config ``base`` with this log added, formatted and handled as ``uvicorn.access`` is, and
    the proxy's own log (``unhardcoded.server``) as ``uvicorn.error`` is."""
    config = copy.deepcopy(base)
    loggers = config.setdefault("loggers", {})
    loggers[LOGGER_NAME] = {"handlers": ["access"], "level": "INFO", "propagate": False}
    # The proxy's own lines (a caller that went away, a slow client cut off) go where uvicorn's server log goes.
    loggers[SERVER_LOGGER_NAME] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


class AccessLog:
    """One line per HTTP request, ``INFO: 127.0.0.1:50412 - "POST /v1/chat/completions HTTP/1.1" 200 OK``.

    A request whose caller went away before it was answered is logged with 499 (nginx's "client closed request").
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        status = 0
        raised = True

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
            raised = False
        finally:
            # An app that raised before answering gets uvicorn's 500; one that returned without answering saw its
            # caller go away.
            client = scope.get("client")
            path = quote(scope["path"])
            if scope.get("query_string"):
                path += "?" + scope["query_string"].decode("ascii", "replace")
            logger.info(
                '%s - "%s %s HTTP/%s" %d',
                f"{client[0]}:{client[1]:d}" if client else "",
                scope["method"],
                path,
                scope.get("http_version", "1.1"),
                status or (500 if raised else CLIENT_CLOSED_REQUEST),
            )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)
