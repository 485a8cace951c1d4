"""Receipts fetched from a trace backend: Jaeger (v2 query API) or Grafana Tempo (TraceQL).

Both are :class:`~unhardcoded.receipts.sources.SpanSource`\\ s: they find the
trace(s) holding a request id (or a workflow id) and hand the backend's JSON to
the shared rebuild (:func:`~unhardcoded.receipts.spans.read_spans` reads Jaeger
``/api/traces`` and Tempo ``/api/traces/{id}`` payloads).

Jaeger: the legacy ``GET /api/traces?service=S&tags={"k":"v"}`` search is used,
because Jaeger v2.13's ``/api/v3/traces`` ignores ``query.attributes`` over
HTTP (it returns every trace of the service). Every service in
``/api/services`` is searched, unless the URL names one:
``--jaeger http://jaeger:16686?service=checkout``.

Tempo: ``GET /api/search?q={ span."unhardcoded.request.id" = "req_..." }``,
then ``GET /api/traces/{traceID}`` for each trace found.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ..errors import UnhardcodedError
from ..semconv import attributes as A
from .sources import SpanSource

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_LOOKBACK_S = 24 * 3600


class BackendError(UnhardcodedError):
    """The backend could not be reached or answered with an error."""


def _get_json(url: str, timeout: float) -> Any:
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise BackendError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise BackendError(f"{url}: {getattr(e, 'reason', e)}") from None
    try:
        return json.loads(body)
    except ValueError:
        raise BackendError(f"{url}: not JSON") from None


class JaegerSource(SpanSource):
    """Receipts from Jaeger's query service (e.g. ``http://127.0.0.1:16686``)."""

    def __init__(
        self,
        base_url: str,
        *,
        service: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        lookback_s: int = DEFAULT_LOOKBACK_S,
        limit: int = 20,
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        named = urllib.parse.parse_qs(parts.query).get("service")
        self.base_url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")).rstrip("/")
        self.service = service or (named[0] if named else None)
        self.timeout = timeout
        self.lookback_s = lookback_s
        self.limit = limit
        self.description = f"Jaeger {self.base_url}"

    def _services(self) -> list[str]:
        if self.service:
            return [self.service]
        doc = _get_json(f"{self.base_url}/api/services", self.timeout) or {}
        return [s for s in (doc.get("data") or []) if isinstance(s, str)]

    def _search(self, key: str, value: str) -> list[Any]:
        now_us = int(time.time() * 1_000_000)
        payloads = []
        for service in self._services():
            query = urllib.parse.urlencode(
                {
                    "service": service,
                    "tags": json.dumps({key: value}),
                    "start": now_us - self.lookback_s * 1_000_000,
                    "end": now_us + 60_000_000,
                    "limit": self.limit,
                }
            )
            doc = _get_json(f"{self.base_url}/api/traces?{query}", self.timeout)
            if doc and doc.get("data"):
                payloads.append(doc)
        return payloads

    def fetch_request(self, request_id: str) -> list[Any]:
        return self._search(A.UNHARDCODED_REQUEST_ID, request_id)

    def fetch_workflow(self, workflow_id: str) -> list[Any]:
        return self._search(A.UNHARDCODED_WORKFLOW_ID, workflow_id)


def traceql_string(value: str) -> str:
    return json.dumps(value)


class TempoSource(SpanSource):
    """Receipts from Grafana Tempo's HTTP API (e.g. ``http://127.0.0.1:3200``)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        lookback_s: int = DEFAULT_LOOKBACK_S,
        limit: int = 20,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.lookback_s = lookback_s
        self.limit = limit
        self.description = f"Tempo {self.base_url}"

    def search(self, traceql: str) -> list[str]:
        """Trace ids matching a TraceQL query."""
        now = int(time.time())
        query = urllib.parse.urlencode(
            {
                "q": traceql,
                "limit": self.limit,
                "start": now - self.lookback_s,
                "end": now + 60,
            }
        )
        doc = _get_json(f"{self.base_url}/api/search?{query}", self.timeout) or {}
        return [t["traceID"] for t in doc.get("traces") or [] if t.get("traceID")]

    def trace(self, trace_id: str) -> Any:
        return _get_json(f"{self.base_url}/api/traces/{trace_id}", self.timeout)

    def _fetch(self, key: str, value: str) -> list[Any]:
        ids = self.search(f"{{ span.{traceql_string(key)} = {traceql_string(value)} }}")
        return [doc for doc in (self.trace(t) for t in ids) if doc]

    def fetch_request(self, request_id: str) -> list[Any]:
        return self._fetch(A.UNHARDCODED_REQUEST_ID, request_id)

    def fetch_workflow(self, workflow_id: str) -> list[Any]:
        return self._fetch(A.UNHARDCODED_WORKFLOW_ID, workflow_id)
