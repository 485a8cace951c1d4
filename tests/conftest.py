"""Shared test set-up: every test gets its own data directory, and ``tel`` captures telemetry in memory.

``tel`` is the public ``unhardcoded_capture`` fixture of :mod:`unhardcoded.testing`: the project tests itself the
way its users test their policies.
"""

from __future__ import annotations

import pytest

# Imported, not only registered through the pytest11 entry point: this tree's fixture, even when the installed
# distribution is an older build of the package.
from unhardcoded.testing import TelemetryCapture
from unhardcoded.testing.pytest_plugin import unhardcoded_capture

pytest_plugins = ["conftest_providers"]

__all__ = ["isolated_home", "tel", "unhardcoded_capture"]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Point UNHARDCODED_HOME (store, catalog archive) at a fresh directory; clear our other settings."""
    home = tmp_path_factory.mktemp("unhardcoded-home")
    monkeypatch.setenv("UNHARDCODED_HOME", str(home))
    for name in (
        "UNHARDCODED_STORE",
        "UNHARDCODED_CATALOG",
        "UNHARDCODED_PROVIDERS",
        "UNHARDCODED_CATALOG_DIR",
        "UNHARDCODED_POLICY",
        "UNHARDCODED_POLICY_DIR",
        "UNHARDCODED_STATE",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_TRACES_EXPORTER",
        "OTEL_METRICS_EXPORTER",
    ):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def tel(unhardcoded_capture: TelemetryCapture) -> TelemetryCapture:
    """The telemetry capture under the short name the tests use: a fresh tracer and meter provider, in memory."""
    return unhardcoded_capture
