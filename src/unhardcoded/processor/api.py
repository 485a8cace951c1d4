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
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import UnhardcodedError
from ..receipts.stores import ROLLUP_KEYS, ReceiptQuery
from ..router.engine import PolicyCompiler
from . import otlp
from .service import Backpressure

if TYPE_CHECKING:
    from ..catalog.model import Catalog
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
    max_reading_bytes: int = 128 * 1024 * 1024
    """Bytes of trace exports being read, inflated or waiting for their acknowledgement, across connections; past
    it an export gets 429 with Retry-After. One export is always taken when no other is in (the CLI: twice
    ``--max-queue-bytes``)."""
    public_keys: PublicKeys | None = None
    """The router's public keys (``--public-key``): receipts read are verified with them (on read, never at
    ingest); None: signatures are not checked."""
    catalog: Catalog | None = None
    """The catalog ``POST /x/impact`` decides on when the request names none (``--catalog``); None: the built-in
    one."""
    jaeger_url: str | None = None
    """A trace URL template with ``{trace_id}`` (``--jaeger-url``): receipt and workflow pages link to it."""
    tempo_url: str | None = None
    """A Grafana/Tempo URL template with ``{trace_id}`` (``--tempo-url``)."""


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


PAGE_HEADERS = {
    # The pages carry no script and load nothing from elsewhere: a value that slipped past escaping still runs nothing.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def wants_html(accept: str | None) -> bool:
    """A browser's ``Accept`` (``text/html`` named before any JSON), not an API client's (``*/*``, JSON)."""
    if not accept:
        return False
    accept = accept.lower()
    html = accept.find("text/html")
    json_at = accept.find("application/json")
    return html >= 0 and (json_at < 0 or html < json_at)


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


class _Reading:
    """The bytes of export bodies held by the HTTP front door, across connections (one event loop: no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, n: int) -> bool:
        if self.held and self.held + n > self.limit:
            return False
        self.held += n
        return True

    def give(self, n: int) -> None:
        self.held -= n


def _announced(request: Request, limit: int) -> int:
    """What an export's body will hold while it is read: its Content-Length, or the limit when it names none."""
    length = request.headers.get("content-length")
    if length is not None and length.isascii() and length.isdecimal() and len(length) < 16:
        return min(int(length), limit)
    return limit


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
    links = {
        "self": f"/receipts/{rid}",
        "page": f"/r/{rid}",
        "revisions": f"/receipts/{rid}/revisions",
        "conflicts": f"/receipts/{rid}/conflicts",
    }
    if workflow_id:
        links["workflow"] = f"/workflows/{quote(workflow_id, safe='')}"
        links["workflow_page"] = f"/w/{quote(workflow_id, safe='')}"
    return links


class SubResource(Route):
    """``/receipts/{request_id:path}/revisions`` and the like, before the catch-all ``/receipts/{request_id:path}``.

    Request ids may hold ``/``. A suffix written as a path segment (``/revisions``) names the sub-resource; written
    percent-encoded (``%2Frevisions``, as every link the API hands out encodes an id) it is part of the request id,
    and the catch-all answers with that receipt.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], suffix: str) -> None:
        super().__init__(path, endpoint)
        self.suffix = suffix.encode()

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match != Match.NONE:
            raw = scope.get("raw_path")
            if raw is not None and not raw.split(b"?", 1)[0].endswith(b"/" + self.suffix):
                return Match.NONE, {}
        return match, child


def _page_params(p: Any) -> tuple[int, int]:
    """``limit`` and ``cursor`` of a paged listing, as (limit, offset)."""
    return _limit(p.get("limit") or str(DEFAULT_PAGE)), _decode_cursor(p["cursor"]) if p.get("cursor") else 0


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


MAX_OFFSET = 2**53
"""The largest offset a cursor may carry: far past any store, and inside every database's integers."""


def _decode_cursor(cursor: str) -> int:
    try:
        # Nothing this API hands out is long or nested: refuse before decoding what could be either.
        if len(cursor) > 200:
            raise ValueError
        doc = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        offset = doc["o"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise ValueError("cursor: not a cursor this API handed out") from None
    if offset.__class__ is not int or not 0 <= offset <= MAX_OFFSET:
        raise ValueError("cursor: not a cursor this API handed out")
    return int(offset)


def _since(text: str | None, name: str) -> datetime | None:
    if text is None or text == "":
        return None
    from ..receipts.replay import parse_since

    expected = f"{name}={text[:80]!r}: expected a duration like 24h or 7d, or an ISO 8601 date/time"
    try:
        when = parse_since(text)
        when.timestamp()  # the stores compare epoch milliseconds: a moment they cannot count is refused here
    except UnhardcodedError:
        raise ValueError(expected) from None
    except (OverflowError, ValueError):
        raise ValueError(f"{expected}, within the years 1 to 9999") from None
    return when


OUTCOMES = ("answered", "failed", "no_candidate", "dry_run")


def _outcome(text: str | None) -> str | None:
    if not text:
        return None
    if text not in OUTCOMES:
        raise ValueError(f"outcome={text[:80]!r}: expected one of {', '.join(OUTCOMES)}")
    return text


def _limit(text: str) -> int:
    if not (text.isascii() and text.isdecimal() and len(text) <= 4) or not 1 <= int(text) <= MAX_PAGE:
        raise ValueError(f"limit={text[:80]!r}: expected a whole number from 1 to {MAX_PAGE}")
    return int(text)


def _bool(text: str | None, name: str) -> bool | None:
    if text is None or text == "":
        return None
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"{name}={text[:80]!r}: expected true or false")


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

    reading = _Reading(settings.max_reading_bytes)

    async def traces(request: Request) -> Response:
        ctype = request.headers.get("content-type")
        kind = "json" if "json" in (ctype or "").lower() else "protobuf"
        if not ingest_allowed(request):
            if metrics is not None:
                metrics.payload_rejected("unauthorized")
            return _otlp_error(401, otlp.UNAUTHENTICATED, "missing or wrong bearer token", kind)
        if processor is None:
            return _otlp_error(404, 12, "this server does not take exports", kind)
        # Bodies are held from the first byte read to the answer: what all connections hold together is bounded.
        claim = [_announced(request, settings.max_body_bytes)]
        try:
            if not reading.take(claim[0]):
                claim[0] = 0
                raise Backpressure(
                    f"{reading.held} bytes of exports are being read; retry later",
                    processor.config.retry_after_s,
                    busy=True,
                )
            return await export(request, processor, kind, ctype, claim)
        except Backpressure as exc:
            processor.metrics.payload_rejected("busy")
            return _otlp_error(429, otlp.RESOURCE_EXHAUSTED, str(exc), kind, exc.retry_after_s)
        finally:
            reading.give(claim[0])

    async def export(
        request: Request, processor: ProcessorEngine, kind: str, ctype: str | None, claim: list[int]
    ) -> Response:
        try:
            kind = otlp.media_type(ctype)
            body = await _read_body(request, settings.max_body_bytes)
            body = otlp.inflate(body, request.headers.get("content-encoding"), settings.max_body_bytes)
            if len(body) > claim[0]:  # inflated, or longer than announced: the rest is held too
                more = len(body) - claim[0]
                if not reading.take(more):
                    raise Backpressure(
                        f"{reading.held} bytes of exports are being read; retry later",
                        processor.config.retry_after_s,
                        busy=True,
                    )
                claim[0] += more
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
        size = 0
        async for chunk in request.stream():  # read and let go: never held whole
            size += len(chunk)
            if size > settings.max_body_bytes:
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

    from ..receipts import console
    from ..receipts.console import session

    links = console.ConsoleLinks(
        jaeger=settings.jaeger_url,
        tempo=settings.tempo_url,
        sign_out="/ui/sign-out" if settings.query_token is not None else None,
    )

    def page_allowed(request: Request) -> bool:
        """The bearer token, or the cookie a sign-in set (a browser cannot send a bearer header itself)."""
        return query_allowed(request) or session.cookie_matches(
            request.cookies.get(session.COOKIE), settings.query_token
        )

    def html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
        return HTMLResponse(body, status_code=status, headers={**PAGE_HEADERS, **(headers or {})})

    def answer(page: console.Page) -> Response:
        if page.location is not None:
            return RedirectResponse(page.location, status_code=page.status, headers=PAGE_HEADERS)
        return Response(
            page.body, status_code=page.status, media_type=page.media_type, headers={**PAGE_HEADERS, **page.headers}
        )

    def paged(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            if not page_allowed(request):
                if request.headers.get("authorization") or not wants_html(request.headers.get("accept")):
                    return _unauthorized()  # an API client (or a wrong token): as the JSON API answers it
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(
                    "/ui/sign-in?" + urlencode({"next": target}), status_code=303, headers=PAGE_HEADERS
                )
            try:
                return await fn(request)
            except UnhardcodedError as exc:
                return html(console.error_page(f"the receipt store cannot be read: {exc}", links), 503)

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
        conflicts = await run_in_threadpool(store.count_conflicts, request_id)
        return JSONResponse(
            {
                "receipt": r.to_json_dict(),
                "signature": check.to_json_dict() if check is not None else None,
                "revision": stored.revision,
                "stored_at": stored.stored_at,
                "conflicts": conflicts,
                "links": receipt_links(r.request_id, r.workflow.id if r.workflow else None),
            }
        )

    async def get_revisions(request: Request) -> Response:
        request_id = request.path_params["request_id"]
        revisions = await run_in_threadpool(store.revisions, request_id)
        if not revisions:
            return _error(404, "not_found", f"no receipt for request {request_id!r}")
        return JSONResponse(
            {
                "request_id": request_id,
                "revisions": [
                    {"revision": s.revision, "stored_at": s.stored_at, "receipt": s.receipt.to_json_dict()}
                    for s in revisions
                ],
                "links": receipt_links(request_id),
            }
        )

    async def list_conflicts(request: Request) -> Response:
        """Conflicts of one request id (``/receipts/{id}/conflicts``) or of all (``/conflicts``), a page at a time."""
        request_id = request.path_params.get("request_id")
        limit, offset = _page_params(request.query_params)
        rows = await run_in_threadpool(store.conflicts, request_id, limit + 1, offset)
        if (
            request_id is not None
            and not rows
            and offset == 0
            and await run_in_threadpool(store.get, request_id) is None
        ):
            return _error(404, "not_found", f"no receipt for request {request_id!r}")
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = _encode_cursor(offset + limit) if more else None
        base = request.url.path if request_id is None else receipt_links(request_id)["conflicts"]
        return JSONResponse(
            {
                "items": [
                    {
                        "request_id": c.receipt.request_id,
                        "trace_id": c.receipt.trace_id,
                        "span_id": c.receipt.span_id,
                        "received_at": c.received_at,
                        "receipt": c.receipt.to_json_dict(),
                        "links": {"stored": receipt_links(c.receipt.request_id)["self"]},
                    }
                    for c in rows
                ],
                "count": len(rows),
                "next_cursor": next_cursor,
                "links": {
                    "self": base,
                    "next": f"{base}?{urlencode({'limit': limit, 'cursor': next_cursor})}" if next_cursor else None,
                },
            }
        )

    async def list_receipts(request: Request) -> Response:
        p = request.query_params
        limit, offset = _page_params(p)
        query = ReceiptQuery(
            policy=p.get("policy") or None,
            model=p.get("model") or None,
            fallback=_bool(p.get("fallback"), "fallback"),
            workflow_id=p.get("workflow") or None,
            client=p.get("client") or None,
            outcome=_outcome(p.get("outcome")),
            rule=p.get("rule") or None,
            provider=p.get("provider") or None,
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
            raise ValueError(f"by={by[:80]!r}: expected one of {', '.join(ROLLUP_KEYS)}")
        since = _since(request.query_params.get("since"), "since")
        rows = await run_in_threadpool(store.rollup, by, since)  # type: ignore[arg-type]  # checked against ROLLUP_KEYS
        return JSONResponse(
            {"by": by, "since": since.isoformat() if since else None, "rows": [r.to_json_dict() for r in rows]}
        )

    async def receipt_page(request: Request) -> Response:
        request_id = request.path_params["request_id"]
        stored, check = await run_in_threadpool(read_verified, request_id)
        if stored is None:
            return html(pages.not_found("receipt", request_id, links), 404)
        conflicts = await run_in_threadpool(store.conflicts, request_id, pages.CONFLICTS_SHOWN)
        count = await run_in_threadpool(store.count_conflicts, request_id) if conflicts else 0
        return html(
            pages.receipt_page(
                stored.receipt, stored.revision, stored.stored_at, conflicts, count, signature=check, links=links
            )
        )

    async def workflow_page(request: Request) -> Response:
        workflow_id = request.path_params["workflow_id"]
        wf = await run_in_threadpool(store.workflow, workflow_id)
        if wf is None:
            return html(pages.not_found("workflow", workflow_id, links), 404)
        return html(pages.workflow_page(wf, links))

    async def ui_list(request: Request) -> Response:
        params = dict(request.query_params)
        return answer(await run_in_threadpool(console.listing_page, store, params, links))

    async def ui_rollups(request: Request) -> Response:
        params = dict(request.query_params)
        return answer(await run_in_threadpool(console.rollups_page, store, params, links))

    async def ui_rollups_csv(request: Request) -> Response:
        params = dict(request.query_params)
        return answer(await run_in_threadpool(console.rollups_csv, store, params, links))

    async def ui_root(request: Request) -> Response:
        return RedirectResponse("/ui/", status_code=308)

    def secure(request: Request) -> bool:
        return request.url.scheme == "https"

    async def sign_in(request: Request) -> Response:
        next_path = session.local_path(request.query_params.get("next"), "/ui/")
        if request.method == "GET":
            if settings.query_token is None:
                return RedirectResponse(next_path, status_code=303, headers=PAGE_HEADERS)
            return html(console.sign_in_page("/ui/sign-in", next_path))
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > session.MAX_FORM_BYTES:
                break
        form = session.read_form(body)
        next_path = session.local_path(form.get("next"), "/ui/")
        token = settings.query_token
        if token is None:
            return RedirectResponse(next_path, status_code=303, headers=PAGE_HEADERS)
        if not session.token_matches(form.get("token", ""), token):
            return html(console.sign_in_page("/ui/sign-in", next_path, failed=True), 401)
        return RedirectResponse(
            next_path,
            status_code=303,
            headers={**PAGE_HEADERS, "Set-Cookie": session.set_cookie(token, secure(request))},
        )

    async def sign_out(request: Request) -> Response:
        return RedirectResponse(
            "/ui/sign-in",
            status_code=303,
            headers={**PAGE_HEADERS, "Set-Cookie": session.clear_cookie(secure(request))},
        )

    compiler = PolicyCompiler()  # shared by every impact request: a policy is compiled once per catalog version

    def measure(body: Any) -> dict[str, Any]:
        from ..catalog.model import Catalog
        from ..receipts.impact import (
            impact_request,
            measure_impact,
            newest_recorded_policy,
            resolve_catalog,
            resolve_policy,
        )

        asked = impact_request(body)
        catalog = resolve_catalog(asked.catalog, store, settings.catalog or Catalog.builtin())
        policy = resolve_policy(asked.policy, catalog, lambda name: newest_recorded_policy(store, name))
        return measure_impact(store, catalog, asked.since, policy=policy, compiler=compiler).to_json_dict()

    async def impact(request: Request) -> Response:
        """``POST /x/impact``: every decision of a window decided again; a body that is wrong is a 400 naming the
        field."""
        from ..receipts.impact import ImpactError

        try:
            raw = await _read_body(request, settings.max_body_bytes)
        except _BodyTooLarge:
            return _error(413, "too_large", f"body over {settings.max_body_bytes} bytes")
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            return _error(400, "bad_request", "the body is not JSON: expected {since, policy?, catalog?}")
        try:
            return JSONResponse(await run_in_threadpool(measure, body))
        except ImpactError as exc:
            return JSONResponse(
                {"error": {"code": "bad_request", "message": str(exc), "param": exc.field}}, status_code=400
            )

    async def stats(request: Request) -> Response:
        body: dict[str, Any] = {"ingest": processor is not None}
        if processor is not None:
            body.update(processor.stats())
            body["reading_bytes"] = reading.held
        return JSONResponse(body)

    async def health(request: Request) -> Response:
        ok = processor is None or processor.healthy
        return JSONResponse({"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503)

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(openapi.document())

    async def index(request: Request) -> Response:
        if wants_html(request.headers.get("accept")):
            return RedirectResponse("/ui/", status_code=303)
        return JSONResponse(
            {
                "service": "unhardcoded processor",
                "links": {
                    "openapi": "/openapi.json",
                    "receipts": "/receipts",
                    "conflicts": "/conflicts",
                    "rollups": "/rollups?by=policy",
                    "impact": "/x/impact",
                    "health": "/healthz",
                    "console": "/ui/",
                },
            }
        )

    routes = [
        Route("/", index),
        Route("/v1/traces", traces, methods=["POST"]),
        Route("/v1/metrics", other_signal, methods=["POST"]),
        Route("/v1/logs", other_signal, methods=["POST"]),
        Route("/receipts", guarded(list_receipts)),
        # Before the catch-all below, which would take them for request ids (see SubResource).
        SubResource("/receipts/{request_id:path}/revisions", guarded(get_revisions), "revisions"),
        SubResource("/receipts/{request_id:path}/conflicts", guarded(list_conflicts), "conflicts"),
        Route("/receipts/{request_id:path}", guarded(get_receipt)),
        Route("/conflicts", guarded(list_conflicts)),
        Route("/workflows/{workflow_id:path}", guarded(get_workflow)),
        Route("/rollups", guarded(rollups)),
        Route("/x/impact", guarded(impact), methods=["POST"]),
        Route("/r/{request_id:path}", paged(receipt_page)),
        Route("/w/{workflow_id:path}", paged(workflow_page)),
        Route("/ui", ui_root),
        Route("/ui/", paged(ui_list)),
        Route("/ui/rollups", paged(ui_rollups)),
        Route("/ui/rollups.csv", paged(ui_rollups_csv)),
        Route("/ui/sign-in", sign_in, methods=["GET", "POST"]),
        Route("/ui/sign-out", sign_out, methods=["POST"]),
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
