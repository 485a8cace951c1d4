"""How much latency the unhardcoded proxy adds over calling a provider directly, next to the LiteLLM proxy.

A fast OpenAI-compatible provider (a minimal ASGI app on uvicorn) runs on
loopback in its own process. The same requests go to it directly, through
`unhardcoded` (telemetry on: SDK, BatchSpanProcessor to a no-op exporter,
decision metrics) and, when it can be started, through the LiteLLM proxy. An
open-loop load generator in its own process sends a bounded number of requests
at a fixed rate (50 and 200 requests/s) and records each latency; the table
prints p50 and p99 and what each proxy adds over the direct call.

    python bench/proxy.py                       # 10 s per rate and target
    python bench/proxy.py --seconds 5 --litellm /path/to/venv/bin/litellm

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

HERE = Path(__file__).resolve()
MODEL = "gemini-3.5-flash"  # what the shipped `support` policy selects
PROVIDERS = ("openai", "anthropic", "google", "mistral", "deepseek", "xai", "meta", "cohere", "alibaba")
MESSAGES = [{"role": "user", "content": "Where is my parcel? It was due on Tuesday."}]


# --------------------------------------------------------------------------- roles (each in its own process)


def run_provider(port: int) -> None:
    """A minimal OpenAI-compatible provider: a fixed completion, as fast as uvicorn answers."""
    import uvicorn

    answer = json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "It is on its way."},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
    }).encode()
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


def run_unhardcoded(port: int, provider_url: str) -> None:
    """The proxy with telemetry on: spans through a BatchSpanProcessor to an exporter that drops them."""
    import uvicorn
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

    providers = ProvidersConfig(providers=[ProviderConfig(name=n, base_url=provider_url) for n in PROVIDERS])
    app = create_app(Router(Catalog.builtin(), ProviderClient(providers)), default_policy="support")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def _load(url: str, body: dict[str, Any], rate: float, count: int, max_seconds: float) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
        for _ in range(min(50, count)):  # warm the connection pool and the server's caches
            await client.post(url, json=body)
        latencies: list[float] = []
        errors = 0

        async def one() -> None:
            nonlocal errors
            t0 = time.perf_counter()
            try:
                r = await client.post(url, json=body)
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append((time.perf_counter() - t0) * 1000)
            else:
                errors += 1

        tasks = []
        start = time.perf_counter()
        for i in range(count):  # open loop: request i leaves at start + i/rate, whatever came back
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.perf_counter() - start > max_seconds:
                break
            tasks.append(asyncio.create_task(one()))
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max_seconds + 15)
            for task in pending:  # still unanswered when the run's time is up: counted as errors
                task.cancel()
            errors += len(pending)
        return {"latencies": latencies, "errors": errors, "sent": len(tasks),
                "seconds": time.perf_counter() - start}


def run_load(url: str, model: str, rate: float, count: int, max_seconds: float) -> None:
    body = {"model": model, "messages": MESSAGES}
    print(json.dumps(asyncio.run(_load(url, body, rate, count, max_seconds))))


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


def start_litellm(binary: str | None, provider_url: str, port: int, workdir: Path) -> tuple[subprocess.Popen | None, str]:
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
    env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "DISABLE_SCHEMA_UPDATE": "true",
           "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"}
    proc = spawn([exe, "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
                 env=env, cwd=workdir)
    why = wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc, timeout=120)
    if why is not None:
        err = (proc.stderr.read().decode(errors="replace") if proc.poll() is not None and proc.stderr else "")
        stop(proc)
        tail = " ".join(err.strip().splitlines()[-2:])[:300]
        return None, f"litellm proxy did not start: {why}" + (f" ({tail})" if tail else "")
    return proc, ""


def measure(url: str, model: str, rate: float, seconds: float) -> dict[str, Any]:
    count = int(rate * seconds)
    out = subprocess.run(
        [sys.executable, str(HERE), "--role", "load", "--url", url, "--model", model, "--rate", str(rate),
         "--count", str(count), "--seconds", str(seconds * 2)],
        capture_output=True, text=True, timeout=seconds * 2 + 60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[k]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["bench", "provider", "unhardcoded", "load"], default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--provider-url", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--rates", default="50,200", help="requests per second to test (default 50,200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of load per rate and target (default 10)")
    parser.add_argument("--litellm", metavar="PATH", help="the litellm executable (default: litellm on PATH)")
    parser.add_argument("--no-litellm", action="store_true", help="measure only the direct call and unhardcoded")
    args = parser.parse_args(argv)

    if args.role == "provider":
        run_provider(args.port)
        return 0
    if args.role == "unhardcoded":
        run_unhardcoded(args.port, args.provider_url)
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
        ours = spawn([sys.executable, str(HERE), "--role", "unhardcoded", "--port", str(ours_port),
                      "--provider-url", provider_url])
        procs.append(ours)
        why = wait_http(f"http://127.0.0.1:{ours_port}/healthz", ours, 30)
        if why:
            print(f"unhardcoded proxy did not start: {why}", file=sys.stderr)
            return 1
        targets = [
            ("direct", f"{provider_url}/chat/completions", MODEL),
            ("unhardcoded", f"http://127.0.0.1:{ours_port}/v1/chat/completions", "auto"),
        ]
        litellm_note = "skipped (--no-litellm)"
        if not args.no_litellm:
            workdir = Path(tempfile.mkdtemp(prefix="uh-bench-"))
            lite, litellm_note = start_litellm(args.litellm, provider_url, free_port(), workdir)
            if lite is not None:
                procs.append(lite)
                lite_port = lite.args[lite.args.index("--port") + 1]
                targets.append(("litellm", f"http://127.0.0.1:{lite_port}/chat/completions", "bench"))

        results: dict[tuple[str, float], dict[str, Any]] = {}
        for rate in rates:
            for name, url, model in targets:
                print(f"  {name:<12} {rate:>5g} req/s for {args.seconds:g} s ...", file=sys.stderr, flush=True)
                results[(name, rate)] = measure(url, model, rate, args.seconds)
    finally:
        for proc in reversed(procs):
            stop(proc)

    print()
    print(f"Latency added over calling the provider directly (loopback, open loop, {args.seconds:g} s per row; ms)")
    print(f"{'target':<12} {'rate':>6} {'sent':>6} {'errors':>6} {'p50':>8} {'p99':>8} {'+p50':>8} {'+p99':>8}")
    for rate in rates:
        base = results[("direct", rate)]["latencies"]
        b50, b99 = pct(base, 50), pct(base, 99)
        for name, _, _ in targets:
            r = results[(name, rate)]
            lat = r["latencies"]
            p50, p99 = pct(lat, 50), pct(lat, 99)
            add50 = "" if name == "direct" else f"{p50 - b50:8.2f}"
            add99 = "" if name == "direct" else f"{p99 - b99:8.2f}"
            print(f"{name:<12} {rate:>6g} {r['sent']:>6} {r['errors']:>6} {p50:8.2f} {p99:8.2f} {add50:>8} {add99:>8}")
    if not any(name == "litellm" for name, _, _ in targets):
        print(f"\nLiteLLM: {litellm_note}")
    print("\ntargets: p50 +1 ms and p99 +5 ms at most at 200 req/s; below LiteLLM at both rates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
