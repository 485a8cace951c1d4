"""``/x/ui/``: the receipts console over the proxy's own store (``serve --store``), the processor's pages.

With client keys (``serve --keys``) a client sees only its own receipts: the list, the charts and the pages are
narrowed to its key's name, as ``GET /x/receipts/{id}`` is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..errors import UnhardcodedError
from ..receipts import console
from .auth import client_of

if TYPE_CHECKING:
    from ..receipts.stores import ReceiptStore

LINKS = console.ConsoleLinks(
    home="/x/ui/",
    rollups="/x/ui/rollups",
    receipt_page="/x/ui/r/{id}",
    workflow_page="/x/ui/w/{id}",
    receipt_json="/x/receipts/{id}",
    workflow_json=None,
    list_json=None,
    rollups_json=None,
    revisions_json=None,
    conflicts_json=None,
)
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _answer(page: console.Page) -> Response:
    if page.location is not None:
        return RedirectResponse(page.location, status_code=page.status, headers=PAGE_HEADERS)
    return Response(page.body, page.status, media_type=page.media_type, headers={**PAGE_HEADERS, **page.headers})


def _html(body: str, status: int = 200) -> Response:
    return _answer(console.Page(status, body))


def console_routes(store: ReceiptStore | None) -> list[Route]:
    """The console's routes over ``store``; without one each page says the proxy keeps no receipts."""

    def params(request: Request) -> dict[str, str]:
        given = dict(request.query_params)
        client = client_of(request.scope)
        if client is not None:
            given["client"] = client.name  # a client key reads its own receipts only
        return given

    def mine(request: Request, client_name: str | None) -> bool:
        client = client_of(request.scope)
        return client is None or client.name == client_name

    def without_store() -> Response:
        return _html(
            console.error_page(
                "this proxy keeps no receipt store: start it with serve --store to browse receipts", LINKS
            ),
            404,
        )

    def store_page(render: Callable[..., Any]) -> Callable[[Request], Awaitable[Response]]:
        """A page drawn from the store off the loop; a store that cannot be read is a 503 page."""

        async def page(request: Request) -> Response:
            if store is None:
                return without_store()
            try:
                return _answer(await anyio.to_thread.run_sync(render, store, params(request), LINKS))
            except UnhardcodedError as exc:
                return _html(console.error_page(f"the receipt store cannot be read: {exc}", LINKS), 503)

        return page

    listing = store_page(console.listing_page)
    rollups = store_page(console.rollups_page)

    async def rollups_csv(request: Request) -> Response:
        if store is None:
            return without_store()
        return _answer(await anyio.to_thread.run_sync(console.rollups_csv, store, params(request), LINKS))

    async def receipt(request: Request) -> Response:
        request_id = request.path_params["request_id"]
        stored = await anyio.to_thread.run_sync(store.get, request_id) if store is not None else None
        if stored is None or not mine(request, stored.receipt.client):
            return _html(console.not_found("receipt", request_id, LINKS), 404)
        return _html(console.receipt_page(stored.receipt, stored.revision, stored.stored_at, links=LINKS))

    async def workflow(request: Request) -> Response:
        workflow_id = request.path_params["workflow_id"]
        wf = await anyio.to_thread.run_sync(store.workflow, workflow_id) if store is not None else None
        if wf is not None and client_of(request.scope) is not None:
            nodes = [n for n in wf.nodes if mine(request, n.client)]
            wf = wf.model_copy(update={"nodes": nodes}) if nodes else None
        if wf is None:
            return _html(console.not_found("workflow", workflow_id, LINKS), 404)
        return _html(console.workflow_page(wf, LINKS))

    async def root(request: Request) -> Response:
        return RedirectResponse("/x/ui/", status_code=308)

    return [
        Route("/x/ui", root, methods=["GET"]),
        Route("/x/ui/", listing, methods=["GET"]),
        Route("/x/ui/rollups", rollups, methods=["GET"]),
        Route("/x/ui/rollups.csv", rollups_csv, methods=["GET"]),
        Route("/x/ui/r/{request_id:path}", receipt, methods=["GET"]),
        Route("/x/ui/w/{workflow_id:path}", workflow, methods=["GET"]),
    ]
