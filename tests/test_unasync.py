"""The sync modules under ``_sync/`` are generated from ``_async/`` by scripts/unasync.py and kept current."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "unasync.py"


def _load():
    spec = importlib.util.spec_from_file_location("unasync_script", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


unasync = _load()


def test_generated_sync_modules_are_current():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )
    assert result.returncode == 0, f"regenerate with python scripts/unasync.py:\n{result.stderr}"


def test_keywords_dropped_and_names_replaced_whole():
    assert unasync.unasync_line("    async def aroute(self) -> AsyncChatStream:\n") == (
        "    def route(self) -> ChatStream:\n"
    )
    assert unasync.unasync_line("        out = await client.achat(x)\n") == "        out = client.chat(x)\n"
    assert unasync.unasync_line("    async with pool:\n") == "    with pool:\n"
    assert unasync.unasync_line("    async for chunk in stream.aiter_lines():\n") == (
        "    for chunk in stream.iter_lines():\n"
    )
    # Only whole names change: a name that merely starts like one stays.
    assert unasync.unasync_line("achieved = Asynchronous + achat_count\n") == (
        "achieved = Asynchronous + achat_count\n"
    )


def test_a_directive_gives_the_sync_line():
    line = "        await asyncio.sleep(delay)  # unasync: sync time.sleep(delay)\n"
    assert unasync.unasync_line(line) == "        time.sleep(delay)\n"
