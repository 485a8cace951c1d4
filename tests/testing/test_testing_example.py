"""The README's "Testing your own policies" example is examples/test_support_policy.py, and it passes."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "test_support_policy.py"


def test_the_readme_shows_the_example_file_as_it_is() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Testing your own policies", 1)[1].split("\n## ", 1)[0]
    assert "```python\n" + EXAMPLE.read_text(encoding="utf-8") + "```" in section


def test_the_example_passes_under_pytest_with_the_plugin(tmp_path: Path) -> None:
    # Run where a user would: outside this repository (no conftest.py of ours), the fixture from the plugin.
    test_file = tmp_path / EXAMPLE.name
    test_file.write_bytes(EXAMPLE.read_bytes())
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(test_file)]
    if not any(ep.value == "unhardcoded.testing.pytest_plugin" for ep in entry_points(group="pytest11")):
        # An environment installed before the entry point existed: name the plugin by hand.
        args[3:3] = ["-p", "unhardcoded.testing.pytest_plugin"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(args, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
