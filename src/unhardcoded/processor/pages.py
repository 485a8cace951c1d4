"""Receipt and workflow pages: the receipt card as HTML a support engineer can read, print and share.

One self-contained document per page: inline CSS, no scripts, no external
assets. Every value from a receipt is HTML-escaped; links are built from
percent-encoded ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from urllib.parse import quote

from ..receipts.model import Receipt, WorkflowReceipt
from ..receipts.render import OPEN_WORKFLOW, STATUS, _fmt, _usd, cost_line, render_receipt, render_workflow
from ..receipts.stores import ReceiptConflict
from ..receipts.verify import SignatureCheck

_CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 0; background: #f5f6f8; color: #1b1f24; }
main { max-width: 960px; margin: 24px auto; padding: 0 16px; }
.card { background: #fff; border: 1px solid #d8dde3; border-radius: 8px; padding: 20px 24px; margin-bottom: 16px; }
h1 { font-size: 20px; margin: 0 0 4px; word-break: break-all; }
h2 { font-size: 15px; margin: 0 0 8px; text-transform: uppercase; letter-spacing: .04em; color: #57606a; }
.sub { color: #57606a; font-size: 13px; }
.status { float: right; font-weight: 600; padding: 2px 10px; border-radius: 12px; font-size: 13px; }
.ok { background: #dafbe1; color: #116329; } .bad { background: #ffebe9; color: #a40e26; } .dry { background: #ddf4ff; color: #0a3069; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: 5px 10px 5px 0; border-bottom: 1px solid #eef0f3; }
th { width: 150px; color: #57606a; font-weight: 500; }
table.list th { width: auto; }
code, pre { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 13px; }
pre { background: #f6f8fa; border: 1px solid #d8dde3; border-radius: 6px; padding: 12px; overflow-x: auto; white-space: pre; }
.conflict { background: #ffebe9; border: 2px solid #cf222e; border-radius: 8px; padding: 14px 18px; margin-bottom: 16px; }
.conflict h2 { color: #a40e26; }
.warn { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 8px 12px; margin-top: 12px; }
a { color: #0969da; }
"""


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def _rows(rows: Iterable[tuple[str, str]]) -> str:
    """(label, already-escaped HTML) pairs as table rows."""
    return "".join(f"<tr><th>{escape(label)}</th><td>{html}</td></tr>" for label, html in rows)


def _status_class(outcome: str) -> str:
    return {"answered": "ok", "dry_run": "dry"}.get(outcome, "bad")


CONFLICTS_SHOWN = 20
"""Conflicts listed on a receipt page; the rest are counted, and listed by the API."""


def _conflicts(r: Receipt, conflicts: list[ReceiptConflict], count: int) -> str:
    """The warning a receipt page opens with when other decisions claimed its request id."""
    if not count:
        return ""
    rid = quote(r.request_id, safe="")
    rows = "".join(
        f"<tr><td><code>{escape(c.receipt.trace_id or 'n/a')}</code></td><td><code>{escape(c.receipt.span_id or 'n/a')}</code></td>"
        f"<td>{escape(STATUS.get(c.receipt.outcome, c.receipt.outcome))}</td>"
        f"<td>{escape(c.receipt.answered_by or 'none')}</td><td>{escape(_usd(c.receipt.cost.usd))}</td><td>{escape(c.received_at)}</td></tr>"
        for c in conflicts
    )
    more = f"<p>and {count - len(conflicts)} more.</p>" if count > len(conflicts) else ""
    return (
        '<section class="card conflict" id="conflicts">'
        f"<h2>Warning: {count} conflicting decision{'s' if count != 1 else ''} for this request id</h2>"
        "<p>Spans of another decision (another trace or decision span) claimed this request id after this receipt "
        "was stored. They were kept aside and not merged: the receipt below is the first decision's, unchanged. "
        "Telemetry that names a request id it did not make may come from a misconfigured client or from someone "
        "trying to rewrite the record.</p>"
        '<table class="list"><tr><th>trace id</th><th>span id</th><th>outcome</th><th>answered by</th><th>cost</th>'
        f"<th>received</th></tr>{rows}</table>{more}"
        f'<p><a href="/receipts/{rid}/conflicts">/receipts/{escape(rid)}/conflicts</a></p></section>'
    )


def _signature_row(r: Receipt, check: SignatureCheck | None) -> tuple[str, str]:
    if check is None:
        signed = f"signed by key <code>{escape(r.signature.key_id)}</code> · " if r.signature else "unsigned · "
        return ("signature", f"{signed}not checked (the processor holds no public key)")
    css = "ok" if check.status == "verified" else "bad"
    text = escape(check.line().removeprefix("signature "))
    return ("signature", f'<span class="status {css}" style="float:none">{escape(check.status)}</span> {text}')


def receipt_page(
    r: Receipt,
    revision: int | None = None,
    stored_at: str | None = None,
    conflicts: list[ReceiptConflict] | None = None,
    conflict_count: int | None = None,
    *,
    signature: SignatureCheck | None = None,
) -> str:
    """The receipt card; ``conflicts`` (the first few of ``conflict_count``) open it as a warning; ``signature`` is
    the verifier's answer for it (None: not checked)."""
    rid = quote(r.request_id, safe="")
    status = STATUS.get(r.outcome, r.outcome)
    head = (
        f'<span class="status {_status_class(r.outcome)}">{escape(status)}</span>'
        f"<h1>Receipt · {escape(r.request_id)}</h1>"
        f'<div class="sub">{escape(r.timestamp)} · policy {escape(r.policy.name)}'
        + (f" · revision {revision}" if revision is not None else "")
        + (f" · stored {escape(stored_at)}" if stored_at else "")
        + "</div>"
    )
    decision: list[tuple[str, str]] = []
    if r.selected:
        score = f" · score {escape(_fmt(r.selected.score))}" if r.selected.score is not None else ""
        decision.append(("selected", f"<b>{escape(r.selected.model)}</b>{score}"))
        decision.append(("reason", escape(r.selected.reason)))
    else:
        decision.append(("selected", "none: no model passes the policy for this request"))
    if r.answered_by:
        decision.append(("answered by", f"<b>{escape(r.answered_by)}</b>"))
    fb = r.fallback
    if fb.triggered:
        steps = " → ".join(f"{escape(h.from_)} ✗ {escape(h.reason)}" for h in fb.hops)
        end = f" → {escape(r.answered_by)} ✓" if r.answered_by else " → no model answered"
        decision.append(("fallback", f"{steps}{end} · triggered, {len(fb.hops)} hop{'s' if len(fb.hops) != 1 else ''}"))
    elif fb.chain:
        decision.append(("fallback", f"{' → '.join(escape(m) for m in fb.chain)} · standby cascade, not triggered"))
    else:
        decision.append(("fallback", "none"))
    if r.outcome != "dry_run":
        decision.append(("latency", f"{r.latency_ms:.0f} ms"))
    decision.append(
        ("cost", escape(cost_line(r.cost.usd, r.cost.baseline_model, r.cost.baseline_usd, r.cost.savings_ratio)))
    )
    decision.append(("candidates", ", ".join(escape(c) for c in r.candidates) or "none"))

    rejected = ""
    if r.rejected:
        body = "".join(
            f"<tr><td>{escape(j.model)}</td><td>{escape(j.message)}</td><td><code>{escape(j.rule)}</code></td>"
            f"<td><code>{escape(j.field)} {escape(j.op)} {escape(_fmt(j.threshold))}</code></td><td>{escape(_fmt(j.observed))}</td></tr>"
            for j in r.rejected
        )
        rejected = (
            f'<section class="card"><h2>Rejected ({len(r.rejected)})</h2><table class="list">'
            "<tr><th>model</th><th>why</th><th>rule</th><th>test</th><th>observed</th></tr>"
            f"{body}</table></section>"
        )
    attempts = ""
    if r.attempts:
        body = "".join(
            f"<tr><td>#{a.index}</td><td>{escape(a.model)}</td><td>{escape(a.provider)}</td><td>{escape(a.role)}</td>"
            f"<td>{'ok' if a.status == 'ok' else escape(a.error_type or 'error')}</td><td>{a.duration_ms:.0f} ms</td>"
            f"<td>{'n/a' if a.input_tokens is None and a.output_tokens is None else f'{a.input_tokens} → {a.output_tokens}'}</td></tr>"
            for a in r.attempts
        )
        attempts = (
            '<section class="card"><h2>Provider calls</h2><table class="list">'
            "<tr><th>#</th><th>model</th><th>provider</th><th>role</th><th>result</th><th>time</th><th>tokens in → out</th></tr>"
            f"{body}</table></section>"
        )
    trace = [
        (
            "policy",
            f"{escape(r.policy.name)} · fingerprint <code>{escape(r.policy.fingerprint)}</code> · {escape(r.policy.schema_)}",
        ),
        ("catalog", f"<code>{escape(r.catalog_version)}</code>"),
        ("trace", f"<code>{escape(r.trace_id or 'n/a')}</code> · span <code>{escape(r.span_id or 'n/a')}</code>"),
    ]
    if r.workflow:
        wid = quote(r.workflow.id, safe="")
        step = f" · step {r.workflow.step}" if r.workflow.step is not None else ""
        trace.append(
            (
                "workflow",
                f'<a href="/w/{wid}">{escape(r.workflow.name)} ({escape(r.workflow.id)})</a> · node {escape(r.workflow.node or "?")}{step}',
            )
        )
    trace.append(_signature_row(r, signature))
    trace.append(("JSON", f'<a href="/receipts/{rid}">/receipts/{escape(rid)}</a>'))
    if revision is not None and revision > 1:
        trace.append(("revisions", f'<a href="/receipts/{rid}/revisions">{revision} revisions, every one kept</a>'))
    note = (
        "" if r.complete else '<div class="warn">INCOMPLETE: some of this decision\'s telemetry was not received.</div>'
    )
    conflict_list = conflicts or []
    body = (
        _conflicts(r, conflict_list, conflict_count if conflict_count is not None else len(conflict_list))
        + f'<section class="card">{head}<table>{_rows(decision)}</table>{note}</section>'
        f"{rejected}{attempts}"
        f'<section class="card"><h2>Provenance</h2><table>{_rows(trace)}</table></section>'
        f'<section class="card"><h2>As text</h2><pre>{escape(render_receipt(r))}</pre></section>'
    )
    return _page(f"Receipt {r.request_id}", body)


def workflow_page(w: WorkflowReceipt) -> str:
    t = w.totals
    rows = "".join(
        f"<tr><td>{'' if n.workflow is None or n.workflow.step is None else n.workflow.step}</td>"
        f"<td>{escape((n.workflow.node if n.workflow else None) or '?')}</td><td>{escape(n.policy.name)}</td>"
        f"<td>{escape(n.answered_by or (n.selected.model if n.selected else 'none'))}</td>"
        f"<td>{'yes' if n.fallback.triggered else 'no'}</td><td>{escape(_usd(n.cost.usd))}</td>"
        f"<td>{escape(STATUS.get(n.outcome, n.outcome))}</td>"
        f'<td><a href="/r/{quote(n.request_id, safe="")}">{escape(n.request_id)}</a></td></tr>'
        for n in w.nodes
    )
    wid = quote(w.workflow_id, safe="")
    totals = [
        ("decisions", str(t.decisions)),
        ("fallbacks", str(t.fallbacks)),
        ("failed", str(t.failed)),
        ("latency", f"{t.latency_ms:.0f} ms"),
        ("cost", escape(cost_line(t.cost_usd, "per-node", t.baseline_usd, t.savings_ratio))),
        ("trace", f"<code>{escape(w.trace_id or 'n/a')}</code>"),
        ("JSON", f'<a href="/workflows/{wid}">/workflows/{escape(wid)}</a>'),
    ]
    note = ""
    if w.still_open:
        note = f'<div class="warn">{escape(OPEN_WORKFLOW)}.</div>'
    elif not w.complete:
        note = '<div class="warn">INCOMPLETE: some node telemetry was not received.</div>'
    body = (
        f'<section class="card"><h1>Workflow · {escape(w.name)}</h1><div class="sub">{escape(w.workflow_id)}</div>'
        f"<table>{_rows(totals)}</table>{note}</section>"
        '<section class="card"><h2>Nodes</h2><table class="list">'
        "<tr><th>step</th><th>node</th><th>policy</th><th>model</th><th>fallback</th><th>cost</th><th>status</th><th>receipt</th></tr>"
        f"{rows}</table></section>"
        f'<section class="card"><h2>As text</h2><pre>{escape(render_workflow(w))}</pre></section>'
    )
    return _page(f"Workflow {w.name} {w.workflow_id}", body)


def not_found(what: str, ident: str) -> str:
    return _page(
        f"No {what}",
        f'<section class="card"><h1>No {escape(what)} {escape(ident)}</h1>'
        '<p class="sub">Nothing with this id is stored here (yet): its spans may still be on their way.</p></section>',
    )
