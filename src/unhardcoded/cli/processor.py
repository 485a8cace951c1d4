"""`unhardcoded processor`: the receipts processor service (OTLP in, durable receipts out, query API, pages)."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING

from ..errors import ConfigError
from . import CATALOG_ENV, load_catalog_arg

if TYPE_CHECKING:
    from collections.abc import Iterator

    import uvicorn

    from ..receipts.stores import ReceiptStore, Spool
    from . import Subcommands

DEFAULT_HTTP_PORT = 8318
"""OTLP/HTTP, the query API and pages. 4318 + 4000: next to a Collector on 4318 without a clash."""
DEFAULT_GRPC_PORT = 8317
"""OTLP/gRPC. 4317 + 4000, for the same reason."""
DEFAULT_MAX_PENDING_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_QUEUE_BYTES = 64 * 1024 * 1024
SQLITE_SYNCHRONOUS = ("full", "normal")
DEFAULT_SQLITE_SYNCHRONOUS = "full"
"""An acknowledgement tells the exporter it may forget the spans: they must be on disk, not only in the OS's cache."""


def add_commands(sub: Subcommands) -> None:
    p = sub.add_parser(
        "processor",
        help="run the receipts processor: OTLP in (gRPC and HTTP), durable receipts out, query API and receipt pages",
        description="Receive decision spans over OTLP, rebuild receipts, keep them durably, and serve them.",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)"
    )
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_HTTP_PORT,
        help=f"HTTP port: OTLP/HTTP, query API, pages (default {DEFAULT_HTTP_PORT}; 0 picks one)",
    )
    p.add_argument(
        "--grpc-port",
        type=int,
        default=DEFAULT_GRPC_PORT,
        help=f"OTLP/gRPC port (default {DEFAULT_GRPC_PORT}; 0 picks one)",
    )
    p.add_argument("--no-grpc", action="store_true", help="do not listen for OTLP/gRPC")
    p.add_argument(
        "--store",
        metavar="URL",
        help="receipt store: a SQLite path, sqlite:///path or postgresql://... (default $UNHARDCODED_STORE or the per-user store)",
    )
    p.add_argument(
        "--catalog",
        metavar="FILE",
        help="the catalog POST /x/impact decides on when a request names none (default: $UNHARDCODED_CATALOG or "
        "the built-in catalog)",
    )
    p.add_argument(
        "--sqlite-synchronous",
        choices=SQLITE_SYNCHRONOUS,
        default=None,
        help="SQLite stores: 'full' (default) syncs each spool commit to disk before the export is acknowledged, "
        "so an acknowledged export survives a power cut; 'normal' survives a killed process only",
    )
    p.add_argument(
        "--forward",
        metavar="URL",
        help="also send every accepted span, unchanged, to this OTLP endpoint (a Collector, Jaeger, Tempo)",
    )
    p.add_argument(
        "--forward-protocol", choices=("grpc", "http"), default="http", help="protocol for --forward (default http)"
    )
    p.add_argument(
        "--forward-queue-bytes",
        type=int,
        default=64 * 1024 * 1024,
        metavar="N",
        help="exports held for the next hop while it is slow or down; past it new ones are dropped and counted (default 64 MiB)",
    )
    p.add_argument(
        "--forward-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="time limit of one send to the next hop (default 5)",
    )
    p.add_argument(
        "--forward-retry-initial-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="first wait before sending a failed export again; it grows 1.5x per try, with jitter (default 5)",
    )
    p.add_argument(
        "--forward-retry-max-interval",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest wait between two tries (default 30)",
    )
    p.add_argument(
        "--forward-retry-max-elapsed",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="give up on an export (dropped, counted) this long after its first try; 0 never gives up (default 300)",
    )
    p.add_argument(
        "--wait-window",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long a receipt waits for missing spans before it is written incomplete (default 5)",
    )
    p.add_argument(
        "--late-window",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long spans of finished receipts are kept so a late span updates its receipt (default 600)",
    )
    p.add_argument(
        "--max-pending-spans",
        type=int,
        default=100_000,
        metavar="N",
        help="spans held for unfinished receipts; past it the oldest are finished incomplete (default 100000)",
    )
    p.add_argument(
        "--max-pending-bytes",
        type=int,
        default=DEFAULT_MAX_PENDING_BYTES,
        metavar="N",
        help="bytes held in memory for those spans (the spool has the spans); past it the oldest receipts are finished "
        "incomplete (default 256 MiB)",
    )
    p.add_argument(
        "--max-queue-bytes",
        type=int,
        default=DEFAULT_MAX_QUEUE_BYTES,
        metavar="N",
        help="bytes of exports received but not yet stored; past it exports get 429 / RESOURCE_EXHAUSTED; one export "
        "is always taken when none is queued; the HTTP front door holds at most twice this in bodies being read "
        "(default 64 MiB)",
    )
    p.add_argument(
        "--cache-bytes",
        type=int,
        default=None,
        metavar="N",
        help="bytes the memos of decoded span values may hold, all together (default $UNHARDCODED_CACHE_BYTES or 128 MiB)",
    )
    p.add_argument(
        "--cache-item-bytes",
        type=int,
        default=None,
        metavar="N",
        help="a value larger than this is decoded each time it comes, never kept "
        "(default $UNHARDCODED_CACHE_ITEM_BYTES or 64 KiB)",
    )
    p.add_argument(
        "--max-queue-spans",
        type=int,
        default=50_000,
        metavar="N",
        help="spans received but not yet stored (an export not decoded yet counts for its size over the bytes per "
        "span seen so far); past it exports get 429 / RESOURCE_EXHAUSTED (default 50000)",
    )
    p.add_argument("--ingest-token-env", metavar="VAR", help="require 'Authorization: Bearer $VAR' on OTLP exports")
    p.add_argument(
        "--query-token-env", metavar="VAR", help="require 'Authorization: Bearer $VAR' on the query API and pages"
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=16 * 1024 * 1024,
        metavar="N",
        help="largest export accepted, before and after gzip (default 16 MiB); larger gets 413",
    )
    p.add_argument(
        "--instance-id",
        metavar="NAME",
        help="this instance's name in a shared store (default HOSTNAME:PORT); a restart picks up its own pending spans",
    )
    p.add_argument(
        "--public-key",
        metavar="FILE",
        action="append",
        default=[],
        help="the router's public key (PEM), or a directory of *.pub: receipts read are verified with it "
        "(repeatable: keep retired keys for old receipts); see docs/signing.md",
    )
    p.add_argument(
        "--jaeger-url",
        metavar="TEMPLATE",
        help="link receipt and workflow pages to their trace in Jaeger: a URL with {trace_id}, "
        "e.g. http://localhost:16686/trace/{trace_id}",
    )
    p.add_argument(
        "--tempo-url",
        metavar="TEMPLATE",
        help="link receipt and workflow pages to their trace in Grafana (Tempo): a URL with {trace_id}, e.g. a "
        "Grafana Explore link; see docs/console.md",
    )
    p.add_argument("--no-access-log", action="store_true", help="do not log one line per HTTP request")
    p.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"), help="log level (default info)"
    )
    p.set_defaults(run=cmd_processor)


def trace_url_template(value: str | None, flag: str) -> str | None:
    """A trace link template: an http(s) URL naming ``{trace_id}`` once or more; anything else stops the start."""
    if value is None:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(value.replace("{trace_id}", "0"))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{flag} {value[:200]!r}: expected an http:// or https:// URL")
    if "{trace_id}" not in value:
        raise ConfigError(f"{flag} {value[:200]!r}: the URL names no {{trace_id}} to put the trace id in")
    return value


def _server(config: uvicorn.Config) -> uvicorn.Server:
    """A uvicorn server that stops on SIGTERM / SIGINT and then lets :func:`cmd_processor` finish.

    uvicorn raises the signal again once it has stopped, which ends the process on the spot: the
    processor would not write the receipts that are ready, drain the forward queue or flush its
    metrics. Here the signal only stops the server; the clean-up runs and the command exits 0.
    """
    import contextlib
    import signal
    import threading

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server(config)


def _open_backend(url: str | None, sqlite_synchronous: str | None) -> tuple[ReceiptStore, Spool, str]:
    """The receipt store and spool (:func:`unhardcoded.receipts.stores.open_store_and_spool`), the SQLite spool
    at ``sqlite_synchronous``; and how durable an acknowledgement is, for the start-up line.

    The spool is where an export's spans are committed before it is acknowledged, so its ``synchronous``
    setting decides what an acknowledgement survives. It shares the store's connection, so the receipts and
    the marks that their spans are finished are one transaction at that setting: a power cut loses both or
    neither, and receipts lost with their marks are rebuilt from the spool at the next start.
    """
    from ..receipts.stores import is_postgres, open_store_and_spool, store_url

    resolved = store_url(url)
    if is_postgres(resolved):
        if sqlite_synchronous is not None:
            raise ConfigError(
                "--sqlite-synchronous: the store is PostgreSQL; its durability is the server's synchronous_commit"
            )
        store, spool = open_store_and_spool(resolved)
        return store, spool, "postgresql"
    mode = sqlite_synchronous or DEFAULT_SQLITE_SYNCHRONOUS
    store, spool = open_store_and_spool(resolved, synchronous=mode.upper())
    return store, spool, f"sqlite synchronous={mode}"


def _token(var: str | None, flag: str) -> str | None:
    if not var:
        return None
    value = os.environ.get(var, "")
    if not value.strip():
        raise ConfigError(f"{flag} {var}: the variable is not set or empty; export it or drop the flag")
    return value.strip()


def _warn_if_exposed(host: str, ingest_token: str | None, query_token: str | None) -> None:
    """One WARNING line per missing token when the processor listens beyond loopback."""
    from .._wire import is_loopback

    if is_loopback(host):
        return
    log = logging.getLogger("unhardcoded.processor")
    if ingest_token is None:
        log.warning(
            "listening on %s with no ingest token: anyone who reaches it can send spans that become receipts; "
            "set --ingest-token-env VAR",
            host,
        )
    if query_token is None:
        log.warning(
            "listening on %s with no query token: anyone who reaches it can read every receipt; "
            "set --query-token-env VAR",
            host,
        )


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--host {host} --port {port}: cannot listen: {exc.strerror}") from None
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _bound_caches(total: int | None, item: int | None) -> None:
    """The memos' budgets from the flags, else the environment; and large buffers handed back to the OS when freed."""
    from ..receipts import memo

    for flag, value in (("--cache-bytes", total), ("--cache-item-bytes", item)):
        if value is not None and value < 0:
            raise ConfigError(f"{flag} {value}: expected a number of bytes, 0 or more")
    if total is None:
        total = memo.environment_bytes(memo.TOTAL_ENV)
    if item is None:
        item = memo.environment_bytes(memo.ITEM_ENV)
    memo.configure(total, item)
    _fixed_mmap_threshold()


def _fixed_mmap_threshold() -> None:
    """Keep glibc from raising its mmap threshold past 4 MiB: the buffers of a larger export are then mapped
    and unmapped, where glibc would otherwise take them from the heap after the first one is freed, and a heap
    holds on to freed pages. Measured: 20 exports of distinct 10 MiB values left 177 MB more resident without
    this, none with it. Below 4 MiB (exports of a few hundred spans) glibc works as it always does, so the
    buffers of ordinary exports are reused from the heap, not mapped and unmapped each time."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-3, 4 * 1024 * 1024)  # M_MMAP_THRESHOLD, fixed (setting it stops glibc raising it)
    except (OSError, AttributeError):
        pass  # not glibc: its allocator's own policy stands


def cmd_processor(args: argparse.Namespace) -> int:
    import uvicorn

    from ..processor.api import Settings, build_app
    from ..processor.forward import Forwarder, RetryPolicy
    from ..processor.metrics import ProcessorMetrics, configure_meter_provider
    from ..processor.service import ProcessorConfig, ProcessorEngine

    for name, value in (("--wait-window", args.wait_window), ("--late-window", args.late_window)):
        if not value >= 0:
            raise ConfigError(f"{name} {value}: expected seconds, 0 or more")
    for name, value in (
        ("--max-pending-spans", args.max_pending_spans),
        ("--max-pending-bytes", args.max_pending_bytes),
        ("--max-queue-spans", args.max_queue_spans),
        ("--max-queue-bytes", args.max_queue_bytes),
        ("--max-body-bytes", args.max_body_bytes),
    ):
        if value < 1:
            raise ConfigError(f"{name} {value}: expected a positive number")
    _bound_caches(args.cache_bytes, args.cache_item_bytes)
    retry = RetryPolicy(
        initial_interval_s=args.forward_retry_initial_interval,
        max_interval_s=args.forward_retry_max_interval,
        max_elapsed_s=args.forward_retry_max_elapsed,
    )
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    jaeger_url = trace_url_template(args.jaeger_url, "--jaeger-url")
    tempo_url = trace_url_template(args.tempo_url, "--tempo-url")
    public_keys = None
    if args.public_key:
        from ..receipts.verify import PublicKeys

        public_keys = PublicKeys.load(args.public_key)  # an unusable key file stops the start, with the reason
    catalog = None
    if args.catalog or os.environ.get(CATALOG_ENV):
        catalog = load_catalog_arg(args.catalog)  # a bad catalog stops the start, with the reason
    ingest_token = _token(args.ingest_token_env, "--ingest-token-env")
    query_token = _token(args.query_token_env, "--query-token-env")
    _warn_if_exposed(args.host, ingest_token, query_token)
    http_sock = _listen(args.host, args.port)
    http_port = http_sock.getsockname()[1]
    owner = args.instance_id or f"{socket.gethostname()}:{http_port}"

    store, spool, durability = _open_backend(args.store, args.sqlite_synchronous)
    meter_provider = configure_meter_provider()
    metrics = ProcessorMetrics()
    forwarder = None
    if args.forward:
        forwarder = Forwarder(
            args.forward,
            args.forward_protocol,
            metrics,
            queue_bytes=args.forward_queue_bytes,
            retry=retry,
            timeout_s=args.forward_timeout,
        )
    config = ProcessorConfig(
        wait_window_s=args.wait_window,
        late_window_s=args.late_window,
        max_pending_spans=args.max_pending_spans,
        max_pending_bytes=args.max_pending_bytes,
        max_queue_spans=args.max_queue_spans,
        max_queue_bytes=args.max_queue_bytes,
        owner=owner,
    )
    processor = ProcessorEngine(store, spool, config, metrics, forwarder)
    grpc_server = None
    try:
        processor.start()
        grpc_note = "off"
        if not args.no_grpc:
            from ..processor.grpc_server import start_grpc_server

            grpc_server, grpc_port = start_grpc_server(
                processor,
                args.host,
                args.grpc_port,
                token=ingest_token,
                max_message_bytes=args.max_body_bytes,
            )
            grpc_note = f"{args.host}:{grpc_port}"
        settings = Settings(
            max_body_bytes=args.max_body_bytes,
            ingest_token=ingest_token,
            query_token=query_token,
            access_log=not args.no_access_log,
            max_reading_bytes=2 * args.max_queue_bytes,
            public_keys=public_keys,
            catalog=catalog,
            jaeger_url=jaeger_url,
            tempo_url=tempo_url,
        )
        app = build_app(processor, store, settings)
        # Spans and receipts make many small objects and no cycles: collections that re-scan a heap of
        # pending spans find nothing. Fewer of them, and none over what was built at start-up.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        print(
            f"unhardcoded processor: http://{args.host}:{http_port} (OTLP/HTTP, API, pages) · grpc {grpc_note} · "
            f"store {store.location} ({durability}) · instance {owner}"
            + (f" · verifying signatures with key ids {', '.join(public_keys)}" if public_keys else ""),
            file=sys.stderr,
            flush=True,
        )
        server = _server(
            uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=10)
        )
        server.run(sockets=[http_sock])
    finally:
        if grpc_server is not None:
            grpc_server.stop(grace=5).wait(6)
        processor.stop()
        store.close()
        spool.close()
        if meter_provider is not None:
            meter_provider.shutdown()
        http_sock.close()
    return 0
