"""The processor's HTTP side (Starlette): OTLP/HTTP ingest, the receipts query API, receipt pages, OpenAPI.

Ingest answers as the OTLP specification says: 200 with an
``ExportTraceServiceResponse`` (``partial_success`` when spans were refused),
400 for a payload that is not OTLP, 413 over the size limit, 415 for a media
type we do not read, 429 / 503 with ``Retry-After`` under backpressure. Every
answer to an export is in the request's encoding (protobuf or JSON). The
access log names the route, never the ids in the path or any header.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import UnhardcodedError
from ..receipts.stores import ROLLUP_KEYS, ReceiptQuery
from . import otlp
from .service import Backpressure

if TYPE_CHECKING:
    from ..receipts.stores import ReceiptStore, StoredReceipt
    from ..receipts.verify import PublicKeys, SignatureCheck
    from .service import ProcessorEngine

access_log = logging.getLogger(__name__ + ".access")

MAX_PAGE = 1000
DEFAULT_PAGE = 100


@dataclass(frozen=True)
class Settings:
    max_body_bytes: int = 16 * 1024 * 1024
    ingest_token: str | None = None
    query_token: str | None = None
    ack_timeout_s: float = 30.0
    access_log: bool = True
    public_keys: PublicKeys | None = None
    """The router's public keys (``--public-key``): receipts read are verified with them (on read, never at
    ingest); None: signatures are not checked."""


def token_matches(header: str | None, token: str | None) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time; no token configured lets everyone in."""
    if token is None:
        return True
    if not header or header[:7].lower() != "bearer ":
        return False
    return hmac.compare_digest(header[7:].strip().encode("utf-8", "surrogateescape"), token.encode("utf-8"))


# --------------------------------------------------------------------------- small answers


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _unauthorized() -> JSONResponse:
    return _error(
        401, "unauthorized", "missing or wrong bearer token", {"WWW-Authenticate": 'Bearer realm="unhardcoded"'}
    )


def _otlp_error(status: int, grpc_code: int, message: str, kind: str, retry_after_s: float | None = None) -> Response:
    headers = {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    media = otlp.PROTOBUF if kind == "protobuf" else otlp.JSON
    return Response(
        otlp.status_body(grpc_code, message, kind, retry_after_s), status_code=status, media_type=media, headers=headers
    )


class _BodyTooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _BodyTooLarge()
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def receipt_links(request_id: str, workflow_id: str | None = None) -> dict[str, str]:
    rid = quote(request_id, safe="")
    links = {"self": f"/receipts/{rid}", "page": f"/r/{rid}"}
    if workflow_id:
        links["workflow"] = f"/workflows/{quote(workflow_id, safe='')}"
        links["workflow_page"] = f"/w/{quote(workflow_id, safe='')}"
    return links


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        doc = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        offset = doc["o"]
    except (ValueError, KeyError, TypeError):
        raise ValueError("cursor is not one this API handed out") from None
    if not isinstance(offset, int) or offset < 0:
        raise ValueError("cursor is not one this API handed out")
    return offset


def _since(text: str | None, name: str) -> datetime | None:
    if text is None or text == "":
        return None
    from ..receipts.replay import parse_since

    try:
        return parse_since(text)
    except UnhardcodedError:
        raise ValueError(f"{name}={text!r}: expected a duration like 24h or 7d, or an ISO 8601 date/time") from None


def _bool(text: str | None, name: str) -> bool | None:
    if text is None or text == "":
        return None
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"{name}={text!r}: expected true or false")


# --------------------------------------------------------------------------- the app


def build_app(processor: ProcessorEngine | None, store: ReceiptStore, settings: Settings = Settings()) -> Starlette:
    """The Starlette app; ``processor`` None serves queries only (no ingest)."""
    from . import openapi, pages

    forwarder = processor.forwarder if processor is not None else None
    metrics = processor.metrics if processor is not None else None

    def query_allowed(request: Request) -> bool:
        return token_matches(request.headers.get("authorization"), settings.query_token)

    def ingest_allowed(request: Request) -> bool:
        return token_matches(request.headers.get("authorization"), settings.ingest_token)

    async def traces(request: Request) -> Response:
        ctype = request.headers.get("content-type")
        kind = "json" if "json" in (ctype or "").lower() else "protobuf"
        if not ingest_allowed(request):
            if metrics is not None:
                metrics.payload_rejected("unauthorized")
            return _otlp_error(401, otlp.UNAUTHENTICATED, "missing or wrong bearer token", kind)
        if processor is None:
            return _otlp_error(404, 12, "this server does not take exports", kind)
        try:
            kind = otlp.media_type(ctype)
            body = await _read_body(request, settings.max_body_bytes)
            body = otlp.inflate(body, request.headers.get("content-encoding"), settings.max_body_bytes)
            future = processor.submit_export(body, kind, "http")
            decoded = await asyncio.wait_for(asyncio.wrap_future(future), settings.ack_timeout_s)
        except Backpressure as exc:
            processor.metrics.payload_rejected("busy" if exc.busy else "unavailable")
            return _otlp_error(
                429 if exc.busy else 503,
                otlp.RESOURCE_EXHAUSTED if exc.busy else otlp.UNAVAILABLE,
                str(exc),
                kind,
                exc.retry_after_s,
            )
        except TimeoutError:
            processor.metrics.payload_rejected("unavailable")
            return _otlp_error(
                503, otlp.UNAVAILABLE, "the spool did not answer in time", kind, processor.config.retry_after_s
            )
        except _BodyTooLarge:
            if metrics is not None:
                metrics.payload_rejected("too_large")
            return _otlp_error(413, otlp.RESOURCE_EXHAUSTED, f"body over {settings.max_body_bytes} bytes", kind)
        except otlp.PayloadTooLarge as exc:
            if metrics is not None:
                metrics.payload_rejected("too_large")
            return _otlp_error(413, otlp.RESOURCE_EXHAUSTED, str(exc), kind)
        except otlp.UnsupportedMediaType as exc:
            if metrics is not None:
                metrics.payload_rejected("unsupported")
            return _otlp_error(415, otlp.INVALID_ARGUMENT, str(exc), kind)
        except otlp.PayloadError as exc:
            if metrics is not None:
                metrics.payload_rejected("malformed")
            return _otlp_error(400, otlp.INVALID_ARGUMENT, str(exc)[:500], kind)
        if forwarder is not None and decoded.accepted:
            # No message means the protobuf body was read through the bytes view, untouched.
            message = decoded.message
            forwarder.send(
                body if message is None or (decoded.untouched and kind == "protobuf") else message.SerializeToString()
            )
        media = otlp.PROTOBUF if kind == "protobuf" else otlp.JSON
        return Response(otlp.encode_response(otlp.response_message(decoded), kind), media_type=media)

    async def other_signal(request: Request) -> Response:
        """Metrics and logs are not ours: taken (so a Collector sending everything here sees no errors) and dropped."""
        ctype = request.headers.get("content-type")
        kind = "json" if "json" in (ctype or "").lower() else "protobuf"
        if not ingest_allowed(request):
            return _otlp_error(401, otlp.UNAUTHENTICATED, "missing or wrong bearer token", kind)
        try:
            await _read_body(request, settings.max_body_bytes)
        except _BodyTooLarge:
            return _otlp_error(413, otlp.RESOURCE_EXHAUSTED, f"body over {settings.max_body_bytes} bytes", kind)
        return Response(b"{}" if kind == "json" else b"", media_type=otlp.JSON if kind == "json" else otlp.PROTOBUF)

    def guarded(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            if not query_allowed(request):
                return _unauthorized()
            try:
                return await fn(request)
            except ValueError as exc:
                return _error(400, "bad_request", str(exc))
            except UnhardcodedError as exc:
                return _error(503, "store_unavailable", str(exc))

        run.__name__ = fn.__name__
        return run

    def read_verified(request_id: str) -> tuple[StoredReceipt | None, SignatureCheck | None]:
        """A stored receipt and, with public keys, its signature checked (here, on read: never at ingest)."""
        stored = store.get(request_id)
        if stored is None or settings.public_keys is None:
            return stored, None
        from ..receipts.verify import verify_receipt

        return stored, verify_receipt(stored.receipt, settings.public_keys)

    async def get_receipt(request: Request) -> Response:
        request_id = request.path_params["request_id"]
        stored, check = await run_in_threadpool(read_verified, request_id)
        if stored is None:
            return _error(404, "not_found", f"no receipt for request {request_id!r}")
        r = stored.receipt
        return JSONResponse(
            {
                "receipt": r.to_json_dict(),
                "signature": check.to_json_dict() if check is not None else None,
                "revision": stored.revision,
                "stored_at": stored.stored_at,
                "links": receipt_links(r.request_id, r.workflow.id if r.workflow else None),
            }
        )

    async def list_receipts(request: Request) -> Response:
        p = request.query_params
        limit_text = p.get("limit") or str(DEFAULT_PAGE)
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_PAGE:
            raise ValueError(f"limit={limit_text!r}: expected a whole number from 1 to {MAX_PAGE}")
        limit = int(limit_text)
        offset = _decode_cursor(p["cursor"]) if p.get("cursor") else 0
        query = ReceiptQuery(
            policy=p.get("policy") or None,
            model=p.get("model") or None,
            fallback=_bool(p.get("fallback"), "fallback"),
            workflow_id=p.get("workflow") or None,
            since=_since(p.get("since"), "since"),
            until=_since(p.get("until"), "until"),
            complete=_bool(p.get("complete"), "complete"),
            limit=limit + 1,
            offset=offset,
        )
        rows = await run_in_threadpool(store.query, query)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = _encode_cursor(offset + limit) if more else None
        kept = {k: v for k, v in p.items() if k != "cursor"}
        links: dict[str, Any] = {"self": "/receipts" + ("?" + urlencode(dict(p)) if p else "")}
        links["next"] = "/receipts?" + urlencode({**kept, "cursor": next_cursor}) if next_cursor else None
        return JSONResponse(
            {
                "items": [
                    {
                        "receipt": r.to_json_dict(),
                        "links": receipt_links(r.request_id, r.workflow.id if r.workflow else None),
                    }
                    for r in rows
                ],
                "count": len(rows),
                "next_cursor": next_cursor,
                "links": links,
            }
        )

    async def get_workflow(request: Request) -> Response:
        workflow_id = request.path_params["workflow_id"]
        wf = await run_in_threadpool(store.workflow, workflow_id)
        if wf is None:
            return _error(404, "not_found", f"no workflow {workflow_id!r}")
        wid = quote(wf.workflow_id, safe="")
        return JSONResponse(
            {
                "workflow": wf.model_dump(mode="json", by_alias=True),
                "links": {
                    "self": f"/workflows/{wid}",
                    "page": f"/w/{wid}",
                    "nodes": [receipt_links(n.request_id)["self"] for n in wf.nodes],
                },
            }
        )

    async def rollups(request: Request) -> Response:
        by = request.query_params.get("by", "policy")
        if by not in ROLLUP_KEYS:
            raise ValueError(f"by={by!r}: expected one of {', '.join(ROLLUP_KEYS)}")
        since = _since(request.query_params.get("since"), "since")
        rows = await run_in_threadpool(store.rollup, by, since)  # type: ignore[arg-type]  # checked against ROLLUP_KEYS
        return JSONResponse(
            {"by": by, "since": since.isoformat() if since else None, "rows": [r.to_json_dict() for r in rows]}
        )

    async def receipt_page(request: Request) -> Response:
        request_id = request.path_params["request_id"]
        stored, check = await run_in_threadpool(read_verified, request_id)
        if stored is None:
            return HTMLResponse(pages.not_found("receipt", request_id), status_code=404)
        return HTMLResponse(pages.receipt_page(stored.receipt, stored.revision, stored.stored_at, signature=check))

    async def workflow_page(request: Request) -> Response:
        workflow_id = request.path_params["workflow_id"]
        wf = await run_in_threadpool(store.workflow, workflow_id)
        if wf is None:
            return HTMLResponse(pages.not_found("workflow", workflow_id), status_code=404)
        return HTMLResponse(pages.workflow_page(wf))

    async def stats(request: Request) -> Response:
        body: dict[str, Any] = {"ingest": processor is not None}
        if processor is not None:
            body.update(processor.stats())
        return JSONResponse(body)

    async def health(request: Request) -> Response:
        ok = processor is None or processor.healthy
        return JSONResponse({"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503)

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(openapi.document())

    async def index(request: Request) -> Response:
        return JSONResponse(
            {
                "service": "unhardcoded processor",
                "links": {
                    "openapi": "/openapi.json",
                    "receipts": "/receipts",
                    "rollups": "/rollups?by=policy",
                    "health": "/healthz",
                },
            }
        )

    routes = [
        Route("/", index),
        Route("/v1/traces", traces, methods=["POST"]),
        Route("/v1/metrics", other_signal, methods=["POST"]),
        Route("/v1/logs", other_signal, methods=["POST"]),
        Route("/receipts", guarded(list_receipts)),
        Route("/receipts/{request_id:path}", guarded(get_receipt)),
        Route("/workflows/{workflow_id:path}", guarded(get_workflow)),
        Route("/rollups", guarded(rollups)),
        Route("/r/{request_id:path}", guarded(receipt_page)),
        Route("/w/{workflow_id:path}", guarded(workflow_page)),
        Route("/stats", guarded(stats)),
        Route("/healthz", health),
        Route("/openapi.json", openapi_json),
    ]
    app = Starlette(routes=routes)
    return AccessLog(app, routes) if settings.access_log else app  # type: ignore[return-value]


class AccessLog:
    """One line per request: client, method, route template, status, size, time. No ids, no query, no headers."""

    def __init__(self, app: ASGIApp, routes: list[Route]) -> None:
        self.app = app
        self.routes = routes

    def _route(self, scope: Scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                return route.path.replace(":path}", "}")
        return "(no route)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [0]
        size = [0]

        async def logging_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body":
                size[0] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, logging_send)
        finally:
            client = scope.get("client")
            access_log.info(
                '%s "%s %s" %d %dB %.1fms',
                client[0] if client else "-",
                scope["method"],
                self._route(scope),
                status[0],
                size[0],
                (time.perf_counter() - start) * 1000,
            )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)
