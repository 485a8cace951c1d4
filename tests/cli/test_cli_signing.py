"""`unhardcoded keys generate` and `unhardcoded receipt ID --verify`, run as the real command in a subprocess.

The receipt is verified from every source the command reads: the store, a file (receipt JSON or spans), and
Jaeger and Tempo query APIs on loopback answering the fixture trace in their own formats.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from fixtures import generate
from unhardcoded.receipts import Receipt, open_store, rebuild_receipts

from .test_cli_receipts import FIXTURES, one_line_error, run

PUB = FIXTURES / "signing" / "fixture.pub"
HOPPED = "req_8f41c2a07b3e9d15"
WORKFLOW = generate.WORKFLOW_ID
TRACE_ID = json.loads((FIXTURES / generate.EXPECTED).read_text(encoding="utf-8"))["receipts"][0]["trace_id"]


@pytest.fixture
def home(tmp_path) -> Path:
    home = tmp_path / "home"
    rebuilt = rebuild_receipts((FIXTURES / "trace.otlp.pb").read_bytes())
    with open_store(str(home / "receipts.db")) as store:
        store.put_rebuilt(rebuilt.decisions)
    return home


class _Backend(BaseHTTPRequestHandler):
    """Jaeger's and Tempo's query APIs, answering the fixture trace as each backend writes it."""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/api/services":
            body = {"data": ["checkout"]}
        elif url.path == "/api/traces" and "service" in query:  # Jaeger search
            body = json.loads((FIXTURES / "trace.jaeger.json").read_text(encoding="utf-8"))
        elif url.path == "/api/search":  # Tempo search
            body = {"traces": [{"traceID": TRACE_ID}]}
        elif url.path == f"/api/traces/{TRACE_ID}":  # Tempo trace by id
            body = json.loads((FIXTURES / "trace.tempo.json").read_text(encoding="utf-8"))
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture(scope="module")
def backend() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_keys_generate_writes_a_pair_prints_the_key_id_and_never_overwrites(tmp_path):
    result = run(None, "keys", "generate", "--out", str(tmp_path / "k"), "--name", "router-1")
    assert result.returncode == 0, result.stderr
    key_line = next(line for line in result.stdout.splitlines() if line.startswith("key id"))
    key_id = key_line.split()[-1]
    assert len(key_id) == 16 and int(key_id, 16) >= 0
    private, public = tmp_path / "k" / "router-1.key", tmp_path / "k" / "router-1.pub"
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600 and public.exists()
    before = private.read_bytes()
    again = run(None, "keys", "generate", "--out", str(tmp_path / "k"), "--name", "router-1")
    one_line_error(again, "router-1.key", "already exists")
    assert private.read_bytes() == before
    one_line_error(run(None, "keys", "generate", "--out", str(tmp_path), "--name", "../x"), "--name")


@pytest.mark.parametrize("name", sorted(generate.FILES))
def test_verify_from_a_span_file_in_every_format(name):
    result = run(None, "receipt", HOPPED, "--verify", "--public-key", str(PUB), "--file", str(FIXTURES / name))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{HOPPED}: signature verified (key a03522de160a0c5f, version 2)"


def test_the_card_says_the_receipt_is_signed_and_not_checked(home):
    result = run(home, "receipt", HOPPED)
    assert result.returncode == 0, result.stderr
    assert "signed    key a03522de160a0c5f · version 2 · not checked here" in result.stdout.splitlines()


def test_verify_from_the_store_and_from_a_receipt_json_file(home, tmp_path):
    result = run(home, "receipt", HOPPED, "--verify", "--public-key", str(PUB))
    assert result.returncode == 0 and "signature verified" in result.stdout, result.stderr
    shown = run(home, "receipt", HOPPED, "--json")
    (tmp_path / "r.json").write_text(shown.stdout)
    result = run(None, "receipt", HOPPED, "--verify", "--public-key", str(PUB), "--file", str(tmp_path / "r.json"))
    assert result.returncode == 0 and "signature verified" in result.stdout, result.stderr
    doc = json.loads(shown.stdout)
    doc["cost"]["usd"] = 0.0000001  # the receipt edited after the fact
    (tmp_path / "edited.json").write_text(json.dumps(doc))
    result = run(None, "receipt", HOPPED, "--verify", "--public-key", str(PUB), "--file", str(tmp_path / "edited.json"))
    assert result.returncode == 1
    assert result.stdout.strip() == f"{HOPPED}: signature invalid: signature does not match the receipt's content"


def test_verify_from_jaeger_and_tempo(backend):
    for flag in ("--jaeger", "--tempo"):
        result = run(None, "receipt", HOPPED, "--verify", "--public-key", str(PUB), flag, backend)
        assert result.returncode == 0, (flag, result.stdout, result.stderr)
        assert result.stdout.strip().endswith("signature verified (key a03522de160a0c5f, version 2)")


def test_verify_a_workflow_checks_every_node_and_json_gives_the_status(backend):
    result = run(None, "receipt", WORKFLOW, "--verify", "--public-key", str(PUB.parent), "--tempo", backend, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [d["signature"]["status"] for d in doc] == ["verified", "verified"]
    assert doc[0]["signature"] == {"status": "verified", "reason": None, "key_id": "a03522de160a0c5f", "version": 2}


def test_verify_unsigned_or_with_the_wrong_key_exits_1_with_the_reason(tmp_path):
    stripped = Receipt.model_validate(json.loads((FIXTURES / generate.EXPECTED).read_text())["receipts"][0])
    stripped.signature = None
    (tmp_path / "r.json").write_text(stripped.to_json_text())
    result = run(None, "receipt", HOPPED, "--verify", "--public-key", str(PUB), "--file", str(tmp_path / "r.json"))
    assert result.returncode == 1
    assert result.stdout.strip() == f"{HOPPED}: signature unsigned: the decision span carries no signature"
    run(None, "keys", "generate", "--out", str(tmp_path), "--name", "other")
    result = run(
        None,
        "receipt",
        HOPPED,
        "--verify",
        "--public-key",
        str(tmp_path / "other.pub"),
        "--file",
        str(FIXTURES / "trace.otlp.json"),
    )
    assert result.returncode == 1 and "unknown key id 'a03522de160a0c5f'" in result.stdout


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--verify"], ["--public-key"]),
        (["--public-key", str(PUB)], ["--public-key goes with --verify"]),
        (["--verify", "--public-key", "/nonexistent/k.pub"], ["/nonexistent/k.pub", "cannot read"]),
        (
            ["--verify", "--public-key", str(FIXTURES / "signing" / "fixture.key")],
            ["fixture.key", "not a PEM public key"],
        ),
        (["--verify", "--public-key", str(FIXTURES)], ["no *.pub"]),
        (["--verify", "--public-key", str(PUB), "--file", "/nonexistent/trace.json"], ["cannot read"]),
        (["--verify", "--public-key", str(PUB), "--file", str(PUB)], ["neither a receipt nor spans"]),
    ],
    ids=[
        "no-key",
        "key-without-verify",
        "missing-key",
        "private-key-as-public",
        "dir-without-pub",
        "missing-file",
        "not-spans",
    ],
)
def test_bad_input_to_verify_exits_2_with_one_line(args, needles):
    source = [] if "--file" in args else ["--file", str(FIXTURES / "trace.otlp.pb")]
    one_line_error(run(None, "receipt", HOPPED, *args, *source), *needles)


def test_the_cli_start_up_does_not_load_cryptography():
    code = (
        "import sys; from unhardcoded.cli import main\n"
        "try:\n    main(['keys', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'cryptography' not in sys.modules, 'cryptography loaded'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
