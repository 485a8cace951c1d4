"""Running the proxy for real in a test: uvicorn on a loopback port, simulated providers behind it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import uvicorn

from unhardcoded.catalog import Catalog
from unhardcoded.router import Router
from unhardcoded.router.providers import ProviderClient, ProvidersConfig
from unhardcoded.server import create_app
from unhardcoded.testing.simulator import SimulatedProvider

# The support policy (shipped) selects grok-4-fast-non-reasoning and falls back to mistral-large-2512, then gpt-4.1.
SELECTED, FIRST_FALLBACK, SECOND_FALLBACK = "grok-4-fast-non-reasoning", "mistral-large-2512", "gpt-4.1"
PROVIDER_OF = {SELECTED: "xai", FIRST_FALLBACK: "mistral", SECOND_FALLBACK: "openai"}
HELLO = [{"role": "user", "content": "Where is my parcel?"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    app: Any
    server: uvicorn.Server
    thread: threading.Thread
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def proxy(self) -> Any:
        return self.app.state.proxy


@contextmanager
def serving(app: Any, *, closing: Sequence[ProviderClient] = (), **config: Any) -> Iterator[RunningServer]:
    """``app`` on uvicorn in a thread, on a free loopback port, until the block ends.

    ``closing``: the provider clients the app calls through; their connections live on the server's loop, so they
    are closed there when the server stops (the app does not own them, and nothing else could close them).
    """
    port = free_port()
    config.setdefault("log_level", "warning")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **config))

    async def serve_then_close() -> None:
        try:
            await server.serve()
        finally:
            for client in closing:
                await client.aclose()

    def run() -> None:
        with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
            runner.run(serve_then_close())

    thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield RunningServer(app, server, thread, port)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def catalog_simulators(
    start: Callable[..., SimulatedProvider], catalog: Catalog | None = None, **kwargs: Any
) -> dict[str, SimulatedProvider]:
    """One simulated provider per provider named in the catalog, all answering ok()."""
    catalog = catalog or Catalog.builtin()
    names = sorted({str(m.get("provider")) for m in catalog.models})
    return {name: start(name, **kwargs) for name in names}


def providers_for(
    sims: dict[str, SimulatedProvider], *, timeout_s: float = 5.0, api_key_env: dict[str, str] | None = None
) -> ProvidersConfig:
    keys = api_key_env or {}
    return ProvidersConfig(
        providers=[sim.provider_config(timeout_s=timeout_s, api_key_env=keys.get(name)) for name, sim in sims.items()]
    )


def all_requests(sims: dict[str, SimulatedProvider]) -> list[Any]:
    return [r for sim in sims.values() for r in sim.requests]


class Stack:
    """Simulated providers for every catalog provider, and the proxy in front of them."""

    def __init__(self, sims: dict[str, Any], server: Any) -> None:
        self.sims = sims
        self.server = server

    def sim_for(self, model: str) -> Any:
        return self.sims[PROVIDER_OF[model]]

    def behave(self, model: str, behavior: Any) -> None:
        self.sim_for(model).set_behavior(model, behavior)

    def client(self, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.server.openai_base_url, api_key="unused", max_retries=0, **kwargs)

    def aclient(self, **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.server.openai_base_url, api_key="unused", max_retries=0, **kwargs)

    def receipt(self, request_id: str) -> dict[str, Any]:
        r = httpx.get(f"{self.server.base_url}/x/receipts/{request_id}")
        assert r.status_code == 200, r.text
        return r.json()


def make_stack(
    simulated_provider: Any, *, timeout_s: float = 5.0, api_key_env: dict[str, str] | None = None, **app_kwargs: Any
) -> Iterator[Stack]:
    """Use with ``yield from`` in a fixture, or ``for stack in make_stack(...)`` in a test."""
    sims = catalog_simulators(simulated_provider)
    client = ProviderClient(providers_for(sims, timeout_s=timeout_s, api_key_env=api_key_env))
    app_kwargs.setdefault("default_policy", "support")
    app = create_app(Router(Catalog.builtin(), client), **app_kwargs)
    with serving(app, closing=[client]) as server:
        yield Stack(sims, server)
    client.close()
