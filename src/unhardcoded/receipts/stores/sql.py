"""What the SQLite and PostgreSQL stores say the same way: the reads, the spool's span join, and the time columns.

Each store sets its driver's placeholder and boolean; the SQL text and the rows it reads back are shared.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ...policy.model import fingerprint_of
from ..model import Receipt, WorkflowReceipt
from .protocol import (
    DEFAULT_QUERY,
    HistoryQuery,
    HistoryRow,
    ListedReceipt,
    ReceiptConflict,
    ReceiptCounts,
    ReceiptQuery,
    SeriesRow,
    StoredReceipt,
    StoreError,
)

Row = tuple[Any, ...]
"""One row as a DB-API driver returns it."""

ROLLUP_COLUMN = {
    "policy": "policy_name",
    "model": "model",
    "workflow": "workflow_name",
    "client": "client",
    "provider": "provider",
}

SPAN_COLUMNS = "s.trace_id, s.span_id, s.group_key, s.body, s.service, s.received_ms, g.finished_ms"
"""A spooled span with its group's finish mark, in :class:`~.protocol.StoredSpan` order."""
SPAN_JOIN = "processor_spans s LEFT JOIN processor_groups g ON g.trace_id = s.trace_id AND g.group_key = s.group_key"


CONSOLE_COLUMNS = ("rules", "provider", "latency_ms")
"""Columns of store schema 4, read by the console's filters and charts (see :func:`console_values`)."""

RULES_SEPARATOR = "\n"


_FINGERPRINT = re.compile(r"[0-9]+-[0-9]+")
"""The form of a policy fingerprint (``1142614073-1132739033``)."""


def console_values(receipt: Receipt) -> tuple[str | None, str | None, float | None]:
    """A receipt's ``rules``, ``provider`` and ``latency_ms`` columns.

    ``rules``: the distinct rules that rejected a model, sorted (by code point, as every store's migration sorts them
    from the bodies), each between separators (``"\\nbudget\\nregion\\n"``), so a rule is found by a substring test
    that no other rule name can match; None when nothing was rejected.
    ``provider``: the provider of the last attempt (the one that answered, or the last that failed).
    """
    names = sorted({j.rule for j in receipt.rejected})
    rules = RULES_SEPARATOR + RULES_SEPARATOR.join(names) + RULES_SEPARATOR if names else None
    provider = receipt.attempts[-1].provider if receipt.attempts else None
    latency = None if receipt.outcome == "dry_run" else receipt.latency_ms
    return rules, provider, latency


def epoch_ms(value: datetime | str) -> int:
    """A datetime or an ISO 8601 timestamp (naive means UTC) as milliseconds since the epoch: the ``ts_ms`` column."""
    if isinstance(value, str):
        try:
            # "2024-01-01Z" (a date, then Z) has always read as that date; fromisoformat alone refuses it.
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))  # noqa: FURB162
        except ValueError:
            raise StoreError(f"{value!r} is not an ISO 8601 timestamp") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def now_iso() -> str:
    """Now, as the ``stored_at`` and ``first_seen`` columns keep it: ISO 8601 UTC, milliseconds, ``Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def policy_row(body: str, name: str | None = None, schema: str | None = None) -> tuple[str, str | None, str | None]:
    """A policy body's fingerprint, name and schema, for the ``policies`` table; the body names what the caller
    did not (a body that is not a JSON object names nothing)."""
    if name is None or schema is None:
        try:
            doc = json.loads(body)
            name = name or doc.get("name")
            schema = schema or doc.get("schema")
        except (ValueError, AttributeError):
            pass
    return fingerprint_of(body), name, schema


class SQLReceiptReads:
    """The reads that are the same SQL on every store; a store sets ``_param`` to its driver's placeholder."""

    _param = "?"
    _contains = "instr({column}, {param}) > 0"
    """The driver's substring test (SQLite ``instr``, PostgreSQL ``strpos``)."""

    @staticmethod
    def _flag(value: bool) -> object:
        """A boolean as the driver stores it: SQLite has no boolean type, so 0/1 there."""
        return int(value)

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[Row]:  # pragma: no cover - each store has one
        raise NotImplementedError

    def get(self, request_id: str) -> StoredReceipt | None:
        rows = self._read(
            f"SELECT body, revision, stored_at FROM receipts WHERE request_id = {self._param}", (request_id,)
        )
        if not rows:
            return None
        body, revision, stored_at = rows[0]
        return StoredReceipt(Receipt.model_validate_json(body), revision, stored_at)

    def revisions(self, request_id: str) -> list[StoredReceipt]:
        p = self._param
        rows = self._read(
            f"SELECT body, revision, stored_at FROM receipt_revisions WHERE request_id = {p} "
            f"UNION ALL SELECT body, revision, stored_at FROM receipts WHERE request_id = {p} ORDER BY 2",
            (request_id, request_id),
        )
        return [
            StoredReceipt(Receipt.model_validate_json(body), revision, stored_at) for body, revision, stored_at in rows
        ]

    def conflicts(self, request_id: str | None = None, limit: int = 100, offset: int = 0) -> list[ReceiptConflict]:
        p = self._param
        where, params = (f" WHERE request_id = {p}", [request_id]) if request_id is not None else ("", [])
        rows = self._read(
            f"SELECT body, received_at FROM receipt_conflicts{where} ORDER BY id LIMIT {p} OFFSET {p}",
            [*params, max(0, limit), max(0, offset)],
        )
        return [ReceiptConflict(Receipt.model_validate_json(body), received_at) for body, received_at in rows]

    def count_conflicts(self, request_id: str | None = None) -> int:
        if request_id is None:
            return int(self._read("SELECT COUNT(*) FROM receipt_conflicts")[0][0])
        return int(
            self._read(f"SELECT COUNT(*) FROM receipt_conflicts WHERE request_id = {self._param}", (request_id,))[0][0]
        )

    def _where(self, q: ReceiptQuery) -> tuple[str, list[object]]:
        p = self._param
        clauses: list[str] = []
        params: list[object] = []
        for column, value in (
            ("request_id", q.request_id),
            ("trace_id", q.trace_id),
            ("model", q.model),
            ("provider", q.provider),
            ("workflow_id", q.workflow_id),
            ("client", q.client),
            ("outcome", q.outcome),
        ):
            if value is not None:
                clauses.append(f"{column} = {p}")
                params.append(value)
        if q.policy is not None:
            # A name or a fingerprint; only a value shaped like a fingerprint is looked for as one, so a name alone
            # is read from the policy indexes (an OR of two columns makes the database read every matching row).
            if _FINGERPRINT.fullmatch(q.policy):
                clauses.append(f"(policy_name = {p} OR policy_fingerprint = {p})")
                params += [q.policy, q.policy]
            else:
                clauses.append(f"policy_name = {p}")
                params.append(q.policy)
        if q.rule is not None:
            clauses.append(self._contains.format(column="rules", param=p))
            params.append(RULES_SEPARATOR + q.rule + RULES_SEPARATOR)
        if q.fallback is not None:
            clauses.append(f"fallback = {p}")
            params.append(self._flag(q.fallback))
        if q.complete is not None:
            clauses.append(f"complete = {p}")
            params.append(self._flag(q.complete))
        if q.since is not None:
            clauses.append(f"ts_ms >= {p}")
            params.append(epoch_ms(q.since))
        if q.until is not None:
            clauses.append(f"ts_ms < {p}")
            params.append(epoch_ms(q.until))
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def count(self, query: ReceiptQuery = DEFAULT_QUERY) -> int:
        where, params = self._where(query)
        return int(self._read(f"SELECT COUNT(*) FROM receipts{where}", params)[0][0])

    def _history_where(self, q: HistoryQuery) -> tuple[str, list[object]]:
        p = self._param
        clauses = [f"ts_ms >= {p}", f"ts_ms < {p}"]
        params: list[object] = [epoch_ms(q.since), epoch_ms(q.until)]
        if q.policy is not None:
            clauses.append(f"policy_name = {p}")
            params.append(q.policy)
        if q.client is not None:
            clauses.append(f"client = {p}")
            params.append(q.client)
        if q.after is not None:
            clauses.append(f"(ts_ms > {p} OR (ts_ms = {p} AND request_id > {p}))")
            params += [q.after[0], q.after[0], q.after[1]]
        return " WHERE " + " AND ".join(clauses), params

    def history(self, query: HistoryQuery) -> list[HistoryRow]:
        """Read with the store's JSON parser in Python; a store whose database reads JSON itself does it there."""
        where, params = self._history_where(query)
        rows = self._read(
            "SELECT ts_ms, request_id, policy_name, policy_fingerprint, catalog_version, outcome, body "
            f"FROM receipts{where} ORDER BY ts_ms, request_id LIMIT {self._param}",
            [*params, max(0, query.limit)],
        )
        out: list[HistoryRow] = []
        for *head, body in rows:
            doc = json.loads(body)
            selected = doc.get("selected")
            features = doc.get("features")
            attempts = doc.get("attempts") or []
            out.append(
                (
                    *head,
                    selected.get("model") if selected else None,
                    doc.get("answered_by"),
                    _compact(features) if features is not None else None,
                    _compact(attempts[-1]) if attempts else None,
                )
            )
        return out

    def listing(self, query: ReceiptQuery, after: tuple[int, str] | None = None) -> list[ListedReceipt]:
        p = self._param
        where, params = self._where(query)
        if after is not None:
            where += (" AND " if where else " WHERE ") + f"(ts_ms < {p} OR (ts_ms = {p} AND request_id > {p}))"
            params += [after[0], after[0], after[1]]
        sql = (
            "SELECT request_id, ts_ms, trace_id, policy_name, model, provider, outcome, fallback, cost_usd, "
            "baseline_usd, latency_ms, workflow_id, workflow_name, client, complete "
            f"FROM receipts{where} ORDER BY ts_ms DESC, request_id"
        )
        if query.limit is not None:
            sql += f" LIMIT {p}"
            params.append(max(0, query.limit))
        return [
            ListedReceipt(
                row[0],
                int(row[1]),
                row[2],
                row[3],
                row[4],
                row[5],
                row[6],
                bool(row[7]),
                row[8],
                row[9],
                row[10],
                row[11],
                row[12],
                row[13],
                bool(row[14]),
            )
            for row in self._read(sql, params)
        ]

    def counts(self, query: ReceiptQuery = DEFAULT_QUERY) -> ReceiptCounts:
        where, params = self._where(query)
        by = {
            (outcome, bool(fallback)): int(n)
            for outcome, fallback, n in self._read(
                f"SELECT outcome, fallback, COUNT(*) FROM receipts{where} GROUP BY outcome, fallback", params
            )
        }

        def of(outcome: str) -> int:
            return by.get((outcome, False), 0) + by.get((outcome, True), 0)

        return ReceiptCounts(
            total=sum(by.values()),
            answered=of("answered"),
            failed=of("failed"),
            no_candidate=of("no_candidate"),
            dry_run=of("dry_run"),
            fallbacks=sum(n for (_, fallback), n in by.items() if fallback),
        )

    def series(self, query: ReceiptQuery = DEFAULT_QUERY) -> list[SeriesRow]:
        where, params = self._where(query)
        where += (" AND " if where else " WHERE ") + "outcome != 'dry_run'"
        rows = self._read(
            "SELECT ts_ms, policy_name, workflow_name, client, model, provider, outcome, fallback, cost_usd, "
            f"baseline_usd, rules, latency_ms FROM receipts{where} ORDER BY ts_ms, request_id",
            params,
        )
        return [
            SeriesRow(
                int(ts),
                policy,
                workflow,
                client,
                model,
                provider,
                outcome,
                bool(fallback),
                cost,
                baseline,
                tuple(rules.strip(RULES_SEPARATOR).split(RULES_SEPARATOR)) if rules else (),
                latency,
            )
            for ts, policy, workflow, client, model, provider, outcome, fallback, cost, baseline, rules, latency in rows
        ]

    def workflow(self, workflow_id: str) -> WorkflowReceipt | None:
        p = self._param
        rows = self._read(f"SELECT body FROM receipts WHERE workflow_id = {p}", (workflow_id,))
        info = self._read(f"SELECT name, trace_id, finished_at FROM workflows WHERE workflow_id = {p}", (workflow_id,))
        if not rows and not info:
            return None
        receipts = [Receipt.model_validate_json(r[0]) for r in rows]
        name, trace_id, finished_at = (
            info[0] if info else (next((r.workflow.name for r in receipts if r.workflow), ""), None, None)
        )
        return WorkflowReceipt.from_receipts(
            workflow_id, name, receipts, trace_id=trace_id, finished=finished_at is not None
        )

    def policy(self, fingerprint: str) -> str | None:
        rows = self._read(f"SELECT body FROM policies WHERE fingerprint = {self._param}", (fingerprint,))
        return str(rows[0][0]) if rows else None

    def catalog(self, version: str) -> str | None:
        rows = self._read(f"SELECT body FROM catalogs WHERE version = {self._param}", (version,))
        return str(rows[0][0]) if rows else None
