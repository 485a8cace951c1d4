"""Receipts rendered for a person: the card a support engineer reads at a glance."""

from __future__ import annotations

from .model import Receipt, WorkflowReceipt

WIDTH = 78
STATUS = {"answered": "200 OK", "dry_run": "DRY RUN", "failed": "FAILED", "no_candidate": "NO CANDIDATE"}
MAX_REJECTIONS_SHOWN = 12


def _usd(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value == 0:
        return "$0"
    if value < 0.001:
        return f"${value:.6f}".rstrip("0")
    return f"${value:.4f}".rstrip("0").rstrip(".") if value < 1 else f"${value:,.2f}"


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
    width = max((len(j.model) for j in r.rejected[:MAX_REJECTIONS_SHOWN]), default=0)
    for j in r.rejected[:MAX_REJECTIONS_SHOWN]:
        lines.append(f"rejected  {j.model.ljust(width)}  filtered: {j.message} [{j.rule}]")
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
        lines.append(f"attempt   #{a.index} {a.model} ({a.provider}, {a.role}) · {result} · {a.duration_ms:.0f} ms{tokens}")
    if r.outcome != "dry_run":
        lines.append(f"latency   {r.latency_ms:.0f} ms")
    label = "cost" if r.outcome != "dry_run" else "est. cost"
    lines.append(f"{label.ljust(9)} {cost_line(r.cost.usd, r.cost.baseline_model, r.cost.baseline_usd, r.cost.savings_ratio)}")
    lines.append(f"policy    {r.policy.name} · fingerprint {r.policy.fingerprint} · {r.policy.schema_}")
    if r.workflow:
        step = f" · step {r.workflow.step}" if r.workflow.step is not None else ""
        lines.append(f"workflow  {r.workflow.name} ({r.workflow.id}) · node {r.workflow.node}{step}")
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
        fb = f" · fallback {' → '.join([r.fallback.hops[0].from_] + [h.to for h in r.fallback.hops])}" if r.fallback.triggered else ""
        status = STATUS.get(r.outcome, r.outcome)
        lines.append(f"node      {node.ljust(width)}  {r.policy.name:<12} {model}{fb} · {_usd(r.cost.usd)} · {status} · {r.request_id}")
    lines.append(f"totals    {t.decisions} decisions · {t.fallbacks} fallback{'s' if t.fallbacks != 1 else ''} · {t.failed} failed · {t.latency_ms:.0f} ms")
    lines.append(f"cost      {cost_line(t.cost_usd, 'per-node', t.baseline_usd, t.savings_ratio)}")
    if not w.complete:
        lines.append("note      INCOMPLETE: some node telemetry was not received")
    return "\n".join(lines)
