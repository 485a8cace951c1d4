"""Signed receipts through a real processor: verified on read with `--public-key`, and end to end from a real
`unhardcoded serve --signing-key` (uvicorn on loopback, simulated providers) to the processor and the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from processor_fixtures import REPO, ProcessorProcess, decisions_with_spans, free_port
from unhardcoded.catalog import Catalog
from unhardcoded.semconv.headers import X_UNHARDCODED_REQUEST_ID
from unhardcoded.testing.simulator import SimulatedProvider

FIXTURES = REPO / "tests" / "fixtures"
KEY = FIXTURES / "signing" / "fixture.key"
PUB = FIXTURES / "signing" / "fixture.pub"
PB = {"Content-Type": "application/x-protobuf"}
HOPPED = "req_8f41c2a07b3e9d15"


def _post(p: ProcessorProcess, body: bytes) -> None:
    assert httpx.post(p.url + "/v1/traces", content=body, headers=PB, timeout=10).status_code == 200


@pytest.fixture(scope="module")
def verifying(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("signing")
    p = ProcessorProcess(
        str(tmp / "receipts.db"), "--wait-window", "0.3", "--public-key", str(PUB), log=tmp / "processor.log"
    ).start()
    _post(p, (FIXTURES / "trace.otlp.pb").read_bytes())
    unsigned, spans = decisions_with_spans(1, seed=81, prefix="req_unsigned", hops=1)
    from fixtures import span_layout as L

    _post(p, L.otlp_bytes(spans))
    assert p.wait_for(lambda: p.receipt(HOPPED) and p.receipt(unsigned[0].request_id), 15)
    yield p, unsigned[0].request_id
    p.stop()


def _validate(spec: dict, body: dict) -> None:
    schema = spec["paths"]["/receipts/{request_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    registry = Registry().with_resource("urn:openapi", Resource.from_contents(spec, default_specification=DRAFT202012))
    ref = schema["schema"]["$ref"]
    Draft202012Validator({"$ref": "urn:openapi#" + ref[1:]}, registry=registry).validate(body)


def test_a_receipt_read_is_verified_and_the_answer_matches_the_document(verifying):
    p, _ = verifying
    doc = p.receipt(HOPPED)
    assert doc["signature"] == {"status": "verified", "reason": None, "key_id": "a03522de160a0c5f", "version": 2}
    assert "status" not in doc["receipt"]["signature"]  # the receipt carries the signature, never its status
    _validate(p.get("/openapi.json").json(), doc)
    page = p.get(f"/r/{HOPPED}").text
    assert ">verified</span>" in page and "a03522de160a0c5f" in page


def test_an_unsigned_receipt_reads_unsigned(verifying):
    p, unsigned = verifying
    doc = p.receipt(unsigned)
    assert doc["receipt"]["signature"] is None
    assert doc["signature"]["status"] == "unsigned"
    assert ">unsigned</span>" in p.get(f"/r/{unsigned}").text


def test_without_public_keys_the_signature_is_not_checked(tmp_path):
    p = ProcessorProcess(str(tmp_path / "r.db"), "--wait-window", "0.3", "--no-grpc", log=tmp_path / "p.log").start()
    try:
        _post(p, (FIXTURES / "trace.otlp.pb").read_bytes())
        doc = p.wait_for(lambda: p.receipt(HOPPED), 15)
        assert doc["signature"] is None and doc["receipt"]["signature"]["key_id"] == "a03522de160a0c5f"
        assert "not checked" in p.get(f"/r/{HOPPED}").text
    finally:
        p.stop()


@pytest.mark.parametrize(
    ("key", "needle"),
    [("/nonexistent/router.pub", "cannot read"), (str(KEY), "not a PEM public key")],
    ids=["missing", "private-key"],
)
def test_an_unusable_public_key_stops_the_processor_with_one_line(tmp_path, key, needle):
    cmd = [sys.executable, "-m", "unhardcoded.cli", "processor", "--port", "0", "--no-grpc"]
    cmd += ["--store", str(tmp_path / "r.db"), "--public-key", key]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and key in lines[0], result.stderr


# --------------------------------------------------------------------------- end to end


def _proxy(tmp: Path, sim: SimulatedProvider, processor_url: str) -> tuple[subprocess.Popen, str, object]:
    port = free_port()
    providers = sorted({m.provider for m in Catalog.builtin().models})
    (tmp / "providers.json").write_text(
        json.dumps({"providers": [{"name": p, "base_url": sim.base_url, "timeout_s": 5} for p in providers]})
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "UNHARDCODED_"))}
    env.update(
        {
            "UNHARDCODED_HOME": str(tmp / "proxy-home"),
            "OTEL_SERVICE_NAME": "proxy",
            "OTEL_EXPORTER_OTLP_ENDPOINT": processor_url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_METRICS_EXPORTER": "none",
        }
    )
    cmd = [sys.executable, "-m", "unhardcoded.cli", "serve", "--port", str(port), "--providers"]
    cmd += [str(tmp / "providers.json"), "--default-policy", "support", "--store", str(tmp / "proxy.db")]
    cmd += ["--signing-key", str(KEY), "--no-access-log"]
    log = open(tmp / "proxy.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp / "proxy.log").read_text()
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url, log
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    proc.wait(5)
    log.close()
    raise AssertionError("the proxy did not come up: " + (tmp / "proxy.log").read_text())


def test_proxy_with_a_signing_key_to_a_processor_with_the_public_key_verifies_everywhere(verifying, tmp_path):
    p, _ = verifying
    with SimulatedProvider("sim") as sim:
        proc, url, log = _proxy(tmp_path, sim, p.url)
        try:
            with openai.OpenAI(base_url=url + "/v1", api_key="sk-CANARY-signing-e2e", max_retries=0) as client:
                raw = client.chat.completions.with_raw_response.create(
                    model="auto", messages=[{"role": "user", "content": "Where is my parcel?"}]
                )
                streamed = client.chat.completions.with_raw_response.create(
                    model="auto", messages=[{"role": "user", "content": "And my refund?"}], stream=True
                )
                with streamed.parse() as chunks:
                    assert [c for c in chunks]
            request_id = raw.headers[X_UNHARDCODED_REQUEST_ID]
            streamed_id = streamed.headers[X_UNHARDCODED_REQUEST_ID]
            doc = p.wait_for(lambda: p.receipt(request_id), 20)
            streamed_doc = p.wait_for(lambda: p.receipt(streamed_id), 20)
        finally:
            proc.terminate()
            proc.wait(20)
            log.close()
    assert doc, (tmp_path / "proxy.log").read_text()
    assert doc["receipt"]["outcome"] == "answered" and doc["receipt"]["attempts"]
    assert doc["signature"]["status"] == "verified", doc
    assert streamed_doc["signature"]["status"] == "verified", streamed_doc
    assert "sk-CANARY" not in json.dumps(doc) and "sk-CANARY" not in (tmp_path / "proxy.log").read_text()

    def cli(*args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("UNHARDCODED_")}
        return subprocess.run(
            [sys.executable, "-m", "unhardcoded.cli", "receipt", request_id, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )

    by_processor = cli("--verify", "--public-key", str(PUB), "--processor", p.url)
    assert by_processor.returncode == 0 and "signature verified" in by_processor.stdout, by_processor.stderr
    shown = cli("--json", "--processor", p.url)
    (tmp_path / "r.json").write_text(shown.stdout)
    by_file = cli("--verify", "--public-key", str(PUB), "--file", str(tmp_path / "r.json"))
    assert by_file.returncode == 0 and "signature verified" in by_file.stdout, by_file.stderr
    # the proxy's own store (receipts rebuilt in-process from the same spans) holds the signed receipt too
    by_store = cli("--verify", "--public-key", str(PUB), "--store", str(tmp_path / "proxy.db"))
    assert by_store.returncode == 0 and "signature verified" in by_store.stdout, by_store.stderr
