"""Hostile OTLP exports over HTTP and gRPC against a real processor process.

Each case is one export: the answer must be the documented one (200 with what
could be read, 400 / INVALID_ARGUMENT for what is not OTLP, 413 /
RESOURCE_EXHAUSTED over the size limit, 415 for a media type or encoding we do
not read), never a 500 or an INTERNAL / UNKNOWN status, never a traceback; the
processor still serves afterwards, a refused export leaves nothing in the spool,
and a key-shaped canary in a payload never reaches the processor's log.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
import zlib

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adversarial._bounds_support import CANARY, decision_span, export, span
from processor_fixtures import ProcessorProcess

PB = "application/x-protobuf"
JS = "application/json"
MAX_BODY = 1024 * 1024
EXPORT_RPC = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, written by hand: the library refuses to build what is this deep."""
    n, length = len(payload), b""
    while True:
        byte = n & 0x7F
        n >>= 7
        length += bytes([byte | (0x80 if n else 0)])
        if not n:
            return bytes([field << 3 | 2]) + length + payload


def _with_attribute(s: object, key: str, any_value: bytes) -> bytes:
    """``export(s)`` with one more attribute (Span field 9) whose AnyValue bytes are given."""
    raw = s.SerializeToString() + _ld(9, _ld(1, key.encode()) + _ld(2, any_value))  # type: ignore[attr-defined]
    return _export_of(raw)


def _export_of(span_bytes: bytes) -> bytes:
    resource = _ld(1, _ld(1, b"service.name") + _ld(2, _ld(1, b"hostile")))
    return _ld(1, _ld(1, resource) + _ld(2, _ld(2, span_bytes)))


def _deep_kvlist(depth: int) -> bytes:
    value = _ld(1, CANARY.encode())  # AnyValue.string_value
    for _ in range(depth):
        value = _ld(6, _ld(1, _ld(1, b"k") + _ld(2, value)))  # kvlist_value { values { key, value } }
    return _with_attribute(span(), "deep", value)


def _deep_array(depth: int) -> bytes:
    value = b"\x18\x01"  # AnyValue.int_value = 1
    for _ in range(depth):
        value = _ld(5, _ld(1, value))  # array_value { values }
    return _with_attribute(decision_span("req_deep_array"), "deep", value)


def _json_export(attribute_value: str, trace_id: str = "0af7651916cd43dd8448eb211c80319c") -> bytes:
    """OTLP/JSON text with one attribute whose AnyValue is given as raw JSON text."""
    return (
        '{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"x"}}]},'
        '"scopeSpans":[{"spans":[{"traceId":"' + trace_id + '","spanId":"b7ad6b7169203331","name":"n",'
        '"attributes":[{"key":"a","value":' + attribute_value + "}]}]}]}]}"
    ).encode()


VALID = export(span(attributes={"http.method": "GET"}), decision_span("req_valid_hostile"))
# Field 1 (resource_spans), length-delimited, with a length far past the end of the body.
LENGTH_PAST_END = b"\x0a\xff\xff\xff\xff\x07" + b"\x00" * 10
# Field 1 with a length of -1 as protobuf writes it: ten bytes of varint.
NEGATIVE_LENGTH = b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01" + b"\x00" * 10
# A varint of eleven bytes: longer than any varint may be.
HUGE_VARINT = b"\x08" + b"\xff" * 11 + b"\x01"
BAD_UTF8_NAME = export(span(name="ok")).replace(b"\x2a\x02ok", b"\x2a\x02\xff\xfe")  # Span.name, field 5
BOMB = gzip.compress(b"\x00" * (64 * 1024 * 1024), 9)
DEFLATE_BOMB = zlib.compress(b"\x00" * (64 * 1024 * 1024), 9)

# (id, body, content type, content encoding, statuses allowed over HTTP)
CORPUS: list[tuple[str, bytes, str | None, str | None, tuple[int, ...]]] = [
    ("truncated-protobuf", VALID[: len(VALID) // 2], PB, None, (400,)),
    ("truncated-by-one", VALID[:-1], PB, None, (400,)),
    ("length-past-end", LENGTH_PAST_END, PB, None, (400,)),
    ("negative-length", NEGATIVE_LENGTH, PB, None, (400,)),
    ("huge-varint", HUGE_VARINT, PB, None, (400,)),
    ("bad-utf8-span-name", BAD_UTF8_NAME, PB, None, (400,)),
    ("deep-kvlist-1000", _deep_kvlist(1000), PB, None, (200, 400)),
    ("deep-array-on-decision-1000", _deep_array(1000), PB, None, (200, 400)),
    ("deep-kvlist-20", _deep_kvlist(20), PB, None, (200,)),
    ("deep-kvlist-50", _deep_kvlist(50), PB, None, (200, 400)),
    ("random-garbage", bytes(range(256)) * 4, PB, None, (400,)),
    ("only-tag-bytes", b"\x0a" * 1000, PB, None, (400,)),
    ("group-wire-type", b"\x0b\x0c", PB, None, (200, 400)),
    ("empty-protobuf", b"", PB, None, (200,)),
    ("empty-json", b"", JS, None, (400,)),
    ("wrong-content-type-text", VALID, "text/plain", None, (415,)),
    ("no-content-type", VALID, None, None, (415,)),
    ("content-type-with-script", VALID, "<script>alert(1)</script>", None, (415,)),
    ("json-body-sent-as-protobuf", b'{"resourceSpans": []}', PB, None, (200, 400)),
    ("protobuf-body-sent-as-json", VALID, JS, None, (400,)),
    ("gzip-bomb-64mib", BOMB, PB, "gzip", (413,)),
    ("deflate-bomb-64mib", DEFLATE_BOMB, PB, "deflate", (413,)),
    ("gzip-that-is-not", VALID, PB, "gzip", (400,)),
    ("gzip-truncated", gzip.compress(VALID)[:-8], PB, "gzip", (400,)),
    ("encoding-br", VALID, PB, "br", (415,)),
    ("encoding-chained", gzip.compress(gzip.compress(VALID)), PB, "gzip, gzip", (415,)),
    ("oversized-body", b"\x00" * (MAX_BODY + 1), PB, None, (413,)),
    ("json-nan-int", _json_export('{"intValue": NaN}'), JS, None, (400,)),
    ("json-infinity-int", _json_export('{"intValue": Infinity}'), JS, None, (400,)),
    ("json-int-over-64-bits", _json_export('{"intValue": "' + "9" * 30 + '"}'), JS, None, (400,)),
    ("json-int-5000-digits", _json_export('{"intValue": ' + "9" * 5000 + "}"), JS, None, (400,)),
    ("json-double-nan-text", _json_export('{"doubleValue": "NaN"}'), JS, None, (200,)),
    ("json-double-1e400", _json_export('{"doubleValue": 1e400}'), JS, None, (200, 400)),
    ("json-lone-surrogate", _json_export('{"stringValue": "\\ud800' + CANARY + '"}'), JS, None, (200, 400)),
    (
        "json-bad-utf8",
        _json_export('{"stringValue": "\xff"}'.encode("latin-1").decode("latin-1")).replace(b"\xc3\xbf", b"\xff"),
        JS,
        None,
        (400,),
    ),
    ("json-deep-100k", b'{"resourceSpans":' + b"[" * 100_000 + b"]" * 100_000 + b"}", JS, None, (400,)),
    ("json-deep-anyvalue", _json_export('{"kvlistValue":{"values":[' * 200 + "{}" + "]}}" * 200), JS, None, (200, 400)),
    ("json-top-level-array", b"[1,2,3]", JS, None, (400,)),
    ("json-resource-spans-string", b'{"resourceSpans": "x"}', JS, None, (400,)),
    ("json-spans-not-objects", b'{"resourceSpans":[{"scopeSpans":[{"spans":[1,"x",null]}]}]}', JS, None, (200, 400)),
    ("json-trace-id-not-hex", _json_export('{"stringValue": "v"}', trace_id="zz" * 16), JS, None, (200,)),
    ("json-trace-id-canary", _json_export('{"stringValue": "v"}', trace_id=CANARY), JS, None, (200,)),
    ("json-bytes-not-base64", _json_export('{"bytesValue": "!!!"}'), JS, None, (200, 400)),
    (
        "json-kind-huge",
        _json_export('{"stringValue": "v"}').replace(b'"name":"n"', b'"name":"n","kind":99999999999'),
        JS,
        None,
        (200, 400),
    ),
    ("json-utf16", _json_export('{"stringValue": "v"}').decode().encode("utf-16"), JS, None, (200, 400)),
    ("canary-in-garbage", b"\xff" + CANARY.encode(), PB, None, (400,)),
]
HOSTILE_INPUTS = len(CORPUS)


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    base = tmp_path_factory.mktemp("otlp")
    p = ProcessorProcess(
        str(base / "receipts.db"),
        "--wait-window",
        "0.5",
        "--max-body-bytes",
        str(MAX_BODY),
        log=base / "processor.log",
    ).start()
    p.db = base / "receipts.db"
    yield p
    p.stop()
    assert CANARY not in p.tail(), "a canary key reached the processor's log"


def _spooled(p: ProcessorProcess) -> int:
    with sqlite3.connect(p.db) as c:
        return c.execute("SELECT COUNT(*) FROM processor_spans").fetchone()[0]


@pytest.mark.parametrize(("body", "ctype", "encoding", "allowed"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_hostile_export_over_http(processor, body, ctype, encoding, allowed):
    headers = {}
    if ctype is not None:
        headers["Content-Type"] = ctype
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    before = _spooled(processor)
    r = httpx.post(processor.url + "/v1/traces", content=body, headers=headers, timeout=60)
    assert r.status_code in allowed, (r.status_code, r.content[:300])
    assert b"Traceback" not in r.content
    if r.status_code != 200:
        assert _spooled(processor) == before, "a refused export left spans in the spool"
    assert processor.get("/healthz").status_code == 200


GRPC_CORPUS = [(c[0], c[1]) for c in CORPUS if c[2] == PB and c[3] is None] + [
    ("over-max-message", b"\x00" * (MAX_BODY + 1)),
]
HOSTILE_INPUTS += len(GRPC_CORPUS)


@pytest.mark.parametrize("body", [c[1] for c in GRPC_CORPUS], ids=[c[0] for c in GRPC_CORPUS])
def test_hostile_export_over_grpc(processor, body):
    channel = grpc.insecure_channel(
        processor.grpc_endpoint, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    )
    before = _spooled(processor)
    try:
        rpc = channel.unary_unary(EXPORT_RPC, request_serializer=None, response_deserializer=None)
        try:
            rpc(body, timeout=30)
            refused = False
        except grpc.RpcError as exc:
            assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), (
                exc.code(),
                exc.details(),
            )
            assert "Traceback" not in (exc.details() or "")
            refused = True
    finally:
        channel.close()
    if refused:
        assert _spooled(processor) == before
    assert processor.get("/healthz").status_code == 200


def test_a_valid_export_still_makes_its_receipt_after_the_corpus(processor):
    from fixtures import span_layout as L
    from processor_fixtures import decisions_with_spans

    ds, spans = decisions_with_spans(2, seed=71, hops=1)
    r = httpx.post(processor.url + "/v1/traces", content=L.otlp_bytes(spans), headers={"Content-Type": PB}, timeout=30)
    assert r.status_code == 200
    assert processor.wait_for(lambda: processor.receipt(ds[-1].request_id), 20), processor.stats()


# --------------------------------------------------------------------------- the decoder, fuzzed in process

_SEEDS = [VALID, _deep_kvlist(5), _deep_array(5), export(decision_span("req_fuzz", x=CANARY))]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(_SEEDS),
    cuts=st.lists(st.tuples(st.integers(0, 4000), st.binary(max_size=12)), min_size=1, max_size=4),
)
def test_mutated_exports_decode_or_are_refused_as_payload_errors(seed, cuts):
    from unhardcoded.processor import otlp

    body = bytearray(seed)
    for where, data in cuts:
        at = where % (len(body) + 1)
        body[at : at + len(data)] = data
    try:
        decoded = otlp.decode(bytes(body), "protobuf")
    except otlp.PayloadError as exc:
        assert CANARY not in str(exc)
        return
    assert decoded.total >= len(decoded.spans)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "resourceSpans",
                        "scopeSpans",
                        "spans",
                        "attributes",
                        "key",
                        "value",
                        "intValue",
                        "stringValue",
                        "kvlistValue",
                        "values",
                        "traceId",
                        "spanId",
                        "events",
                        "name",
                        "kind",
                        "status",
                    ]
                ),
                inner,
                max_size=4,
            )
        ),
        max_leaves=30,
    )
)
def test_fuzzed_otlp_json_decodes_or_is_refused_as_a_payload_error(doc):
    from unhardcoded.processor import otlp

    try:
        otlp.decode(json.dumps({"resourceSpans": [doc]}).encode(), "json")
    except otlp.PayloadError:
        pass
