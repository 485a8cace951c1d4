"""Receipts rendered for a person: the card a support engineer reads at a glance, replays and rollups."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .model import Receipt, WorkflowReceipt

if TYPE_CHECKING:
    from .impact import ImpactReport
    from .replay import ReplayResult
    from .stores import RollupRow

WIDTH = 78
STATUS = {
    "answered": "200 OK",
    "dry_run": "DRY RUN",
    "failed": "FAILED",
    "no_candidate": "NO CANDIDATE",
    "over_budget": "429 OVER BUDGET",
}
MAX_REJECTIONS_SHOWN = 12
OPEN_WORKFLOW = (
    "OPEN: not finished, its root span not seen yet (still running, spans on their way, or the root was lost)"
)


def _usd(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value < 0:
        return "−" + _usd(-value)
    if value == 0:
        return "$0"
    if value < 0.001:
        return f"${value:.6f}".rstrip("0")
    return f"${value:.4f}".rstrip("0").rstrip(".") if value < 1 else f"${value:,.2f}"


def _exact_usd(value: float) -> str:
    """Dollars to the millionth: a budget's spending next to its limit must not round up to it."""
    return "$" + (f"{value:.6f}".rstrip("0").rstrip(".") or "0")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def cost_line(usd: float | None, baseline_model: str | None, baseline_usd: float | None, ratio: float | None) -> str:
    line = _usd(usd)
    if baseline_model and ratio is not None:
        arrow = "↓" if ratio >= 0 else "↑"
        line += f" · {arrow}{abs(ratio) * 100:.0f}% vs {baseline_model} baseline ({_usd(baseline_usd)})"
    elif baseline_model:
        line += f" · baseline {baseline_model} ({_usd(baseline_usd)})"
    return line


def render_receipt(r: Receipt) -> str:
    """The receipt card, as in the product description."""
    lines: list[str] = []
    head = f"trace · {r.request_id}"
    status = STATUS.get(r.outcome, r.outcome)
    lines.append(head + " " * max(1, WIDTH - len(head) - len(status)) + status)
    if r.selected:
        score = f" · score {_fmt(r.selected.score)}" if r.selected.score is not None else ""
        lines.append(f"selected  {r.selected.model}{score}")
        lines.append(f"reason    {r.selected.reason}")
    else:
        lines.append("selected  none: no model passes the policy for this request")
    # Live rejections first: what the router observed is what changed this decision, and must not be cut off.
    shown = [j for j in r.rejected if j.rule.startswith("live:")]
    shown = (shown + [j for j in r.rejected if not j.rule.startswith("live:")])[:MAX_REJECTIONS_SHOWN]
    width = max((len(j.model) for j in shown), default=0)
    lines.extend(f"rejected  {j.model.ljust(width)}  filtered: {j.message} [{j.rule}]" for j in shown)
    if len(r.rejected) > MAX_REJECTIONS_SHOWN:
        lines.append(f"rejected  … and {len(r.rejected) - MAX_REJECTIONS_SHOWN} more (--json lists all)")
    fb = r.fallback
    if fb.triggered:
        steps = " → ".join(f"{h.from_} ✗ {h.reason}" for h in fb.hops)
        end = f" → {r.answered_by} ✓" if r.answered_by else " → no model answered"
        lines.append(f"fallback  {steps}{end} · triggered, {len(fb.hops)} hop{'s' if len(fb.hops) != 1 else ''}")
    elif fb.chain:
        when = "not triggered this run" if r.outcome != "dry_run" else "dry run"
        lines.append(f"fallback  {' → '.join(fb.chain)} · standby cascade, {when}")
    else:
        lines.append("fallback  none: no standby model passes the policy")
    for a in r.attempts:
        result = "ok" if a.status == "ok" else f"{a.error_type or 'error'}"
        tokens = f" · {a.input_tokens}→{a.output_tokens} tokens" if a.input_tokens is not None else ""
        lines.append(
            f"attempt   #{a.index} {a.model} ({a.provider}, {a.role}) · {result} · {a.duration_ms:.0f} ms{tokens}"
        )
    if r.outcome != "dry_run":
        lines.append(f"latency   {r.latency_ms:.0f} ms")
    label = "cost" if r.outcome != "dry_run" else "est. cost"
    lines.append(
        f"{label.ljust(9)} {cost_line(r.cost.usd, r.cost.baseline_model, r.cost.baseline_usd, r.cost.savings_ratio)}"
    )
    billing = r.billing
    if billing is not None and billing.breakdown is not None:
        parts = billing.breakdown
        estimate = f" · estimated {_usd(billing.estimate_usd)}" if billing.estimate_usd is not None else ""
        lines.append(
            f"billed    input {_usd(parts.input)} · cached {_usd(parts.cached_input)} · output {_usd(parts.output)}"
            f" · other {_usd(parts.other)}{estimate}"
        )
    lines.append(f"policy    {r.policy.name} · fingerprint {r.policy.fingerprint} · {r.policy.schema_}")
    prices = billing.prices if billing is not None else None
    if prices is not None:
        date = f" of {prices.snapshot_date}" if prices.snapshot_date else ""
        lines.append(f"catalog   {r.catalog_version} · {r.timestamp} · prices {prices.data_version}{date}")
    else:
        lines.append(f"catalog   {r.catalog_version} · {r.timestamp}")
    if r.trace_id:
        lines.append(f"trace     {r.trace_id} · span {r.span_id or 'n/a'}")
    if r.workflow:
        step = f" · step {r.workflow.step}" if r.workflow.step is not None else ""
        lines.append(f"workflow  {r.workflow.name} ({r.workflow.id}) · node {r.workflow.node}{step}")
    if r.client is not None:
        lines.append(f"client    {r.client}")
    if r.budget is not None:
        b = r.budget
        did = "refused" if b.action == "refused" else "routed under the fallback policy"
        lines.append(
            f"budget    {b.scope} {b.name} · {_exact_usd(b.spent_usd)} spent of {_usd(b.limit_usd)} per {b.window} · {did}"
        )
    if r.signature is not None:  # what the span carries; whether it verifies is `receipt ID --verify`'s answer
        lines.append(f"signed    key {r.signature.key_id[:64]} · version {r.signature.version} · not checked here")
    if not r.complete:
        lines.append("note      INCOMPLETE: some of this decision's telemetry was not received")
    return "\n".join(lines)


def render_workflow(w: WorkflowReceipt) -> str:
    t = w.totals
    head = f"workflow · {w.name} · {w.workflow_id}"
    lines = [head, f"trace     {w.trace_id or 'n/a'}"]
    width = max((len(r.workflow.node or "") for r in w.nodes if r.workflow), default=4)
    for r in w.nodes:
        node = (r.workflow.node if r.workflow else None) or "?"
        model = r.answered_by or (r.selected.model if r.selected else "none")
        fb = (
            f" · fallback {' → '.join([r.fallback.hops[0].from_] + [h.to for h in r.fallback.hops])}"
            if r.fallback.triggered
            else ""
        )
        status = STATUS.get(r.outcome, r.outcome)
        lines.append(
            f"node      {node.ljust(width)}  {r.policy.name:<12} {model}{fb} · {_usd(r.cost.usd)} · {status} · {r.request_id}"
        )
    lines.append(
        f"totals    {t.decisions} decisions · {t.fallbacks} fallback{'s' if t.fallbacks != 1 else ''} · {t.failed} failed · {t.latency_ms:.0f} ms"
    )
    lines.append(f"cost      {cost_line(t.cost_usd, 'per-node', t.baseline_usd, t.savings_ratio)}")
    if w.still_open:
        lines.append(f"note      {OPEN_WORKFLOW}")
    elif not w.complete:
        lines.append("note      INCOMPLETE: some node telemetry was not received")
    return "\n".join(lines)


def _pct_change(then: float | None, now: float | None) -> str:
    if then is None or now is None:
        return ""
    if then == now:
        return " (unchanged)"
    if then == 0:
        return " (new cost)"
    change = (now - then) / then * 100
    return f" ({'+' if change >= 0 else '−'}{abs(change):.0f}%)"


def render_replay(result: ReplayResult) -> str:
    """What changed between the recorded decision and the same request decided today."""
    r = result.receipt
    verdict = "SAME decision today" if result.same else "DIFFERS today"
    head = f"replay · {r.request_id}"
    lines = [head + " " * max(1, WIDTH - len(head) - len(verdict)) + verdict]
    lines.append(f"policy    {r.policy.name} · fingerprint {r.policy.fingerprint} · {r.policy.schema_}")
    catalog = "unchanged" if result.recorded_catalog == result.today_catalog else f"→ today {result.today_catalog}"
    lines.append(f"catalog   recorded {result.recorded_catalog} {catalog}")
    then, now = result.winner_then or "none", result.winner_now or "none"
    lines.append(f"winner    {then} → {now}" if result.winner_changed else f"winner    {then} (unchanged)")
    if result.candidates_changed:
        lines.append(
            f"ranking   {' > '.join(r.candidates[:6]) or 'none'} → {' > '.join(result.now.candidates[:6]) or 'none'}"
        )
    for c in result.rejection_changes:
        if c.then is None and c.now is not None:
            why = "now filtered" if c.material else "new in today's catalog, filtered"
            lines.append(f"rejected  + {c.model}  {why}: {c.now.message} [{c.now.rule}]")
        elif c.now is None and c.then is not None:
            why = "no longer filtered" if c.material else "no longer in the catalog"
            lines.append(f"rejected  − {c.model}  {why} (was {c.then.message} [{c.then.rule}])")
        elif c.then is not None and c.now is not None:
            lines.append(f"rejected  ~ {c.model}  {c.then.message} [{c.then.rule}] → {c.now.message} [{c.now.rule}]")
    if not any(c.material for c in result.rejection_changes):
        lines.append(f"rejected  {len(r.rejected)} models recorded, each still by the same rule")
    if result.chain_changed:
        old = " → ".join(r.fallback.chain) or "none"
        new = " → ".join(result.now.fallback_chain) or "none"
        lines.append(f"fallback  {old}  ⇒  {new}")
    lines.append(
        f"est. cost {_usd(result.cost_then)} → {_usd(result.cost_now)}{_pct_change(result.cost_then, result.cost_now)}"
    )
    lines.extend(f"note      {note}" for note in result.notes)
    return "\n".join(lines)


def render_rollup(rows: Sequence[RollupRow], by: str) -> str:
    """A table: decisions, fallback rate, cost, baseline cost and savings per policy, workflow or model, and a total."""
    if not rows:
        return f"no decisions to roll up by {by}"

    def cells(
        key: str,
        decisions: int,
        fallbacks: int,
        failed: int,
        cost: float,
        base: float,
        saved: float,
        ratio: float | None,
    ) -> tuple[str, ...]:
        rate = fallbacks / decisions * 100 if decisions else 0.0
        return (
            key,
            str(decisions),
            f"{rate:.1f}%",
            str(failed),
            _usd(cost),
            _usd(base),
            _usd(saved),
            f"{ratio * 100:.0f}%" if ratio is not None else "n/a",
        )

    head: tuple[str, ...] = (by, "decisions", "fallback", "failed", "cost", "baseline", "saved", "saved %")
    body = [
        cells(r.key, r.decisions, r.fallbacks, r.failed, r.cost_usd, r.baseline_usd, r.savings_usd, r.savings_ratio)
        for r in rows
    ]
    if len(rows) > 1:
        saved = sum(r.savings_usd for r in rows)
        priced_base = sum(r.priced_baseline_usd for r in rows)
        body.append(
            cells(
                "total",
                sum(r.decisions for r in rows),
                sum(r.fallbacks for r in rows),
                sum(r.failed for r in rows),
                sum(r.cost_usd for r in rows),
                sum(r.baseline_usd for r in rows),
                saved,
                saved / priced_base if priced_base else None,
            )
        )
    if any(r.over_budget for r in rows):  # a column only where a budget refused something
        head += ("over budget",)
        refused = [r.over_budget for r in rows]
        if len(rows) > 1:
            refused.append(sum(refused))
        body = [(*line, str(n)) for line, n in zip(body, refused, strict=True)]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

    def fmt(r: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([fmt(head), *(fmt(r) for r in body)])


def _table(head: tuple[str, ...], body: Sequence[tuple[str, ...]], align: str = "", indent: str = "") -> list[str]:
    """Rows of cells, each column aligned as ``align`` says (``l`` or ``r``; by default the first left, the others
    right)."""
    align = align or "l" + "r" * (len(head) - 1)
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    return [
        indent + "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)).rstrip()
        for r in [head, *body]
    ]


def _delta(before: float, after: float) -> str:
    """``+$0.12 (+4.0%)``, ``−$0.3 (−25.0%)``, ``$0``."""
    delta = after - before
    if not delta:
        return "$0"
    sign = "+" if delta > 0 else "−"
    ratio = f" ({sign}{abs(delta) / before * 100:.1f}%)" if before > 0 else ""
    return f"{sign}{_usd(abs(delta))}{ratio}"


def render_impact(report: ImpactReport) -> str:
    """The impact report: what was decided again, what changes, and the cost at reported usage before and after."""
    lines = [f"impact on decisions from {report.since} to {report.until}"]
    if report.policy is not None:
        lines.append(
            f"policy    {report.policy.name} · fingerprint {report.policy.fingerprint} "
            f"(decisions recorded under {report.policy.name})"
        )
    else:
        lines.append("policy    each decision's own recorded policy")
    lines.append(f"catalog   {report.catalog.version} ({report.catalog.source})")
    lines.append("")
    lines.append(
        f"decisions {report.decisions} decided again of {report.in_window} in the window: {report.kept} keep their "
        f"model, {report.changed} change, {report.no_candidate} left with no candidate"
    )
    cost = report.cost
    lines.append(
        f"cost      {_usd(cost.before_usd)} → {_usd(cost.after_usd)} at reported usage, "
        f"{_delta(cost.before_usd, cost.after_usd)}, over {cost.priced} priced decisions"
    )
    if report.no_candidate_before_usd:
        lines.append(
            f"          decisions left with no candidate cost {_usd(report.no_candidate_before_usd)} as recorded"
        )
    if report.by_policy:
        lines.append("")
        lines += _table(
            ("policy", "decisions", "kept", "changed", "no candidate", "cost before", "cost after", "delta"),
            [
                (
                    r.policy,
                    str(r.decisions),
                    str(r.kept),
                    str(r.changed),
                    str(r.no_candidate),
                    _usd(r.before_usd),
                    _usd(r.after_usd),
                    _delta(r.before_usd, r.after_usd),
                )
                for r in report.by_policy
            ],
        )
    if report.by_model:
        lines.append("")
        lines += _table(
            ("model", "answered before", "after", "cost before", "cost after", "delta"),
            [
                (
                    r.model,
                    str(r.before_decisions),
                    str(r.after_decisions),
                    _usd(r.before_usd),
                    _usd(r.after_usd),
                    _delta(r.before_usd, r.after_usd),
                )
                for r in report.by_model
            ],
        )
    if report.changes:
        lines.append("")
        lines.append("changes")
        lines += _table(
            ("decisions", "policy", "from → to", "why", "cost before", "cost after"),
            [
                (
                    str(c.decisions),
                    c.policy,
                    f"{c.from_ or 'no candidate'} → {c.to or 'no candidate'}",
                    f"{c.rule}: {c.reason}" if c.rule else c.reason,
                    _usd(c.before_usd),
                    _usd(c.after_usd),
                )
                for c in report.changes
            ],
            align="rlllrr",
            indent="  ",
        )
        lines.append("  e.g. " + ", ".join(report.changes[0].examples))
    if report.skipped:
        reasons = "; ".join(f"{n} {why}" for why, n in report.skipped_reasons.items())
        lines.append("")
        lines.append(f"skipped   {report.skipped} ({reasons})")
    for note in report.notes:
        lines.append(f"note      {note}")
    return "\n".join(lines)
