"""The console's pages as HTML: receipt list and search, rollup charts, receipt card, workflow waterfall, sign-in.

Every page is a Jinja2 template (``templates/``, package data) rendered with autoescape on: a value from a span
or a receipt is text, never markup. Pages are self-contained documents (inline CSS, inline SVG, no script, no asset
from elsewhere), usable with the keyboard alone and readable 390 px wide. What a page links to (the receipt page,
its JSON, Jaeger, Grafana) is a :class:`ConsoleLinks`, so the processor's ``/ui/`` and the proxy's ``/x/ui/`` share
every page.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..model import Receipt, WorkflowReceipt
from ..render import OPEN_WORKFLOW, STATUS, _fmt, _usd, cost_line, render_receipt, render_workflow
from ..stores import ReceiptQuery
from .charts import SAVINGS_KEYS, build_charts, csv_rows, stamp
from .filters import OUTCOMES, ConsoleFilter, FilterError, encode_cursor, read_filter

if TYPE_CHECKING:
    import jinja2

    from ..stores import ReceiptConflict, ReceiptStore
    from ..verify import SignatureCheck

CONFLICTS_SHOWN = 20
"""Conflicts listed on a receipt page; the rest are counted, and listed by the API."""
HTML = "text/html; charset=utf-8"
CSV = "text/csv; charset=utf-8"


@dataclass(frozen=True)
class ConsoleLinks:
    """Where a console's pages point. Templates take ``{id}`` (percent-encoded) or ``{trace_id}``; None: no link."""

    home: str = "/ui/"
    rollups: str = "/ui/rollups"
    receipt_page: str = "/r/{id}"
    workflow_page: str = "/w/{id}"
    receipt_json: str = "/receipts/{id}"
    workflow_json: str | None = "/workflows/{id}"
    list_json: str | None = "/receipts"
    rollups_json: str | None = "/rollups"
    revisions_json: str | None = "/receipts/{id}/revisions"
    conflicts_json: str | None = "/receipts/{id}/conflicts"
    jaeger: str | None = None
    """A trace URL template with ``{trace_id}``, e.g. ``http://localhost:16686/trace/{trace_id}``."""
    tempo: str | None = None
    """A Grafana (Tempo) URL template with ``{trace_id}``."""
    sign_out: str | None = None
    """Where the sign-out form posts, when the console is behind a sign-in."""

    def receipt(self, request_id: str) -> str:
        return self.receipt_page.replace("{id}", quote(request_id, safe=""))

    def workflow(self, workflow_id: str) -> str:
        return self.workflow_page.replace("{id}", quote(workflow_id, safe=""))

    def of(self, template: str | None, ident: str) -> str | None:
        return None if template is None else template.replace("{id}", quote(ident, safe=""))

    def traces(self, trace_id: str | None) -> list[tuple[str, str]]:
        """(label, URL) of the trace in each configured viewer."""
        if not trace_id:
            return []
        out = []
        for label, template in (("Jaeger", self.jaeger), ("Grafana / Tempo", self.tempo)):
            if template:
                out.append((label, template.replace("{trace_id}", quote(trace_id, safe=""))))
        return out


@dataclass
class Page:
    """An answer: status, body and media type; ``location`` for a redirect."""

    status: int
    body: str
    media_type: str = HTML
    location: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- templates


@cache
def environment() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("unhardcoded.receipts.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(usd=_usd, fmt=_fmt, ms=lambda v: "n/a" if v is None else f"{v:.0f} ms", stamp=stamp)
    env.globals.update(STATUS=STATUS, status_class=status_class, OUTCOMES=OUTCOMES, SAVINGS_KEYS=SAVINGS_KEYS)
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def status_class(outcome: str) -> str:
    return {"answered": "ok", "dry_run": "dry"}.get(outcome, "bad")


# --------------------------------------------------------------------------- receipt and workflow pages


def receipt_page(
    r: Receipt,
    revision: int | None = None,
    stored_at: str | None = None,
    conflicts: list[ReceiptConflict] | None = None,
    conflict_count: int | None = None,
    *,
    signature: SignatureCheck | None = None,
    links: ConsoleLinks = ConsoleLinks(),
) -> str:
    """The receipt card; ``conflicts`` (the first few of ``conflict_count``) open it as a warning; ``signature`` is
    the verifier's answer for it (None: not checked)."""
    conflict_list = conflicts or []
    return render(
        "receipt.html",
        title=f"Receipt {r.request_id}",
        r=r,
        revision=revision,
        stored_at=stored_at,
        conflicts=conflict_list,
        conflict_count=conflict_count if conflict_count is not None else len(conflict_list),
        signature=signature,
        cost=cost_line(r.cost.usd, r.cost.baseline_model, r.cost.baseline_usd, r.cost.savings_ratio),
        text=render_receipt(r),
        links=links,
        json_href=links.of(links.receipt_json, r.request_id),
        waterfall=waterfall([r], links),
    )


def workflow_page(w: WorkflowReceipt, links: ConsoleLinks = ConsoleLinks()) -> str:
    t = w.totals
    note = (
        OPEN_WORKFLOW + "."
        if w.still_open
        else ("INCOMPLETE: some node telemetry was not received." if not w.complete else "")
    )
    return render(
        "workflow.html",
        title=f"Workflow {w.name} {w.workflow_id}",
        w=w,
        cost=cost_line(t.cost_usd, "per-node", t.baseline_usd, t.savings_ratio),
        note=note,
        text=render_workflow(w),
        links=links,
        json_href=links.of(links.workflow_json, w.workflow_id),
        waterfall=waterfall(w.nodes, links),
    )


def not_found(what: str, ident: str, links: ConsoleLinks = ConsoleLinks()) -> str:
    return render("not_found.html", title=f"No {what}", what=what, ident=ident, links=links, json_href=None)


def error_page(message: str, links: ConsoleLinks = ConsoleLinks()) -> str:
    return render("error.html", title="Cannot show this", message=message, links=links, json_href=None)


def sign_in_page(action: str, next_path: str, failed: bool = False) -> str:
    return render("sign_in.html", title="Sign in", action=action, next_path=next_path, failed=failed)


# --------------------------------------------------------------------------- the waterfall


@dataclass
class Bar:
    label: str
    detail: str
    href: str
    x: float
    width: float
    y: float
    kind: str
    """``node``, ``ok``, ``error`` or ``estimated``."""


@dataclass
class Waterfall:
    bars: list[Bar]
    ticks: list[tuple[float, str]]
    height: float
    width: float = 960.0
    label_width: float = 300.0
    row: float = 22.0
    span_ms: float = 0.0
    estimated: bool = False


def _epoch_ms(timestamp: str) -> float:
    try:
        return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() * 1000  # noqa: FURB162
    except ValueError:
        return 0.0


def waterfall(receipts: list[Receipt], links: ConsoleLinks) -> Waterfall | None:
    """Nodes and their provider attempts on one time axis: each node from its decision's timestamp for its latency,
    each attempt at its start offset (laid end to end after the one before when a receipt predates offsets)."""
    rows: list[tuple[Receipt, float, float, list[tuple[Any, float, bool]]]] = []
    for r in receipts:
        start = _epoch_ms(r.timestamp)
        placed = []
        cursor = 0.0
        for a in r.attempts:
            offset = a.start_ms if a.start_ms is not None else cursor
            placed.append((a, start + offset, a.start_ms is None))
            cursor = offset + a.duration_ms
        end = start + max(r.latency_ms, cursor)
        rows.append((r, start, end, placed))
    if not any(p for *_, p in rows) and len(rows) < 2:
        return None
    t0 = min(s for _, s, _, _ in rows)
    t1 = max(e for _, _, e, _ in rows)
    span = max(t1 - t0, 1.0)
    wf = Waterfall([], [], 0.0)
    plot = wf.width - wf.label_width - 10

    def x(t: float) -> float:
        return round(wf.label_width + plot * (t - t0) / span, 2)

    def w(d: float) -> float:
        return round(max(2.0, plot * d / span), 2)

    y = 24.0
    for r, start, end, placed in rows:
        href = links.receipt(r.request_id)
        node = (r.workflow.node if r.workflow else None) or r.policy.name
        step = f"{r.workflow.step}. " if r.workflow and r.workflow.step is not None else ""
        wf.bars.append(
            Bar(
                f"{step}{node}",
                f"{r.request_id} · {STATUS.get(r.outcome, r.outcome)} · {r.latency_ms:.1f} ms",
                href,
                x(start),
                w(end - start),
                y,
                "node",
            )
        )
        y += wf.row
        for a, at, estimated in placed:
            hop = ""
            if a.role == "fallback":
                hop = "↳ fallback "
            result = "ok" if a.status == "ok" else (a.error_type or "error")
            wf.estimated = wf.estimated or estimated
            wf.bars.append(
                Bar(
                    f"  {hop}#{a.index} {a.model}",
                    f"{a.provider} · {result} · {a.duration_ms:.1f} ms at +{at - start:.1f} ms",
                    href,
                    x(at),
                    w(a.duration_ms),
                    y,
                    "estimated" if estimated else ("ok" if a.status == "ok" else "error"),
                )
            )
            y += wf.row
    wf.height = y + 8
    wf.span_ms = span
    digits = 0 if span >= 40 else 1
    wf.ticks = [(x(t0 + span * k / 4), f"+{span * k / 4:.{digits}f} ms") for k in range(5)]
    return wf


# --------------------------------------------------------------------------- list, search, rollups


def _looks_like_trace_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text.lower())


def search(store: ReceiptStore, q: str, links: ConsoleLinks) -> str | None:
    """Where a search for ``q`` goes: its receipt, its workflow, or the one receipt or workflow of its trace."""
    q = q.strip()
    if not q or len(q) > 512:
        return None
    if store.get(q) is not None:
        return links.receipt(q)
    if store.count(ReceiptQuery(workflow_id=q)) or store.workflow(q) is not None:
        return links.workflow(q)
    trace = q.lower() if _looks_like_trace_id(q) else q
    found = store.query(ReceiptQuery(trace_id=trace, limit=2))
    if len(found) == 1:
        return links.receipt(found[0].request_id)
    flows = {r.workflow.id for r in found if r.workflow}
    if found and len(flows) == 1 and all(r.workflow for r in found):
        return links.workflow(flows.pop())
    return None


def listing_page(store: ReceiptStore, params: Mapping[str, str], links: ConsoleLinks) -> Page:
    """``/ui/``: a search (``q``) goes straight to what it names; otherwise the filtered list with its counts."""
    started = time.perf_counter()
    try:
        f = read_filter(params)
    except FilterError as exc:
        return Page(400, error_page(str(exc), links))
    q = params.get("q", "").strip()
    if q:
        target = search(store, q, links)
        if target is not None:
            return Page(303, "", location=target)
        if _looks_like_trace_id(q):
            # A trace of several receipts in no one workflow: list them.
            f = ConsoleFilter(f.params, _with_trace(f.query, q.lower()), f.limit, f.after)
    rows = store.listing(f.query, f.after)
    more = len(rows) > f.limit
    rows = rows[: f.limit]
    counts = store.counts(f.query) if not q or f.query.trace_id else None
    next_href = None
    if more:
        last = rows[-1]
        next_href = f.link(links.home, cursor=encode_cursor(last.ts_ms, last.request_id))
    json_href = f.link(links.list_json) if links.list_json else None
    return Page(
        200,
        render(
            "list.html",
            title="Receipts",
            f=f,
            q=q,
            searched=bool(q) and f.query.trace_id is None,
            rows=rows,
            counts=counts,
            next_href=next_href,
            first_href=f.link(links.home) if f.after else None,
            links=links,
            json_href=json_href,
            elapsed_ms=(time.perf_counter() - started) * 1000,
        ),
    )


def _with_trace(query: ReceiptQuery, trace_id: str) -> ReceiptQuery:
    from dataclasses import replace

    return replace(query, trace_id=trace_id)


def _range(f: ConsoleFilter) -> tuple[int | None, int | None]:
    since, until = f.query.since, f.query.until
    start = int(since.timestamp() * 1000) if isinstance(since, datetime) else None
    end = int(until.timestamp() * 1000) if isinstance(until, datetime) else None
    if start is not None and end is None:
        end = int(time.time() * 1000)
    return start, end


def _savings_by(params: Mapping[str, str]) -> str:
    by = params.get("by", "policy") or "policy"
    if by not in SAVINGS_KEYS:
        raise FilterError(f"by={by[:80]!r}: expected one of {', '.join(SAVINGS_KEYS)}")
    return by


def rollups_page(store: ReceiptStore, params: Mapping[str, str], links: ConsoleLinks) -> Page:
    """``/ui/rollups``: the charts for the filter in force, each with its numbers as a table and a CSV link."""
    try:
        f = read_filter(params)
        by = _savings_by(params)
    except FilterError as exc:
        return Page(400, error_page(str(exc), links))
    rows = store.series(f.query)
    charts = build_charts(rows, by, *_range(f))
    rollup_links = {}
    if links.rollups_json:
        for key in ("model", "provider", by):
            rollup_links[key] = (
                links.rollups_json
                + "?"
                + "&".join(
                    [f"by={key}"] + ([f"since={quote(f.params['since'], safe='')}"] if "since" in f.params else [])
                )
            )
    return Page(
        200,
        render(
            "rollups.html",
            title="Rollups",
            f=f.__class__({**f.params, **({"by": by} if by != "policy" else {})}, f.query, f.limit),
            by=by,
            charts=charts,
            decisions=len(rows),
            links=links,
            rollup_links=rollup_links,
            json_href=rollup_links.get(by),
        ),
    )


def rollups_csv(store: ReceiptStore, params: Mapping[str, str], links: ConsoleLinks) -> Page:
    """The numbers of one chart (``chart=``, or every chart) as CSV."""
    try:
        f = read_filter(params)
        by = _savings_by(params)
    except FilterError as exc:
        return Page(400, f"{exc}\n", "text/plain; charset=utf-8")
    charts = build_charts(store.series(f.query), by, *_range(f))
    wanted = params.get("chart")
    if wanted:
        charts = [c for c in charts if c.id == wanted]
        if not charts:
            return Page(404, f"chart={wanted[:80]!r}: no such chart\n", "text/plain; charset=utf-8")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    first = True
    for chart in charts:
        rows = csv_rows(chart)
        for row in rows if first else rows[1:]:
            writer.writerow([_cell(c) for c in row])
        first = False
    name = (wanted or "rollups").replace('"', "")
    return Page(200, out.getvalue(), CSV, headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})


def _cell(text: str) -> str:
    """A CSV cell a spreadsheet shows as text: a name starting like a formula is quoted with an apostrophe."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _is_number(text) else text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
