"""How much latency the unhardcoded proxy adds over calling a provider directly, next to the LiteLLM proxy.

A fast OpenAI-compatible provider (a minimal ASGI app on uvicorn) runs on
loopback in its own process. The same requests go to it directly, through
`unhardcoded` (run as `unhardcoded serve` runs it, telemetry on: SDK,
BatchSpanProcessor to a no-op exporter, decision metrics; access log on) and, when it can be
started, through the LiteLLM proxy. An open-loop load generator in its own
process sends a bounded number of requests at a fixed rate (50 and 200
requests/s) and records each latency; the table prints p50 and p99, what each
proxy adds over the direct call, and the CPU each server process spent per
request (a figure the machine's other load disturbs far less than latency).

The load generator writes pre-encoded requests on raw keep-alive connections
and parses answers with httptools, so it costs the shared CPUs little and the
direct baseline is the provider's own latency, not a client library's. Each
target's time is split into rounds taken in turn with the other targets', so a
change of machine load falls on all of them, and each run starts once every
server is idle (a saturated proxy works through its backlog after its load
generator has gone); the load average is printed with the table.

    python bench/proxy.py                       # 10 s per rate and target
    python bench/proxy.py --seconds 5 --litellm /path/to/venv/bin/litellm
    python bench/proxy.py --floor               # also a bare forwarder: what any Python proxy adds here
    python bench/proxy.py --compare ../old/src  # also another tree's proxy, for a before/after in one run
    python bench/proxy.py --state redis://127.0.0.1:6379/0  # a budgeted policy, spending in-process vs in Redis

LiteLLM is looked up as `litellm` on PATH unless --litellm names it; install it
in a venv of its own (`python -m venv v && v/bin/pip install 'litellm[proxy]'`)
so its pins do not touch this environment. Loopback only; every loop is bounded.
This is a script, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httptools

HERE = Path(__file__).resolve()
MODEL = "gemini-3.5-flash"  # what the shipped `support` policy selects
PROVIDERS = ("openai", "anthropic", "google", "mistral", "deepseek", "xai", "meta", "cohere", "alibaba")
MESSAGES = [{"role": "user", "content": "Where is my parcel? It was due on Tuesday."}]


# --------------------------------------------------------------------------- roles (each in its own process)


def run_provider(port: int) -> None:
    """A minimal OpenAI-compatible provider: a fixed completion, as fast as uvicorn answers."""
    import uvicorn

    answer = json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "It is on its way."},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class _Answer:
    """A whole response from a library client, as the provider client reads one."""

    __slots__ = ("headers", "status_code", "text")

    def __init__(self, status: int, headers: dict[str, str], content: bytes) -> None:
        self.status_code = status
        self.headers = headers
        self.text = content.decode("utf-8", errors="replace")

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300


class HttpcoreSender:
    """httpx's own transport (``httpcore.AsyncConnectionPool``) without the httpx Client layers, with httpx's limits."""

    def __init__(self) -> None:
        import httpcore
        import httpx

        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
        )

    async def send(self, url: str, headers: Any, content: bytes, timeout: float) -> _Answer:
        response = await self._pool.request(
            "POST",
            url,
            headers=list(headers.items()),
            content=content,
            extensions={"timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}},
        )
        names = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers}
        return _Answer(response.status, names, response.content)

    async def aclose(self) -> None:
        await self._pool.aclose()


class AiohttpSender:
    """aiohttp's client session, pooled like the others (100 connections, 5 s keep-alive)."""

    def __init__(self) -> None:
        self._session: Any = None

    async def send(self, url: str, headers: Any, content: bytes, timeout: float) -> _Answer:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=5.0), auto_decompress=True
            )
        async with self._session.post(
            url, data=content, headers=headers, timeout=aiohttp.ClientTimeout(sock_read=timeout, sock_connect=timeout)
        ) as response:
            body = await response.read()
            names = {k.lower(): v for k, v in response.headers.items()}
            return _Answer(response.status, names, body)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


CLIENTS = ("lean", "httpcore", "aiohttp")


def run_unhardcoded(port: int, provider_url: str, client: str = "lean", state: str | None = None) -> None:
    """The proxy with telemetry on (spans through a BatchSpanProcessor to an exporter that drops them) and its access
    log, as ``unhardcoded serve`` runs by default; ``client`` picks the HTTP client of its async provider calls.
    ``state`` (``memory`` or a ``redis://`` URL): the shipped support policy gets a budget (never spent), so every
    request reserves and settles its cost in that state, as ``serve --state`` does."""
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))

    from unhardcoded.catalog import Catalog
    from unhardcoded.router import Router
    from unhardcoded.router.providers import ProviderClient, ProviderConfig, ProvidersConfig
    from unhardcoded.server import create_app

    try:
        from unhardcoded.cli.serve import run_server
    except ImportError:  # a tree from before the cli package, run by --compare
        from unhardcoded.server.commands import run_server  # type: ignore[no-redef]  # same function, old home

    providers = ProvidersConfig(providers=[ProviderConfig(name=n, base_url=provider_url) for n in PROVIDERS])
    if client == "lean":
        provider_client = ProviderClient(providers)  # as `unhardcoded serve` builds it (and as older trees take it)
    else:
        sender = HttpcoreSender() if client == "httpcore" else AiohttpSender()
        provider_client = ProviderClient(providers, async_sender=sender)
    if state is None:
        app = create_app(Router(Catalog.builtin(), provider_client), default_policy="support")
    else:
        from unhardcoded.policy import load_policy
        from unhardcoded.policy.builtin import builtin_policy_dir
        from unhardcoded.server.state import open_state

        text = (builtin_policy_dir() / "support.yaml").read_text() + "budget: {usd: 1000000000, window: 24h}\n"
        app = create_app(
            Router(Catalog.builtin(), provider_client),
            [load_policy(text)],
            default_policy="support",
            state=open_state(None if state == "memory" else state),
        )
    run_server(app, "127.0.0.1", port)  # as `unhardcoded serve` runs it: access log on, to stdout


def run_floor(port: int, provider_url: str) -> None:
    """The least a Python proxy here can add: a bare ASGI app on the same uvicorn, forwarding each body to the
    provider with the proxy's own HTTP client and sending the answer back; no routing, no telemetry, no log."""
    import uvicorn

    from unhardcoded.router.providers import http11

    target = http11.target_of(provider_url + "/chat/completions")
    pools: list[Any] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if not pools:
            pools.append(http11.ConnectionPool())
        reply = await pools[0].request(target, b"content-type: application/json\r\n", body, 10.0, read=True)
        data = reply.content
        await send(
            {
                "type": "http.response.start",
                "status": reply.status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": data})

    uvicorn.run(
        app, host="127.0.0.1", port=port, access_log=False, log_level="warning", lifespan="off", server_header=False
    )


class _Client(asyncio.Protocol):
    """One keep-alive connection of the load generator: writes the request, times it to the answer's last byte."""

    def __init__(self, load: _Load) -> None:
        self.load = load
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0
        self.busy = False
        self.status = 0
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes) -> None:
        self.busy = True
        self.status = 0
        self.sent_at = time.perf_counter()
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.load.failed(self)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_message_complete(self) -> None:
        elapsed = time.perf_counter() - self.sent_at
        self.busy = False
        self.load.answered(self, elapsed, self.status, self.parser.should_keep_alive())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.load.lost(self)


class _Load:
    """An open-loop load generator on raw keep-alive connections: little CPU of its own, so the figures are the
    servers'. Request i leaves at start + i/rate whatever came back; a latency runs from the write of the request
    to the parse of the answer's last byte (plus the connect, when no idle connection was free)."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        payload = json.dumps(body).encode()
        self.request = (
            f"POST {parts.path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\nuser-agent: bench\r\n\r\n"
        ).encode() + payload
        self.idle: list[_Client] = []
        self.latencies: list[float] = []
        self.errors = 0
        self.in_flight = 0
        self.all_done: asyncio.Future[None] | None = None
        # The event loop keeps only weak references to tasks: a connect in flight is held here until it ends.
        self.connecting: set[asyncio.Task[None]] = set()

    async def connect(self) -> _Client:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(lambda: _Client(self), self.host, self.port)
        return client

    def fire(self) -> None:
        self.in_flight += 1
        now = time.perf_counter()
        while self.idle:
            client = self.idle.pop()  # the most recently used: keep few connections warm
            if client.transport is not None and now - client.idle_since < 4.0:  # servers drop idle ones at 5 s
                client.send(self.request)
                return
            if client.transport is not None:
                client.transport.close()
        task = asyncio.ensure_future(self._fire_new(now))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    async def _fire_new(self, t0: float) -> None:
        try:
            client = await self.connect()
        except OSError:
            self._finish(None, False)
            return
        client.send(self.request)
        client.sent_at = t0  # the connect is part of this request's wait

    def answered(self, client: _Client, elapsed: float, status: int, keep_alive: bool) -> None:
        if keep_alive:
            client.idle_since = time.perf_counter()
            self.idle.append(client)
        elif client.transport is not None:
            client.transport.close()
        self._finish(elapsed * 1000 if status == 200 else None, True)

    def failed(self, client: _Client) -> None:
        if client.transport is not None:
            client.transport.close()  # connection_lost counts it

    def lost(self, client: _Client) -> None:
        if client in self.idle:
            self.idle.remove(client)
        if client.busy:
            client.busy = False
            self._finish(None, True)

    def _finish(self, latency_ms: float | None, _: bool) -> None:
        self.in_flight -= 1
        if latency_ms is None:
            self.errors += 1
        else:
            self.latencies.append(latency_ms)
        if self.in_flight == 0 and self.all_done is not None and not self.all_done.done():
            self.all_done.set_result(None)

    async def one(self) -> None:
        """A request on its own (the warm-up), awaited."""
        self.all_done = asyncio.get_running_loop().create_future()
        self.fire()
        await self.all_done


async def _load(url: str, body: dict[str, Any], rate: float, count: int, max_seconds: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    load = _Load(url, body)
    # Warm the servers' caches and open a few connections, as a client's pool would hold them.
    warm = [await load.connect() for _ in range(4)]
    for client in warm:
        client.idle_since = time.perf_counter()
    load.idle.extend(warm)
    for _ in range(min(50, count)):
        await load.one()
    load.latencies.clear()
    load.errors = 0
    load.all_done = None
    start = time.perf_counter()
    base = loop.time()
    sent = 0
    for i in range(count):  # open loop: the schedule is fixed up front, and the loop does nothing else
        if i / rate > max_seconds:
            break
        loop.call_at(base + i / rate, load.fire)
        sent += 1
    await asyncio.sleep(max(0.0, (sent - 1) / rate))
    load.all_done = loop.create_future()
    if load.in_flight:
        try:
            await asyncio.wait_for(load.all_done, timeout=15)
        except TimeoutError:
            pass
    unanswered = load.in_flight  # still waiting when the run's time is up: counted as errors
    for client in list(load.idle):
        if client.transport is not None:
            client.transport.close()
    return {
        "latencies": load.latencies,
        "errors": load.errors + unanswered,
        "sent": sent,
        "seconds": time.perf_counter() - start,
    }


def run_load(url: str, model: str, rate: float, count: int, max_seconds: float) -> None:
    body = {"model": model, "messages": MESSAGES}
    try:
        from uvloop import new_event_loop as loop_factory
    except ImportError:
        loop_factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        print(json.dumps(runner.run(_load(url, body, rate, count, max_seconds))))


# --------------------------------------------------------------------------- orchestration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen, timeout: float) -> str | None:
    """None when ``url`` answers; else why not."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with status {proc.returncode}"
        try:
            httpx.get(url, timeout=1.0)
            return None
        except httpx.HTTPError:
            time.sleep(0.2)
    return f"not answering after {timeout:g} s"


def spawn(args: list[str], **kwargs: Any) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, **kwargs)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_litellm(
    binary: str | None, provider_url: str, port: int, workdir: Path
) -> tuple[subprocess.Popen | None, str]:
    exe = binary or shutil.which("litellm")
    if exe is None:
        return None, "litellm not found (pip install 'litellm[proxy]' in a venv, then --litellm PATH)"
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: bench\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {provider_url}\n"
        "      api_key: unused\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  set_verbose: false\n"
    )
    # Loopback only and no auth, like the unhardcoded proxy here: the flag LiteLLM asks for to run without a master key.
    env = {
        **os.environ,
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "DISABLE_SCHEMA_UPDATE": "true",
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    }
    proc = spawn(
        [exe, "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        env=env,
        cwd=workdir,
    )
    why = wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc, timeout=120)
    if why is not None:
        err = proc.stderr.read().decode(errors="replace") if proc.poll() is not None and proc.stderr else ""
        stop(proc)
        tail = " ".join(err.strip().splitlines()[-2:])[:300]
        return None, f"litellm proxy did not start: {why}" + (f" ({tail})" if tail else "")
    return proc, ""


def cpu_seconds(pgid: int) -> float:
    """User + system CPU time of every process in the group ``pgid`` (a server and any workers it forked)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ..., utime (12), stime (13)
            total += int(fields[11]) + int(fields[12])
    return total / tick


def measure(url: str, model: str, rate: float, seconds: float, server: int) -> dict[str, Any]:
    """One open-loop run; ``server`` is the process group whose CPU the run is charged to."""
    count = int(rate * seconds)
    cpu0 = cpu_seconds(server)
    out = subprocess.run(
        [
            sys.executable,
            str(HERE),
            "--role",
            "load",
            "--url",
            url,
            "--model",
            model,
            "--rate",
            str(rate),
            "--count",
            str(count),
            "--seconds",
            str(seconds * 2),
        ],
        capture_output=True,
        text=True,
        timeout=seconds * 2 + 60,
        check=False,  # a failure is raised below, with the generator's stderr
    )
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr.strip()[-500:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["cpu_s"] = cpu_seconds(server) - cpu0  # the warm-up's 50 requests included
    result["counted"] = result["sent"] + min(50, count)
    return result


def settle(groups: list[int], *, idle_share: float = 0.05, limit_s: float = 60.0) -> None:
    """Wait until every server is idle: a saturated one is still working through its backlog after its load
    generator has gone, and would take CPU from the next target's run."""
    deadline = time.monotonic() + limit_s
    time.sleep(0.5)
    while time.monotonic() < deadline:
        before = sum(cpu_seconds(g) for g in groups)
        time.sleep(0.5)
        if sum(cpu_seconds(g) for g in groups) - before <= 0.5 * idle_share:
            return


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"latencies": [], "errors": 0, "sent": 0, "cpu_s": 0.0, "counted": 0}
    for run in runs:
        out["latencies"] += run["latencies"]
        for key in ("errors", "sent", "cpu_s", "counted"):
            out[key] += run[key]
    return out


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--role", choices=["bench", "provider", "unhardcoded", "floor", "load"], default="bench", help=argparse.SUPPRESS
    )
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--provider-url", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--state-url", help=argparse.SUPPRESS)
    parser.add_argument("--rates", default="50,200", help="requests per second to test (default 50,200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of load per rate and target (default 10)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="split each target's seconds into this many runs, taken in turn with the other "
        "targets', so a change of machine load falls on all of them (default 3)",
    )
    parser.add_argument("--litellm", metavar="PATH", help="the litellm executable (default: litellm on PATH)")
    parser.add_argument("--no-litellm", action="store_true", help="measure only the direct call and unhardcoded")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also run a bare ASGI forwarder on the same uvicorn with the same HTTP client (no routing, "
        "no telemetry): what any Python proxy adds on this machine",
    )
    parser.add_argument(
        "--compare",
        metavar="SRC",
        action="append",
        default=[],
        help="also run the unhardcoded of another source tree (its src/ directory, e.g. a git worktree "
        "of an older commit) as a target of its own, for a before/after in one run; repeatable",
    )
    parser.add_argument(
        "--client",
        default="",
        help="HTTP clients of the proxy's async provider calls to compare, comma separated, from "
        f"{', '.join(CLIENTS)}: one proxy per client in the same run (lean always among them), each round's "
        "+p50/+p99 and CPU per request, their medians and the deltas against lean",
    )
    parser.add_argument(
        "--state",
        metavar="URL",
        help="also run two proxies routing under a budgeted support policy: one counting spending in-process "
        "(uh-budget) and one in the shared state at URL (uh-state, e.g. redis://127.0.0.1:6379/0), and print what "
        "the shared state adds",
    )
    args = parser.parse_args(argv)
    clients = [c.strip() for c in args.client.split(",") if c.strip()]
    unknown = [c for c in clients if c not in CLIENTS]
    if unknown:
        parser.error(f"--client: unknown client(s) {', '.join(unknown)} (choose from {', '.join(CLIENTS)})")

    if args.role == "provider":
        run_provider(args.port)
        return 0
    if args.role == "unhardcoded":
        run_unhardcoded(args.port, args.provider_url, clients[0] if clients else "lean", args.state_url)
        return 0
    if args.role == "floor":
        run_floor(args.port, args.provider_url)
        return 0
    if args.role == "load":
        run_load(args.url, args.model, args.rate, args.count, args.seconds)
        return 0

    procs: list[subprocess.Popen] = []
    rates = [float(r) for r in args.rates.split(",")]
    try:
        provider_port, ours_port = free_port(), free_port()
        provider = spawn([sys.executable, str(HERE), "--role", "provider", "--port", str(provider_port)])
        procs.append(provider)
        provider_url = f"http://127.0.0.1:{provider_port}/v1"
        why = wait_http(f"http://127.0.0.1:{provider_port}/", provider, 20)
        if why:
            print(f"provider did not start: {why}", file=sys.stderr)
            return 1
        ours = spawn(
            [
                sys.executable,
                str(HERE),
                "--role",
                "unhardcoded",
                "--port",
                str(ours_port),
                "--provider-url",
                provider_url,
            ]
        )
        procs.append(ours)
        why = wait_http(f"http://127.0.0.1:{ours_port}/healthz", ours, 30)
        if why:
            print(f"unhardcoded proxy did not start: {why}", file=sys.stderr)
            return 1
        targets = [
            ("direct", f"{provider_url}/chat/completions", MODEL),
            ("unhardcoded", f"http://127.0.0.1:{ours_port}/v1/chat/completions", "auto"),
        ]
        servers = {"direct": provider.pid, "unhardcoded": ours.pid}
        extra: list[tuple[str, str, str | None, str | None, str | None]] = (
            [("floor", "floor", None, None, None)] if args.floor else []
        )
        extra += [(f"compare-{n}", "unhardcoded", src, None, None) for n, src in enumerate(args.compare, 1)]
        # The "unhardcoded" target is the lean client; each other client gets a proxy of its own.
        extra += [(f"uh-{c}", "unhardcoded", None, c, None) for c in clients if c != "lean"]
        if args.state:
            extra += [
                ("uh-budget", "unhardcoded", None, None, "memory"),
                ("uh-state", "unhardcoded", None, None, args.state),
            ]
        for name, role, src, client, state in extra:
            port = free_port()
            env = None
            if src is not None:
                env = {
                    **os.environ,
                    "PYTHONPATH": os.pathsep.join([str(Path(src).resolve()), os.environ.get("PYTHONPATH", "")]),
                }
                print(f"{name}: unhardcoded from {src}", file=sys.stderr)
            command = [sys.executable, str(HERE), "--role", role, "--port", str(port), "--provider-url", provider_url]
            command += ["--client", client] if client else []
            command += ["--state-url", state] if state else []
            other = spawn(command, env=env)
            procs.append(other)
            why = wait_http(f"http://127.0.0.1:{port}/healthz", other, 30)
            if why:
                print(f"{name} did not start: {why}", file=sys.stderr)
                return 1
            model = "auto" if src or client or state else MODEL
            targets.append((name, f"http://127.0.0.1:{port}/v1/chat/completions", model))
            servers[name] = other.pid
        litellm_note = "skipped (--no-litellm)"
        if not args.no_litellm:
            workdir = Path(tempfile.mkdtemp(prefix="uh-bench-"))
            lite, litellm_note = start_litellm(args.litellm, provider_url, free_port(), workdir)
            if lite is not None:
                procs.append(lite)
                lite_port = lite.args[lite.args.index("--port") + 1]
                targets.append(("litellm", f"http://127.0.0.1:{lite_port}/chat/completions", "bench"))

        # Each target is charged the CPU of its own server process: the provider's for the direct call.
        if targets[-1][0] == "litellm":
            servers["litellm"] = procs[-1].pid
        load_before = load_average()
        rounds = max(1, args.rounds)
        runs: dict[tuple[str, float], list[dict[str, Any]]] = {}
        for rate in rates:
            for i in range(rounds):
                for name, url, model in targets:
                    print(
                        f"  {name:<12} {rate:>5g} req/s for {args.seconds / rounds:g} s (round {i + 1}/{rounds}) ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    runs.setdefault((name, rate), []).append(
                        measure(url, model, rate, args.seconds / rounds, servers[name])
                    )
                    settle(list(servers.values()))
        load_after = load_average()
    finally:
        for proc in reversed(procs):
            stop(proc)
    results = {key: merge(value) for key, value in runs.items()}

    print()
    print(
        f"Latency added over calling the provider directly (loopback, open loop, {args.seconds:g} s per row in "
        f"{rounds} rounds; ms)"
    )
    print(
        f"{'target':<12} {'rate':>6} {'sent':>6} {'errors':>6} {'p50':>8} {'p99':>8} {'+p50':>8} {'+p99':>8} "
        f"{'cpu/req':>8}"
    )
    for rate in rates:
        base = results[("direct", rate)]["latencies"]
        b50, b99 = pct(base, 50), pct(base, 99)
        for name, _, _ in targets:
            r = results[(name, rate)]
            lat = r["latencies"]
            p50, p99 = pct(lat, 50), pct(lat, 99)
            add50 = "" if name == "direct" else f"{p50 - b50:8.2f}"
            add99 = "" if name == "direct" else f"{p99 - b99:8.2f}"
            cpu = f"{1000 * r['cpu_s'] / r['counted']:8.2f}" if r["counted"] else ""
            print(
                f"{name:<12} {rate:>6g} {r['sent']:>6} {r['errors']:>6} {p50:8.2f} {p99:8.2f} {add50:>8} {add99:>8} "
                f"{cpu:>8}"
            )
    if not any(name == "litellm" for name, _, _ in targets):
        print(f"\nLiteLLM: {litellm_note}")
    print("\ncpu/req: CPU ms per request of the target's own server process (the provider's, for direct)")
    print(f"load average (1, 5, 15 min): {load_before} before, {load_after} after, on {os.cpu_count()} CPUs")
    print("targets: p50 +1 ms and p99 +5 ms at most at 200 req/s; below LiteLLM at both rates")
    if clients:
        print_clients(runs, rates, rounds, [c for c in CLIENTS if c == "lean" or c in clients])
    if args.state:
        print(f"\nshared state {args.state}: a budgeted policy, one reservation per request (ms)")
        for rate in rates:
            base = pct(results[("direct", rate)]["latencies"], 50)
            memory = pct(results[("uh-budget", rate)]["latencies"], 50) - base
            shared = pct(results[("uh-state", rate)]["latencies"], 50) - base
            print(
                f"{rate:>6g} req/s  +p50 in-process {memory:6.2f}  +p50 shared {shared:6.2f}  "
                f"(the shared state adds {shared - memory:+.2f})"
            )
        print("target: +p50 with the shared state at most 1.3 ms at 200 req/s")
    return 0


def print_clients(
    runs: dict[tuple[str, float], list[dict[str, Any]]], rates: list[float], rounds: int, clients: list[str]
) -> None:
    """Each client's proxy round by round (+p50/+p99 over the direct call of the same round, CPU ms per request), the
    median of the rounds, and the medians' deltas against the lean client."""
    names = {c: "unhardcoded" if c == "lean" else f"uh-{c}" for c in clients}
    print("\nHTTP clients of the proxy's provider calls (ms; each round against the direct call of the same round)")
    print(f"{'client':<10} {'rate':>6} {'round':>6} {'+p50':>8} {'+p99':>8} {'cpu/req':>8}")
    medians: dict[tuple[str, float], tuple[float, float, float]] = {}
    for rate in rates:
        direct = runs[("direct", rate)]
        for client in clients:
            rows = []
            for i, run in enumerate(runs[(names[client], rate)]):
                base = direct[i]["latencies"]
                add50 = pct(run["latencies"], 50) - pct(base, 50)
                add99 = pct(run["latencies"], 99) - pct(base, 99)
                cpu = 1000 * run["cpu_s"] / run["counted"] if run["counted"] else float("nan")
                rows.append((add50, add99, cpu))
                errors = f"  ({run['errors']} errors)" if run["errors"] else ""
                print(f"{client:<10} {rate:>6g} {i + 1:>6} {add50:8.3f} {add99:8.3f} {cpu:8.3f}{errors}")
            med = tuple(statistics.median(r[k] for r in rows) for k in range(3))
            medians[(client, rate)] = med  # type: ignore[assignment]
            print(f"{client:<10} {rate:>6g} {'median':>6} {med[0]:8.3f} {med[1]:8.3f} {med[2]:8.3f}")
    print("\nmedians against lean: a library client replaces lean when within 0.1 ms p50 AND 20 % CPU per request")
    print(f"{'client':<10} {'rate':>6} {'d+p50':>8} {'d+p99':>8} {'dcpu':>8} {'cpu %':>7}  verdict")
    for rate in rates:
        lean = medians[("lean", rate)]
        for client in clients:
            if client == "lean":
                continue
            med = medians[(client, rate)]
            d50, d99, dcpu = med[0] - lean[0], med[1] - lean[1], med[2] - lean[2]
            share = 100 * dcpu / lean[2] if lean[2] else float("nan")
            verdict = "within" if d50 <= 0.1 and share <= 20 else "outside"
            print(f"{client:<10} {rate:>6g} {d50:8.3f} {d99:8.3f} {dcpu:8.3f} {share:6.1f}%  {verdict}")


if __name__ == "__main__":
    sys.exit(main())
