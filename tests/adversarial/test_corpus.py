"""The adversarial suite's own guard: every module keeps its count of hostile inputs, and none is lost.

``python -m tests.adversarial.test_corpus`` prints the count per module and the total.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

HERE = Path(__file__).parent
FLOOR = 350
"""The suite held more than this many hostile inputs when it was written; a change that drops cases fails here."""


def counts() -> dict[str, int]:
    found: dict[str, int] = {}
    for module in pkgutil.iter_modules([str(HERE)]):
        if not module.name.startswith("test_") or module.name == "test_corpus":
            continue
        loaded = importlib.import_module(f"{__package__ or 'tests.adversarial'}.{module.name}")
        found[module.name] = int(loaded.HOSTILE_INPUTS)
    return found


def test_every_module_counts_its_hostile_inputs_and_the_suite_keeps_them() -> None:
    found = counts()
    assert len(found) >= 10, found
    assert all(n > 0 for n in found.values()), found
    assert sum(found.values()) > FLOOR, found


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))  # as pytest runs them: the test helpers (apps, conftest_providers) importable
    table = counts()
    for name, n in sorted(table.items()):
        print(f"{name:<28} {n:>4}")
    print(f"{'total':<28} {sum(table.values()):>4}")
