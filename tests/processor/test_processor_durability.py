"""`--sqlite-synchronous`: with `full` (the default) an export is on disk before it is acknowledged; `normal` is not.

Whether bytes reached the disk cannot be seen from outside the process, but the
system calls can: the real `unhardcoded processor` runs under strace, which
logs each fsync/fdatasync with the file it syncs and each write with its first
bytes, so the log shows whether the spool's WAL was synced before the
``HTTP/1.1 200`` answer went out. The exports hold attempt spans whose decision
span never comes (the wait window is long), so no receipt is written and the
only commits in view are the spool's.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from processor_fixtures import REPO, decisions_with_spans, free_port


def strace() -> str:
    found = shutil.which("strace")
    if not found:
        pytest.fail("strace not found; install Debian's strace (apt-get install strace)", pytrace=False)
    return found


class TracedProcessor:
    """`unhardcoded processor` under ``strace -f``, logging syncs and writes with timestamps and file names."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.port = free_port()
        self.trace = tmp / "strace.log"
        self.log = tmp / "processor.log"
        self.db = tmp / "receipts.db"
        cmd = [
            strace(),
            "-f",
            "-ttt",
            "-y",
            "-s",
            "16",
            "-e",
            "trace=fsync,fdatasync,write,writev,sendto,sendmsg",
            "-o",
            str(self.trace),
            "--",
            sys.executable,
            "-m",
            "unhardcoded.cli",
            "processor",
            "--port",
            str(self.port),
            "--grpc-port",
            str(free_port()),
            "--store",
            str(self.db),
            "--no-access-log",
            "--wait-window",
            "120",
            *args,
        ]
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=str(REPO))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"strace/processor exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"processor under strace not up in 60 s:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> int:
        """SIGTERM to the processor itself (signalling strace would only detach it)."""
        if self.proc.poll() is None:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            for pid in children:
                os.kill(int(pid), signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def events(self) -> list[tuple[float, str]]:
        out = []
        for line in self.trace.read_text(errors="replace").splitlines():
            parts = line.split(None, 2)
            if len(parts) == 3:
                try:
                    out.append((float(parts[1]), parts[2]))
                except ValueError:
                    continue
        return out


def attempt_only_exports(n: int) -> list[bytes]:
    """Exports of attempt spans alone: spooled, acknowledged, and left waiting for their decision span."""
    out = []
    for seed in range(n):
        _, spans = decisions_with_spans(3, seed=100 + seed, prefix="sync", hops=1)
        out.append(encode_spans([s for s in spans if s.name.startswith("chat ")]).SerializeToString())
    return out


def acknowledged_windows(p: TracedProcessor, exports: list[bytes]) -> list[tuple[float, float]]:
    windows = []
    for body in exports:
        started = time.time()
        r = httpx.post(
            f"http://127.0.0.1:{p.port}/v1/traces",
            content=body,
            headers={"Content-Type": "application/x-protobuf"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        windows.append((started, time.time()))
    return windows


@pytest.mark.parametrize(
    "flag, synced", [((), True), (("--sqlite-synchronous", "full"), True), (("--sqlite-synchronous", "normal"), False)]
)
def test_the_spool_is_synced_before_the_acknowledgement(tmp_path: Any, flag: tuple[str, ...], synced: bool) -> None:
    p = TracedProcessor(tmp_path, *flag)
    try:
        windows = acknowledged_windows(p, attempt_only_exports(3))
    finally:
        code = p.stop()
    assert code == 0, p.tail()
    mode = "normal" if "normal" in flag else "full"
    assert f"sqlite synchronous={mode}" in p.tail()
    events = p.events()
    wal = f"{p.db}-wal>"
    for started, answered in windows:
        answers = [t for t, call in events if started <= t <= answered and '"HTTP/1.1 200' in call]
        assert len(answers) == 1, f"no single 200 answer in the log for the export at {started}"
        wal_syncs = [
            t
            for t, call in events
            if started <= t <= answered and call.startswith(("fdatasync(", "fsync(")) and wal in call
        ]
        if synced:
            assert any(t <= answers[0] for t in wal_syncs), "acknowledged before the spool's WAL was synced to disk"
        else:
            assert not wal_syncs, "synchronous=normal synced the WAL on an ordinary commit"
    spooled = _spooled(p.db)
    assert spooled == sum(len(_attempts(b)) for b in attempt_only_exports(3))


def _attempts(body: bytes) -> list[Any]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    message = ExportTraceServiceRequest.FromString(body)
    return [s for rs in message.resource_spans for ss in rs.scope_spans for s in ss.spans]


def _spooled(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as c:
        return c.execute("SELECT COUNT(*) FROM processor_spans").fetchone()[0]


def test_the_option_is_refused_for_a_postgresql_store() -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "unhardcoded.cli",
            "processor",
            "--port",
            "0",
            "--grpc-port",
            "0",
            "--store",
            "postgresql://receipts@127.0.0.1:1/receipts",
            "--sqlite-synchronous",
            "normal",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(REPO),
    )
    assert r.returncode == 2
    assert "--sqlite-synchronous" in r.stderr and "synchronous_commit" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
