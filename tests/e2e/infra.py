"""Real backends for the e2e tests: find the binaries, pick loopback ports, start and stop processes.

A missing binary is a test FAILURE naming the command that builds it; never a skip.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "collector-config"
INSTALL = "scripts/install-infra.sh"

BINARIES = {
    # name: (env var from infra.env, install-infra.sh target)
    "otelcol-unhardcoded": ("UNHARDCODED_OTELCOL_BIN", "collector"),
    "jaeger": ("UNHARDCODED_JAEGER_BIN", "jaeger"),
    "tempo": ("UNHARDCODED_TEMPO_BIN", "tempo"),
    "prometheus": ("UNHARDCODED_PROMETHEUS_BIN", "prometheus"),
    "promtool": ("UNHARDCODED_PROMTOOL_BIN", "prometheus"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("UNHARDCODED_CACHE") or Path.home() / ".cache" / "unhardcoded")


def binary(name: str) -> str:
    """Path of an infrastructure binary, or fail the test with how to build it."""
    env, target = BINARIES[name]
    candidates = [os.environ.get(env), str(cache_dir() / "bin" / name)]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    pytest.fail(
        f"{name} not found (looked at ${env} and {cache_dir() / 'bin' / name}); build it with: {INSTALL} {target}",
        pytrace=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=CONFIG_DIR
    )


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Process:
    """A backend process with its log file; stopped by :meth:`stop` (TERM, then KILL)."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.cmd, self.log_path = name, cmd, log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=CONFIG_DIR,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, check: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode}: {shlex.join(self.cmd)}\n{self.log_tail()}"
                )
            try:
                if check():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.name} not ready after {timeout}s: {shlex.join(self.cmd)}\n{self.log_tail()}")

    def stop(self, grace: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def url_ok(url: str, expect: bytes | None = None) -> Callable[[], bool]:
    def check() -> bool:
        status, body = http_get(url, timeout=1.0)
        return status == 200 and (expect is None or expect in body)

    return check


def start_jaeger(tmp: Path) -> tuple[Process, dict[str, str]]:
    ports = {k: free_port() for k in ("health", "http", "grpc", "otlp_grpc", "otlp_http")}
    env = {
        "UNHARDCODED_JAEGER_HEALTH_ENDPOINT": f"127.0.0.1:{ports['health']}",
        "UNHARDCODED_JAEGER_QUERY_HTTP_ENDPOINT": f"127.0.0.1:{ports['http']}",
        "UNHARDCODED_JAEGER_QUERY_GRPC_ENDPOINT": f"127.0.0.1:{ports['grpc']}",
        "UNHARDCODED_JAEGER_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{ports['otlp_grpc']}",
        "UNHARDCODED_JAEGER_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{ports['otlp_http']}",
    }
    p = Process("jaeger", [binary("jaeger"), "--config", str(CONFIG_DIR / "jaeger.yaml")], tmp / "jaeger.log", env)
    try:
        p.wait_ready(url_ok(f"http://127.0.0.1:{ports['health']}/status", b"StatusOK"))
        p.wait_ready(url_ok(f"http://127.0.0.1:{ports['http']}/api/services"))
    except BaseException:
        p.stop()
        raise
    return p, {"query": f"http://127.0.0.1:{ports['http']}", "otlp_grpc": env["UNHARDCODED_JAEGER_OTLP_GRPC_ENDPOINT"]}


def start_prometheus(tmp: Path) -> tuple[Process, int]:
    """Prometheus on a free loopback port, reading ``tmp/prometheus.yml`` (and what it names), its data under
    ``tmp/tsdb``; returns it once ready, with its port."""
    port = free_port()
    p = Process(
        "prometheus",
        [
            binary("prometheus"),
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp / "prometheus.log",
    )
    try:
        p.wait_ready(url_ok(f"http://127.0.0.1:{port}/-/ready"), timeout=30)
    except BaseException:
        p.stop()
        raise
    return p, port


def start_tempo(tmp: Path) -> tuple[Process, dict[str, str]]:
    ports = {k: free_port() for k in ("http", "grpc", "memberlist", "otlp_grpc", "otlp_http")}
    data = tmp / "tempo-data"
    data.mkdir(exist_ok=True)
    env = {
        "UNHARDCODED_TEMPO_DIR": str(data),
        "UNHARDCODED_TEMPO_HTTP_PORT": str(ports["http"]),
        "UNHARDCODED_TEMPO_GRPC_PORT": str(ports["grpc"]),
        "UNHARDCODED_TEMPO_MEMBERLIST_PORT": str(ports["memberlist"]),
        "UNHARDCODED_TEMPO_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{ports['otlp_grpc']}",
        "UNHARDCODED_TEMPO_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{ports['otlp_http']}",
    }
    cmd = [binary("tempo"), f"-config.file={CONFIG_DIR / 'tempo.yaml'}", "-config.expand-env=true"]
    p = Process("tempo", cmd, tmp / "tempo.log", env)
    try:
        p.wait_ready(url_ok(f"http://127.0.0.1:{ports['http']}/ready", b"ready"), timeout=45)
    except BaseException:
        p.stop()
        raise
    return p, {"http": f"http://127.0.0.1:{ports['http']}", "otlp_grpc": env["UNHARDCODED_TEMPO_OTLP_GRPC_ENDPOINT"]}


def start_processor(tmp: Path) -> tuple[Process, dict[str, str]]:
    """The receipts processor service (`unhardcoded processor`), its store in tmp."""
    import sys

    http, grpc = free_port(), free_port()
    cmd = [
        sys.executable,
        "-m",
        "unhardcoded.cli",
        "processor",
        "--port",
        str(http),
        "--grpc-port",
        str(grpc),
        "--store",
        str(tmp / "processor.db"),
        "--wait-window",
        "1",
        "--no-access-log",
    ]
    env = {k: "" for k in os.environ if k.startswith("OTEL_")}
    p = Process("processor", cmd, tmp / "processor.log", env)
    try:
        p.wait_ready(url_ok(f"http://127.0.0.1:{http}/healthz"))
    except BaseException:
        p.stop()
        raise
    return p, {"http": f"http://127.0.0.1:{http}", "grpc": f"127.0.0.1:{grpc}"}


def start_proxy(
    tmp: Path, providers: list[dict[str, object]], otlp_grpc: str, *, service: str, default_policy: str = "support"
) -> tuple[Process, str]:
    """`unhardcoded serve` exporting traces and metrics over OTLP/gRPC to ``otlp_grpc``; its own store in tmp.

    Spans leave within 0.2 s and metrics every 0.5 s, so tests need not wait the SDK's defaults.
    """
    import json
    import sys

    port = free_port()
    providers_file = tmp / "providers.json"
    providers_file.write_text(json.dumps({"providers": providers}))
    home = tmp / "proxy-home"
    home.mkdir(exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "unhardcoded.cli",
        "serve",
        "--port",
        str(port),
        "--providers",
        str(providers_file),
        "--default-policy",
        default_policy,
        "--store",
        str(tmp / "proxy.db"),
        "--no-access-log",
    ]
    env = {k: "" for k in os.environ if k.startswith("OTEL_")}
    env.update(
        {
            "UNHARDCODED_HOME": str(home),
            "OTEL_SERVICE_NAME": service,
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_grpc,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
        }
    )
    p = Process("proxy", cmd, tmp / "proxy.log", env)
    try:
        p.wait_ready(url_ok(f"http://127.0.0.1:{port}/healthz"))
    except BaseException:
        p.stop()
        raise
    return p, f"http://127.0.0.1:{port}"


def start_collector(
    tmp: Path,
    jaeger_otlp: str,
    tempo_otlp: str,
    *,
    config: str = "otelcol.yaml",
    extra_env: dict[str, str] | None = None,
    extra_configs: list[Path] | None = None,
) -> tuple[Process, dict[str, str]]:
    ports = {k: free_port() for k in ("health", "grpc", "http", "prom", "processor")}
    env = {
        "UNHARDCODED_OTELCOL_HEALTH_ENDPOINT": f"127.0.0.1:{ports['health']}",
        "UNHARDCODED_OTELCOL_GRPC_ENDPOINT": f"127.0.0.1:{ports['grpc']}",
        "UNHARDCODED_OTELCOL_HTTP_ENDPOINT": f"127.0.0.1:{ports['http']}",
        "UNHARDCODED_OTELCOL_PROMETHEUS_ENDPOINT": f"127.0.0.1:{ports['prom']}",
        "UNHARDCODED_JAEGER_OTLP_ENDPOINT": jaeger_otlp,
        "UNHARDCODED_TEMPO_OTLP_ENDPOINT": tempo_otlp,
        # nothing listens here in these tests: the receipts pipeline just retries
        "UNHARDCODED_PROCESSOR_ENDPOINT": f"http://127.0.0.1:{ports['processor']}",
        "UNHARDCODED_TAIL_DECISION_WAIT": "2s",
        "UNHARDCODED_SPANMETRICS_FLUSH": "1s",
        "UNHARDCODED_OTELCOL_BATCH_TIMEOUT": "200ms",
        **(extra_env or {}),
    }
    cmd = [binary("otelcol-unhardcoded"), "--config", str(CONFIG_DIR / config)]
    for extra in extra_configs or ():  # merged over the shipped file: maps merge, later files win
        cmd += ["--config", str(extra)]
    p = Process("otelcol", cmd, tmp / "otelcol.log", env)
    try:
        p.wait_ready(url_ok(f"http://127.0.0.1:{ports['health']}/"))
    except BaseException:
        p.stop()
        raise
    return p, {
        "otlp_grpc": f"http://127.0.0.1:{ports['grpc']}",
        "otlp_http": f"http://127.0.0.1:{ports['http']}",
        "metrics": f"http://127.0.0.1:{ports['prom']}/metrics",
        "prom_target": f"127.0.0.1:{ports['prom']}",
    }


def wait_for(what: str, fn: Callable[[], object], timeout: float = 30.0, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
