"""A virtual environment under the temp dir with unhardcoded (this checkout), openai, opentelemetry-distro and
opentelemetry-instrumentation-openai-v2 installed as pip resolves them today, unpinned, with nothing else.

One per day (pip's answer can change with any release); this checkout is reinstalled into it on each use so the
code under test is the current one. ``python tests/instrumentation/resolved_venv.py`` builds it and prints its path.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The app's client (openai-v2 does not require it), the SDK set-up opentelemetry-instrument needs, and openai-v2.
PACKAGES = ("openai", "opentelemetry-distro", "opentelemetry-instrumentation-openai-v2")


def _run(*command: str | Path) -> None:
    run = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, command))} failed ({run.returncode}):\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
        )


def resolved_venv() -> Path:
    """The day's environment, built if missing; raises with pip's output when it cannot be built (offline, say)."""
    day = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
    venv = Path(tempfile.gettempdir()) / f"unhardcoded-openai-v2-resolved-{day}"
    pip = venv / "bin" / "pip"
    ready = venv / ".resolved"
    if not ready.exists() or ready.read_text().split() != list(PACKAGES):
        _run(sys.executable, "-m", "venv", "--clear", venv)
        _run(pip, "install", "--quiet", "--disable-pip-version-check", ROOT, *PACKAGES)
        ready.write_text("\n".join(PACKAGES) + "\n")
    else:
        _run(pip, "install", "--quiet", "--disable-pip-version-check", "--no-deps", "--force-reinstall", ROOT)
    return venv


if __name__ == "__main__":
    print(resolved_venv())
