"""Reading a sink's file back: the stored reports, exactly as they came, and the rollups.

For ``telemetryd export`` (backfilling InfluxDB from the embedded store) and for tests.
Read-only (``mode=ro``), so it can run beside the aggregator writing the same file.

Reports are rebuilt as ``telemetryd.model.Report`` objects equal to the ones written: the
agent row gives the report's own fields and the agent's, the gpu rows (same time and
node) the GPUs, the host row the host, the event rows (same boot_id and seq) the events in
their original order; each row's ``details`` JSON holds the nested fields, and the exact
value of any column that could not hold it (see exporters/sqlite_schema.py). Once gpu and
host rows are rolled up (older than ``raw_days``) their reports come back with their agent
data and events only, no GPUs and no host: those minutes are in ``rollups()``.

What the keys make one: a report's GPUs come back in index order (agents send them so;
two GPUs of one report with the same index are one row), and an event is stored once
per (time, node, kind, GPU, code), with the last report that carried it.

Memory stays bounded whatever the file's size: both iterate in pages found on the key
(keyset pagination), each page read in one short read transaction, none held while the
caller works, so the writer's checkpoints are never held back for long.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from exporters.base import SinkError
from exporters.sqlite_rollup import ROLLUPS
from exporters.sqlite_schema import (
    ABSENT_KEY,
    AGENT,
    AGENT_FIELDS,
    EVENT,
    EVENT_FIELDS,
    GPU,
    GPU_FIELDS,
    GPU_PROCESS,
    HOST,
    HOST_FIELDS,
    JOB,
    JOB_FIELDS,
    PROCESS_FIELDS,
    REPORT_FIELDS,
    SCHEMA_VERSION,
    TABLES,
    Table,
)
from telemetryd.codec import DecodeError, convert
from telemetryd.fields import Fields
from telemetryd.model import JobRecord, Report

_KEYS_PER_QUERY = 250  # (time_ns, node) pairs bound in one lookup: 500 variables
ROLLUP_PAGE = 1000  # rollup rows read per query
_ROLLUPS = {r.table.name: r.table for r in ROLLUPS}
Row = dict[str, Any]
Key = tuple[int, str]  # (time_ns, node)
GpuKey = tuple[int, str, int]  # (time_ns, node, gpu_index)
Parts = tuple[
    dict[Key, list[Row]],
    dict[GpuKey, list[Row]],
    dict[Key, Row],
    dict[tuple[str, str, int], list[Row]],
]
"""A page's gpu rows by report, process rows by GPU, host row by report, event rows by
(node, boot_id, seq)."""
T = TypeVar("T")


class SqliteReader:
    """Read-only access to a sink's file, for ``telemetryd export``, ``jobs`` and tests.

    ``gpu_rows``, ``events`` and ``rollups`` return rows as dicts of column name to
    stored value: bools as 0/1, absent as None, ``clock_event_reasons`` comma-joined,
    lists and dicts as the JSON text in ``details``. ``reports`` rebuilds the reports.
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        uri = self.path.resolve().as_uri() + "?mode=ro"
        try:
            self._con = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, isolation_level=None)
            self._con.row_factory = sqlite3.Row
            version = self._con.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise SinkError(f"sqlite {self.path}: cannot open for reading: {exc}") from None
        if version != SCHEMA_VERSION:
            self._con.close()
            if version == 0:
                why = " (not a telemetryd database?)"
            elif version < SCHEMA_VERSION:
                why = "; the aggregator migrates it when it next opens it"
            else:
                why = "; upgrade telemetryd"
            raise SinkError(
                f"sqlite {self.path}: schema version {version}, this telemetryd reads "
                f"{SCHEMA_VERSION}{why}"
            )

    # --- reports ------------------------------------------------------------------------

    def reports(
        self,
        since_ns: int | None = None,
        until_ns: int | None = None,
        node: str | None = None,
        batch: int = 500,
    ) -> Iterator[list[Report]]:
        """The stored reports of ``[since_ns, until_ns)``, oldest first, ``batch`` at a time.

        Ordered by (time_ns, node). Reports whose gpu and host rows were rolled up come
        back without them (see the module docstring).
        """
        if batch < 1:
            raise ValueError(f"batch={batch}; expected a number of reports >= 1")
        pages = self._pages(AGENT, since_ns, until_ns, node, batch, self._parts)
        for agents, parts in pages:
            yield [self._report(row, *parts) for row in agents]

    def _parts(self, agents: list[Row]) -> Parts:
        """The gpu, host and event rows of a page of agent rows, read in its transaction."""
        keys = [(a["time_ns"], a["node"]) for a in agents]
        gpus: defaultdict[Key, list[Row]] = defaultdict(list)
        for row in self._by_key(GPU, ("time_ns", "node"), keys, order="gpu_index"):
            gpus[(row["time_ns"], row["node"])].append(row)
        procs: defaultdict[GpuKey, list[Row]] = defaultdict(list)
        for row in self._by_key(GPU_PROCESS, ("time_ns", "node"), keys, order="slot"):
            procs[(row["time_ns"], row["node"], row["gpu_index"])].append(row)
        hosts = {
            (row["time_ns"], row["node"]): row
            for row in self._by_key(HOST, ("time_ns", "node"), keys, order="time_ns")
        }
        reports = sorted({(a["boot_id"], a["seq"]) for a in agents})
        events: defaultdict[tuple[str, str, int], list[Row]] = defaultdict(list)
        # Events stored by schema version 1 have no position: key order, NULLs last.
        order = "position IS NULL, position, time_ns, kind, gpu_index, code"
        for row in self._by_key(EVENT, ("boot_id", "seq"), reports, order=order):
            events[(row["node"], row["boot_id"], row["seq"])].append(row)
        return gpus, procs, hosts, events

    def _report(
        self,
        agent: Row,
        gpus: dict[Key, list[Row]],
        procs: dict[GpuKey, list[Row]],
        hosts: dict[Key, Row],
        events: dict[tuple[str, str, int], list[Row]],
    ) -> Report:
        # Found by the values as stored, before the exact ones replace them (a seq past
        # 2**63 is REAL in the agent and the event rows alike).
        key = (agent["time_ns"], agent["node"])
        event_key = (agent["node"], agent["boot_id"], agent["seq"])
        details = _exact(agent)
        doc = {"time_ns": agent["time_ns"], "node": agent["node"]}
        doc |= _scalars(agent, REPORT_FIELDS)
        stats = _scalars(agent, AGENT_FIELDS)
        for name, value in details.items():
            if name.startswith("agent."):  # an AgentStats field that is not scalar
                stats[name.removeprefix("agent.")] = value
            else:
                doc[name] = value
        doc["agent"] = stats
        doc["gpus"] = [
            _gpu(row, procs.get((*key, row["gpu_index"]), [])) for row in gpus.get(key, ())
        ]
        host = hosts.get(key)
        if host is not None:
            nested = _exact(host)  # first: it puts exact values back into the row
            doc["host"] = _scalars(host, HOST_FIELDS) | nested
        doc["events"] = [_event(row) for row in events.get(event_key, ())]
        try:
            report: Report = convert(doc, Report)
        except DecodeError as exc:
            raise SinkError(
                f"sqlite {self.path}: the report of node {key[1]} at {key[0]} cannot be "
                f"rebuilt: {exc}"
            ) from None
        return report

    # --- jobs ---------------------------------------------------------------------------

    def job_parts(
        self, *, since_ns: int | None = None, node: str | None = None, job: str | None = None
    ) -> list[tuple[str, str, JobRecord]]:
        """(cluster, node, record) of every job part stored, newest record of each.

        ``since_ns``: the parts whose end is at or after it (a running part ends at its
        newest report). Ordered by cluster, job, node, start.
        """
        clauses: list[str] = []
        args: list[Any] = []
        for column, value in (("node", node), ("job", job)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if since_ns is not None:
            clauses.append("end_ns >= ?")
            args.append(since_ns)
        where = " AND ".join(clauses) or "true"
        order = ", ".join(name for name, _ in JOB.key)
        parts = []
        for row in self._rows(f"SELECT * FROM job WHERE {where} ORDER BY {order}", args):  # noqa: S608
            details = _exact(row)
            doc = {"job": row["job"], "start_ns": row["start_ns"], "gpus": []}
            doc |= _scalars(row, JOB_FIELDS) | details
            try:
                record = convert(doc, JobRecord)
            except DecodeError as exc:
                raise SinkError(
                    f"sqlite {self.path}: job {row['job']!r} of node {row['node']} cannot be "
                    f"read back: {exc}"
                ) from None
            parts.append((row["cluster"], row["node"], record))
        return parts

    # --- rollups and raw rows ---------------------------------------------------------

    def rollups(
        self,
        table: str,
        since_ns: int | None = None,
        until_ns: int | None = None,
        node: str | None = None,
    ) -> Iterator[Row]:
        """Rows of ``gpu_1m`` or ``host_1m`` whose minute starts in ``[since_ns, until_ns)``.

        Oldest first, in key order; the columns are described in exporters/sqlite_rollup.py.
        """
        if table not in _ROLLUPS:
            raise ValueError(f"table={table!r}; expected one of {', '.join(_ROLLUPS)}")
        pages = self._pages(_ROLLUPS[table], since_ns, until_ns, node, ROLLUP_PAGE, _none)
        for rows, _ in pages:
            yield from rows

    def report_keys(self) -> set[tuple[str, str, int]]:
        """(node, boot_id, seq) of every report stored: what loss tests count against."""
        rows = self._rows("SELECT node, boot_id, seq FROM agent")
        return {(r["node"], r["boot_id"], r["seq"]) for r in rows}

    def gpu_rows(self, node: str | None = None, since_ns: int | None = None) -> list[Row]:
        """Raw GPU rows, oldest first, optionally of one node and from a time on."""
        clause, args = _where("time_ns", since_ns, None, node)
        sql = f"SELECT * FROM gpu WHERE {clause} ORDER BY time_ns, node, gpu_index"  # noqa: S608
        return self._rows(sql, args)

    def events(self, node: str | None = None) -> list[Row]:
        """Events, oldest first; absent gpu_index and code are None again."""
        clause, args = _where("time_ns", None, None, node)
        rows = self._rows(f"SELECT * FROM event WHERE {clause} ORDER BY time_ns, node", args)  # noqa: S608
        for row in rows:
            for key in ("gpu_index", "code"):
                if row[key] == ABSENT_KEY:
                    row[key] = None
        return rows

    def counts(self) -> dict[str, int]:
        """Rows per table, the raw ones first, then the rollups."""
        counts = {}
        for t in (*TABLES, *_ROLLUPS.values()):
            counts[t.name] = self._rows(f"SELECT count(*) AS n FROM {t.name}")[0]["n"]  # noqa: S608
        return counts

    def close(self) -> None:
        """Release the file."""
        self._con.close()

    def __enter__(self) -> SqliteReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing -----------------------------------------------------------------------

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        try:
            return [dict(row) for row in self._con.execute(sql, args)]
        except sqlite3.Error as exc:
            raise SinkError(f"sqlite {self.path}: read failed: {exc}") from None

    def _pages(
        self,
        table: Table,
        since_ns: int | None,
        until_ns: int | None,
        node: str | None,
        size: int,
        parts: Callable[[list[Row]], T],
    ) -> Iterator[tuple[list[Row], T]]:
        """Pages of ``table`` in key order; ``parts(page)`` is read in the same transaction.

        Each page starts after the last key of the one before, on the primary key (or
        the (node, time) index for one node), so every page costs the same however deep.
        """
        key = [name for name, _ in table.key]
        t = table.time
        after: list[Any] | None = None
        while True:
            low = since_ns
            if after is not None:
                # The time bound is what the key search starts from; the row value then
                # skips the rows of that time already read.
                low = after[0] if since_ns is None else max(after[0], since_ns)
            clause, args = _where(t, low, until_ns, node)
            if after is not None:
                clause += f" AND ({', '.join(key)}) > ({', '.join('?' * len(key))})"
                args += after
            sql = f"SELECT * FROM {table.name} WHERE {clause} ORDER BY {', '.join(key)} LIMIT ?"  # noqa: S608
            try:
                self._con.execute("BEGIN")
                try:
                    page = self._rows(sql, [*args, size])
                    if not page:
                        return
                    extra = parts(page)
                finally:
                    self._con.execute("COMMIT")
            except sqlite3.Error as exc:
                raise SinkError(f"sqlite {self.path}: read failed: {exc}") from None
            yield page, extra
            if len(page) < size:
                return
            after = [page[-1][k] for k in key]

    def _by_key(
        self, table: Table, columns: tuple[str, str], keys: Sequence[tuple[Any, Any]], order: str
    ) -> Iterator[Row]:
        """Rows of ``table`` whose two ``columns`` match one of ``keys``, found on an index."""
        a, b = columns
        for i in range(0, len(keys), _KEYS_PER_QUERY):
            chunk = keys[i : i + _KEYS_PER_QUERY]
            values = ", ".join(["(?, ?)"] * len(chunk))
            yield from self._rows(
                f"WITH k(a, b) AS (VALUES {values}) SELECT t.* FROM k "  # noqa: S608
                f"JOIN {table.name} AS t ON t.{a} = k.a AND t.{b} = k.b ORDER BY {order}",
                [v for pair in chunk for v in pair],
            )


def _none(_page: list[Row]) -> None:
    return None


def _where(
    time: str, since_ns: int | None, until_ns: int | None, node: str | None
) -> tuple[str, list[Any]]:
    """A WHERE condition (``true`` if none) and its bound values, for the optional filters."""
    clauses: list[str] = []
    args: list[Any] = []
    if node is not None:
        clauses.append("node = ?")
        args.append(node)
    if since_ns is not None:
        clauses.append(f"{time} >= ?")
        args.append(since_ns)
    if until_ns is not None:
        clauses.append(f"{time} < ?")
        args.append(until_ns)
    return " AND ".join(clauses) or "true", args


def _exact(row: Row) -> dict[str, Any]:
    """The row's ``details``, less the exact values of columns, which go into ``row``."""
    text = row.get("details")
    details: dict[str, Any] = json.loads(text) if text else {}
    for name in [name for name in details if name in row]:
        row[name] = details.pop(name)
    return details


def _scalars(row: Row, fields: Fields) -> dict[str, Any]:
    """The struct's scalar fields present in ``row``, bools as bools again."""
    out: dict[str, Any] = {}
    for name, kind in fields.scalars:
        value = row.get(name)
        if value is not None:
            out[name] = bool(value) if kind is bool else value
    return out


def _gpu(row: Row, processes: list[Row]) -> dict[str, Any]:
    details = _exact(row)
    gpu = {"index": row["gpu_index"], **_scalars(row, GPU_FIELDS), **details}
    if row["process_count"] is not None:
        gpu["processes"] = [_scalars(p, PROCESS_FIELDS) | _exact(p) for p in processes]
    if row["error_code"] is not None:
        gpu["error"] = {"code": row["error_code"], "message": row["error_message"]}
    reasons = row["clock_event_reasons"]
    if isinstance(reasons, str):
        reasons = reasons.split(",") if reasons else []
    if reasons is not None:
        gpu["clock_event_reasons"] = reasons
    return gpu


def _event(row: Row) -> dict[str, Any]:
    details = _exact(row)
    event = {"time_ns": row["time_ns"], "kind": row["kind"], **_scalars(row, EVENT_FIELDS)}
    for name in ("gpu_index", "code"):
        if row[name] != ABSENT_KEY:
            event[name] = row[name]
    return event | details
