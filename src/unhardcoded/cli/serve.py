"""`unhardcoded serve`: the OpenAI-compatible proxy on uvicorn."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from typing import TYPE_CHECKING

from .._wire import is_loopback
from ..errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from starlette.types import ASGIApp

    from .._signature import SigningKey
    from ..catalog import Catalog
    from ..receipts.stores import ReceiptStore
    from ..telemetry.setup import TelemetrySetup
    from . import Subcommands

POLICY_DIR_ENV = "UNHARDCODED_POLICY_DIR"
DEFAULT_POLICY_ENV = "UNHARDCODED_DEFAULT_POLICY"
STORE_ENV = "UNHARDCODED_STORE"
FORWARD_ENV = "UNHARDCODED_FORWARD_CLIENT_KEY"
KEYS_ENV = "UNHARDCODED_KEYS"
STATE_ENV = "UNHARDCODED_STATE"
SIGNING_KEY_ENV = "UNHARDCODED_SIGNING_KEY"  # read by telemetry too (telemetry.signing.SIGNING_KEY_ENV)
DEFAULT_PORT = 8080


def add_commands(sub: Subcommands) -> None:
    p = sub.add_parser(
        "serve",
        help="run the OpenAI-compatible router proxy",
        description="Serve POST /v1/chat/completions (routed by policy), /x/rank, /x/fields, /x/receipts/ID, /healthz.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT}; 0 picks one)"
    )
    p.add_argument(
        "--catalog", metavar="FILE", help="catalog file (default: $UNHARDCODED_CATALOG or the built-in catalog)"
    )
    p.add_argument("--providers", metavar="FILE", help="providers file (default: $UNHARDCODED_PROVIDERS)")
    p.add_argument(
        "--policy-dir",
        metavar="DIR",
        help="directory of named policies (default: $UNHARDCODED_POLICY_DIR or the shipped policies)",
    )
    p.add_argument(
        "--default-policy",
        metavar="NAME",
        help="policy for requests that name none (default: $UNHARDCODED_DEFAULT_POLICY; none: such requests get 400)",
    )
    p.add_argument("--store", metavar="URL", help="receipt store (default: $UNHARDCODED_STORE or the per-user store)")
    p.add_argument(
        "--forward-client-key",
        metavar="PROVIDER",
        action="append",
        default=None,
        help="send the caller's Authorization Bearer key to this provider (repeatable; "
        f"default: ${FORWARD_ENV}, comma-separated); the provider must not name api_key_env",
    )
    p.add_argument(
        "--keys",
        metavar="FILE",
        help="client keys file: every request but /healthz needs one of its keys, and may use only the policies "
        f"its entry names (default: ${KEYS_ENV}; make entries with `unhardcoded keys hash`)",
    )
    p.add_argument(
        "--state",
        metavar="URL",
        help="where budget spending and live state are kept: redis://HOST:PORT/DB shares them with every proxy "
        f"on that Redis (default: ${STATE_ENV}, else this process alone); see docs/budgets.md",
    )
    p.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="listen beyond loopback without --keys: anyone who reaches the proxy spends its provider keys",
    )
    p.add_argument(
        "--max-body-bytes", type=int, default=None, metavar="N", help="largest request body accepted (default 4 MiB)"
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=None,
        metavar="S",
        help="seconds a client has to send a request's head, from its connection or first byte (default 10)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=None,
        metavar="S",
        help="seconds a client has to send a request's body once its head is in (default 30)",
    )
    p.add_argument(
        "--limit-concurrency",
        type=int,
        default=None,
        metavar="N",
        help="connections and requests in flight at once; more are answered 503 (default 1000)",
    )
    p.add_argument(
        "--signing-key",
        metavar="FILE",
        help="sign every decision with this Ed25519 private key (`unhardcoded keys generate`; "
        f"default: ${SIGNING_KEY_ENV}); see docs/signing.md",
    )
    p.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    p.set_defaults(run=cmd_serve)


def _forwarded(args: argparse.Namespace) -> list[str]:
    names = args.forward_client_key
    if names is None:
        names = [os.environ.get(FORWARD_ENV, "")]
    return [n.strip() for item in names for n in item.split(",") if n.strip()]


def _keys_path(args: argparse.Namespace) -> str | None:
    return args.keys or os.environ.get(KEYS_ENV) or None


def check_exposure(args: argparse.Namespace) -> None:
    """Refuse what would let strangers spend the operator's keys, before anything is loaded."""
    keys = _keys_path(args)
    if keys and _forwarded(args):
        raise ConfigError(
            "--forward-client-key cannot be used with --keys: with client keys the caller's Authorization header "
            "is its key to this proxy and is never sent to a provider"
        )
    if keys or is_loopback(args.host):
        return
    exposure = (
        f"--host {args.host} listens beyond loopback and the proxy has no client keys, so anyone who reaches it "
        "spends the providers' keys"
    )
    if not args.allow_unauthenticated:
        raise ConfigError(f"{exposure}: give --keys FILE (see `unhardcoded keys hash`), or --allow-unauthenticated")
    print(f"WARNING: {exposure} (--allow-unauthenticated)", file=sys.stderr, flush=True)


def configure_tracing(
    store: ReceiptStore | None, catalog: Catalog, signing_key: SigningKey | None = None
) -> TelemetrySetup | _FlushReceipts | None:
    """Telemetry as the OTEL_* variables say (an application's own SDK is kept), receipts written to ``store``,
    decisions signed with ``signing_key`` (else the key ``UNHARDCODED_SIGNING_KEY`` names, if any).

    Returns something with ``shutdown()`` that flushes what is buffered when the server stops, or None.
    """
    try:
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:  # the API alone: spans cost nothing and go nowhere
        return None
    from ..telemetry import configure

    setup = configure("unhardcoded-proxy", signing_key=signing_key)
    provider = setup.tracer_provider
    if store is not None and isinstance(provider, TracerProvider):
        from ..receipts.span_processor import ReceiptSpanProcessor

        provider.add_span_processor(ReceiptSpanProcessor(store, catalogs=[catalog]))
        return _FlushReceipts(setup, provider)
    return setup


class _FlushReceipts:
    """The telemetry set-up's ``shutdown``, after a flush of the provider that writes the receipts."""

    def __init__(self, setup: TelemetrySetup, provider: TracerProvider) -> None:
        self.setup, self.provider = setup, provider

    def shutdown(self) -> None:
        self.provider.force_flush()  # receipts too, even when the provider is the application's own
        self.setup.shutdown()


def build_app(args: argparse.Namespace) -> tuple[ASGIApp, TelemetrySetup | _FlushReceipts | None]:
    """The app and the tracer provider for the parsed ``serve`` arguments."""
    from ..router import Router
    from ..router.providers import ProviderClient, load_providers, providers_from_env
    from ..server.app import create_app
    from ..server.auth import ClientKeys
    from ..server.request import DEFAULT_MAX_BODY_BYTES
    from . import load_catalog_arg

    keys_path = _keys_path(args)
    client_keys = ClientKeys.load(keys_path) if keys_path else None
    catalog = load_catalog_arg(args.catalog)
    signing_key = None
    signing_path = getattr(args, "signing_key", None) or os.environ.get(SIGNING_KEY_ENV)
    if signing_path:
        from .._signature import SigningKey

        signing_key = SigningKey.load(signing_path)  # an unusable key stops the start, with the reason
        logging.getLogger(__name__).info("signing decisions with key id %s", signing_key.key_id)
    providers = load_providers(args.providers) if args.providers else providers_from_env()
    store = None
    store_url = args.store or os.environ.get(STORE_ENV)
    try:
        from ..receipts.stores import open_store

        store = open_store(store_url)
    except ImportError:
        store = None
    provider = configure_tracing(store, catalog, signing_key)
    from ..telemetry.setup import sdk_disabled

    if store is not None and sdk_disabled():
        logging.getLogger("unhardcoded.server").warning(
            "OTEL_SDK_DISABLED is set: no span is recorded, so no receipt is written to the store; "
            "GET /x/receipts/{id} answers for the decisions held in memory"
        )
    from ..server.state import open_state

    state = open_state(getattr(args, "state", None) or os.environ.get(STATE_ENV) or None)
    if state.description != "in-process":
        print(f"state: {state.description} (budget spending and live events shared)", file=sys.stderr, flush=True)
    router = Router(catalog, ProviderClient(providers))
    app = create_app(
        router,
        args.policy_dir or os.environ.get(POLICY_DIR_ENV) or None,
        default_policy=args.default_policy or os.environ.get(DEFAULT_POLICY_ENV) or None,
        max_body_bytes=args.max_body_bytes or DEFAULT_MAX_BODY_BYTES,
        forward_client_key=_forwarded(args),
        client_keys=client_keys,
        store=store,
        state=state,
    )
    return app, provider


def run_server(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    access_log: bool = True,
    log_level: str = "info",
    header_timeout_s: float | None = None,
    body_timeout_s: float | None = None,
    limit_concurrency: int | None = None,
) -> None:
    """Serve ``app`` on uvicorn (uvloop and httptools when installed, as ``uvicorn[standard]`` brings them).

    The access log (one line per request, as uvicorn writes it) is written once
    the request is over. Everything loaded up to the first request (modules, catalog, policies) is
    frozen out of the garbage collector's sight: a full collection would
    otherwise walk it all, stalling every request in flight for tens of ms.
    A client gets ``header_timeout_s`` for a request's head and ``body_timeout_s`` for its body
    (:mod:`unhardcoded.server.deadlines`); ``limit_concurrency`` caps connections and requests in flight.
    """
    import uvicorn
    from uvicorn.config import LOG_LEVELS, LOGGING_CONFIG

    from ..server import deadlines
    from ..server.access import LOGGER_NAME as ACCESS_LOGGER
    from ..server.access import AccessLog, log_config

    # uvicorn's own access log would write each line before the response body; ours writes it after.
    config = uvicorn.Config(
        AccessLog(app) if access_log else app,
        host=host,
        port=port,
        access_log=False,
        log_config=log_config(LOGGING_CONFIG),
        log_level=log_level,
        server_header=False,
        http=deadlines.deadline_protocol(
            header_timeout_s or deadlines.DEFAULT_HEADER_TIMEOUT_S, body_timeout_s or deadlines.DEFAULT_BODY_TIMEOUT_S
        ),
        limit_concurrency=limit_concurrency or deadlines.DEFAULT_LIMIT_CONCURRENCY,
    )
    if log_level is not None:  # as uvicorn sets its own access log's level
        logging.getLogger(ACCESS_LOGGER).setLevel(LOG_LEVELS[log_level.lower()])
    config.load()  # imports the event loop and HTTP protocol modules
    gc.collect()
    gc.freeze()
    uvicorn.Server(config).run()


def cmd_serve(args: argparse.Namespace) -> int:
    if args.max_body_bytes is not None and args.max_body_bytes < 1:
        raise ConfigError("--max-body-bytes: must be a positive number of bytes")
    for flag, value in (("--header-timeout", args.header_timeout), ("--body-timeout", args.body_timeout)):
        if value is not None and not 0 < value < float("inf"):
            raise ConfigError(f"{flag}: must be a positive number of seconds")
    if args.limit_concurrency is not None and args.limit_concurrency < 1:
        raise ConfigError("--limit-concurrency: must be a positive number")
    check_exposure(args)
    app, provider = build_app(args)
    try:
        run_server(
            app,
            args.host,
            args.port,
            access_log=not args.no_access_log,
            header_timeout_s=args.header_timeout,
            body_timeout_s=args.body_timeout,
            limit_concurrency=args.limit_concurrency,
        )
    finally:
        if provider is not None:
            provider.shutdown()
    return 0
