"""Rebuilding receipts from every span format: fixture files made by the real SDK and the real OTLP encoders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToDict
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures import generate
from fixtures import span_layout as L
from unhardcoded.receipts import Receipt, SpanFormatError, WorkflowReceipt, read_spans, rebuild_receipts, rebuild_spans
from unhardcoded.receipts.spans import detect_format
from unhardcoded.semconv import attributes as A
from unhardcoded.semconv import spans as S

FIXTURES = Path(__file__).parent.parent / "fixtures"
EXPECTED = json.loads((FIXTURES / generate.EXPECTED).read_text(encoding="utf-8"))
RECEIPTS = [Receipt.model_validate(r) for r in EXPECTED["receipts"]]
WORKFLOWS = [WorkflowReceipt.model_validate(w) for w in EXPECTED["workflows"]]


def _payload(name: str) -> bytes | str:
    path = FIXTURES / name
    return path.read_bytes() if name.endswith(".pb") else path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def live() -> tuple[list, list]:
    return generate.build()


def test_fixture_files_are_what_the_generator_writes_today(live):
    spans, decisions = live
    for name, shape in generate.FILES.items():
        data = L.WIRE_SHAPES[shape](spans)
        if isinstance(data, bytes):
            assert (FIXTURES / name).read_bytes() == data, f"{name} is stale: run python tests/fixtures/generate.py"
        else:
            assert json.loads((FIXTURES / name).read_text(encoding="utf-8")) == json.loads(data), name
    assert json.loads(json.dumps(generate.expected(decisions))) == EXPECTED, "trace.receipts.json is stale"


@pytest.mark.parametrize("name", list(generate.FILES))
def test_every_format_rebuilds_the_receipts_of_the_trace(name):
    rebuilt = rebuild_receipts(_payload(name))
    assert rebuilt.receipts == RECEIPTS
    assert [r.to_json_dict() for r in rebuilt.receipts] == EXPECTED["receipts"]
    assert all(r.complete for r in rebuilt.receipts)
    assert rebuilt.workflows == WORKFLOWS
    assert rebuilt.policies() == EXPECTED["policies"]
    assert [d.features for d in rebuilt.decisions] == [r.features for r in RECEIPTS]
    # The gateway's server span and the HTTP client span are someone else's: ignored, not errors.
    assert rebuilt.ignored == 2 and rebuilt.malformed == 0 and rebuilt.orphans == 0


def test_the_detected_format_is_the_one_written():
    assert detect_format(json.loads(_payload("trace.otlp.json"))) == "otlp-json"
    assert detect_format(json.loads(_payload("trace.jaeger-v3.json"))) == "jaeger-v3"
    assert detect_format(json.loads(_payload("trace.jaeger.json"))) == "jaeger"
    assert detect_format(json.loads(_payload("trace.tempo.json"))) == "tempo"
    assert detect_format(json.loads(_payload("trace.tempo-v2.json"))) == "tempo-v2"


def test_sdk_spans_and_protobuf_message_rebuild_the_same(live):
    spans, _ = live
    assert rebuild_receipts(list(spans)).receipts == RECEIPTS
    assert rebuild_receipts(L.otlp_message(spans)).receipts == RECEIPTS


def test_tempo_ids_are_base64_and_otlp_json_ids_are_hex():
    tempo = json.loads(_payload("trace.tempo.json"))
    otlp = json.loads(_payload("trace.otlp.json"))
    assert len(tempo["batches"][0]["scopeSpans"][0]["spans"][0]["traceId"]) == 24
    assert len(otlp["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"]) == 32
    assert isinstance(otlp["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["kind"], int)
    assert tempo["batches"][0]["scopeSpans"][0]["spans"][0]["kind"].startswith("SPAN_KIND_")


def test_jaeger_legacy_carries_arrays_as_json_text_and_they_come_back_as_lists():
    doc = json.loads(_payload("trace.jaeger.json"))
    tags = {t["key"]: t for s in doc["data"][0]["spans"] for t in s["tags"]}
    assert tags[A.UNHARDCODED_CANDIDATES]["type"] == "string"
    assert rebuild_receipts(doc).receipts[0].candidates == RECEIPTS[0].candidates


def test_a_128_bit_jaeger_trace_id_with_zero_high_half_is_read_as_16_digits():
    doc = json.loads(_payload("trace.jaeger.json"))
    for s in doc["data"][0]["spans"]:
        s["traceID"] = "0" * 16 + s["traceID"][16:]
    doc["data"][0]["spans"] = [dict(s, traceID=s["traceID"][16:]) for s in doc["data"][0]["spans"]]
    rebuilt = rebuild_receipts(doc)
    assert [r.trace_id for r in rebuilt.receipts] == ["0" * 16 + RECEIPTS[0].trace_id[16:]] * 2


# --------------------------------------------------------------------------- order, duplicates, batches


@pytest.mark.parametrize("shape", ["sdk", "otlp-proto-bytes", "otlp-json", "jaeger", "tempo"])
def test_out_of_order_spans_rebuild_the_same(live, shape):
    spans, _ = live
    for seed in range(5):
        assert rebuild_receipts(L.WIRE_SHAPES[shape](L.shuffled(spans, seed))).receipts == RECEIPTS


@pytest.mark.parametrize("shape", ["sdk", "otlp-proto-bytes", "otlp-json", "jaeger-v3", "tempo-v2"])
def test_duplicated_spans_count_once(live, shape):
    spans, _ = live
    doubled = L.shuffled(list(spans) + list(spans), 11)
    rebuilt = rebuild_receipts(L.WIRE_SHAPES[shape](doubled))
    assert rebuilt.receipts == RECEIPTS
    assert rebuilt.spans == len(spans)


@pytest.mark.parametrize("shape", ["otlp-proto-bytes", "otlp-json", "jaeger", "tempo", "tempo-v2"])
def test_a_trace_split_across_batches_rebuilds_whole(live, shape):
    spans, _ = live
    mixed = L.shuffled(spans, 5)
    batches = [mixed[i::3] for i in range(3)]
    rebuilt = rebuild_receipts(*(L.WIRE_SHAPES[shape](b) for b in batches))
    assert rebuilt.receipts == RECEIPTS
    assert rebuilt.workflows == WORKFLOWS


def test_batches_of_different_formats_mix(live):
    spans, _ = live
    a, b = spans[: len(spans) // 2], spans[len(spans) // 2 :]
    assert rebuild_receipts(L.otlp_bytes(a), L.jaeger_legacy(b)).receipts == RECEIPTS


def test_jaeger_v3_streams_several_result_objects(live):
    spans, _ = live
    streamed = L.jaeger_v3(spans[:3]) + "\n" + L.jaeger_v3(spans[3:]) + "\n"
    assert rebuild_receipts(streamed).receipts == RECEIPTS


# --------------------------------------------------------------------------- incomplete telemetry


def _without(spans, predicate):
    return [s for s in spans if not predicate(s)]


def test_a_missing_attempt_span_makes_the_receipt_incomplete(live):
    spans, _ = live
    first_attempt = next(s for s in spans if s.attributes.get(A.UNHARDCODED_ATTEMPT_INDEX) == 1)
    rebuilt = rebuild_receipts(_without(spans, lambda s: s is first_attempt))
    hopped = rebuilt.receipt(RECEIPTS[0].request_id)
    assert hopped is not None and not hopped.complete
    assert [a.index for a in hopped.attempts] == [0]
    assert hopped.fallback.triggered is True
    assert rebuilt.receipt(RECEIPTS[1].request_id).complete
    assert not rebuilt.workflows[0].complete


def test_missing_rejection_events_make_the_receipt_incomplete(live):
    spans, _ = live
    doc = L.otlp_json_dict(spans)
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                if s.get("events"):
                    s["events"] = s["events"][:-2]
    rebuilt = rebuild_receipts(doc)
    assert [r.complete for r in rebuilt.receipts] == [False, False]
    assert [len(r.rejected) for r in rebuilt.receipts] == [len(r.rejected) - 2 for r in RECEIPTS]


def test_dropped_telemetry_makes_the_receipt_incomplete(live):
    spans, _ = live
    doc = L.otlp_json_dict(spans)
    target = RECEIPTS[1].span_id
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                if s["spanId"] == target:
                    s["droppedAttributesCount"] = 3
    rebuilt = rebuild_receipts(doc)
    assert [r.complete for r in rebuilt.receipts] == [True, False]


def test_telemetry_dropped_attribute_makes_the_receipt_incomplete(live):
    spans, _ = live
    doc = L.otlp_json_dict(spans)
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                if s["spanId"] == RECEIPTS[0].span_id:
                    s["attributes"].append({"key": A.UNHARDCODED_TELEMETRY_DROPPED, "value": {"intValue": "1"}})
    assert [r.complete for r in rebuild_receipts(doc).receipts] == [False, True]


def test_a_truncated_policy_body_is_not_offered_for_replay(live):
    spans, _ = live
    doc = L.otlp_json_dict(spans)
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                for kv in s["attributes"]:
                    if kv["key"] == A.UNHARDCODED_POLICY_BODY:
                        kv["value"]["stringValue"] = kv["value"]["stringValue"][:40]
    rebuilt = rebuild_receipts(doc)
    assert all(d.policy_body is None for d in rebuilt.decisions)
    assert not any(r.complete for r in rebuilt.receipts)


def test_attempts_without_their_decision_span_are_orphans_not_receipts(live):
    spans, _ = live
    rebuilt = rebuild_receipts(_without(spans, lambda s: s.name.startswith("route ")))
    assert rebuilt.receipts == [] and rebuilt.orphans == 3


def test_a_decision_with_many_rejections_reads_events_then_the_summary():
    from fixtures.decisions import CATALOG
    from unhardcoded.policy import validate_policy
    from unhardcoded.router.engine import CompiledPolicy
    from unhardcoded.router.features import RequestFeatures

    policy = validate_policy(
        {
            "schema": "sigma-pol/v1",
            "name": "strict",
            "rules": [{"id": "region", "field": "regions", "op": "contains", "value": "cn"}],
        },
        CATALOG,
    )
    d = CompiledPolicy(policy, CATALOG).decide(RequestFeatures(input_tokens=10), request_id="req_many")
    d.timestamp = "2026-02-01T00:00:00.000Z"
    assert len(d.rejected) > 20
    limit = L.REJECTION_EVENT_LIMIT
    try:
        L.REJECTION_EVENT_LIMIT = 10
        tp, exporter = L.provider()
        L.emit_decision(tp.get_tracer("t"), d)
    finally:
        L.REJECTION_EVENT_LIMIT = limit
    spans = exporter.get_finished_spans()
    assert len(spans[0].events) == 10 and A.UNHARDCODED_REJECTIONS_JSON in spans[0].attributes
    for shape in ("sdk", "otlp-proto-bytes", "jaeger"):
        rebuilt = rebuild_receipts(L.WIRE_SHAPES[shape](spans))
        assert rebuilt.receipts == [Receipt.from_decision(d)], shape


# --------------------------------------------------------------------------- what is not spans


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\x0a\xff\xff\xff", "OTLP protobuf"),
        ("{not json", "invalid JSON"),
        ("", "empty span payload"),
        ({"hello": 1}, "unknown span JSON"),
        ({"error": {"code": 5, "message": "trace not found"}}, "trace not found"),
        (
            {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz", "spanId": "00f067aa0ba902b7"}]}]}]},
            "traceId",
        ),
        (
            {
                "data": [
                    {
                        "spans": [
                            {
                                "traceID": "4bf92f3577b34da6a3ce929d0e0e4736",
                                "spanID": "00f067aa0ba902b7",
                                "tags": [{"key": "n", "type": "int64", "value": "x"}],
                            }
                        ]
                    }
                ]
            },
            "expected an integer",
        ),
        (42, "cannot read spans"),
    ],
)
def test_what_is_not_spans_is_a_clear_error(payload, message):
    with pytest.raises(SpanFormatError, match=message):
        read_spans(payload)


def test_an_empty_otlp_request_rebuilds_nothing():
    assert rebuild_receipts(b"").receipts == []
    assert rebuild_receipts({"resourceSpans": []}).receipts == []


def test_a_decision_span_with_wrong_types_is_counted_malformed_not_raised(live):
    spans, _ = live
    records = read_spans(list(spans))
    for r in records:
        if r.name.startswith("route "):
            r.attributes[A.UNHARDCODED_POLICY_NAME] = 7
    rebuilt = rebuild_spans(records)
    assert rebuilt.receipts == [] and rebuilt.malformed == 2


def test_rejection_events_are_the_named_event():
    assert S.REJECTION_EVENT in {e.name for s in read_spans(_payload("trace.otlp.pb")) for e in s.events}


def test_otlp_json_with_enum_names_and_int_ids_as_numbers_reads_the_same(live):
    spans, _ = live
    doc = MessageToDict(L.otlp_message(spans))  # proto3 JSON as-is: base64 ids, enum names
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                s["startTimeUnixNano"] = int(s["startTimeUnixNano"])
    assert rebuild_receipts(doc).receipts == RECEIPTS


# --------------------------------------------------------------------------- the fast path builds real models


def test_rebuilt_receipts_are_whole_pydantic_models():
    rebuilt = rebuild_receipts(_payload("trace.otlp.pb"))
    for r in rebuilt.receipts:
        assert Receipt.model_validate(r.to_json_dict()) == r
        assert Receipt.model_validate_json(r.model_dump_json(by_alias=True)) == r
        copy = r.model_copy(update={"complete": False})
        assert copy.complete is False and r.complete is True
        assert r.rejected[0].model_dump(mode="json") == EXPECTED["receipts"][RECEIPTS.index(r)]["rejected"][0]


def test_shared_rejections_never_share_list_values():
    a = rebuild_receipts(_payload("trace.otlp.pb")).receipts[1]
    b = rebuild_receipts(_payload("trace.otlp.pb")).receipts[1]
    lists = [(x, y) for x, y in zip(a.rejected, b.rejected) if isinstance(x.observed, list)]
    assert lists and all(x.observed is not y.observed for x, y in lists)


def test_the_garbage_collector_is_left_as_it_was():
    import gc

    assert gc.isenabled()
    rebuild_receipts(_payload("trace.otlp.pb"))
    assert gc.isenabled()
    gc.disable()
    try:
        rebuild_receipts(_payload("trace.otlp.pb"))
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(SpanFormatError):
        rebuild_receipts("{broken")
    assert gc.isenabled()


def test_attempts_go_to_their_own_decision_when_a_request_id_repeats_in_a_trace():
    """A client retrying with the same request id: two decisions, each with its own attempts."""
    from opentelemetry import trace as api

    first, second = generate.decisions()[0].model_copy(deep=True), generate.decisions()[0].model_copy(deep=True)
    second.timestamp = "2026-03-14T09:27:10.000Z"
    second.attempts, second.hops = second.attempts[1:], []
    second.attempts[0] = second.attempts[0].model_copy(update={"index": 0, "role": "selected"})
    first.workflow = second.workflow = None
    tp, exporter = L.provider()
    tracer = tp.get_tracer("unhardcoded")
    with tracer.start_as_current_span("POST /refunds") as root:
        ctx = api.set_span_in_context(root)
        L.emit_decision(tracer, first, ctx)
        L.emit_decision(tracer, second, ctx)
    rebuilt = rebuild_receipts(L.otlp_bytes(exporter.get_finished_spans()))
    assert [len(r.attempts) for r in rebuilt.receipts] == [2, 1]
    assert [r.complete for r in rebuilt.receipts] == [True, True]


def test_an_attempt_under_another_instrumentations_span_still_finds_its_decision(live):
    spans, _ = live
    doc = L.otlp_json_dict(spans)
    all_spans = [s for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    http = next(s for s in all_spans if s["name"] == "POST")
    attempt = next(s for s in all_spans if s["name"].startswith("chat ") and s["spanId"] != http["parentSpanId"])
    attempt["parentSpanId"] = http["spanId"]  # an instrumentation span now sits between decision and attempt
    rebuilt = rebuild_receipts(doc)
    assert rebuilt.receipts == RECEIPTS and rebuilt.orphans == 0


# --------------------------------------------------------------------------- protobuf bytes read as the messages read


def _records(records):
    return [
        (
            r.trace_id,
            r.span_id,
            r.parent_span_id,
            r.name,
            r.kind,
            r.start_ns,
            r.end_ns,
            r.attributes,
            [(e.name, e.time_ns, dict(e.attributes)) for e in r.events],
            r.status_code,
            r.dropped_attributes,
            r.dropped_events,
            r.service,
        )
        for r in records
    ]


def _message_records(body: bytes):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from unhardcoded.receipts.spans import from_otlp_proto

    return from_otlp_proto(ExportTraceServiceRequest.FromString(body))


def test_bytes_are_read_as_the_full_messages_read(live):
    from unhardcoded.receipts.spans import from_otlp_bytes, from_span_bytes

    spans, _ = live
    body = L.otlp_bytes(spans)
    assert _records(from_otlp_bytes(body)) == _records(_message_records(body))
    # twice: the second read comes from the attribute and event caches
    assert _records(from_otlp_bytes(body)) == _records(_message_records(body))
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    message = ExportTraceServiceRequest.FromString(body)
    for one in message.resource_spans[0].scope_spans[0].spans:
        expected = [r for r in _message_records(body) if r.span_id == one.span_id.hex()]
        assert _records([from_span_bytes(one.SerializeToString(), expected[0].service)]) == _records(expected)
    with pytest.raises(SpanFormatError):
        from_span_bytes(b"\x0a\xff")


def test_cached_list_values_are_never_shared(live):
    from unhardcoded.receipts.spans import from_otlp_bytes

    spans, _ = live
    body = L.otlp_bytes(spans)
    a, b = from_otlp_bytes(body), from_otlp_bytes(body)
    shared = [
        (x.attributes[k], y.attributes[k])
        for x, y in zip(a, b)
        for k in x.attributes
        if isinstance(x.attributes[k], list)
    ]
    assert shared and all(p is not q for p, q in shared)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_protobuf_is_read_as_the_full_messages_read_or_refused(data):
    """Fuzzed exports: whatever the full parser reads, the bytes reader reads the same; nothing else escapes."""
    from unhardcoded.receipts.spans import from_otlp_bytes

    body = bytearray(_payload("trace.otlp.pb"))
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(body) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "dup"]))
        if op == "flip":
            body[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del body[i : i + data.draw(st.integers(1, 32))]
        else:
            body[i:i] = body[i : i + data.draw(st.integers(1, 32))]
    body = bytes(body)
    try:
        expected = _records(_message_records(body))
    except Exception:  # noqa: BLE001 - the full parser refuses it: the bytes reader refuses it too, or reads what it can
        expected = None
    try:
        got = _records(from_otlp_bytes(body))
    except SpanFormatError:
        got = None
    if expected is not None:
        assert got == expected


def _any_value() -> st.SearchStrategy:
    return st.one_of(
        st.none(),
        st.text(max_size=300),
        st.booleans(),
        st.integers(-(1 << 63), (1 << 63) - 1),
        st.floats(allow_nan=True, allow_infinity=True),
        st.lists(st.text(max_size=5), max_size=3),
    )


@settings(max_examples=500, deadline=None)
@given(
    st.text(max_size=200),
    _any_value(),
    st.lists(
        st.tuples(st.integers(0, 1 << 16), st.sampled_from(["flip", "cut", "dup"]), st.integers(1, 255)), max_size=3
    ),
)
def test_a_scalar_attribute_is_read_by_hand_as_the_parser_reads_it(key, value, mutations):
    """Per-request values (request id, cost, tokens) are read without the parser: the same key and value, or left to it."""
    from opentelemetry.proto.common.v1.common_pb2 import KeyValue

    from unhardcoded.receipts.spans import _pb_value, _scalar_keyvalue

    kv = KeyValue(key=key)
    if isinstance(value, str):
        kv.value.string_value = value
    elif isinstance(value, bool):
        kv.value.bool_value = value
    elif isinstance(value, int):
        kv.value.int_value = value
    elif isinstance(value, float):
        kv.value.double_value = value
    elif isinstance(value, list):
        kv.value.array_value.values.add().string_value = "x"
    body = bytearray(kv.SerializeToString())
    for at, op, byte in mutations:
        if not body:
            break
        i = at % len(body)
        if op == "flip":
            body[i] ^= byte
        elif op == "cut":
            del body[i : i + 1 + byte % 4]
        else:
            body[i:i] = body[i : i + 1 + byte % 4]
    fast = _scalar_keyvalue(bytes(body))
    if fast is None:
        return
    parsed = KeyValue.FromString(bytes(body))  # what the fast path read, the parser reads without error
    full = (parsed.key, _pb_value(parsed.value))
    assert fast[0] == full[0] and type(fast[1]) is type(full[1])
    assert fast[1] == full[1] or (fast[1] != fast[1] and full[1] != full[1])  # NaN


def test_rejections_worked_out_once_give_every_receipt_its_own_lists():
    """A decision's rejection list is worked out once per set of events; list values are still every receipt's own."""
    from processor_fixtures import POLICIES, decisions_with_spans
    from unhardcoded.receipts.spans import from_otlp_bytes

    ds, spans = decisions_with_spans(40, seed=8)
    body = L.otlp_bytes(spans)
    first, again = rebuild_spans(from_otlp_bytes(body)), rebuild_spans(from_otlp_bytes(body))
    assert (
        first.receipts
        == again.receipts
        == sorted((Receipt.from_decision(d) for d in ds), key=lambda r: (r.timestamp, r.request_id))
    )
    lists = [
        (p.threshold, q.threshold)
        for x, y in zip(first.receipts, again.receipts)
        for p, q in zip(x.rejected, y.rejected)
        if isinstance(p.threshold, list)
    ]
    assert lists and all(p == q and p is not q for p, q in lists)
    regions = [r.threshold for x in first.receipts for r in x.rejected if isinstance(r.threshold, list)]
    assert len({id(t) for t in regions}) == len(regions) and len(POLICIES) > 1
