"""Hostile connections to the real `unhardcoded serve`, over raw sockets: slow heads, slow bodies, callers that drop
mid-body, and more connections than the proxy takes. Each is cut off or refused; the proxy keeps serving and logs
one line, not a traceback.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from apps.proxy_harness import free_port
from unhardcoded import cli

HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
CORPUS = {
    "half-a-head": HEAD,
    "a-head-and-half-its-body": HEAD + b"content-length: 100\r\n\r\n" + b'{"messages": [',
    "nothing-at-all": b"",
}
HOSTILE_INPUTS = len(CORPUS) + 2  # and a caller dropping mid-body, and connections over the limit


@dataclass
class Served:
    port: int
    proc: subprocess.Popen[str]
    out: str = ""
    err: str = ""
    stopped: bool = False

    def get(self, path: str) -> httpx.Response:
        with httpx.Client(timeout=10) as client:
            return client.get(f"http://127.0.0.1:{self.port}{path}")

    def stop(self) -> None:
        self.stopped = True
        self.proc.terminate()
        self.out, self.err = self.proc.communicate(timeout=20)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    env = {
        **os.environ,
        "UNHARDCODED_STORE": str(tmp_path / "receipts.db"),
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
    }
    args = ["--port", str(port), "--header-timeout", "0.5", "--body-timeout", "0.5", "--limit-concurrency", "8"]
    proc = subprocess.Popen(
        [sys.executable, "-m", cli.__name__, "serve", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = Served(port, proc)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "serve exited"
            try:
                if server.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "serve did not come up"
                time.sleep(0.05)
        yield server
    finally:
        if not server.stopped:
            server.stop()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(20)  # a bound so a proxy that never answers fails the test instead of hanging it
    return sock


def _read_all(sock: socket.socket) -> bytes:
    parts = []
    while chunk := sock.recv(65536):
        parts.append(chunk)
    return b"".join(parts)


@pytest.mark.parametrize("name", list(CORPUS))
def test_slow_client_gets_a_408_and_is_closed(served: Served, name: str) -> None:
    with _connect(served.port) as sock:
        sock.sendall(CORPUS[name])
        answer = _read_all(sock)  # ends only when the proxy closes the connection

    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'"code":"request_timeout"' in answer
    assert served.get("/healthz").status_code == 200
    served.stop()
    assert "Traceback" not in served.err + served.out
    assert "connection closed (408)" in served.err


def test_client_dropping_mid_body_logs_one_line_and_a_499(served: Served) -> None:
    with _connect(served.port) as sock:
        sock.sendall(HEAD + b"content-length: 1000\r\n\r\n" + b'{"messages": [')
        # The proxy reads the head, then waits for the body, which never comes.
        time.sleep(0.1)
    assert served.get("/healthz").status_code == 200
    served.stop()

    log = served.err + served.out
    assert "Traceback" not in log and "ClientDisconnect" not in log and "ERROR" not in log
    assert "disconnected before its request body was read (POST /v1/chat/completions)" in served.err
    assert re.search(r'"POST /v1/chat/completions HTTP/1\.1" 499', served.out), served.out
    assert " 500" not in served.out


def test_connections_over_the_limit_are_refused_and_the_stalled_ones_cut_off(served: Served) -> None:
    stalled = [_connect(served.port) for _ in range(8)]
    try:
        for sock in stalled:
            sock.sendall(HEAD)
        with _connect(served.port) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            refused = _read_all(extra)
        cut = [_read_all(sock) for sock in stalled]
    finally:
        for sock in stalled:
            sock.close()

    assert refused.startswith(b"HTTP/1.1 503 "), refused
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in cut)
    assert served.get("/healthz").status_code == 200
