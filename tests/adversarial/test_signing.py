"""Hostile inputs against signed decisions: forged and tampered decision spans, and unusable key files.

Each span case takes a genuine decision signed with the fixture key, changes what an attacker who can send spans
would change, and sends it as OTLP/JSON to a real processor holding the fixture public key. For each: the export
is answered as documented (200: the processor keeps what it is sent; whether it may replace a stored receipt is
the append-only store's business), the processor keeps serving, the receipt it answers is never ``verified``
(the status and reason are the ones given), its page renders, and the verifier gives the same status with no
processor in between. Key-file cases feed the CLI files that are not usable keys: exit 2, one line, no
traceback, nothing of the file's content echoed.
"""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures import span_layout as L
from processor_fixtures import REPO, ProcessorProcess, make_decision
from unhardcoded._signature import PublicKeys, SigningKey, SigningKeyError
from unhardcoded.receipts import Receipt, rebuild_receipts, verify_receipt
from unhardcoded.semconv import attributes as A
from unhardcoded.telemetry.signing import DecisionSigner

FIXTURES = REPO / "tests" / "fixtures"
KEY_FILE, PUB_FILE = FIXTURES / "signing" / "fixture.key", FIXTURES / "signing" / "fixture.pub"
SIGNER = DecisionSigner(SigningKey.load(KEY_FILE))
KEYS = PublicKeys.load([PUB_FILE])
OTHER = DecisionSigner(SigningKey.generate())  # an attacker's own key
CANARY = "sk-CANARY-7f3e1d9a2b"
JSON_HEADERS = {"Content-Type": "application/json"}

Doc = dict[str, Any]


# --------------------------------------------------------------------------- genuine spans, and edits to them


def genuine(request_id: str, signer: DecisionSigner | None = SIGNER, hops: int = 1) -> Doc:
    """A decision of the real engine with a fallback hop, laid out and signed as the router does, as OTLP/JSON."""
    d = make_decision(random.Random(request_id), request_id, hops=hops)
    tp, exporter = L.provider("checkout")
    L.emit_decision(tp.get_tracer("unhardcoded"), d, signer=signer)
    return L.otlp_json_dict(exporter.get_finished_spans())


def spans(doc: Doc) -> list[dict[str, Any]]:
    return [s for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]


def decision_span(doc: Doc) -> dict[str, Any]:
    return next(s for s in spans(doc) if any(a["key"] == A.UNHARDCODED_POLICY_FINGERPRINT for a in s["attributes"]))


def attempts(doc: Doc) -> list[dict[str, Any]]:
    return [s for s in spans(doc) if any(a["key"] == A.UNHARDCODED_ATTEMPT_INDEX for a in s["attributes"])]


def get(span: dict[str, Any], key: str) -> Any:
    return next((a["value"] for a in span["attributes"] if a["key"] == key), None)


def put(span: dict[str, Any], key: str, value: dict[str, Any]) -> None:
    """Set attribute ``key`` to an OTLP/JSON AnyValue (``{"stringValue": ...}``, ``{"intValue": "1"}``, ...)."""
    span["attributes"] = [a for a in span["attributes"] if a["key"] != key] + [{"key": key, "value": value}]


def drop(span: dict[str, Any], key: str) -> None:
    span["attributes"] = [a for a in span["attributes"] if a["key"] != key]


def s(text: str) -> dict[str, Any]:
    return {"stringValue": text}


def signature_of(doc: Doc) -> list[dict[str, Any]]:
    return [a for a in decision_span(doc)["attributes"] if a["key"].startswith("unhardcoded.signature.")]


def _edit_rejection(doc: Doc) -> None:
    event = next(e for e in decision_span(doc)["events"] if e["name"] == "unhardcoded.rejection")
    put(event, A.UNHARDCODED_REJECTION_OBSERVED, s("0.99"))


def _drop_rejection(doc: Doc) -> None:
    span = decision_span(doc)
    event = next(e for e in span["events"] if e["name"] == "unhardcoded.rejection")
    span["events"].remove(event)
    model = next(a["value"]["stringValue"] for a in event["attributes"] if a["key"] == A.UNHARDCODED_REJECTION_MODEL)
    rejected = get(span, A.UNHARDCODED_REJECTED)["arrayValue"]["values"]
    put(span, A.UNHARDCODED_REJECTED, {"arrayValue": {"values": [v for v in rejected if v["stringValue"] != model]}})
    put(span, A.UNHARDCODED_REJECTED_COUNT, {"intValue": str(len(rejected) - 1)})


def _new_trace_id(doc: Doc) -> None:
    for span in spans(doc):
        span["traceId"] = "5" * 32


def _new_span_id(doc: Doc) -> None:
    span = decision_span(doc)
    old, span["spanId"] = span["spanId"], "6" * 16
    for child in attempts(doc):
        if child.get("parentSpanId") == old:
            child["parentSpanId"] = span["spanId"]


def _shift_start(doc: Doc) -> None:
    span = decision_span(doc)
    span["startTimeUnixNano"] = str(int(span["startTimeUnixNano"]) - 1_000_000_000)


def _copy_signature_from_another_decision(doc: Doc) -> None:
    other = genuine("req_adv_sig_donor")
    span = decision_span(doc)
    for a in signature_of(doc):
        drop(span, a["key"])
    span["attributes"] += signature_of(other)


def _resign(signer: DecisionSigner, key_id: str | None = None) -> Callable[[Doc], None]:
    """Sign the decision again with ``signer`` (as rebuilt, so the content is right), claiming ``key_id``."""

    def edit(doc: Doc) -> None:
        span = decision_span(doc)
        (receipt,) = rebuild_receipts(doc).receipts
        from unhardcoded._signature import signed_content

        value = signer.key.sign(signed_content(receipt.signed_fields()))
        put(span, A.UNHARDCODED_SIGNATURE_VALUE, s(value))
        put(span, A.UNHARDCODED_SIGNATURE_KEY_ID, s(key_id or signer.key_id))

    return edit


def _flip_last_bit(doc: Doc) -> None:
    span = decision_span(doc)
    value = get(span, A.UNHARDCODED_SIGNATURE_VALUE)["stringValue"]
    last = "A" if value[-1] != "A" else "Q"
    put(span, A.UNHARDCODED_SIGNATURE_VALUE, s(value[:-1] + last))


def _set(key: str, value: dict[str, Any], *, on: str = "decision") -> Callable[[Doc], None]:
    def edit(doc: Doc) -> None:
        targets = [decision_span(doc)] if on == "decision" else attempts(doc)[-1:]
        for span in targets:
            put(span, key, value)

    return edit


def _features(doc: Doc) -> None:
    span = decision_span(doc)
    features = json.loads(get(span, A.UNHARDCODED_REQUEST_FEATURES)["stringValue"])
    features["input_tokens"] += 1
    put(span, A.UNHARDCODED_REQUEST_FEATURES, s(json.dumps(features)))


def _candidates_reversed(doc: Doc) -> None:
    span = decision_span(doc)
    values = get(span, A.UNHARDCODED_CANDIDATES)["arrayValue"]["values"]
    put(span, A.UNHARDCODED_CANDIDATES, {"arrayValue": {"values": values[::-1]}})


def _drop_attempt(doc: Doc) -> None:
    first = attempts(doc)[0]
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            ss["spans"] = [x for x in ss["spans"] if x is not first]


def _strip(doc: Doc) -> None:
    span = decision_span(doc)
    for a in signature_of(doc):
        drop(span, a["key"])


def _request_id(doc: Doc) -> str:
    return get(decision_span(doc), A.UNHARDCODED_REQUEST_ID)["stringValue"]


def _retarget(doc: Doc) -> None:
    """The victim's request id on a genuine, signed decision of another request (finding 1's forged span)."""
    for span in spans(doc):
        put(span, A.UNHARDCODED_REQUEST_ID, s(_request_id(doc) + "_victim"))


@dataclass(frozen=True)
class SpanCase:
    id: str
    edit: Callable[[Doc], None]
    status: str
    reason: str


MISMATCH = "signature does not match"
SPAN_CASES = [
    SpanCase("cost-lowered", _set(A.UNHARDCODED_COST_USD, {"doubleValue": 0.000001}), "invalid", MISMATCH),
    SpanCase("baseline-raised", _set(A.UNHARDCODED_COST_BASELINE_USD, {"doubleValue": 99.0}), "invalid", MISMATCH),
    SpanCase("outcome-failed", _set(A.UNHARDCODED_DECISION_OUTCOME, s("failed")), "invalid", MISMATCH),
    SpanCase("outcome-dry-run", _set(A.UNHARDCODED_DECISION_OUTCOME, s("dry_run")), "invalid", MISMATCH),
    SpanCase("answered-by-other", _set(A.UNHARDCODED_ANSWERED_MODEL, s("gpt-5.5-pro")), "invalid", MISMATCH),
    SpanCase("selected-other", _set(A.UNHARDCODED_SELECTED_MODEL, s("gpt-5.5")), "invalid", MISMATCH),
    SpanCase("rejection-observed-edited", _edit_rejection, "invalid", MISMATCH),
    SpanCase("rejection-removed", _drop_rejection, "invalid", MISMATCH),
    SpanCase("candidates-reordered", _candidates_reversed, "invalid", MISMATCH),
    SpanCase("policy-renamed", _set(A.UNHARDCODED_POLICY_NAME, s("lenient")), "invalid", MISMATCH),
    SpanCase("catalog-version", _set(A.UNHARDCODED_CATALOG_VERSION, s("0000000000000000")), "invalid", MISMATCH),
    SpanCase("fallback-chain", _set(A.UNHARDCODED_FALLBACK_CHAIN, {"arrayValue": {"values": []}}), "invalid", MISMATCH),
    SpanCase("latency", _set(A.UNHARDCODED_LATENCY_MS, {"doubleValue": 1.0}), "invalid", MISMATCH),
    SpanCase("features", _features, "invalid", MISMATCH),
    SpanCase("workflow-added", _set(A.UNHARDCODED_WORKFLOW_ID, s("wf_forged")), "invalid", MISMATCH),
    SpanCase(
        "attempt-tokens", _set("gen_ai.usage.output_tokens", {"intValue": "1"}, on="attempt"), "invalid", MISMATCH
    ),
    SpanCase(
        "attempt-duration",
        _set(A.UNHARDCODED_ATTEMPT_DURATION_MS, {"doubleValue": 1.0}, on="attempt"),
        "invalid",
        MISMATCH,
    ),
    SpanCase("attempt-dropped", _drop_attempt, "invalid", "the receipt is incomplete"),
    SpanCase("trace-id", _new_trace_id, "invalid", MISMATCH),
    SpanCase("span-id", _new_span_id, "invalid", MISMATCH),
    SpanCase("start-time", _shift_start, "invalid", MISMATCH),
    SpanCase("victim-request-id", _retarget, "invalid", MISMATCH),
    SpanCase("signature-from-another-decision", _copy_signature_from_another_decision, "invalid", MISMATCH),
    SpanCase("signed-with-another-key", _resign(OTHER), "invalid", "unknown key id"),
    SpanCase("another-key-claiming-ours", _resign(OTHER, SIGNER.key_id), "invalid", MISMATCH),
    SpanCase("signature-bit-flipped", _flip_last_bit, "invalid", MISMATCH),
    SpanCase("signature-stripped", _strip, "unsigned", "no signature"),
    SpanCase(
        "version-3", _set(A.UNHARDCODED_SIGNATURE_VERSION, {"intValue": "3"}), "invalid", "unknown signature version 3"
    ),
    SpanCase(
        "version-negative",
        _set(A.UNHARDCODED_SIGNATURE_VERSION, {"intValue": "-1"}),
        "invalid",
        "unknown signature version -1",
    ),
    SpanCase(
        "version-huge",
        _set(A.UNHARDCODED_SIGNATURE_VERSION, {"intValue": str(2**63 - 1)}),
        "invalid",
        "unknown signature version",
    ),
    SpanCase(
        "version-missing",
        lambda d: drop(decision_span(d), A.UNHARDCODED_SIGNATURE_VERSION),
        "invalid",
        "unknown signature version",
    ),
    SpanCase("value-not-base64", _set(A.UNHARDCODED_SIGNATURE_VALUE, s("!!not base64!!")), "invalid", MISMATCH),
    SpanCase("value-truncated", _set(A.UNHARDCODED_SIGNATURE_VALUE, s("AAAA")), "invalid", MISMATCH),
    SpanCase("value-1-mib", _set(A.UNHARDCODED_SIGNATURE_VALUE, s("A" * (1 << 20))), "invalid", MISMATCH),
    SpanCase("value-an-int", _set(A.UNHARDCODED_SIGNATURE_VALUE, {"intValue": "7"}), "invalid", MISMATCH),
    SpanCase(
        "value-an-array", _set(A.UNHARDCODED_SIGNATURE_VALUE, {"arrayValue": {"values": [s("x")]}}), "invalid", MISMATCH
    ),
    SpanCase("key-id-a-bool", _set(A.UNHARDCODED_SIGNATURE_KEY_ID, {"boolValue": True}), "invalid", "unknown key id"),
    SpanCase(
        "key-id-64-kib-with-canary", _set(A.UNHARDCODED_SIGNATURE_KEY_ID, s(CANARY * 4000)), "invalid", "unknown key id"
    ),
    SpanCase(
        "key-id-html", _set(A.UNHARDCODED_SIGNATURE_KEY_ID, s("<script>alert(1)</script>")), "invalid", "unknown key id"
    ),
]


VERIFY, SERVE = "receipt --verify --public-key", "serve --signing-key"


@dataclass(frozen=True)
class KeyFileCase:
    id: str
    content: bytes
    commands: tuple[str, ...] = (VERIFY, SERVE)


KEY_FILE_CASES = [
    KeyFileCase("empty", b""),
    KeyFileCase("canary-text", CANARY.encode() + b"\n"),
    KeyFileCase(
        "pem-garbage-with-canary", b"-----BEGIN PUBLIC KEY-----\n" + CANARY.encode() + b"\n-----END PUBLIC KEY-----\n"
    ),
    KeyFileCase("private-key-as-public", KEY_FILE.read_bytes(), (VERIFY,)),
    KeyFileCase("public-key-as-private", PUB_FILE.read_bytes(), (SERVE,)),
    KeyFileCase("binary", bytes(range(256)) * 4),
    KeyFileCase("over-64-kib", b"A" * 70_000),
    KeyFileCase("not-utf8-pem", b"-----BEGIN PUBLIC KEY-----\n\xff\xfe\n-----END PUBLIC KEY-----\n"),
]

CORPUS = [c.id for c in SPAN_CASES] + [f"key-file-{c.id}" for c in KEY_FILE_CASES]
HOSTILE_INPUTS = len(CORPUS)


# --------------------------------------------------------------------------- through a real processor


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    """A processor holding the fixture public key, sent every span case once; the request id each one reads."""
    tmp = tmp_path_factory.mktemp("adversarial-signing")
    p = ProcessorProcess(
        str(tmp / "r.db"), "--wait-window", "0.3", "--no-grpc", "--public-key", str(PUB_FILE), log=tmp / "p.log"
    ).start()
    ids: dict[str, str] = {}
    answers: dict[str, int] = {}
    try:
        for case in SPAN_CASES:
            doc = genuine(f"req_adv_sig_{case.id}")
            case.edit(doc)
            ids[case.id] = _request_id(doc)
            r = httpx.post(p.url + "/v1/traces", content=json.dumps(doc), headers=JSON_HEADERS, timeout=30)
            answers[case.id] = r.status_code
        assert p.wait_for(lambda: all(p.get(f"/receipts/{i}").status_code == 200 for i in ids.values()), 30)
        yield p, ids, answers
    finally:
        p.stop()


@pytest.mark.parametrize("case", SPAN_CASES, ids=[c.id for c in SPAN_CASES])
def test_a_forged_or_tampered_span_is_never_verified(processor, case):
    p, ids, answers = processor
    assert answers[case.id] == 200
    r = p.get(f"/receipts/{ids[case.id]}")
    assert r.status_code == 200, r.text
    check = r.json()["signature"]
    assert check["status"] == case.status and case.reason in check["reason"], check
    assert len(check["reason"]) < 600  # a huge key id is named, not echoed whole
    page = p.get(f"/r/{ids[case.id]}")
    assert page.status_code == 200 and f">{case.status}</span>" in page.text and "<script>alert" not in page.text
    assert p.get("/healthz").status_code == 200
    receipt = Receipt.model_validate(r.json()["receipt"])  # the verifier alone, as an auditor runs it
    assert verify_receipt(receipt, KEYS).status == case.status


def test_the_genuine_decisions_the_cases_start_from_verify(processor):
    p, _, _ = processor
    doc = genuine("req_adv_sig_untouched")
    assert (
        httpx.post(p.url + "/v1/traces", content=json.dumps(doc), headers=JSON_HEADERS, timeout=10).status_code == 200
    )
    answer = p.wait_for(lambda: p.receipt("req_adv_sig_untouched"), 15)
    assert answer["signature"]["status"] == "verified"


# --------------------------------------------------------------------------- key files


@pytest.mark.parametrize("case", KEY_FILE_CASES, ids=[c.id for c in KEY_FILE_CASES])
def test_an_unusable_key_file_exits_2_with_one_line_and_echoes_nothing(tmp_path, case):
    path = tmp_path / "router.pub"
    path.write_bytes(case.content)
    receipt_file = FIXTURES / "trace.otlp.pb"
    commands = {
        VERIFY: ["receipt", "req_8f41c2a07b3e9d15", "--verify", "--public-key", str(path), "--file", str(receipt_file)],
        SERVE: ["serve", "--port", "0", "--signing-key", str(path)],
    }
    for args in (commands[c] for c in case.commands):
        result = subprocess.run(
            [sys.executable, "-m", "unhardcoded.cli", *args], capture_output=True, text=True, timeout=60, cwd=REPO
        )
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0], result.stderr
        assert "Traceback" not in result.stderr and CANARY not in result.stderr and "BEGIN" not in lines[0]


# --------------------------------------------------------------------------- fuzz


VALUES = st.one_of(
    st.text(max_size=120),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
    st.lists(st.text(max_size=8), max_size=3),
)
_BASE = genuine("req_adv_sig_fuzz")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _any_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, list):
        return {"arrayValue": {"values": [s(v) for v in value]}}
    return s(value)


@FUZZ
@given(
    st.sampled_from([A.UNHARDCODED_SIGNATURE_VALUE, A.UNHARDCODED_SIGNATURE_KEY_ID, A.UNHARDCODED_SIGNATURE_VERSION]),
    VALUES,
)
def test_fuzzed_signature_attributes_never_verify_unless_genuine(key, value):
    doc = copy.deepcopy(_BASE)
    genuine_value = get(decision_span(doc), key)
    put(decision_span(doc), key, _any_value(value))
    (receipt,) = rebuild_receipts(doc).receipts
    check = verify_receipt(receipt, KEYS)
    if check.status == "verified":  # only the genuine value (or the same number written otherwise) can
        assert _any_value(value) == genuine_value or (key == A.UNHARDCODED_SIGNATURE_VERSION and value == genuine_value)


_BASE_RECEIPT = rebuild_receipts(_BASE).receipts[0]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _paths(v, (*prefix, k))] or [prefix]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _paths(v, (*prefix, i))] or [prefix]
    return [prefix]


_LEAVES = [p for p in _paths(_BASE_RECEIPT.to_json_dict()) if p and p[0] not in ("signature", "complete", "receipt")]


@FUZZ
@given(st.sampled_from(_LEAVES), st.one_of(st.none(), VALUES))
def test_any_change_to_a_signed_receipt_field_is_caught(path, value):
    doc = _BASE_RECEIPT.to_json_dict()
    target = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    try:
        edited = Receipt.model_validate(doc)
    except ValueError:
        return  # not a receipt at all: nothing to verify
    check = verify_receipt(edited, KEYS)
    from unhardcoded._signature import signed_content

    same = signed_content(edited.signed_fields()) == signed_content(_BASE_RECEIPT.signed_fields())
    assert (check.status == "verified") == same


@FUZZ
@given(st.binary(max_size=400))
def test_fuzzed_public_key_bytes_are_refused_with_a_key_error_only(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "fuzzed.pub"
    path.write_bytes(data)
    with pytest.raises(SigningKeyError):
        PublicKeys.load([path])
