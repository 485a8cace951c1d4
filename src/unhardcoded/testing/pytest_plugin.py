"""The pytest plugin of :mod:`unhardcoded.testing`: the ``unhardcoded_capture`` fixture.

Registered through the ``pytest11`` entry point, so it is there in any project that installs unhardcoded and
runs pytest; kept light (the capture is imported when a test asks for it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .capture import TelemetryCapture


@pytest.fixture
def unhardcoded_capture() -> Iterator[TelemetryCapture]:
    """A fresh :class:`~unhardcoded.testing.TelemetryCapture` per test, shut down after it."""
    from .capture import TelemetryCapture

    with TelemetryCapture() as capture:
        yield capture
