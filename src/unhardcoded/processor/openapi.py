"""The OpenAPI 3.1 document of the processor's query API, served at ``/openapi.json``.

Receipt and workflow schemas come from the pydantic models, so the document
cannot drift from what the API returns; tests validate real answers against it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic.json_schema import models_json_schema

from ..receipts.impact import ImpactReport
from ..receipts.model import Receipt, WorkflowReceipt
from ..receipts.stores.protocol import ROLLUP_KEYS

_REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _param(name: str, where: str, description: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": schema,
    }


_ERROR = _json(_ref("Error"), "The request cannot be answered; `error.message` says why.")
_HTML_PAGE = {"description": "A page (HTML, no scripts).", "content": {"text/html": {"schema": {"type": "string"}}}}
_UNAUTHORIZED = _json(
    _ref("Error"), "A query token is configured and the request did not carry it as `Authorization: Bearer`."
)


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    _, defs = models_json_schema(
        [(Receipt, "serialization"), (WorkflowReceipt, "serialization"), (ImpactReport, "serialization")],
        ref_template=_REF,
    )
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    links = {"type": "object", "additionalProperties": {"type": ["string", "null"]}}
    schemas.update(
        {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                            "param": {
                                "type": ["string", "null"],
                                "description": "The field of the request body that is wrong, when one is.",
                            },
                        },
                    }
                },
            },
            "ReceiptLinks": {
                "type": "object",
                "required": ["self", "page"],
                "properties": {
                    k: {"type": "string"}
                    for k in ("self", "page", "revisions", "conflicts", "workflow", "workflow_page")
                },
            },
            "StoredReceipt": {
                "type": "object",
                "required": ["receipt", "revision", "stored_at", "conflicts", "links"],
                "properties": {
                    "receipt": _ref("Receipt"),
                    "revision": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "1 when first written; +1 each time a late span of the same decision changed it "
                        "(every revision is kept: `links.revisions`).",
                    },
                    "stored_at": {"type": "string"},
                    "conflicts": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Receipts from other decisions (another trace or decision span id) that claimed "
                        "this request id, kept aside and not merged (`links.conflicts`).",
                    },
                    "links": _ref("ReceiptLinks"),
                    "signature": {
                        "oneOf": [_ref("SignatureCheck"), {"type": "null"}],
                        "description": (
                            "The receipt's signature checked on read with the public keys the processor was "
                            "given (`--public-key`); null when it was given none. Not part of the receipt."
                        ),
                    },
                },
            },
            "SignatureCheck": {
                "type": "object",
                "required": ["status", "reason", "key_id", "version"],
                "properties": {
                    "status": {
                        "type": "string",
                        "enum": ["verified", "invalid", "unsigned"],
                        "description": "`verified`: the router's signature matches the receipt as stored.",
                    },
                    "reason": {
                        "type": ["string", "null"],
                        "description": "Why it is not verified: e.g. `unknown key id …`, `signature does not match …`.",
                    },
                    "key_id": {"type": ["string", "null"]},
                    "version": {"type": ["integer", "null"]},
                },
            },
            "ReceiptRevisions": {
                "type": "object",
                "required": ["request_id", "revisions", "links"],
                "properties": {
                    "request_id": {"type": "string"},
                    "revisions": {
                        "type": "array",
                        "description": "Every revision, the first first; the last is the receipt as stored now.",
                        "items": {
                            "type": "object",
                            "required": ["revision", "stored_at", "receipt"],
                            "properties": {
                                "revision": {"type": "integer", "minimum": 1},
                                "stored_at": {"type": "string"},
                                "receipt": _ref("Receipt"),
                            },
                        },
                    },
                    "links": _ref("ReceiptLinks"),
                },
            },
            "ConflictPage": {
                "type": "object",
                "required": ["items", "count", "next_cursor", "links"],
                "properties": {
                    "items": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["request_id", "trace_id", "span_id", "received_at", "receipt", "links"],
                            "properties": {
                                "request_id": {"type": "string"},
                                "trace_id": {"type": ["string", "null"]},
                                "span_id": {"type": ["string", "null"]},
                                "received_at": {"type": "string"},
                                "receipt": _ref("Receipt"),
                                "links": {"type": "object", "properties": {"stored": {"type": "string"}}},
                            },
                        },
                    },
                    "count": {"type": "integer", "minimum": 0},
                    "next_cursor": {
                        "type": ["string", "null"],
                        "description": "Pass as `cursor` for the next page; null on the last.",
                    },
                    "links": links,
                },
            },
            "ReceiptPage": {
                "type": "object",
                "required": ["items", "count", "next_cursor", "links"],
                "properties": {
                    "items": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["receipt", "links"],
                            "properties": {"receipt": _ref("Receipt"), "links": _ref("ReceiptLinks")},
                        },
                    },
                    "count": {"type": "integer", "minimum": 0},
                    "next_cursor": {
                        "type": ["string", "null"],
                        "description": "Pass as `cursor` for the next page; null on the last.",
                    },
                    "links": links,
                },
            },
            "WorkflowAnswer": {
                "type": "object",
                "required": ["workflow", "links"],
                "properties": {
                    "workflow": _ref("WorkflowReceipt"),
                    "links": {
                        "type": "object",
                        "properties": {
                            "self": {"type": "string"},
                            "page": {"type": "string"},
                            "nodes": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                },
            },
            "ImpactRequest": {
                "type": "object",
                "required": ["since"],
                "additionalProperties": False,
                "properties": {
                    "since": {
                        "type": "string",
                        "description": "Decisions at or after this time: a duration back from now (`24h`, `7d`, "
                        "`30m`) or an ISO 8601 date/time.",
                    },
                    "policy": {
                        "oneOf": [{"type": "object"}, {"type": "string"}],
                        "description": "A policy (sigma-pol/v1) to decide the decisions recorded under its name "
                        "with, or the name (or fingerprint) of a recorded policy, whose newest version is used. "
                        "Absent: each decision under its own recorded policy.",
                    },
                    "catalog": {
                        "oneOf": [{"type": "object"}, {"type": "string"}],
                        "description": "A catalog (unhardcoded-catalog/v1), or the version of one the store or "
                        "the catalog archive keeps. Absent: the processor's catalog (`--catalog`, else the "
                        "built-in one).",
                    },
                },
            },
            "Rollups": {
                "type": "object",
                "required": ["by", "since", "rows"],
                "properties": {
                    "by": {"type": "string", "enum": list(ROLLUP_KEYS)},
                    "since": {"type": ["string", "null"]},
                    "rows": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": [
                                "key",
                                "decisions",
                                "fallbacks",
                                "fallback_rate",
                                "failed",
                                "cost_usd",
                                "baseline_usd",
                                "savings_usd",
                                "savings_ratio",
                            ],
                            "properties": {
                                "key": {"type": "string"},
                                "decisions": {"type": "integer"},
                                "fallbacks": {"type": "integer"},
                                "fallback_rate": {"type": "number"},
                                "failed": {"type": "integer"},
                                "cost_usd": {"type": "number"},
                                "baseline_usd": {"type": "number"},
                                "savings_usd": {"type": "number"},
                                "savings_ratio": {"type": ["number", "null"]},
                            },
                        },
                    },
                },
            },
        }
    )
    since = {"type": "string", "description": "A duration back from now (`24h`, `7d`, `30m`) or an ISO 8601 date/time."}
    # {} first: optional unless the processor was started with a token
    security: list[dict[str, list[str]]] = [{}, {"queryToken": []}]
    request_id = _param("request_id", "path", "The request id (`X-Unhardcoded-Request-Id`).", {"type": "string"})
    paging = [
        _param("limit", "query", "Page size.", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
        _param("cursor", "query", "`next_cursor` of the previous page.", {"type": "string"}),
    ]
    paths: dict[str, Any] = {
        "/receipts/{request_id}": {
            "get": {
                "operationId": "getReceipt",
                "summary": "One request's receipt, with its revision",
                "security": security,
                "parameters": [
                    _param("request_id", "path", "The request id (`X-Unhardcoded-Request-Id`).", {"type": "string"})
                ],
                "responses": {
                    "200": _json(_ref("StoredReceipt"), "The receipt."),
                    "401": _UNAUTHORIZED,
                    "404": _json(_ref("Error"), "No receipt for this request id (yet)."),
                },
            }
        },
        "/receipts/{request_id}/revisions": {
            "get": {
                "operationId": "getReceiptRevisions",
                "summary": "Every revision of one request's receipt",
                "description": "A receipt changes only by late spans of its own decision (same trace and decision span "
                "id); each change is a revision and every revision is kept. A request id ending in `/revisions` is "
                "asked for percent-encoded (`%2Frevisions`) at `/receipts/{request_id}`.",
                "security": security,
                "parameters": [request_id],
                "responses": {
                    "200": _json(_ref("ReceiptRevisions"), "The revisions, the first first."),
                    "401": _UNAUTHORIZED,
                    "404": _json(_ref("Error"), "No receipt for this request id (yet)."),
                },
            }
        },
        "/receipts/{request_id}/conflicts": {
            "get": {
                "operationId": "getReceiptConflicts",
                "summary": "Decisions that claimed this request id after its receipt was stored, kept aside",
                "security": security,
                "parameters": [request_id, *paging],
                "responses": {
                    "200": _json(_ref("ConflictPage"), "A page of conflicts, oldest first."),
                    "400": _ERROR,
                    "401": _UNAUTHORIZED,
                    "404": _json(_ref("Error"), "No receipt for this request id (yet)."),
                },
            }
        },
        "/conflicts": {
            "get": {
                "operationId": "listConflicts",
                "summary": "Every conflict kept aside, oldest first, a page at a time",
                "security": security,
                "parameters": paging,
                "responses": {
                    "200": _json(_ref("ConflictPage"), "A page of conflicts."),
                    "400": _ERROR,
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/receipts": {
            "get": {
                "operationId": "listReceipts",
                "summary": "Receipts, newest first, a page at a time",
                "security": security,
                "parameters": [
                    _param("policy", "query", "A policy name or fingerprint.", {"type": "string"}),
                    _param(
                        "model",
                        "query",
                        "The model that answered (or was selected, when none answered).",
                        {"type": "string"},
                    ),
                    _param(
                        "fallback",
                        "query",
                        "Only decisions whose fallback was (true) or was not (false) triggered.",
                        {"type": "boolean"},
                    ),
                    _param("workflow", "query", "A workflow id.", {"type": "string"}),
                    _param("client", "query", "The name of the client key (a proxy with --keys).", {"type": "string"}),
                    _param(
                        "outcome",
                        "query",
                        "The decision's outcome.",
                        {"type": "string", "enum": ["answered", "failed", "no_candidate", "dry_run"]},
                    ),
                    _param("rule", "query", "A rule that rejected at least one model.", {"type": "string"}),
                    _param("provider", "query", "The provider of the last attempt.", {"type": "string"}),
                    _param(
                        "complete", "query", "Only complete (true) or incomplete (false) receipts.", {"type": "boolean"}
                    ),
                    _param("since", "query", "Decisions at or after this time.", since),
                    _param("until", "query", "Decisions before this time.", since),
                    _param(
                        "limit",
                        "query",
                        "Page size.",
                        {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                    ),
                    _param("cursor", "query", "`next_cursor` of the previous page.", {"type": "string"}),
                ],
                "responses": {
                    "200": _json(_ref("ReceiptPage"), "A page of receipts."),
                    "400": _ERROR,
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/workflows/{workflow_id}": {
            "get": {
                "operationId": "getWorkflow",
                "summary": "A workflow's node receipts in order, with totals",
                "security": security,
                "parameters": [_param("workflow_id", "path", "The workflow id.", {"type": "string"})],
                "responses": {
                    "200": _json(_ref("WorkflowAnswer"), "The workflow receipt."),
                    "401": _UNAUTHORIZED,
                    "404": _json(_ref("Error"), "No such workflow (yet)."),
                },
            }
        },
        "/rollups": {
            "get": {
                "operationId": "getRollups",
                "summary": "Decisions, fallback rate, cost and savings vs the baseline",
                "security": security,
                "parameters": [
                    _param(
                        "by",
                        "query",
                        "Group by.",
                        {"type": "string", "enum": list(ROLLUP_KEYS), "default": "policy"},
                    ),
                    _param("since", "query", "Decisions at or after this time.", since),
                ],
                "responses": {
                    "200": _json(_ref("Rollups"), "One row per key, costliest first."),
                    "400": _ERROR,
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/x/impact": {
            "post": {
                "operationId": "measureImpact",
                "summary": "Every stored decision of a window decided again under a policy and/or catalog",
                "description": "Decisions that keep their model, those that change (from → to, with the rule "
                "that now rejects the old winner), those left with no candidate, and the cost at the usage each "
                "answer reported before and after, per policy and per model. What `unhardcoded replay --since` "
                "prints (docs/impact.md).",
                "security": security,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ImpactRequest")}},
                },
                "responses": {
                    "200": _json(_ref("ImpactReport"), "The impact report."),
                    "400": _json(_ref("Error"), "The body is not an impact request; `error.param` names the field."),
                    "401": _UNAUTHORIZED,
                    "413": _json(_ref("Error"), "Body over --max-body-bytes."),
                    "503": _json(_ref("Error"), "The store cannot be read."),
                },
            }
        },
        "/r/{request_id}": {
            "get": {
                "operationId": "receiptPage",
                "summary": "The receipt as a page to read and share (HTML, no scripts)",
                "security": security,
                "parameters": [_param("request_id", "path", "The request id.", {"type": "string"})],
                "responses": {
                    "200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}},
                    "404": {
                        "description": "No such receipt.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                },
            }
        },
        "/w/{workflow_id}": {
            "get": {
                "operationId": "workflowPage",
                "summary": "The workflow as a page (HTML, no scripts)",
                "security": security,
                "parameters": [_param("workflow_id", "path", "The workflow id.", {"type": "string"})],
                "responses": {
                    "200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}},
                    "404": {
                        "description": "No such workflow.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                },
            }
        },
        "/ui/": {
            "get": {
                "operationId": "consoleList",
                "summary": "The receipts console: search (q: a request, workflow or trace id, answered with a 303 to "
                "its page) and the receipt list for the filter (the parameters of /receipts), newest first",
                "security": security,
                "parameters": [_param("q", "query", "A request id, workflow id or trace id.", {"type": "string"})],
                "responses": {
                    "200": _HTML_PAGE,
                    "303": {"description": "A search found what it names: its page, or the sign-in page."},
                    "400": _HTML_PAGE,
                },
            }
        },
        "/ui/rollups": {
            "get": {
                "operationId": "consoleRollups",
                "summary": "Charts over time (SVG) for the filter: decisions and fallback rate per model and provider, "
                "cost vs baseline, saving per policy, workflow or client (by=), rejections by rule, latency p50/p95",
                "security": security,
                "parameters": [
                    _param("by", "query", "Saving per.", {"type": "string", "enum": ["policy", "workflow", "client"]})
                ],
                "responses": {"200": _HTML_PAGE, "400": _HTML_PAGE},
            }
        },
        "/ui/rollups.csv": {
            "get": {
                "operationId": "consoleRollupsCsv",
                "summary": "The charts' numbers as CSV (chart=ID for one chart)",
                "security": security,
                "parameters": [_param("chart", "query", "A chart id, e.g. decisions-by-model.", {"type": "string"})],
                "responses": {
                    "200": {
                        "description": "chart,bucket_start,series,value",
                        "content": {"text/csv": {"schema": {"type": "string"}}},
                    },
                    "404": {"description": "No such chart."},
                },
            }
        },
        "/ui/sign-in": {
            "post": {
                "operationId": "consoleSignIn",
                "summary": "Sign a browser in with the query token (form field token): sets an HttpOnly, "
                "SameSite=Strict cookie the pages take instead of a bearer token; the JSON API does not",
                "responses": {"303": {"description": "Signed in: to next."}, "401": _HTML_PAGE},
            }
        },
        "/v1/traces": {
            "post": {
                "operationId": "exportTraces",
                "summary": "OTLP/HTTP trace export (protobuf or JSON, optionally gzip)",
                "description": "Answers as the OTLP specification says: 200 (with `partial_success` when spans were refused), 400, "
                "413, 415, and 429/503 with `Retry-After` under backpressure. The body is acknowledged only once "
                "its spans are stored durably.",
                "security": [{}, {"ingestToken": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-protobuf": {
                            "schema": {"type": "string", "contentMediaType": "application/x-protobuf"}
                        },
                        "application/json": {"schema": {"type": "object"}},
                    },
                },
                "responses": {
                    "200": {
                        "description": "ExportTraceServiceResponse.",
                        "content": {
                            "application/x-protobuf": {"schema": {"type": "string"}},
                            "application/json": {"schema": {"type": "object"}},
                        },
                    },
                    "400": {"description": "Not an OTLP trace export (google.rpc.Status)."},
                    "401": {"description": "Ingest token missing or wrong."},
                    "413": {"description": "Body over --max-body-bytes (before or after inflating)."},
                    "415": {"description": "Content-Type or Content-Encoding not supported."},
                    "429": {"description": "Too much queued; retry after Retry-After seconds."},
                    "503": {
                        "description": "The store is unavailable or the processor is stopping; retry after Retry-After seconds."
                    },
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "unhardcoded receipts processor",
            "version": "1",
            "description": "Receipts rebuilt from OpenTelemetry spans of routing decisions: query API, pages and OTLP ingest.",
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "queryToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Set with --query-token-env; optional.",
                },
                "ingestToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Set with --ingest-token-env; optional.",
                },
            },
        },
    }
