"""One internal form for spans, read from every place a decision's spans can come from.

SDK ``ReadableSpan``s, OTLP protobuf (bytes or message), OTLP/JSON, Jaeger's
``/api/v3/traces`` and legacy ``/api/traces`` JSON, and Tempo's ``/api/traces``
and ``/api/v2/traces`` JSON are each read once into :class:`SpanRecord`s; the
rebuild only ever sees that form.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .._wire import varint
from ..errors import UnhardcodedError
from .memo import Memo, memo

if TYPE_CHECKING:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
    from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

# OTLP's SpanKind numbering; the Python API's SpanKind enum numbers differently.
KIND_UNSPECIFIED, KIND_INTERNAL, KIND_SERVER, KIND_CLIENT, KIND_PRODUCER, KIND_CONSUMER = range(6)
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2

_API_KIND_TO_OTLP = {0: KIND_INTERNAL, 1: KIND_SERVER, 2: KIND_CLIENT, 3: KIND_PRODUCER, 4: KIND_CONSUMER}
_KIND_NAMES = {
    "SPAN_KIND_UNSPECIFIED": KIND_UNSPECIFIED,
    "SPAN_KIND_INTERNAL": KIND_INTERNAL,
    "SPAN_KIND_SERVER": KIND_SERVER,
    "SPAN_KIND_CLIENT": KIND_CLIENT,
    "SPAN_KIND_PRODUCER": KIND_PRODUCER,
    "SPAN_KIND_CONSUMER": KIND_CONSUMER,
}
_JAEGER_KINDS = {
    "internal": KIND_INTERNAL,
    "server": KIND_SERVER,
    "client": KIND_CLIENT,
    "producer": KIND_PRODUCER,
    "consumer": KIND_CONSUMER,
}
_STATUS_NAMES = {"STATUS_CODE_UNSET": STATUS_UNSET, "STATUS_CODE_OK": STATUS_OK, "STATUS_CODE_ERROR": STATUS_ERROR}


class SpanFormatError(UnhardcodedError):
    """Input that is not spans in any format the rebuild reads; the message says what was expected."""


class SharedAttributes(dict):  # type: ignore[type-arg]
    """Event attributes read once and shared by every event that carries them; never written after.

    ``memo`` holds what a reader derived from them (the rebuild keeps the Rejection they describe).
    """

    __slots__ = ("memo",)


class EventRecord:
    """A span event: name, time and attributes."""

    __slots__ = ("attributes", "name", "time_ns")

    def __init__(self, name: str, time_ns: int, attributes: dict[str, Any]) -> None:
        self.name = name
        self.time_ns = time_ns
        self.attributes = attributes

    def __repr__(self) -> str:
        return f"EventRecord({self.name!r}, {self.time_ns}, {len(self.attributes)} attributes)"


class SpanRecord:
    """A finished span as the rebuild reads it: lowercase hex ids, OTLP kind and status numbers, plain values."""

    __slots__ = (
        "attributes",
        "dropped_attributes",
        "dropped_events",
        "end_ns",
        "events",
        "kind",
        "name",
        "parent_span_id",
        "service",
        "span_id",
        "start_ns",
        "status_code",
        "trace_id",
    )

    def __init__(
        self,
        trace_id: str,
        span_id: str,
        parent_span_id: str | None,
        name: str,
        kind: int,
        start_ns: int,
        end_ns: int,
        attributes: dict[str, Any],
        events: list[EventRecord],
        status_code: int = STATUS_UNSET,
        dropped_attributes: int = 0,
        dropped_events: int = 0,
        service: str | None = None,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_span_id = parent_span_id
        self.name = name
        self.kind = kind
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.attributes = attributes
        self.events = events
        self.status_code = status_code
        self.dropped_attributes = dropped_attributes
        self.dropped_events = dropped_events
        self.service = service

    def __repr__(self) -> str:
        return f"SpanRecord({self.name!r}, trace={self.trace_id}, span={self.span_id}, parent={self.parent_span_id})"


# --------------------------------------------------------------------------- ids and scalars


_HEX = frozenset("0123456789abcdefABCDEF")


def _hex_id(value: Any, width: int, what: str) -> str:
    """An id as lowercase hex of ``width`` digits, from hex (any case, Jaeger may trim zeros), base64 or bytes."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex().rjust(width, "0")
    if isinstance(value, int) and not isinstance(value, bool):
        return format(value, f"0{width}x")
    if not isinstance(value, str):
        raise SpanFormatError(f"{what}: expected a hex or base64 id, got {type(value).__name__}")
    # Jaeger prints a 128-bit trace id whose high half is zero as 16 digits; nothing else is short.
    if (len(value) == width or (width == 32 and len(value) == 16)) and all(c in _HEX for c in value):
        return value.lower().rjust(width, "0")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SpanFormatError(f"{what}: {value!r} is neither hex nor base64") from None
    if len(raw) * 2 != width:
        raise SpanFormatError(f"{what}: {value!r} decodes to {len(raw)} bytes, expected {width // 2}")
    return raw.hex()


def _parent_id(value: Any, what: str) -> str | None:
    if value in (None, "", b""):
        return None
    parent = _hex_id(value, 16, what)
    return None if parent == "0" * 16 else parent


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise SpanFormatError(f"{what}: expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise SpanFormatError(f"{what}: expected an integer, got {value!r}")


def _double(value: Any) -> float:
    return float(value)  # a number, or a string: proto3 JSON writes non-finite doubles as "NaN", "Infinity"


# --------------------------------------------------------------------------- SDK ReadableSpan


def from_readable_spans(spans: Iterable[Any]) -> list[SpanRecord]:
    """SDK ``ReadableSpan``s (e.g. from ``InMemorySpanExporter.get_finished_spans()``)."""
    out: list[SpanRecord] = []
    for span in spans:
        ctx = span.context
        parent = span.parent
        resource = getattr(span, "resource", None)
        service = resource.attributes.get("service.name") if resource is not None else None
        events = [EventRecord(e.name, e.timestamp or 0, _plain_attributes(e.attributes)) for e in span.events]
        out.append(
            SpanRecord(
                trace_id=format(ctx.trace_id, "032x"),
                span_id=format(ctx.span_id, "016x"),
                parent_span_id=format(parent.span_id, "016x") if parent is not None and parent.span_id else None,
                name=span.name,
                kind=_API_KIND_TO_OTLP.get(span.kind.value, KIND_UNSPECIFIED),
                start_ns=span.start_time or 0,
                end_ns=span.end_time or 0,
                attributes=_plain_attributes(span.attributes),
                events=events,
                status_code=int(span.status.status_code.value),
                dropped_attributes=int(getattr(span, "dropped_attributes", 0) or 0),
                dropped_events=int(getattr(span, "dropped_events", 0) or 0),
                service=service if isinstance(service, str) else None,
            )
        )
    return out


def _plain_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    if not attributes:
        return {}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in attributes.items()}


# --------------------------------------------------------------------------- OTLP protobuf


def _pb_array(values: Any) -> list[Any]:
    strings = [x.string_value for x in values]
    if all(strings):  # string[] is the only array type we write: read it without WhichOneof per element
        return strings
    return [_pb_value(x) for x in values]


def _pb_value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "string_value":
        return v.string_value
    if which == "int_value":
        return v.int_value
    if which == "double_value":
        return v.double_value
    if which == "bool_value":
        return v.bool_value
    if which == "array_value":
        return _pb_array(v.array_value.values)
    if which == "kvlist_value":
        return {kv.key: _pb_value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value
    return None


def _pb_attributes(kvs: Any) -> dict[str, Any]:
    out = {}
    for kv in kvs:
        v = kv.value
        # Strings first and without WhichOneof: most of our attributes are strings, and this loop is the
        # hot path of the protobuf rebuild. An empty string falls through to the full check.
        text = v.string_value
        if text:
            out[kv.key] = text
            continue
        which = v.WhichOneof("value")
        if which == "int_value":
            out[kv.key] = v.int_value
        elif which == "double_value":
            out[kv.key] = v.double_value
        elif which == "bool_value":
            out[kv.key] = v.bool_value
        elif which == "string_value":
            out[kv.key] = ""
        elif which == "array_value":
            out[kv.key] = _pb_array(v.array_value.values)
        else:
            out[kv.key] = _pb_value(v)
    return out


# Events repeat byte for byte but for their time: a decision's rejection events are the same for every
# request routed under the same policy and catalog. Their attributes are read once and the dict shared;
# the rebuild only reads event attributes, never writes them.
_EVENT_ATTRIBUTES: Memo[bytes, SharedAttributes] = memo("event_attributes", 0.10)
_TIME_FIELD = b"\x09"  # Span.Event.time_unix_nano: field 1, fixed64, 8 bytes after the tag


def _pb_event(e: Any) -> EventRecord:
    raw = e.SerializeToString()
    key = raw[9:] if raw[:1] == _TIME_FIELD else raw
    attributes = _EVENT_ATTRIBUTES.get(key)
    if attributes is None:
        attributes = SharedAttributes(_pb_event_attributes(e.attributes))
        _EVENT_ATTRIBUTES.put(key, attributes, len(key))
    return EventRecord(e.name, e.time_unix_nano, attributes)


def _pb_event_attributes(kvs: Any) -> dict[str, Any]:
    # Rejection events carry only non-empty strings: one comprehension reads them; anything else is read in full.
    out = {kv.key: kv.value.string_value for kv in kvs}
    if all(out.values()):
        return out
    return _pb_attributes(kvs)


def from_otlp_proto(
    message: ExportTraceServiceRequest | TracesData | bytes | bytearray | memoryview,
) -> list[SpanRecord]:
    """An OTLP ``ExportTraceServiceRequest`` or ``TracesData`` message, or its serialized bytes."""
    if isinstance(message, (bytes, bytearray, memoryview)):
        return from_otlp_bytes(bytes(message))
    out: list[SpanRecord] = []
    append = out.append
    for rs in message.resource_spans:
        service = None
        for kv in rs.resource.attributes:
            if kv.key == "service.name":
                service = kv.value.string_value or None
        for ss in rs.scope_spans:
            for s in ss.spans:
                append(from_pb_span(s, service))
    return out


def from_pb_span(s: PbSpan, service: str | None = None) -> SpanRecord:
    """One OTLP protobuf ``Span`` message, of the service named."""
    return _record(s, service, _pb_attributes(s.attributes), [_pb_event(e) for e in s.events])


def _record(s: Any, service: str | None, attributes: dict[str, Any], events: list[EventRecord]) -> SpanRecord:
    """A ``Span`` message, full or in the bytes view (the same field names), with its attributes and events read."""
    tid, sid, pid = s.trace_id, s.span_id, s.parent_span_id
    return SpanRecord(
        tid.hex() if len(tid) == 16 else _hex_id(tid, 32, "traceId"),
        sid.hex() if len(sid) == 8 else _hex_id(sid, 16, "spanId"),
        pid.hex() if len(pid) == 8 and any(pid) else None,
        s.name,
        s.kind,
        s.start_time_unix_nano,
        s.end_time_unix_nano,
        attributes,
        events,
        s.status.code,
        s.dropped_attributes_count,
        s.dropped_events_count,
        service,
    )


# --------------------------------------------------------------------------- OTLP protobuf bytes
#
# Serialized spans are read through a second, wire-compatible view of the OTLP messages in which a
# span's attributes and events stay bytes: the C parser splits them, and each attribute is then looked
# up by its bytes. A decision's attributes and rejection events are mostly the same bytes on every
# request under one policy and catalog, so most are read once; only per-request values (request id,
# cost, tokens, latency) are parsed each time. The result is exactly what reading the full messages
# gives (tests compare the two on fuzzed input).


def _lite_messages() -> tuple[Any, Any]:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="unhardcoded/lite_trace.proto", package="unhardcoded.lite", syntax="proto3"
    )

    def message(name: str, fields: list[tuple[str, int, int, bool, str | None]]) -> None:
        m = fdp.message_type.add(name=name)
        for field, number, kind, repeated, type_name in fields:
            f = m.field.add(
                name=field, number=number, type=kind, label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
            )
            if type_name:
                f.type_name = type_name

    # Field numbers and wire types as opentelemetry/proto/trace/v1/trace.proto; message fields read whole
    # (status) stay messages, so a status split across the wire merges as the full parser merges it.
    message("Status", [("code", 3, F.TYPE_INT32, False, None)])
    message(
        "Span",
        [
            ("trace_id", 1, F.TYPE_BYTES, False, None),
            ("span_id", 2, F.TYPE_BYTES, False, None),
            ("parent_span_id", 4, F.TYPE_BYTES, False, None),
            ("name", 5, F.TYPE_STRING, False, None),
            ("kind", 6, F.TYPE_INT32, False, None),
            ("start_time_unix_nano", 7, F.TYPE_FIXED64, False, None),
            ("end_time_unix_nano", 8, F.TYPE_FIXED64, False, None),
            ("attributes", 9, F.TYPE_BYTES, True, None),
            ("dropped_attributes_count", 10, F.TYPE_UINT32, False, None),
            ("events", 11, F.TYPE_BYTES, True, None),
            ("dropped_events_count", 12, F.TYPE_UINT32, False, None),
            ("status", 15, F.TYPE_MESSAGE, False, ".unhardcoded.lite.Status"),
        ],
    )
    message("ScopeSpans", [("spans", 2, F.TYPE_MESSAGE, True, ".unhardcoded.lite.Span")])
    message(
        "ResourceSpans",
        [
            ("resource", 1, F.TYPE_BYTES, False, None),
            ("scope_spans", 2, F.TYPE_MESSAGE, True, ".unhardcoded.lite.ScopeSpans"),
        ],
    )
    message("Export", [("resource_spans", 1, F.TYPE_MESSAGE, True, ".unhardcoded.lite.ResourceSpans")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    get = message_factory.GetMessageClass
    return get(pool.FindMessageTypeByName("unhardcoded.lite.Span")), get(
        pool.FindMessageTypeByName("unhardcoded.lite.Export")
    )


class _Messages(NamedTuple):
    span_view: Any
    export_view: Any
    key_value: Any
    event: Any
    resource: Any


_LITE: _Messages | None = None


def _lite() -> _Messages:
    """The message classes the bytes view reads with, imported once (an import in a hot function is not free)."""
    global _LITE
    if _LITE is None:
        from opentelemetry.proto.common.v1.common_pb2 import KeyValue
        from opentelemetry.proto.resource.v1.resource_pb2 import Resource
        from opentelemetry.proto.trace.v1.trace_pb2 import Span

        _LITE = _Messages(*_lite_messages(), KeyValue, Span.Event, Resource)
    return _LITE


# Each memo is bounded in bytes and keeps no value over a size (memo.py): distinct huge values are read, not kept.
_KEYVALUES: Memo[bytes, tuple[str, Any]] = memo("attributes", 0.20)
_SERVICES: Memo[bytes, object] = memo("services", 0.01)
_SCALARS = frozenset({str, int, float, bool, bytes})


_little_double = struct.Struct("<d").unpack_from


def _scalar_keyvalue(raw: bytes) -> tuple[str, Any] | None:
    """A ``KeyValue`` laid out as SDKs write a scalar (the key, then a value of one string, bool, int or double
    field, nothing else) read without the parser: what it reads, field by field; None for any other layout.

    Most attributes repeat and are read once, but per-request values (request id, cost, tokens, latency) are
    new on every span, and the parser costs three times this for them.
    """
    n = len(raw)
    if n < 2 or raw[0] != 0x0A:
        return None
    try:
        key_len = raw[1]
        i = 2
        if key_len >= 0x80:
            key_len, i = varint(raw, 1)
        end = i + key_len
        if end + 1 >= n or raw[end] != 0x12:
            return None
        value_len = raw[end + 1]
        v = end + 2
        if value_len >= 0x80:
            value_len, v = varint(raw, end + 1)
        if v + value_len != n:
            return None
        key = raw[i:end].decode()
        if value_len == 0:
            return key, None
        tag = raw[v]
        if tag == 0x21:  # double_value
            return (key, _little_double(raw, v + 1)[0]) if value_len == 9 else None
        if tag == 0x0A:  # string_value
            text_len, t = (raw[v + 1], v + 2) if v + 1 < n and raw[v + 1] < 0x80 else varint(raw, v + 1)
            return (key, raw[t:n].decode()) if t + text_len == n else None
        if tag == 0x18 or tag == 0x10:  # int_value (int64, two's complement), bool_value
            number, after = varint(raw, v + 1)
            if number >> 64 or after != n:
                return None  # an overlong varint: the parser's to read
            if tag == 0x10:
                return key, number != 0
            return key, number - (1 << 64) if number >= 1 << 63 else number
    except (IndexError, ValueError, UnicodeDecodeError):
        return None  # a varint past the end or over ten bytes, or text that is not UTF-8: the parser refuses it
    return None


def _keyvalue(raw: bytes) -> tuple[str, Any]:
    scalar = _scalar_keyvalue(raw)
    if scalar is not None:
        item: tuple[str, Any] = scalar
        value = scalar[1]
    else:
        kv = _lite().key_value.FromString(raw)
        value = _pb_value(kv.value)
        item = (kv.key, value)
    if value is None or value.__class__ in _SCALARS:
        pass
    elif value.__class__ is list and all(x is None or x.__class__ in _SCALARS for x in value):
        item = (item[0], tuple(value))  # handed out as a fresh list each time
    else:
        return item  # nested values are not shared
    memo = _KEYVALUES
    if len(raw) <= memo.small:  # Memo.put for a small entry, inline: most attributes, and this is per span
        if len(memo) >= memo.cap:
            memo.clear()
        memo[raw] = item
    else:
        memo.put(raw, item, len(raw))
    return item


def _raw_attributes(raws: Any) -> dict[str, Any]:
    out = {}
    get = _KEYVALUES.get
    for raw in raws[:]:  # a list: iterating the container itself ends in an IndexError
        item = get(raw)
        if item is None:
            item = _keyvalue(raw)
        value = item[1]
        out[item[0]] = list(value) if value.__class__ is tuple else value
    return out


_fixed64 = struct.Struct("<Q").unpack_from


def _raw_event(raw: bytes) -> EventRecord:
    if raw[:1] == _TIME_FIELD and len(raw) >= 9:
        time_ns: int | None = _fixed64(raw, 1)[0]
        key = raw[9:]
    else:
        time_ns, key = None, raw
    hit = _EVENT_RECORDS.get(key)
    if hit is None or time_ns is None:
        e = _lite().event.FromString(raw)
        attributes = SharedAttributes(_pb_event_attributes(e.attributes))
        if time_ns == e.time_unix_nano:  # the time is the first field and the only time field: the rest is the key
            _EVENT_RECORDS.put(key, (e.name, attributes), len(key))
        return EventRecord(e.name, e.time_unix_nano, attributes)
    return EventRecord(hit[0], time_ns, hit[1])


_EVENT_RECORDS: Memo[bytes, tuple[str, SharedAttributes]] = memo("events", 0.10)


def _lite_record(s: Any, service: str | None, attributes: dict[str, Any] | None = None) -> SpanRecord:
    """A span in the bytes view; its ``attributes`` read from it already, or None to read them now."""
    if attributes is None:
        attributes = _raw_attributes(s.attributes)
    return _record(s, service, attributes, [_raw_event(e) for e in s.events[:]])


def _decode_error() -> type[Exception]:
    from google.protobuf.message import DecodeError

    error: type[Exception] = DecodeError
    return error


def from_span_bytes(body: bytes, service: str | None = None, attributes: dict[str, Any] | None = None) -> SpanRecord:
    """One serialized OTLP ``Span``, of the service named; ``attributes``, when :func:`read_attributes` has read
    them from these bytes before, are taken instead of read again."""
    try:
        return _lite_record(_lite().span_view.FromString(body), service, attributes)
    except _decode_error() as exc:
        raise SpanFormatError(f"not an OTLP protobuf Span: {exc}") from None


def _service(raw: bytes) -> str | None:
    hit = _SERVICES.get(raw, _MISSING)
    if hit is _MISSING:
        hit = None
        for kv in _lite().resource.FromString(raw).attributes:
            if kv.key == "service.name":
                hit = kv.value.string_value or None
        _SERVICES.put(raw, hit, len(raw))
    return hit  # type: ignore[return-value]


_MISSING = object()


def read_export_view(body: bytes) -> Any:
    """A serialized ``ExportTraceServiceRequest`` in the bytes view: ``resource_spans[].resource`` (bytes),
    ``.scope_spans[].spans[]`` with ids, name and ``attributes`` / ``events`` as bytes."""
    try:
        return _lite().export_view.FromString(body)
    except _decode_error() as exc:
        raise SpanFormatError(f"not an OTLP protobuf ExportTraceServiceRequest: {exc}") from None


def service_of(resource: bytes) -> str | None:
    """``service.name`` of a serialized ``Resource``."""
    try:
        return _service(resource)
    except _decode_error() as exc:
        raise SpanFormatError(f"not an OTLP protobuf Resource: {exc}") from None


def read_attributes(raws: Any) -> dict[str, Any]:
    """Every attribute among serialized ``KeyValue``s (a span's in the bytes view), each distinct one decoded once;
    a malformed one raises :class:`SpanFormatError` wherever it is."""
    try:
        return _raw_attributes(raws)
    except _decode_error() as exc:
        raise SpanFormatError(f"not an OTLP protobuf KeyValue: {exc}") from None


def from_span_view(span: Any, service: str | None, attributes: dict[str, Any]) -> SpanRecord:
    """A span of :func:`read_export_view` whose ``attributes`` :func:`read_attributes` has read: what
    :func:`from_span_bytes` reads from its bytes, without parsing them again."""
    try:
        return _lite_record(span, service, attributes)
    except _decode_error() as exc:
        raise SpanFormatError(f"not an OTLP protobuf Span: {exc}") from None


def from_otlp_bytes(body: bytes) -> list[SpanRecord]:
    """A serialized ``ExportTraceServiceRequest`` (or ``TracesData``: the same wire layout)."""
    try:
        message = _lite().export_view.FromString(body)
        out: list[SpanRecord] = []
        for rs in message.resource_spans:
            service = _service(rs.resource)
            out += [_lite_record(s, service) for ss in rs.scope_spans for s in ss.spans]
        return out
    except _decode_error() as exc:
        raise SpanFormatError(f"not an OTLP protobuf ExportTraceServiceRequest: {exc}") from None


# --------------------------------------------------------------------------- OTLP/JSON (and Jaeger v3, Tempo)


def _get(d: Mapping[str, Any], camel: str, snake: str | None = None) -> Any:
    value = d.get(camel)
    if value is None and snake is not None:
        value = d.get(snake)
    return value


def _json_value(v: Any, what: str) -> Any:
    if not isinstance(v, Mapping):
        raise SpanFormatError(f"{what}: expected an AnyValue object, got {type(v).__name__}")
    for key, value in v.items():
        if key in ("stringValue", "string_value"):
            return value
        if key in ("intValue", "int_value"):
            return _int(value, what)
        if key in ("doubleValue", "double_value"):
            return _double(value)
        if key in ("boolValue", "bool_value"):
            return bool(value)
        if key in ("arrayValue", "array_value"):
            return [_json_value(x, what) for x in (value or {}).get("values", [])]
        if key in ("kvlistValue", "kvlist_value"):
            return _json_attributes((value or {}).get("values", []), what)
        if key in ("bytesValue", "bytes_value"):
            return base64.b64decode(value)
    return None


def _json_attributes(kvs: Any, what: str) -> dict[str, Any]:
    if not kvs:
        return {}
    if not isinstance(kvs, list):
        raise SpanFormatError(f"{what}: attributes must be a list of key/value objects")
    out = {}
    for kv in kvs:
        if not isinstance(kv, Mapping) or not isinstance(kv.get("key"), str):
            raise SpanFormatError(f"{what}: an attribute must be an object with a string key")
        out[kv["key"]] = _json_value(kv.get("value") or {}, f"{what}.{kv['key']}")
    return out


def _enum(value: Any, names: Mapping[str, int], default: int) -> int:
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value in names:
            return names[value]
        if value.isdigit():
            return int(value)
    return default


def from_otlp_json(doc: Any) -> list[SpanRecord]:
    """OTLP/JSON (``{"resourceSpans": [...]}``): hex or base64 ids, ints as strings, enums as numbers or names."""
    if isinstance(doc, (str, bytes, bytearray)):
        doc = _load_json(doc)
    if not isinstance(doc, Mapping):
        raise SpanFormatError("OTLP/JSON: expected an object with resourceSpans")
    return _resource_spans(_get(doc, "resourceSpans", "resource_spans") or [], "resourceSpans")


def _resource_spans(batches: Any, where: str) -> list[SpanRecord]:
    if not isinstance(batches, list):
        raise SpanFormatError(f"{where}: expected a list of ResourceSpans")
    out: list[SpanRecord] = []
    for i, rs in enumerate(batches):
        if not isinstance(rs, Mapping):
            raise SpanFormatError(f"{where}[{i}]: expected a ResourceSpans object")
        resource = rs.get("resource") or {}
        service = _json_attributes(resource.get("attributes"), f"{where}[{i}].resource").get("service.name")
        scopes = _get(rs, "scopeSpans", "scope_spans")
        if scopes is None:  # OTLP before 0.15, still written by older Tempo
            scopes = _get(rs, "instrumentationLibrarySpans", "instrumentation_library_spans") or []
        for j, ss in enumerate(scopes):
            for k, s in enumerate((ss or {}).get("spans") or []):
                out.append(
                    _json_span(
                        s, f"{where}[{i}].scopeSpans[{j}].spans[{k}]", service if isinstance(service, str) else None
                    )
                )
    return out


def _json_span(s: Any, what: str, service: str | None) -> SpanRecord:
    if not isinstance(s, Mapping):
        raise SpanFormatError(f"{what}: expected a Span object")
    events = []
    for n, e in enumerate(s.get("events") or []):
        events.append(
            EventRecord(
                str(e.get("name", "")),
                _int(_get(e, "timeUnixNano", "time_unix_nano") or 0, f"{what}.events[{n}].timeUnixNano"),
                _json_attributes(e.get("attributes"), f"{what}.events[{n}]"),
            )
        )
    status = s.get("status") or {}
    return SpanRecord(
        trace_id=_hex_id(_get(s, "traceId", "trace_id"), 32, f"{what}.traceId"),
        span_id=_hex_id(_get(s, "spanId", "span_id"), 16, f"{what}.spanId"),
        parent_span_id=_parent_id(_get(s, "parentSpanId", "parent_span_id"), f"{what}.parentSpanId"),
        name=str(s.get("name", "")),
        kind=_enum(s.get("kind"), _KIND_NAMES, KIND_UNSPECIFIED),
        start_ns=_int(_get(s, "startTimeUnixNano", "start_time_unix_nano") or 0, f"{what}.startTimeUnixNano"),
        end_ns=_int(_get(s, "endTimeUnixNano", "end_time_unix_nano") or 0, f"{what}.endTimeUnixNano"),
        attributes=_json_attributes(s.get("attributes"), what),
        events=events,
        status_code=_enum(status.get("code"), _STATUS_NAMES, STATUS_UNSET),
        dropped_attributes=_int(_get(s, "droppedAttributesCount", "dropped_attributes_count") or 0, what),
        dropped_events=_int(_get(s, "droppedEventsCount", "dropped_events_count") or 0, what),
        service=service,
    )


# --------------------------------------------------------------------------- Jaeger legacy /api/traces


def _jaeger_tag(tag: Mapping[str, Any], what: str) -> Any:
    kind = str(tag.get("type", "string")).lower()
    value = tag.get("value")
    if kind in ("int64", "int"):
        return _int(value, what)
    if kind in ("float64", "float"):
        return _double(value)
    if kind == "bool":
        return value if isinstance(value, bool) else str(value).lower() == "true"
    if kind == "binary":
        return base64.b64decode(value) if isinstance(value, str) else value
    return value


def _jaeger_tags(tags: Any, what: str) -> dict[str, Any]:
    out = {}
    for tag in tags or []:
        if not isinstance(tag, Mapping) or not isinstance(tag.get("key"), str):
            raise SpanFormatError(f"{what}: a tag must be an object with a string key")
        out[tag["key"]] = _jaeger_tag(tag, f"{what}.{tag['key']}")
    return out


# Tags the OTLP -> Jaeger translation adds for span fields Jaeger has no place for.
_JAEGER_SPECIAL = frozenset(
    {
        "span.kind",
        "otel.status_code",
        "otel.status_description",
        "error",
        "otel.scope.name",
        "otel.scope.version",
        "otel.library.name",
        "otel.library.version",
        "otel.dropped_attributes_count",
        "otel.dropped_events_count",
        "otel.dropped_links_count",
        "w3c.tracestate",
        "internal.span.format",
    }
)


def from_jaeger_json(doc: Any) -> list[SpanRecord]:
    """Jaeger's legacy query API (``/api/traces`` or ``/api/traces/{id}``): ``{"data": [{"spans", "processes"}]}``.

    Array attributes arrive as JSON text (Jaeger tags have no arrays); the rebuild
    decodes them where it expects an array.
    """
    if isinstance(doc, (str, bytes, bytearray)):
        doc = _load_json(doc)
    traces = doc.get("data") if isinstance(doc, Mapping) else doc
    if isinstance(traces, Mapping):
        traces = [traces]
    if not isinstance(traces, list):
        raise SpanFormatError('Jaeger JSON: expected {"data": [traces]}')
    out: list[SpanRecord] = []
    for t, trace in enumerate(traces):
        if not isinstance(trace, Mapping):
            raise SpanFormatError(f"data[{t}]: expected a trace object with spans and processes")
        processes = trace.get("processes") or {}
        for i, s in enumerate(trace.get("spans") or []):
            what = f"data[{t}].spans[{i}]"
            if not isinstance(s, Mapping):
                raise SpanFormatError(f"{what}: expected a span object")
            tags = _jaeger_tags(s.get("tags"), what)
            parent = None
            for ref in s.get("references") or []:
                if ref.get("refType") == "CHILD_OF":
                    parent = _parent_id(ref.get("spanID"), f"{what}.references")
                    break
            process = s.get("process") or processes.get(s.get("processID"), {})
            service = process.get("serviceName") if isinstance(process, Mapping) else None
            events = []
            for n, log in enumerate(s.get("logs") or []):
                fields = _jaeger_tags(log.get("fields"), f"{what}.logs[{n}]")
                name = fields.pop("event", "")
                events.append(
                    EventRecord(str(name), _int(log.get("timestamp", 0), f"{what}.logs[{n}].timestamp") * 1000, fields)
                )
            status = STATUS_UNSET
            code = tags.get("otel.status_code")
            if code == "ERROR" or (code is None and tags.get("error") is True):
                status = STATUS_ERROR
            elif code == "OK":
                status = STATUS_OK
            start_us = _int(s.get("startTime", 0), f"{what}.startTime")
            duration_us = _int(s.get("duration", 0), f"{what}.duration")
            out.append(
                SpanRecord(
                    trace_id=_hex_id(s.get("traceID"), 32, f"{what}.traceID"),
                    span_id=_hex_id(s.get("spanID"), 16, f"{what}.spanID"),
                    parent_span_id=parent,
                    name=str(s.get("operationName", "")),
                    kind=_JAEGER_KINDS.get(str(tags.get("span.kind", "internal")), KIND_INTERNAL),
                    start_ns=start_us * 1000,
                    end_ns=(start_us + duration_us) * 1000,
                    attributes={k: v for k, v in tags.items() if k not in _JAEGER_SPECIAL},
                    events=events,
                    status_code=status,
                    dropped_attributes=_int(tags.get("otel.dropped_attributes_count", 0), what),
                    dropped_events=_int(tags.get("otel.dropped_events_count", 0), what),
                    service=service if isinstance(service, str) else None,
                )
            )
    return out


# --------------------------------------------------------------------------- detection


def _load_json(text: str | bytes | bytearray) -> Any:
    """One JSON document, or several in a row (Jaeger's streamed ``/api/v3`` answers) as a list."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise SpanFormatError("span payload is neither UTF-8 JSON nor OTLP protobuf") from None
    decoder = json.JSONDecoder()
    docs = []
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos].isspace():
            pos += 1
        if pos >= end:
            break
        try:
            doc, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise SpanFormatError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
        docs.append(doc)
    if not docs:
        raise SpanFormatError("empty span payload")
    return docs[0] if len(docs) == 1 else docs


FORMATS = ("sdk", "otlp-proto", "otlp-json", "jaeger-v3", "jaeger", "tempo", "tempo-v2")


def detect_format(payload: Any) -> str:
    """Which of :data:`FORMATS` ``payload`` is in."""
    if isinstance(payload, Mapping):
        if "resourceSpans" in payload or "resource_spans" in payload:
            return "otlp-json"
        if "result" in payload:
            return "jaeger-v3"
        if "batches" in payload:
            return "tempo"
        if "trace" in payload:
            return "tempo-v2"
        if "data" in payload:
            return "jaeger"
        if "error" in payload and isinstance(payload["error"], Mapping):
            raise SpanFormatError(
                f"the trace backend answered with an error: {payload['error'].get('message', payload['error'])}"
            )
        raise SpanFormatError(
            f"unknown span JSON: top-level keys {sorted(payload)[:6]}; expected resourceSpans, result, batches, trace or data"
        )
    if hasattr(payload, "resource_spans"):
        return "otlp-proto"
    if (
        isinstance(payload, Sequence)
        and not isinstance(payload, (str, bytes, bytearray))
        and payload
        and all(hasattr(s, "context") and hasattr(s, "attributes") for s in payload[:4])
    ):
        return "sdk"
    raise SpanFormatError(f"cannot read spans from {type(payload).__name__}")


def read_spans(payload: Any, format: str | None = None) -> list[SpanRecord]:
    """Read spans from any supported payload; ``format`` (one of :data:`FORMATS`) skips detection."""
    if format is not None and format not in FORMATS:
        raise SpanFormatError(f"unknown span format {format!r}; expected one of {', '.join(FORMATS)}")
    if isinstance(payload, (bytes, bytearray, memoryview)):
        if format in (None, "otlp-proto"):
            stripped = bytes(payload[:64]).lstrip()
            if format == "otlp-proto" or not stripped.startswith((b"{", b"[")):
                return from_otlp_proto(payload)
        payload = _load_json(bytes(payload))
    elif isinstance(payload, str):
        payload = _load_json(payload)
    if isinstance(payload, list) and payload and all(isinstance(d, Mapping) for d in payload):
        return [s for doc in payload for s in read_spans(doc, format)]
    fmt = format or detect_format(payload)
    if fmt == "sdk":
        return from_readable_spans(payload)
    if fmt == "otlp-proto":
        return from_otlp_proto(payload)
    if fmt == "otlp-json":
        return from_otlp_json(payload)
    if fmt == "jaeger-v3":
        result = payload.get("result")
        if not isinstance(result, Mapping):
            raise SpanFormatError('Jaeger /api/v3: expected {"result": {"resourceSpans": [...]}}')
        return from_otlp_json(result)
    if fmt == "tempo":
        return _resource_spans(payload.get("batches") or [], "batches")
    if fmt == "tempo-v2":
        trace = payload.get("trace") or {}
        if not isinstance(trace, Mapping):
            raise SpanFormatError('Tempo /api/v2/traces: expected {"trace": {"resourceSpans": [...]}}')
        batches = _get(trace, "resourceSpans", "resource_spans")
        return _resource_spans(batches if batches is not None else trace.get("batches") or [], "trace.resourceSpans")
    return from_jaeger_json(payload)
