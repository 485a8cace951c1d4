"""Fixtures for tests that talk to simulated providers on loopback.

Loaded as a plugin: ``pytest_plugins = ["conftest_providers"]`` (in ``tests/conftest.py``
or a test module).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from unhardcoded.router.providers import ProviderClient, ProvidersConfig
from unhardcoded.testing.simulator import SimulatedProvider


@pytest.fixture
def simulated_provider() -> Iterator[Callable[..., SimulatedProvider]]:
    """Start simulated providers on demand: ``simulated_provider("acme", {"m": error(503)})``.

    Every simulator started through it is closed when the test ends.
    """
    started: list[SimulatedProvider] = []

    def start(name: str = "sim", behaviors: dict[str, Any] | None = None, **kwargs: Any) -> SimulatedProvider:
        sim = SimulatedProvider(name, behaviors, **kwargs).start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.close()


@pytest.fixture
def simulator(simulated_provider: Callable[..., SimulatedProvider]) -> SimulatedProvider:
    """One simulated provider named ``sim`` answering every model with ``ok()``."""
    return simulated_provider("sim")


@pytest.fixture
def provider_client(simulator: SimulatedProvider) -> Iterator[ProviderClient]:
    """A :class:`ProviderClient` whose only provider, ``sim``, is the ``simulator`` fixture."""
    client = ProviderClient(ProvidersConfig(providers=[simulator.provider_config(timeout_s=5)]))
    yield client
    client.close()
