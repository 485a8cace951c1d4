"""otelcol-loadbalancing.yaml: spans routed by trace id to several receipts processors.

Two real `unhardcoded processor` instances behind the first-tier Collector;
every decision's receipt is complete in exactly one of them, and both get work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from .infra import http_get, start_collector, start_processor, wait_for

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent


def test_every_trace_lands_whole_on_one_processor(tmp_path):
    with ExitStack() as stack:
        procs = []
        for i in range(2):
            d = tmp_path / f"p{i}"
            d.mkdir()
            p, urls = start_processor(d)
            stack.callback(p.stop)
            procs.append(urls)
        endpoints = "[" + ", ".join(u["grpc"] for u in procs) + "]"
        collector, c = start_collector(
            tmp_path,
            "unused:1",
            "unused:1",
            config="otelcol-loadbalancing.yaml",
            extra_env={"UNHARDCODED_PROCESSOR_GRPC_ENDPOINTS": endpoints},
        )
        stack.callback(collector.stop)

        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        r = subprocess.run(
            [
                sys.executable,
                str(HERE / "send_decisions.py"),
                "--endpoint",
                c["otlp_grpc"],
                "--service",
                "e2e-lb",
                "--plain",
                "30",
                "--fallback",
                "10",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert r.returncode == 0, r.stderr
        sent = json.loads(r.stdout)
        decisions = sent["plain"] + sent["fallback"]

        def where(rid: str) -> list[int]:
            return [i for i, u in enumerate(procs) if http_get(f"{u['http']}/receipts/{rid}")[0] == 200]

        per_processor = [0, 0]
        for d in decisions:
            holders = wait_for(f"{d['request_id']} on a processor", lambda: where(d["request_id"]), timeout=30)
            assert len(holders) == 1, f"{d['request_id']} on processors {holders}"
            status, body = http_get(f"{procs[holders[0]]['http']}/receipts/{d['request_id']}")
            receipt = json.loads(body)["receipt"]
            assert receipt["complete"] is True and receipt["trace_id"] == d["trace_id"]
            assert len(receipt["attempts"]) == (2 if d in sent["fallback"] else 1)
            per_processor[holders[0]] += 1
        assert all(n > 0 for n in per_processor), per_processor
