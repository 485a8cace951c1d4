"""Run one benchmark on this tree and on another, each run in a child process of its own, taking turns, and print
both trees' medians with their ratio: the `--compare TREE` of decision.py, telemetry.py and rebuild.py.

A benchmark script that uses this module has a hidden ``--child`` flag: run with it, the script measures once and
hands its figures back with :func:`report` instead of printing its own table. The parent (:func:`compare`) runs that
child on each tree's ``src/`` (put first on PYTHONPATH), alternating the trees and which one goes first, so a change
of machine load over the sitting falls on both; on a shared VM only such same-sitting pairs tell a few percent apart.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT_MARK = "@@bench-result "
WITHIN = 0.10
"""The issue's bar: this tree no more than 10 % slower than the other on any figure."""
DEFAULT_ROUNDS = 3
PYCACHE = Path(tempfile.gettempdir()) / "unhardcoded-bench-pycache"
"""Bytecode of both trees goes here, so running a checkout of another commit leaves no files in it."""


@dataclass(frozen=True)
class Figure:
    """One number a child reports: its key in the child's result, the row label, the unit and which way is better."""

    key: str
    label: str
    unit: str
    higher_is_better: bool = False
    reference: bool = False
    """Code both trees share (e.g. a bare SDK span): not judged, its change between the trees is the sitting's noise."""


def tree_src(path: str | Path) -> Path:
    """The ``src`` directory of a tree given by its root (``/work/base``) or by that directory itself."""
    p = Path(path).expanduser().resolve()
    for candidate in (p / "src", p):
        if (candidate / "unhardcoded" / "__init__.py").is_file():
            return candidate
    raise SystemExit(f"--compare {path}: no unhardcoded package in {p / 'src'} or {p}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--compare TREE``, ``--compare-rounds N`` and the hidden ``--child``, on a benchmark's parser."""
    parser.add_argument(
        "--compare",
        metavar="TREE",
        help="run this benchmark on this tree and on another (its root, e.g. a checkout of an older commit, or its "
        "src/ directory), each run in a process of its own, taking turns; print both trees' figures and their ratio",
    )
    parser.add_argument(
        "--compare-rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        metavar="N",
        help="with --compare: runs per tree, alternating (default %(default)s)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)


def report(figures: dict[str, float], **info: object) -> None:
    """In a child: hand the figures (and anything worth printing, e.g. sizes) back to the parent on stdout."""
    import unhardcoded

    print(RESULT_MARK + json.dumps({"figures": figures, "info": info, "module": unhardcoded.__file__}), flush=True)


def git_head(root: Path) -> str:
    """The commit a tree is at (hash and subject), and whether its src/ differs from it."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    if out.returncode != 0:
        return "not a git checkout"
    head = out.stdout.strip()
    if len(head) > 70:
        head = head[:67] + "..."
    return head + (" (src modified)" if dirty.stdout.strip() else "")


def child_env(src: Path) -> dict[str, str]:
    """This environment with ``src`` first on PYTHONPATH and no other tree's source after it."""
    rest = [
        e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e and not (Path(e) / "unhardcoded").is_dir()
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), *rest])}
    env.setdefault("PYTHONPYCACHEPREFIX", str(PYCACHE))
    return env


def run_child(script: Path, src: Path, argv: Sequence[str], timeout_s: float) -> dict[str, object]:
    """Run ``script --child argv`` on ``src``; its stderr passes through, its result line comes back."""
    proc = subprocess.run(
        [sys.executable, str(script), *argv, "--child"],
        env=child_env(src),
        stdout=subprocess.PIPE,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{script.name} on {src} exited with {proc.returncode} and no result:\n{proc.stdout[-2000:]}")
    result: dict[str, object] = json.loads(lines[-1][len(RESULT_MARK) :])
    module = Path(str(result["module"])).resolve()
    if not module.is_relative_to(src):
        raise SystemExit(f"{script.name} meant to run on {src} imported unhardcoded from {module}")
    return result


def _fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "us" and value >= 1000:
        return f"{value / 1000:,.2f} ms"
    if abs(value) >= 1000:
        return f"{value:,.0f} {unit}"
    return f"{value:,.2f} {unit}"


def _verdict(cost: float) -> str:
    """``cost`` is how much more this tree pays than the other: this/that for a time, that/this for a rate."""
    change = abs(cost - 1) * 100
    if cost <= 1:
        return f"ok, {change:.1f}% better"
    if cost <= 1 + WITHIN:
        return f"ok, {change:.1f}% worse (within {WITHIN:.0%})"
    return f"WORSE by {change:.1f}%"


def compare(
    title: str,
    script: str | Path,
    argv: Sequence[str],
    other: str | Path,
    figures: Sequence[Figure],
    rounds: int = DEFAULT_ROUNDS,
    timeout_s: float = 1800,
) -> int:
    """Run the benchmark ``rounds`` times on each tree, alternating, and print the table; the number of figures on
    which this tree is worse than the other by more than WITHIN."""
    if rounds < 1:
        raise SystemExit(f"--compare-rounds must be at least 1, not {rounds}")
    script = Path(script).resolve()
    trees = {"this": tree_src(ROOT), "that": tree_src(other)}
    if trees["this"] == trees["that"]:
        print(f"--compare {other} is this tree: the differences below are the sitting's noise", file=sys.stderr)
    results: dict[str, list[dict[str, float]]] = {"this": [], "that": []}
    info: dict[str, object] = {}
    load_before = _load()
    started = time.perf_counter()
    for i in range(rounds):
        # ABBA order: whichever tree went second in one round goes first in the next.
        for name in ("this", "that") if i % 2 == 0 else ("that", "this"):
            t0 = time.perf_counter()
            print(f"  round {i + 1}/{rounds}: {name} tree ({trees[name]}) ...", file=sys.stderr, flush=True)
            result = run_child(script, trees[name], argv, timeout_s)
            figs = result["figures"]
            assert isinstance(figs, dict)
            results[name].append({k: float(v) for k, v in figs.items()})
            if isinstance(result["info"], dict):
                info.update(result["info"])
            print(f"    {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    print()
    print(f"{title}: this tree against another, {rounds} runs each in processes of their own, alternating")
    for name, src in trees.items():
        print(f"  {name}: {src.parent if src.name == 'src' else src}  [{git_head(src.parent)}]")
    if info:
        print("  " + "; ".join(f"{k}: {v}" for k, v in info.items()))
    rows = []
    worse = 0
    for f in figures:
        mine = [r[f.key] for r in results["this"]]
        theirs = [r[f.key] for r in results["that"]]
        a, b = statistics.median(mine), statistics.median(theirs)
        paired = math.exp(statistics.fmean(math.log(x / y) for x, y in zip(mine, theirs)))
        cost = (b / a) if f.higher_is_better else (a / b)
        verdict = f"reference, {abs(cost - 1) * 100:.1f}% apart" if f.reference else _verdict(cost)
        worse += not f.reference and cost > 1 + WITHIN
        rows.append([f.label, _fmt(a, f.unit), _fmt(b, f.unit), f"{a / b:.3f}", f"{paired:.3f}", verdict])
    header = ["figure", "this tree", "that tree", "this/that", "paired", "verdict"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for cells in [header, ["-" * w for w in widths], *rows]:
        line = "  ".join(c.ljust(w) if i in (0, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        print(line.rstrip())
    print(
        "this/that: ratio of the medians; paired: geometric mean of each run's ratio to the other tree's run next to "
        f"it; verdict: within {WITHIN:.0%} of the other tree, in the direction that is better for the figure"
    )
    print(
        f"load average (1 min) {load_before} before, {_load()} after, on {os.cpu_count()} CPUs; "
        f"{time.perf_counter() - started:.0f} s"
    )
    return worse


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"
