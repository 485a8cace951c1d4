"""Shared pieces of the processor tests: decisions made by the real engine, their spans, and a processor process.

Decisions come from the real policy engine over the built-in catalog, with a
cascade played out by a seeded random generator (so a test's data is the same
every run); spans are laid out by ``fixtures.span_layout`` (the span contract
written out) through the real SDK. The processor is the real
``unhardcoded processor`` command in a subprocess on loopback ports.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from fixtures import span_layout as L
from unhardcoded.catalog import Catalog
from unhardcoded.policy import validate_policy
from unhardcoded.router.decision import Attempt, Decision, FallbackHop, WorkflowRef
from unhardcoded.router.engine import CompiledPolicy, estimate_cost, price
from unhardcoded.router.features import RequestFeatures

CATALOG = Catalog.builtin()
EPOCH = datetime(2026, 3, 1, tzinfo=UTC)
REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"

POLICIES = [
    validate_policy(
        {
            "schema": "sigma-pol/v1",
            "name": "support",
            "rules": [
                {"id": "tools", "field": "supports_tools", "op": "eq", "value": True},
                {"id": "quality-floor", "field": "bench_intelligence", "op": "gte", "value": 0.5},
                {"id": "price-ceiling", "field": "price_output_per_mtok", "op": "lte", "value": 10},
            ],
            "rank": {"by": "cost", "order": "asc"},
            "fallback": {
                "models": ["mistral-large-2512", "gpt-4.1"],
                "on": ["error", "timeout", "rate_limit"],
                "max_hops": 2,
            },
            "baseline": "gpt-5.5",
        },
        CATALOG,
    ),
    validate_policy(
        {
            "schema": "sigma-pol/v1",
            "name": "triage",
            "rules": [{"id": "region", "field": "regions", "op": "intersects", "value": ["eu"]}],
            "rank": {"by": "bench_intelligence", "order": "desc"},
            "fallback": {"models": ["gemini-3.5-flash"], "on": ["error", "rate_limit"], "max_hops": 1},
            "baseline": "claude-sonnet-4-6",
        },
        CATALOG,
    ),
]


def make_decision(
    rng: random.Random,
    request_id: str,
    *,
    hops: int | None = None,
    workflow: WorkflowRef | None = None,
    called: bool = True,
    at: datetime | None = None,
) -> Decision:
    """A decision of the real engine; ``hops`` fallback hops (random when None) before an answer, when ``called``."""
    policy = rng.choice(POLICIES)
    features = RequestFeatures(input_tokens=rng.randint(100, 4000), output_tokens=rng.randint(50, 800), uses_tools=True)
    d = CompiledPolicy(policy, CATALOG).decide(features, request_id=request_id, workflow=workflow)
    when = at or (EPOCH + timedelta(milliseconds=rng.randint(0, 86_400_000)))
    d.timestamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if d.selected is None or not called:
        return d
    plan = [d.selected.model, *d.fallback_chain]
    want = rng.randint(0, len(plan) - 1) if hops is None else min(hops, len(plan) - 1)
    attempts: list[Attempt] = []
    for i, model in enumerate(plan[: want + 1]):
        role = "selected" if i == 0 else "fallback"
        provider = CATALOG.model(model).provider
        if i < want:
            reason = rng.choice(list(policy.fallback.on))
            attempts.append(
                Attempt(
                    index=i,
                    model=model,
                    provider=provider,
                    role=role,
                    status="error",
                    error_type={"error": "503", "timeout": "timeout", "rate_limit": "429"}[reason],
                    duration_ms=float(rng.randint(20, 900)),
                )
            )
            d.hops.append(FallbackHop(from_=model, to=plan[i + 1], reason=reason))
        else:
            attempts.append(
                Attempt(
                    index=i,
                    model=model,
                    provider=provider,
                    role=role,
                    status="ok",
                    duration_ms=float(rng.randint(100, 2000)),
                    input_tokens=features.input_tokens,
                    output_tokens=features.output_tokens,
                )
            )
    d.attempts = attempts
    d.latency_ms = sum(a.duration_ms for a in attempts) + 3.0
    answered = attempts[-1]
    d.outcome = "answered"
    d.answered_by = answered.model
    cost = estimate_cost(CATALOG.model(answered.model), features.input_tokens, features.output_tokens)
    d.cost = price(cost, CATALOG, policy.baseline, features.input_tokens, features.output_tokens)
    return d


def decisions_with_spans(
    n: int, seed: int = 1, service: str = "checkout", prefix: str = "req", **kw: Any
) -> tuple[list[Decision], list[Any]]:
    """``n`` decisions and their finished SDK spans (ReadableSpan), in the order the SDK ended them."""
    rng = random.Random(seed)
    tp, exporter = L.provider(service)
    tracer = tp.get_tracer("unhardcoded")
    out = []
    for i in range(n):
        d = make_decision(rng, f"{prefix}_{seed:03d}_{i:05d}", **kw)
        L.emit_decision(tracer, d)
        out.append(d)
    return out, list(exporter.get_finished_spans())


def workflow_with_spans(
    workflow_id: str, name: str, nodes: Sequence[str], seed: int = 5, service: str = "agents"
) -> tuple[list[Decision], list[Any]]:
    rng = random.Random(seed)
    tp, exporter = L.provider(service)
    base = EPOCH + timedelta(hours=1)
    ds = [
        make_decision(
            rng,
            f"req_{workflow_id}_{step}",
            workflow=WorkflowRef(id=workflow_id, name=name, node=node, step=step),
            at=base + timedelta(seconds=step),
        )
        for step, node in enumerate(nodes)
    ]
    L.emit_workflow(tp.get_tracer("unhardcoded"), workflow_id, name, ds)
    return ds, list(exporter.get_finished_spans())


# --------------------------------------------------------------------------- the processor process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProcessorProcess:
    """`unhardcoded processor` in a subprocess on loopback; restartable on the same ports and store."""

    def __init__(self, store: str, *args: str, env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.store = store
        self.args = list(args)
        self.port = free_port()
        self.grpc_port = free_port()
        self.env = {**os.environ, **(env or {})}
        self.log = log
        self.proc: subprocess.Popen | None = None
        self._log_file: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout_s: float = 20.0) -> ProcessorProcess:
        cmd = [
            sys.executable,
            "-m",
            "unhardcoded.cli",
            "processor",
            "--port",
            str(self.port),
            "--grpc-port",
            str(self.grpc_port),
            "--store",
            self.store,
            "--instance-id",
            "test",
            *self.args,
        ]
        if self.log is not None:
            self._log_file = open(self.log, "ab")
        self.proc = subprocess.Popen(
            cmd,
            env=self.env,
            stdout=self._log_file or subprocess.DEVNULL,
            stderr=self._log_file or subprocess.DEVNULL,
            cwd=str(REPO),
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"processor exited with {self.proc.returncode}: {self.tail()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"processor did not come up in {timeout_s}s: {self.tail()}")

    def tail(self) -> str:
        if self.log is None or not self.log.exists():
            return "(no log)"
        return self.log.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        if self._log_file is not None:  # start() opens it again
            self._log_file.close()
            self._log_file = None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return self.proc.returncode

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kw)

    def wait_for(self, predicate: Any, timeout_s: float = 15.0, interval_s: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval_s)
        return last

    def receipt(self, request_id: str) -> dict[str, Any] | None:
        r = self.get(f"/receipts/{request_id}")
        return r.json() if r.status_code == 200 else None

    def stats(self) -> dict[str, Any]:
        return self.get("/stats").json()


# --------------------------------------------------------------------------- a throwaway PostgreSQL cluster


class PostgresCluster:
    """Debian's PostgreSQL, initdb'd into a temporary directory and listening on a loopback port only.

    As root, initdb and pg_ctl run as the ``postgres`` user (they refuse root). Each test gets its own database.
    """

    def __init__(self, base: Path) -> None:
        import glob
        import shutil as _shutil

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        found = bins[-1] if bins else _shutil.which("initdb")
        if not found:
            raise RuntimeError("PostgreSQL is not installed (initdb not found): run scripts/install-test-deps.sh")
        self.bin = Path(found).parent
        self.base = base
        self.data = base / "data"
        self.port = free_port()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(base, pw.pw_uid, pw.pw_gid)
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"
        )
        opts = f"-p {self.port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60"
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            opts,
            "-l",
            str(base / "postgres.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        self._n = 0

    def _run(self, *cmd: str) -> None:
        out = subprocess.run([*self._as, *cmd], capture_output=True, text=True, timeout=120, cwd=str(self.base))
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip() or out.stdout.strip()}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        self._n += 1
        name = f"t{os.getpid()}_{self._n}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        except RuntimeError:
            pass


# --------------------------------------------------------------------------- a sender process (the fault test runs it)


def send_main(argv: Sequence[str]) -> int:
    """Send ``--decisions`` decisions in exports of ``--spans-per-export`` spans that cut across decisions,
    alternating OTLP/HTTP and OTLP/gRPC exporters, retrying an export until it is acknowledged. Every
    decision whose spans were all acknowledged is appended to ``--out`` (JSON lines of its expected receipt)."""
    import argparse
    import json

    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    from unhardcoded.receipts import Receipt
    from unhardcoded.semconv import attributes as A

    ap = argparse.ArgumentParser()
    ap.add_argument("--http", required=True)
    ap.add_argument("--grpc", required=True)
    ap.add_argument("--decisions", type=int, default=300)
    ap.add_argument("--spans-per-export", type=int, default=13)
    ap.add_argument("--pause", type=float, default=0.05)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=21)
    args = ap.parse_args(list(argv))

    ds, spans = decisions_with_spans(args.decisions, seed=args.seed, prefix="fault")
    by_id = {d.request_id: d for d in ds}
    left = {
        d.request_id: sum(1 for s in spans if s.attributes.get(A.UNHARDCODED_REQUEST_ID) == d.request_id) for d in ds
    }
    exporters = [
        HttpExporter(endpoint=args.http + "/v1/traces", timeout=5),
        GrpcExporter(endpoint=args.grpc, insecure=True, timeout=5),
    ]
    deadline = time.monotonic() + 120
    with open(args.out, "a", encoding="utf-8") as out:
        for n, i in enumerate(range(0, len(spans), args.spans_per_export)):
            batch = spans[i : i + args.spans_per_export]
            while exporters[n % 2].export(batch) != SpanExportResult.SUCCESS:
                if time.monotonic() > deadline:
                    print("sender: gave up", file=sys.stderr)
                    return 1
                time.sleep(0.2)
            for s in batch:
                rid = s.attributes.get(A.UNHARDCODED_REQUEST_ID)
                left[rid] -= 1
                if left[rid] == 0:
                    out.write(json.dumps(Receipt.from_decision(by_id[rid]).to_json_dict()) + "\n")
            out.flush()
            time.sleep(args.pause)
    for e in exporters:
        e.shutdown()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["send"]:
        sys.exit(send_main(sys.argv[2:]))
    sys.exit("usage: processor_fixtures.py send --http URL --grpc HOST:PORT --out FILE")
