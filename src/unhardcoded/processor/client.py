"""A client of the processor's query API, shaped as a receipt source for `unhardcoded receipt --processor URL`."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

import httpx

from ..errors import UnhardcodedError
from ..receipts.model import Receipt, WorkflowReceipt

TOKEN_ENV = "UNHARDCODED_PROCESSOR_TOKEN"


class ProcessorError(UnhardcodedError):
    """The processor could not be asked, or answered with an error."""


class ProcessorSource:
    """Receipts from a running processor: ``ProcessorSource("http://127.0.0.1:8318").get("req_8f41c2")``.

    The query token is ``token``, else ``$UNHARDCODED_PROCESSOR_TOKEN``, else none.
    Satisfies :class:`unhardcoded.receipts.sources.ReceiptSource` (``receipt`` / ``workflow``).
    """

    def __init__(self, url: str, token: str | None = None, *, timeout_s: float = 10.0) -> None:
        if "://" not in url:
            url = "http://" + url
        self.url = url.rstrip("/")
        self.description = f"processor {self.url}"
        token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = timeout_s

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any | None:
        try:
            r = httpx.get(self.url + path, params=params, headers=self._headers, timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise ProcessorError(f"cannot reach the processor at {self.url}: {exc}") from None
        return self._answer(r)

    def _answer(self, r: httpx.Response) -> Any | None:
        if r.status_code == 404:
            return None
        if r.status_code == 401:
            raise ProcessorError(f"the processor at {self.url} wants a query token: set {TOKEN_ENV}")
        if r.status_code != 200:
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text[:200]
            raise ProcessorError(f"the processor at {self.url} answered {r.status_code}: {message}")
        try:
            return r.json()
        except ValueError:
            raise ProcessorError(f"the processor at {self.url} did not answer JSON") from None

    def impact(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /x/impact``: the impact report (``unhardcoded.impact/v1``) for ``body`` ({since, policy?, catalog?})."""
        try:
            r = httpx.post(self.url + "/x/impact", json=body, headers=self._headers, timeout=max(self._timeout, 300.0))
        except httpx.HTTPError as exc:
            raise ProcessorError(f"cannot reach the processor at {self.url}: {exc}") from None
        doc = self._answer(r)
        if doc is None:
            raise ProcessorError(f"the processor at {self.url} has no /x/impact (an older version?)")
        return dict(doc)

    def get(self, request_id: str) -> Receipt | None:
        """The receipt of ``request_id``, or None when the processor has none."""
        doc = self._get("/receipts/" + quote(request_id, safe=""))
        return Receipt.model_validate(doc["receipt"]) if doc is not None else None

    def get_stored(self, request_id: str) -> dict[str, Any] | None:
        """The whole answer: ``receipt``, ``revision``, ``stored_at``, ``conflicts`` (a count), ``links``."""
        return self._get("/receipts/" + quote(request_id, safe=""))

    def revisions(self, request_id: str) -> list[dict[str, Any]] | None:
        """Every revision of the receipt (``revision``, ``stored_at``, ``receipt``), the first first; None when none."""
        doc = self._get("/receipts/" + quote(request_id, safe="") + "/revisions")
        return list(doc["revisions"]) if doc is not None else None

    def conflicts(self, request_id: str | None = None) -> list[dict[str, Any]]:
        """Conflicts kept aside for ``request_id`` (or all of them), following the pages, oldest first."""
        path = "/conflicts" if request_id is None else "/receipts/" + quote(request_id, safe="") + "/conflicts"
        out: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 1000}
        while True:
            doc = self._get(path, params)
            if doc is None:
                return out
            out.extend(doc["items"])
            if not doc.get("next_cursor"):
                return out
            params["cursor"] = doc["next_cursor"]

    receipt = get

    def workflow(self, workflow_id: str) -> WorkflowReceipt | None:
        doc = self._get("/workflows/" + quote(workflow_id, safe=""))
        return WorkflowReceipt.model_validate(doc["workflow"]) if doc is not None else None

    def query(self, **params: str | int | float | bool | None) -> list[Receipt]:
        """Every receipt matching ``params`` (policy, model, fallback, since, ...), following the pages."""
        out: list[Receipt] = []
        params = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in params.items() if v is not None}
        while True:
            doc = self._get("/receipts", params)
            if doc is None:
                return out
            out.extend(Receipt.model_validate(item["receipt"]) for item in doc["items"])
            if not doc.get("next_cursor"):
                return out
            params["cursor"] = doc["next_cursor"]
