"""The console's charts over time: the numbers (per time bucket, per series) and their SVG geometry.

The numbers come from :meth:`ReceiptStore.series` for the filter in force; every chart keeps, per series, the
total over the whole range the same way ``GET /rollups`` counts it (dry runs left out), so a chart and the rollup
table agree. The SVG is drawn by the page's template from the coordinates computed here: no script, no font or
library from elsewhere.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..stores import SeriesRow

NONE_KEY = "(none)"
"""A row without the key (no model, no client): named as ``GET /rollups`` names it."""
OTHER = "(other)"
MAX_SERIES = 8
"""Series drawn per chart; the rest are summed into ``(other)``."""
BUCKETS_MS = (
    60_000,
    300_000,
    900_000,
    3_600_000,
    3 * 3_600_000,
    6 * 3_600_000,
    12 * 3_600_000,
    86_400_000,
    7 * 86_400_000,
    30 * 86_400_000,
)
MAX_BUCKETS = 48
SAVINGS_KEYS = ("policy", "workflow", "client")
PALETTE = ("#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#0598bc", "#bf3989", "#6e7781", "#953800")

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 28


@dataclass
class Series:
    name: str
    values: Sequence[float | None]
    total: float | None
    color: str = ""
    points: list[tuple[float, float, float, str]] = field(default_factory=list)
    """(x, y, value, bucket label) of each value drawn."""
    path: str = ""


@dataclass
class Chart:
    id: str
    title: str
    unit: str
    """``count``, ``ratio``, ``usd`` or ``ms``."""
    buckets: list[int]
    series: list[Series]
    total_label: str = "total"
    y_max: float = 0.0
    ticks: list[tuple[float, str]] = field(default_factory=list)
    x_labels: list[tuple[float, str]] = field(default_factory=list)

    def format(self, value: float | None) -> str:
        return format_value(value, self.unit)

    def bucket_label(self, index: int) -> str:
        return stamp(self.buckets[index])


def stamp(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "count":
        return f"{value:.0f}"
    if unit == "ratio":
        return f"{value * 100:.1f}%"
    if unit == "usd":
        return f"${value:.4f}" if abs(value) < 100 else f"${value:,.2f}"
    return f"{value:.1f} ms"


def bucket_size(start_ms: int, end_ms: int) -> int:
    span = max(1, end_ms - start_ms)
    for size in BUCKETS_MS:
        if span / size <= MAX_BUCKETS:
            return size
    return BUCKETS_MS[-1]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by the nearest-rank method: a value that was measured."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _key(value: str | None) -> str:
    return value if value is not None else NONE_KEY


class _Grid:
    def __init__(self, rows: Sequence[SeriesRow], start_ms: int | None, end_ms: int | None) -> None:
        first = rows[0].ts_ms if rows else 0
        last = rows[-1].ts_ms if rows else 0
        start = start_ms if start_ms is not None else first
        end = max(end_ms if end_ms is not None else last, start + 1)
        self.size = bucket_size(start, end)
        self.start = start - start % self.size
        self.count = max(1, (end - self.start) // self.size + 1)
        self.buckets = [self.start + i * self.size for i in range(self.count)]

    def index(self, ts_ms: int) -> int:
        return min(self.count - 1, max(0, (ts_ms - self.start) // self.size))


def _top(totals: dict[str, float]) -> list[str]:
    ordered = sorted(totals, key=lambda k: (-totals[k], k))
    return ordered if len(ordered) <= MAX_SERIES else ordered[: MAX_SERIES - 1]


def _counts(
    rows: Iterable[SeriesRow], grid: _Grid, keys: Callable[[SeriesRow], Iterable[str]]
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(lambda: [0.0] * grid.count)
    for r in rows:
        for k in keys(r):
            out[k][grid.index(r.ts_ms)] += 1
    return out


def _fold(per_key: dict[str, list[float]], keep: list[str]) -> dict[str, list[float]]:
    """``per_key`` with the keys not in ``keep`` summed into ``(other)``."""
    out = {k: per_key[k] for k in keep}
    rest = [v for k, v in per_key.items() if k not in keep]
    if rest:
        out[OTHER] = [sum(col) for col in zip(*rest)]
    return out


def _decisions_and_rate(rows: Sequence[SeriesRow], grid: _Grid, by: str, label: str) -> tuple[Chart, Chart]:
    def key(r: SeriesRow) -> list[str]:
        return [_key(r.model if by == "model" else r.provider)]

    decided = _counts(rows, grid, key)
    fell = _counts((r for r in rows if r.fallback), grid, key)
    keep = _top({k: sum(v) for k, v in decided.items()})
    decided_f = _fold(decided, keep)
    fell_f = _fold({k: fell.get(k, [0.0] * grid.count) for k in decided}, keep)
    counts = Chart(
        f"decisions-by-{by}",
        f"Decisions by {label}",
        "count",
        grid.buckets,
        [Series(k, list(v), sum(v)) for k, v in decided_f.items()],
    )
    rates = Chart(
        f"fallback-rate-by-{by}",
        f"Fallback rate by {label}",
        "ratio",
        grid.buckets,
        [
            Series(
                k,
                [(f / d) if d else None for f, d in zip(fell_f[k], v)],
                (sum(fell_f[k]) / sum(v)) if sum(v) else None,
            )
            for k, v in decided_f.items()
        ],
        total_label="over the range",
    )
    return counts, rates


def _cost(rows: Sequence[SeriesRow], grid: _Grid) -> Chart:
    cost = [0.0] * grid.count
    base = [0.0] * grid.count
    for r in rows:
        i = grid.index(r.ts_ms)
        cost[i] += r.cost_usd or 0.0
        base[i] += r.baseline_usd or 0.0
    return Chart(
        "cost-vs-baseline",
        "Cost and baseline cost",
        "usd",
        grid.buckets,
        [Series("cost", cost, sum(cost)), Series("baseline", base, sum(base))],
    )


def _savings(rows: Sequence[SeriesRow], grid: _Grid, by: str) -> Chart:
    saved: dict[str, list[float]] = defaultdict(lambda: [0.0] * grid.count)
    for r in rows:
        key = _key(r.policy if by == "policy" else r.workflow if by == "workflow" else r.client)
        values = saved[key]
        if r.cost_usd is not None and r.baseline_usd is not None:  # priced on both sides, as rollups count it
            values[grid.index(r.ts_ms)] += r.baseline_usd - r.cost_usd
    keep = _top({k: abs(sum(v)) for k, v in saved.items()})
    folded = _fold(dict(saved), keep)
    return Chart(
        f"savings-by-{by}",
        f"Saving against the baseline by {by}",
        "usd",
        grid.buckets,
        [Series(k, v, sum(v)) for k, v in folded.items()],
    )


def _rejections(rows: Sequence[SeriesRow], grid: _Grid) -> Chart:
    per_rule = _counts(rows, grid, lambda r: r.rules)
    keep = _top({k: sum(v) for k, v in per_rule.items()})
    folded = _fold(dict(per_rule), keep)
    return Chart(
        "rejections-by-rule",
        "Decisions with a model rejected, by rule",
        "count",
        grid.buckets,
        [Series(k, v, sum(v)) for k, v in folded.items()],
    )


def _latency(rows: Sequence[SeriesRow], grid: _Grid) -> Chart:
    per_bucket: list[list[float]] = [[] for _ in range(grid.count)]
    every = []
    for r in rows:
        if r.latency_ms is not None:
            per_bucket[grid.index(r.ts_ms)].append(r.latency_ms)
            every.append(r.latency_ms)
    return Chart(
        "latency",
        "Latency p50 and p95",
        "ms",
        grid.buckets,
        [
            Series("p50", [percentile(v, 0.5) for v in per_bucket], percentile(every, 0.5)),
            Series("p95", [percentile(v, 0.95) for v in per_bucket], percentile(every, 0.95)),
        ],
        total_label="over the range",
    )


def build_charts(
    rows: Sequence[SeriesRow], savings_by: str = "policy", start_ms: int | None = None, end_ms: int | None = None
) -> list[Chart]:
    """Every chart of the rollups page for ``rows`` (oldest first), in page order, laid out for drawing."""
    grid = _Grid(rows, start_ms, end_ms)
    charts = [
        *_decisions_and_rate(rows, grid, "model", "model"),
        *_decisions_and_rate(rows, grid, "provider", "provider"),
        _cost(rows, grid),
        _savings(rows, grid, savings_by),
        _rejections(rows, grid),
        _latency(rows, grid),
    ]
    for chart in charts:
        layout(chart)
    return charts


def _nice(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * exp:
            return step * exp
    return 10.0 * exp


def layout(chart: Chart) -> None:
    """Coordinates for the template: each series' polyline and points, the y ticks and a few x labels."""
    values = [v for s in chart.series for v in s.values if v is not None]
    low = min(0.0, *values) if values else 0.0
    high = _nice(max(values)) if values and max(values) > 0 else 1.0
    if chart.unit == "ratio":
        high = max(high, 1.0) if high > 0.5 else high
    chart.y_max = high
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    n = len(chart.buckets)

    def x(i: int) -> float:
        return round(LEFT + (plot_w * (i + 0.5) / n), 2)

    def y(v: float) -> float:
        return round(TOP + plot_h * (1 - (v - low) / ((high - low) or 1.0)), 2)

    chart.ticks = [
        (y(low + (high - low) * k / 4), format_value(low + (high - low) * k / 4, chart.unit)) for k in range(5)
    ]
    every = max(1, n // 4)
    chart.x_labels = [(x(i), chart.bucket_label(i)) for i in range(0, n, every)]
    for k, s in enumerate(chart.series):
        s.color = PALETTE[k % len(PALETTE)]
        s.points = [(x(i), y(v), v, chart.bucket_label(i)) for i, v in enumerate(s.values) if v is not None]
        parts = []
        pen_down = False
        for i, v in enumerate(s.values):
            if v is None:
                pen_down = False
                continue
            parts.append(f"{'L' if pen_down else 'M'}{x(i)},{y(v)}")
            pen_down = True
        s.path = " ".join(parts)


def csv_rows(chart: Chart) -> list[list[str]]:
    """The chart's numbers, one row per bucket and series (then the totals), for the CSV download."""
    out = [["chart", "bucket_start", "series", "value"]]
    for s in chart.series:
        for i, v in enumerate(s.values):
            out.append([chart.id, datetime.fromtimestamp(chart.buckets[i] / 1000, UTC).isoformat(), s.name, _num(v)])
    out.extend([chart.id, chart.total_label, s.name, _num(s.total)] for s in chart.series)
    return out


def _num(value: float | None) -> str:
    return "" if value is None else repr(round(value, 9))
