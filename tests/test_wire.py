"""The shared wire readings: protobuf varints and fields as the protobuf runtime writes them."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from unhardcoded._wire import delimited_fields, varint


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, 2**35 + 7, 2**63 - 1, 2**64 - 1])
def test_varint_reads_what_protobuf_writes(value: int) -> None:
    raw = KeyValue(value=AnyValue(int_value=value - 2**64 if value >= 2**63 else value)).SerializeToString()
    # KeyValue.value (field 2, length-delimited) holds AnyValue.int_value (field 3, varint): tag 0x18 then the varint.
    ((start, end),) = delimited_fields(raw, 0, len(raw), 2)
    assert raw[start] == 0x18
    assert varint(raw, start + 1) == (value, end)


def test_varint_past_the_end_or_over_ten_bytes_is_refused() -> None:
    with pytest.raises(IndexError):
        varint(b"\x80\x80", 0)
    with pytest.raises(ValueError, match="ten bytes"):
        varint(b"\xff" * 11, 0)


def test_delimited_fields_finds_the_spans_of_an_export() -> None:
    export = ExportTraceServiceRequest()
    for n in (1, 3):
        scope = export.resource_spans.add().scope_spans.add()
        for k in range(n):
            # names of one and of several hundred bytes: lengths of one and two varint bytes
            scope.spans.add(name="s" * (k * 200), trace_id=b"\x01" * 16, span_id=b"\x02" * 8, kind=2)
    body = export.SerializeToString()

    spans = [
        body[a:b]
        for rs in delimited_fields(body, 0, len(body), 1)
        for ss in delimited_fields(body, *rs, 2)
        for a, b in delimited_fields(body, *ss, 2)
    ]

    assert spans == [s.SerializeToString() for rs in export.resource_spans for ss in rs.scope_spans for s in ss.spans]


def test_delimited_fields_refuses_what_is_not_a_message() -> None:
    with pytest.raises(ValueError, match="runs past"):
        delimited_fields(b"\x0a\x05ab", 0, 4, 1)  # a length of 5 with 2 bytes left
    with pytest.raises(ValueError, match="wire type"):
        delimited_fields(b"\x0f", 0, 1, 1)  # wire type 7 does not exist
