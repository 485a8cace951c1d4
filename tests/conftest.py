"""Shared test set-up: every test gets its own data directory, so nothing touches the user's store."""

from __future__ import annotations

import pytest

pytest_plugins = ["conftest_providers"]


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
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_TRACES_EXPORTER",
        "OTEL_METRICS_EXPORTER",
    ):
        monkeypatch.delenv(name, raising=False)
    return home
