"""Signed decisions: one definition of the signed content, the same bytes from a Decision and from every rebuilt
receipt, signatures made by the real emitter (plain, late and through the cascade) that verify, keys on disk.

Forged and tampered spans are in tests/adversarial/test_signing.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fixtures import generate
from fixtures import span_layout as L
from fixtures.decisions import CATALOG, decisions
from unhardcoded._signature import (
    CONTENT_FIELDS,
    SIGNATURE_VERSION,
    PublicKeys,
    SigningKey,
    SigningKeyError,
    key_id_of,
    signed_content,
    write_key_pair,
)
from unhardcoded.policy import validate_policy
from unhardcoded.receipts import Receipt, rebuild_receipts, verify_receipt
from unhardcoded.router import Router
from unhardcoded.router.decision import Signature
from unhardcoded.router.features import RequestFeatures
from unhardcoded.router.providers import ProviderClient, ProviderConfig, ProvidersConfig
from unhardcoded.semconv import attributes as A
from unhardcoded.telemetry import RouterTelemetry
from unhardcoded.telemetry import signing as telemetry_signing
from unhardcoded.telemetry.signing import SIGNING_KEY_ENV, DecisionSigner, use_signing_key
from unhardcoded.testing.simulator import SimulatedProvider, error, ok

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
KEY = SigningKey.load(FIXTURES / "signing" / "fixture.key")
KEYS = PublicKeys.load([FIXTURES / "signing" / "fixture.pub"])
SIGNER = DecisionSigner(KEY)
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOT_SIGNED = {
    "receipt",  # the schema name, a constant
    "complete",  # the reader's finding about the telemetry it received, not the router's
    "signature",  # itself
}


@pytest.fixture
def process_signer():
    """The process-wide signing key as it was before the test, put back after it."""
    state = telemetry_signing._CONFIGURED
    saved = (state.explicit, state.signer)
    yield
    state.explicit, state.signer = saved


def test_every_receipt_field_is_signed_under_some_version():
    # A field added to the receipt must join the signed content under a new version (CONTENT_FIELDS), or be named
    # in NOT_SIGNED with the reason: it never goes unsigned by mistake.
    signed = {name for fields in CONTENT_FIELDS.values() for name in fields}
    assert set(Receipt.model_fields) - NOT_SIGNED == signed
    assert max(CONTENT_FIELDS) == SIGNATURE_VERSION


def test_the_v1_bytes_of_a_known_decision_are_pinned():
    # Changing them (a key order, a number's form) breaks every signature made before: that needs a new version.
    _, ds = generate.build()
    content = signed_content(ds[0].receipt_fields(), version=1)
    assert content.startswith(b'{"v":1,"request_id":"req_8f41c2a07b3e9d15","trace_id":"')
    assert hashlib.sha256(content).hexdigest() == "295615770f9b949185258402fc029d9971166650acc854d969f89035eab089b5"
    # v2: the same, then the live state read (none here), the billing (here a signed dry-run's: the source of the
    # catalog's prices) and the budget (none).
    v2 = signed_content(ds[0].receipt_fields())
    assert v2.startswith(b'{"v":2,"request_id":"req_8f41c2a07b3e9d15","trace_id":"')
    assert v2.endswith(
        b',"live":null,"billing":{"estimate_usd":null,"breakdown":null,"attempts":[],"prices":{"source":'
        b'"genai-prices","data_version":"genai-prices 0.2.5","snapshot_date":"2026-12-06"}},"budget":null}'
    )
    assert hashlib.sha256(v2).hexdigest() == "5f2f2f1efc866cbb8d17a89f8fa0fa6b58e836827a5a7b6e9708699ff58fe9a4"


@SETTINGS
@given(decisions(), st.sampled_from(sorted(L.WIRE_SHAPES)))
def test_a_signed_decision_rebuilt_from_any_span_form_verifies_and_equals_its_decision(decision, shape):
    tp, exporter = L.provider()
    L.emit_decision(tp.get_tracer("unhardcoded"), decision, signer=SIGNER)
    (rebuilt,) = rebuild_receipts(L.WIRE_SHAPES[shape](exporter.get_finished_spans())).receipts
    expected = Receipt.from_decision(decision)
    assert rebuilt == expected and rebuilt.signature == decision.signature is not None
    assert signed_content(decision.receipt_fields()) == signed_content(rebuilt.signed_fields())
    assert signed_content(rebuilt.to_json_dict()) == signed_content(expected.signed_fields())
    assert verify_receipt(rebuilt, KEYS).status == "verified"
    again = Receipt.model_validate_json(rebuilt.to_json_text())  # a receipt kept as JSON (a store, a file)
    assert verify_receipt(again, KEYS).status == "verified"


@pytest.mark.parametrize("name", sorted(generate.FILES))
def test_every_fixture_trace_file_verifies_with_the_fixture_public_key(name):
    path = FIXTURES / name
    rebuilt = rebuild_receipts(path.read_bytes())
    assert len(rebuilt.receipts) == 2
    for receipt in rebuilt.receipts:
        check = verify_receipt(receipt, KEYS)
        assert (check.status, check.key_id, check.version) == ("verified", KEY.key_id, 2), check
    expected = json.loads((FIXTURES / generate.EXPECTED).read_text(encoding="utf-8"))["receipts"]
    assert [r.to_json_dict() for r in rebuilt.receipts] == expected


def test_an_unsigned_receipt_is_unsigned_and_the_status_is_not_part_of_the_receipt():
    tp, exporter = L.provider()
    _, ds = generate.build()
    d = ds[0].model_copy(deep=True)
    d.signature = None
    L.emit_decision(tp.get_tracer("unhardcoded"), d)
    (receipt,) = rebuild_receipts(L.otlp_bytes(exporter.get_finished_spans())).receipts
    assert receipt.signature is None and receipt == Receipt.from_decision(d)
    check = verify_receipt(receipt, KEYS)
    assert check.status == "unsigned" and "no signature" in check.reason
    assert "status" not in receipt.to_json_dict() and "verified" not in receipt.to_json_text()


def _router_with(tp: TracerProvider, key: SigningKey | None, providers: ProviderClient | None = None) -> Router:
    return Router(CATALOG, providers, telemetry=RouterTelemetry(tracer_provider=tp, signing_key=key))


def _recorded() -> tuple[TracerProvider, InMemorySpanExporter]:
    tp, exporter = TracerProvider(), InMemorySpanExporter()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp, exporter


SUPPORT = validate_policy(generate.SUPPORT, CATALOG)
FEATURES = RequestFeatures(input_tokens=900, output_tokens=300, uses_tools=True)


def test_router_decide_signs_as_the_span_ends_and_the_rebuilt_receipt_verifies():
    tp, exporter = _recorded()
    decision = _router_with(tp, KEY).decide(SUPPORT, FEATURES)
    (span,) = exporter.get_finished_spans()
    assert span.attributes[A.UNHARDCODED_SIGNATURE_KEY_ID] == KEY.key_id
    assert span.attributes[A.UNHARDCODED_SIGNATURE_VERSION] == 2
    assert decision.signature == Signature(
        version=2, key_id=KEY.key_id, value=span.attributes[A.UNHARDCODED_SIGNATURE_VALUE]
    )
    (receipt,) = rebuild_receipts(exporter.get_finished_spans()).receipts
    assert receipt == Receipt.from_decision(decision)
    assert verify_receipt(receipt, KEYS).status == "verified"
    assert verify_receipt(Receipt.from_decision(decision), KEYS).status == "verified"


def test_no_key_no_signature_attributes():
    tp, exporter = _recorded()
    decision = _router_with(tp, None).decide(SUPPORT, FEATURES)
    (span,) = exporter.get_finished_spans()
    assert not [k for k in span.attributes if k.startswith("unhardcoded.signature")]
    assert decision.signature is None


@pytest.fixture(scope="module")
def sim():
    with SimulatedProvider("sim") as s:
        yield s


@pytest.fixture(scope="module")
def client(sim):
    providers = sorted({m.provider for m in CATALOG.models})
    c = ProviderClient(ProvidersConfig(providers=[ProviderConfig(name=p, base_url=sim.base_url) for p in providers]))
    yield c
    c.close()


BODY = {
    "messages": [{"role": "user", "content": "Where is my refund?"}],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
}


def test_a_cascade_with_a_fallback_is_signed_with_its_attempts_answer_and_cost(sim, client):
    tp, exporter = _recorded()
    router = _router_with(tp, KEY, client)
    selected = router.decide(SUPPORT, BODY).selected.model
    exporter.clear()
    sim.set_behavior(selected, error(503))
    try:
        decision, _, _ = router.route(SUPPORT, BODY)
    finally:
        sim.set_behavior(selected, ok())
    assert decision.outcome == "answered" and decision.hops and decision.cost.usd is not None
    (receipt,) = rebuild_receipts(L.otlp_json(exporter.get_finished_spans())).receipts
    assert receipt == Receipt.from_decision(decision) and len(receipt.attempts) == 2
    assert verify_receipt(receipt, KEYS).status == "verified"


def test_a_late_recorded_decision_is_signed_when_its_spans_are_made_off_the_path(sim, client):
    tp, exporter = _recorded()
    later: list = []
    decision, _, _ = _router_with(tp, KEY, client).route(SUPPORT, BODY, later=later)
    assert later and decision.signature is None and not exporter.get_finished_spans()  # nothing signed on the path
    for record in later:
        record()
    assert decision.signature is not None
    (receipt,) = rebuild_receipts(exporter.get_finished_spans()).receipts
    assert receipt == Receipt.from_decision(decision)
    assert verify_receipt(receipt, KEYS).status == "verified"


def test_the_process_wide_key_from_configure_or_the_environment(process_signer, tmp_path, monkeypatch):
    from unhardcoded.telemetry import configure

    telemetry_signing._CONFIGURED.explicit = False
    monkeypatch.setenv(SIGNING_KEY_ENV, str(FIXTURES / "signing" / "fixture.key"))
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    setup = configure("t", set_global=False, metrics=False)
    try:
        assert setup.signing_key_id == KEY.key_id
        tp, exporter = _recorded()
        Router(CATALOG, tracer_provider=tp).decide(SUPPORT, FEATURES)  # the process-wide key
        assert exporter.get_finished_spans()[0].attributes[A.UNHARDCODED_SIGNATURE_KEY_ID] == KEY.key_id
        _, public, other_id = write_key_pair(tmp_path, "other")
        setup2 = configure("t", set_global=False, metrics=False, signing_key=tmp_path / "other.key")
        assert setup2.signing_key_id == other_id and setup2.signing_key_id != KEY.key_id
        setup2.shutdown()
        use_signing_key(None)
        tp, exporter = _recorded()
        Router(CATALOG, tracer_provider=tp).decide(SUPPORT, FEATURES)
        assert A.UNHARDCODED_SIGNATURE_VALUE not in exporter.get_finished_spans()[0].attributes
    finally:
        setup.shutdown()
    telemetry_signing._CONFIGURED.explicit = False
    monkeypatch.setenv(SIGNING_KEY_ENV, str(tmp_path / "missing.key"))
    with pytest.raises(SigningKeyError, match=r"missing\.key: cannot read the signing key"):
        RouterTelemetry()


def test_a_signer_that_fails_leaves_the_decision_unsigned_and_counts_the_loss():
    from unhardcoded.telemetry import losses

    class Broken(DecisionSigner):
        def sign(self, decision, outcome=None):
            raise RuntimeError("no")

    tp, exporter = _recorded()
    telemetry = RouterTelemetry(tracer_provider=tp, signing_key=None)
    telemetry._signer = Broken(KEY)
    before = losses().errors
    decision = Router(CATALOG, telemetry=telemetry).decide(SUPPORT, FEATURES)
    assert decision.signature is None and losses().errors == before + 1
    assert A.UNHARDCODED_SIGNATURE_VALUE not in exporter.get_finished_spans()[0].attributes


# --------------------------------------------------------------------------- keys


def test_keys_are_written_0600_never_overwritten_and_named_by_their_public_key(tmp_path):
    private, public, key_id = write_key_pair(tmp_path / "keys", "router-2026")
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    key = SigningKey.load(private)
    assert key.key_id == key_id == key_id_of(_raw(key)) and len(key_id) == 16
    before = private.read_bytes()
    with pytest.raises(SigningKeyError, match="already exists"):
        write_key_pair(tmp_path / "keys", "router-2026")
    assert private.read_bytes() == before
    assert list(PublicKeys.load([tmp_path / "keys"])) == [key_id]


def _raw(key: SigningKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_rotation_old_receipts_verify_with_the_old_key_new_ones_with_the_new(tmp_path):
    write_key_pair(tmp_path, "new")
    new = SigningKey.load(tmp_path / "new.key")
    tp, exporter = _recorded()
    old_decision = _router_with(tp, KEY).decide(SUPPORT, FEATURES)
    new_decision = _router_with(tp, new).decide(SUPPORT, FEATURES)
    old, fresh = (Receipt.from_decision(d) for d in (old_decision, new_decision))
    both = PublicKeys.load([FIXTURES / "signing" / "fixture.pub", tmp_path / "new.pub"])
    assert [verify_receipt(r, both).status for r in (old, fresh)] == ["verified", "verified"]
    only_new = PublicKeys.load([tmp_path])
    check = verify_receipt(old, only_new)
    assert check.status == "invalid" and check.reason.startswith(f"unknown key id {KEY.key_id!r}")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a PEM public key"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a PEM public key"),
        ((FIXTURES / "signing" / "fixture.key").read_bytes(), "not a PEM public key"),
        (b"x" * 70_000, "over 64 KiB"),
    ],
    ids=["empty", "bad-base64", "a-private-key", "huge"],
)
def test_an_unusable_public_key_file_says_which_and_why(tmp_path, content, message):
    path = tmp_path / "k.pub"
    path.write_bytes(content)
    with pytest.raises(SigningKeyError, match=message) as info:
        PublicKeys.load([path])
    assert str(path) in str(info.value)


def test_an_rsa_or_encrypted_private_key_is_refused(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, Encoding, PrivateFormat

    ec_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.key").write_bytes(ec_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, _no_encryption()))
    with pytest.raises(SigningKeyError, match="not an Ed25519 key"):
        SigningKey.load(tmp_path / "ec.key")
    locked = _fresh_private_key().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"pw"))
    (tmp_path / "locked.key").write_bytes(locked)
    with pytest.raises(SigningKeyError, match="not an unencrypted PEM private key"):
        SigningKey.load(tmp_path / "locked.key")


def _no_encryption():
    from cryptography.hazmat.primitives.serialization import NoEncryption

    return NoEncryption()


def _fresh_private_key():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def test_a_decision_with_its_signature_field_is_still_built_without_model_construct(monkeypatch):
    # The engine's fast build needs every Decision field named: a field added (the signature) and not given there
    # would silently take model_construct's per-field loop, a third slower per decision.
    from unhardcoded.router.decision import Decision
    from unhardcoded.router.engine import CompiledPolicy

    def refused(cls, **values):
        raise AssertionError(f"Decision.model_construct used: fields given {sorted(values)}")

    monkeypatch.setattr(Decision, "model_construct", classmethod(refused))
    decision = CompiledPolicy(SUPPORT, CATALOG).decide(FEATURES)
    assert decision.signature is None
