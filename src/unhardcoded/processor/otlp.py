"""OTLP trace payloads in and out: decode a request body (protobuf or JSON, gzip or not), sort its spans, encode answers.

Every span of an export is looked at once here: spans with ids OTLP forbids are
rejected (and counted for the partial-success answer), spans that carry a
decision, an attempt or a workflow root are kept as :class:`IncomingSpan` with
their serialized protobuf bytes (what the spool stores and the rebuild reads
back), and every other span is passed over: it is not ours to keep, though it
is still forwarded.
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from .._wire import delimited_fields
from ..errors import UnhardcodedError
from ..receipts.spans import SpanFormatError, _pb_value, read_attributes, read_export_view, service_of
from ..semconv import attributes as A

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

# What a kept span is, for assembly: the rebuild reads decision and attempt spans and the workflow root.
ROLE_DECISION, ROLE_ATTEMPT, ROLE_WORKFLOW = "decision", "attempt", "workflow"


class PayloadError(UnhardcodedError, ValueError):
    """The body is not an OTLP trace export: answered 400 / INVALID_ARGUMENT, never retried.

    A ValueError too, as it always was: callers that catch bad input as ValueError still do.
    """


class PayloadTooLarge(PayloadError):
    """The body (or what it inflates to) is over the configured limit: answered 413 / RESOURCE_EXHAUSTED."""


class UnsupportedMediaType(PayloadError):
    """A Content-Type or Content-Encoding the receiver does not read: answered 415."""


@dataclass(slots=True)
class IncomingSpan:
    """One span of ours, as the spool keeps it and assembly groups it."""

    trace_id: str
    span_id: str
    group: str
    """Which receipt it belongs to: ``r:{request id}`` for a decision and its attempts, ``w:{workflow id}`` for a root."""
    role: str
    body: bytes
    """The span, serialized as an OTLP ``Span`` message."""
    service: str | None = None
    attempt_index: int | None = None
    expected_attempts: int | None = None
    """On a decision span: how many attempt spans it made (``fallback.hops + 1`` when a provider was called)."""
    alias: str | None = None
    """On a decision span: ``s:{span id}``, the group of attempt spans that name no request id."""
    workflow_name: str | None = None
    parent: str | None = None
    """On an attempt span: its parent's span id, the decision it was made under."""
    view: Any = None
    """The span in the bytes view, while its export is in memory (with ``attributes``): its receipt, written in
    the same round, is rebuilt from what classifying it read, not from its bytes parsed again."""
    attributes: dict[str, Any] | None = None
    held: int = -1
    """Bytes it holds in memory past its ids (its bytes and attributes), as assembly counted it; -1 until filed."""


@dataclass
class DecodedExport:
    """What one export request holds."""

    message: ExportTraceServiceRequest | None
    """The export parsed in full; ``None`` when it was read through the bytes view (then ``untouched``)."""
    spans: list[IncomingSpan] = field(default_factory=list)
    total: int = 0
    rejected: int = 0
    ignored: int = 0
    errors: list[str] = field(default_factory=list)
    untouched: bool = True
    """True when ``message`` is exactly what was sent (no span removed): the raw bytes can be forwarded as they are."""

    @property
    def accepted(self) -> int:
        return self.total - self.rejected

    def error_message(self) -> str:
        if not self.errors:
            return ""
        shown = "; ".join(self.errors[:5])
        more = len(self.errors) - 5
        return shown + (f"; and {more} more" if more > 0 else "")


# --------------------------------------------------------------------------- bodies


def inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body with its Content-Encoding undone, refusing to inflate past ``limit`` bytes."""
    coding = (encoding or "identity").strip().lower()
    if coding in ("", "identity"):
        return body
    if coding not in ("gzip", "x-gzip", "deflate"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; send gzip or no encoding")
    wbits = 16 + zlib.MAX_WBITS if coding != "deflate" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise PayloadError(f"body is not valid {coding}: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"body inflates to more than {limit} bytes")
    if not inflater.eof:
        raise PayloadError(f"body is truncated {coding}")
    return out


def media_type(content_type: str | None) -> str:
    """``protobuf`` or ``json`` for a Content-Type header; anything else is refused."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind in (PROTOBUF, "application/protobuf", "application/vnd.google.protobuf"):
        return "protobuf"
    if kind == JSON:
        return "json"
    raise UnsupportedMediaType(f"Content-Type {content_type!r} is not supported; send {PROTOBUF} or {JSON}")


def parse_protobuf(body: bytes) -> ExportTraceServiceRequest:
    try:
        message: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(body)
        return message
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise PayloadError(f"not an OTLP ExportTraceServiceRequest: {exc}") from None


_ID_WIDTH = {"traceId": 32, "spanId": 16, "parentSpanId": 16, "trace_id": 32, "span_id": 16, "parent_span_id": 16}


def _hex_to_b64(value: Any, width: int) -> Any:
    # OTLP/JSON writes ids as hex where proto3 JSON would write base64; an id that is not hex of the
    # right width becomes empty, so the span is rejected on its own rather than the whole payload.
    if not isinstance(value, str):
        return value
    if len(value) == width:
        try:
            return base64.b64encode(bytes.fromhex(value)).decode("ascii")
        except ValueError:
            return ""
    return ""


def _fix_ids(doc: Any) -> None:
    if not isinstance(doc, dict):
        raise PayloadError("OTLP/JSON: expected an object with resourceSpans")
    batches = doc.get("resourceSpans", doc.get("resource_spans"))
    if batches is None:
        return
    if not isinstance(batches, list):
        raise PayloadError("OTLP/JSON: resourceSpans must be a list")
    for rs in batches:
        if not isinstance(rs, dict):
            continue
        scopes = rs.get("scopeSpans", rs.get("scope_spans"))
        if not isinstance(scopes, list):
            continue
        for ss in scopes:
            if not isinstance(ss, dict) or not isinstance(ss.get("spans"), list):
                continue
            for s in ss["spans"]:
                if not isinstance(s, dict):
                    continue
                for key in ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"):
                    if key in s:
                        s[key] = _hex_to_b64(s[key], _ID_WIDTH[key])
                links = s.get("links")
                if isinstance(links, list):
                    for link in links:
                        if isinstance(link, dict):
                            for key in ("traceId", "spanId", "trace_id", "span_id"):
                                if key in link:
                                    link[key] = _hex_to_b64(link[key], _ID_WIDTH[key])


def parse_json(body: bytes) -> ExportTraceServiceRequest:
    """OTLP/JSON: hex ids, lowerCamelCase (or original) field names, enums as numbers; unknown fields are ignored."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"body is not JSON: {exc}") from None
    _fix_ids(doc)
    message = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(doc, message, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, AttributeError, KeyError, RecursionError) as exc:
        raise PayloadError(f"not OTLP/JSON: {exc}") from None
    return message


# --------------------------------------------------------------------------- spans


def _str_value(v: Any) -> str | None:
    return v.string_value if v.WhichOneof("value") == "string_value" else None


def _str(v: Any) -> str | None:
    return v if v.__class__ is str else None


def _int(v: Any) -> int | None:
    if v.__class__ is int:
        return v
    if v.__class__ is float and v.is_integer():
        return int(v)
    if v.__class__ is str and v.lstrip("-").isdigit():
        return int(v)
    return None


_REQUEST_ID = A.UNHARDCODED_REQUEST_ID
_FINGERPRINT = A.UNHARDCODED_POLICY_FINGERPRINT
_ATTEMPT_INDEX = A.UNHARDCODED_ATTEMPT_INDEX
_HOPS = A.UNHARDCODED_FALLBACK_HOPS
_OUTCOME = A.UNHARDCODED_DECISION_OUTCOME
_ANSWERED = A.UNHARDCODED_ANSWERED_MODEL
_WORKFLOW_ID = A.UNHARDCODED_WORKFLOW_ID
_WORKFLOW_NAME = A.UNHARDCODED_WORKFLOW_NAME
_WORKFLOW_NODE = A.UNHARDCODED_WORKFLOW_NODE
_WANTED = frozenset(
    {
        _REQUEST_ID,
        _FINGERPRINT,
        _ATTEMPT_INDEX,
        _HOPS,
        _OUTCOME,
        _ANSWERED,
        _WORKFLOW_ID,
        _WORKFLOW_NAME,
        _WORKFLOW_NODE,
    }
)
_CALLED = frozenset({"answered", "failed"})


def span_slices(body: bytes) -> list[bytes] | None:
    """The bytes of every span of a serialized ``ExportTraceServiceRequest``, in the order the parser reads them.

    The spool keeps these bytes as they were sent, which also spares serializing each span again.
    ``None`` when the body is not laid out as expected (the caller serializes the parsed spans instead).
    """
    out = []
    try:
        for rs in delimited_fields(body, 0, len(body), 1):  # resource_spans
            for ss in delimited_fields(body, rs[0], rs[1], 2):  # scope_spans
                out += [body[a:b] for a, b in delimited_fields(body, ss[0], ss[1], 2)]  # spans
    except (IndexError, ValueError):
        return None
    return out


def classify(message: ExportTraceServiceRequest, raw: bytes | None = None) -> DecodedExport:
    """Sort the spans of an export: rejected (bad ids), ours (kept), or someone else's (passed over).

    ``raw``, the serialized ``message`` when the caller has it, lets kept spans keep the bytes they came in.
    Rejected spans are removed from ``message`` so what is forwarded is what was accepted.
    """
    out = DecodedExport(message)
    slices = span_slices(raw) if raw is not None else None
    if slices is not None and len(slices) != sum(
        len(ss.spans) for rs in message.resource_spans for ss in rs.scope_spans
    ):
        slices = None
    position = -1
    for rs in message.resource_spans:
        service = None
        for kv in rs.resource.attributes:
            if kv.key == "service.name":
                service = _str_value(kv.value)
        for ss in rs.scope_spans:
            bad: list[int] = []
            for k, s in enumerate(ss.spans):
                out.total += 1
                position += 1
                tid, sid = s.trace_id, s.span_id
                if len(tid) != 16 or not any(tid) or len(sid) != 8 or not any(sid):
                    bad.append(k)
                    out.rejected += 1
                    if len(out.errors) < 20:
                        out.errors.append(
                            f"span {s.name[:60]!r}: invalid trace or span id (need 16 and 8 non-zero bytes)"
                        )
                    continue
                found = {kv.key: kv.value for kv in s.attributes if kv.key in _WANTED}
                if not found:
                    out.ignored += 1  # someone else's span
                    continue
                span = _ours(
                    s,
                    {k: _pb_value(v) for k, v in found.items()},
                    service,
                    slices[position] if slices is not None else None,
                )
                if span is None:
                    out.ignored += 1
                else:
                    out.spans.append(span)
            for k in reversed(bad):
                del ss.spans[k]
    if out.rejected:
        out.untouched = False
    return out


def classify_bytes(body: bytes) -> DecodedExport:
    """:func:`classify` for a serialized export, read through the bytes view: only the attributes are decoded,
    each once per distinct value. An export with spans to refuse is read in full, to forward what is accepted."""
    try:
        view = read_export_view(body)
        slices = span_slices(body)
        if slices is None:
            return classify(parse_protobuf(body), body)
        out = DecodedExport(None)  # nothing is removed: the body is forwarded as it came
        position = -1
        for rs in view.resource_spans:
            service = service_of(rs.resource) if rs.resource else None
            for ss in rs.scope_spans:
                for s in ss.spans:
                    position += 1
                    tid, sid = s.trace_id, s.span_id
                    if len(tid) != 16 or not any(tid) or len(sid) != 8 or not any(sid):
                        return classify(parse_protobuf(body), body)
                    # Every attribute, not only those that sort it: a span of ours is rebuilt from them.
                    attributes = read_attributes(s.attributes)
                    if (
                        _REQUEST_ID not in attributes
                        and _ATTEMPT_INDEX not in attributes
                        and _WORKFLOW_ID not in attributes
                    ):
                        out.ignored += 1  # someone else's span
                        continue
                    span = _ours(s, attributes, service, slices[position])
                    if span is None:
                        out.ignored += 1
                    else:
                        span.view, span.attributes = s, attributes
                        out.spans.append(span)
        if position + 1 != len(slices):
            return classify(parse_protobuf(body), body)
        out.total = position + 1
        return out
    except SpanFormatError as exc:
        raise PayloadError(f"not an OTLP ExportTraceServiceRequest: {exc}") from None


def _ours(s: Any, a: dict[str, Any], service: str | None, body: bytes | None = None) -> IncomingSpan | None:
    """Span ``s`` as assembly files it, if it is a decision, an attempt or a workflow root. ``a`` holds the values of
    its attributes in ``_WANTED``; its bytes are ``body``, or ``s`` serialized."""
    trace_id, span_id = s.trace_id.hex(), s.span_id.hex()
    request_id = _str(a.get(_REQUEST_ID))
    if _ATTEMPT_INDEX in a:
        index = _int(a[_ATTEMPT_INDEX])
        parent = s.parent_span_id
        parent_id = parent.hex() if len(parent) == 8 and any(parent) else None
        if request_id:
            group = "r:" + request_id
        elif parent_id is None:
            return None
        else:
            group = "s:" + parent_id
        return IncomingSpan(
            trace_id,
            span_id,
            group,
            ROLE_ATTEMPT,
            body or s.SerializeToString(),
            service,
            attempt_index=index,
            parent=parent_id,
        )
    if request_id and _FINGERPRINT in a:
        outcome = _str(a.get(_OUTCOME))
        if outcome is None and _ANSWERED in a:
            outcome = "answered"
        expected = 0
        if outcome in _CALLED:
            hops = _int(a[_HOPS]) if _HOPS in a else 0
            expected = max(0, hops or 0) + 1
        return IncomingSpan(
            trace_id,
            span_id,
            "r:" + request_id,
            ROLE_DECISION,
            body or s.SerializeToString(),
            service,
            expected_attempts=expected,
            alias="s:" + span_id,
        )
    if _WORKFLOW_ID in a and _WORKFLOW_NODE not in a and _REQUEST_ID not in a:
        workflow_id = _str(a[_WORKFLOW_ID])
        if not workflow_id:
            return None
        return IncomingSpan(
            trace_id,
            span_id,
            "w:" + workflow_id,
            ROLE_WORKFLOW,
            body or s.SerializeToString(),
            service,
            workflow_name=_str(a.get(_WORKFLOW_NAME)),
        )
    return None


def span_from_body(body: bytes, service: str | None) -> IncomingSpan | None:
    """A spooled span read back (after a restart, or to rebuild a finished receipt with a late span)."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    s = Span.FromString(body)
    found = {kv.key: _pb_value(kv.value) for kv in s.attributes if kv.key in _WANTED}
    return _ours(s, found, service, body) if found else None


def decode(body: bytes, kind: str) -> DecodedExport:
    """Decode and sort one export body (already inflated); ``kind`` is ``protobuf`` or ``json``."""
    if kind == "protobuf":
        return classify_bytes(body)
    return classify(parse_json(body))


# --------------------------------------------------------------------------- answers


def response_message(decoded: DecodedExport | None) -> ExportTraceServiceResponse:
    response = ExportTraceServiceResponse()
    if decoded is not None and decoded.rejected:
        response.partial_success.CopyFrom(
            ExportTracePartialSuccess(rejected_spans=decoded.rejected, error_message=decoded.error_message())
        )
    return response


def encode_response(response: Message, kind: str) -> bytes:
    if kind == "protobuf":
        data: bytes = response.SerializeToString()
        return data
    return json.dumps(json_format.MessageToDict(response), separators=(",", ":")).encode()


# gRPC status codes, as google.rpc.Status numbers them (the HTTP error body is a google.rpc.Status too).
INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAUTHENTICATED, UNAVAILABLE = 3, 8, 16, 14


def status_body(code: int, message: str, kind: str, retry_after_s: float | None = None) -> bytes:
    """A ``google.rpc.Status`` in the request's encoding, with ``RetryInfo`` when the client should come back later."""
    from google.rpc import error_details_pb2, status_pb2

    status = status_pb2.Status(code=code, message=message)
    if retry_after_s is not None:
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromNanoseconds(int(retry_after_s * 1e9))
        status.details.add().Pack(info)
    return encode_response(status, kind)
