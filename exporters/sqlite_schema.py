"""The SQLite sink's tables, derived from the wire model, and the rows a batch becomes.

Why derived (telemetryd/fields.py): the report gains fields over time, and a store whose
columns are a hand-kept list silently drops every field nobody remembered to add. Here each
scalar field of a struct (number, bool, text, after unwrapping ``X | None`` and
``Annotated``) becomes a column of the same name; every other field (lists, dicts,
structs without a table of their own) goes into one ``details`` JSON column of the row,
so nothing in a report is ever lost on its way into SQLite. A column that a newer model
adds to an existing database is added on open (``ALTER TABLE ... ADD COLUMN``, nullable,
so it is instant); ``SCHEMA_VERSION`` only changes when keys or tables change shape.

Why every key starts with ``time_ns``: the key is what makes a write idempotent, but its
column order is also the order rows are stored in. Keyed ``(node, gpu_index, time_ns)``,
a batch from 1000 nodes lands in 8000 places of the table and each of those pages is
rewritten; keyed by time first, a batch appends at one end. Measured on 2 cores, gpu
table alone, 1000 simulated 8-GPU nodes up to 1.2M rows: node first 2,500 reports/s and
falling (the last batches at 2,100/s), time first 11,000/s and flat. The same reason keeps
the gpu table to one secondary index, (uuid, time_ns): an index not led by time costs one
page write per GPU per batch, and adding (node, gpu_index, time_ns) cost a third (7,200/s).
Per-node questions go through the time-ordered key with a time bound, or the uuid index.

No module here imports sqlite3 (exporters/sqlite.py is the only one); this module only
says what the tables look like and turns reports into tuples in column order, with plain
attribute access (``operator.attrgetter``) because row building is the sink's hot loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from telemetryd.codec import encode_json
from telemetryd.fields import Fields, split_fields
from telemetryd.model import AgentStats, Event, Gpu, Host, Report
from telemetryd.urls import SinkUrl, UrlError

SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of the layout below; bump when a key, table or index changes."""

ABSENT_KEY = -1
"""Stands for an absent ``gpu_index``/``code`` in the event key: SQLite treats NULLs in a
primary key as distinct, so a NULL there would let the same event be stored twice."""

Row = tuple[Any, ...]
_SQL_TYPES: dict[type, str] = {bool: "INTEGER", int: "INTEGER", float: "REAL", str: "TEXT"}
"""``bool`` is INTEGER: SQLite has no boolean, and the driver binds True/False as 1/0."""


def scalar_columns(fields: Fields) -> tuple[tuple[str, str], ...]:
    """(column name, SQL type) of each scalar field: the column has the field's name."""
    return tuple((name, _SQL_TYPES[kind]) for name, kind in fields.scalars)


@dataclass(frozen=True, slots=True)
class Table:
    """One table: its key, its other columns, its secondary indexes."""

    name: str
    key: tuple[tuple[str, str], ...]
    columns: tuple[tuple[str, str], ...]
    indexes: tuple[tuple[str, ...], ...]

    def all_columns(self) -> tuple[tuple[str, str], ...]:
        """Key columns first, then the others: the order of every row tuple."""
        return self.key + self.columns

    def create(self) -> list[str]:
        """CREATE statements, safe to run on a database that already has them."""
        cols = [f"{quote(name)} {kind} NOT NULL" for name, kind in self.key]
        cols += [f"{quote(name)} {kind}" for name, kind in self.columns]
        pk = ", ".join(quote(name) for name, _ in self.key)
        sql = [
            f"CREATE TABLE IF NOT EXISTS {self.name} (\n  "
            + ",\n  ".join([*cols, f"PRIMARY KEY ({pk})"])
            + "\n) WITHOUT ROWID"
        ]
        sql += [
            f"CREATE INDEX IF NOT EXISTS {self.name}_{'_'.join(cols_)} "
            f"ON {self.name} ({', '.join(map(quote, cols_))})"
            for cols_ in self.indexes
        ]
        return sql

    def insert(self) -> str:
        """The one INSERT of this table: the same key written again replaces the row."""
        names = ", ".join(quote(name) for name, _ in self.all_columns())
        marks = ", ".join("?" * len(self.all_columns()))
        return f"INSERT OR REPLACE INTO {self.name} ({names}) VALUES ({marks})"  # noqa: S608


def quote(name: str) -> str:
    """A column name as an SQL identifier: a future field may be called ``order``."""
    return '"' + name.replace('"', '""') + '"'


def _details(*fields: Fields) -> tuple[tuple[str, str], ...]:
    return (("details", "TEXT"),) if any(f.nested for f in fields) else ()


# The report's own fields: each is stored by a table below or (if nested and unclaimed)
# in the agent row's details, so a new top-level field cannot be dropped either.
_REPORT = split_fields(Report, skip={"node", "time_ns", "agent", "gpus", "host", "events"})
_GPU = split_fields(Gpu, skip={"index", "error", "clock_event_reasons"})
_HOST = split_fields(Host)
_EVENT = split_fields(Event, skip={"time_ns", "kind", "gpu_index", "code"})
_AGENT = split_fields(AgentStats)

GPU = Table(
    "gpu",
    key=(("time_ns", "INTEGER"), ("node", "TEXT"), ("gpu_index", "INTEGER")),
    columns=(
        ("cluster", "TEXT"),
        *scalar_columns(_GPU),
        ("error_code", "TEXT"),
        ("error_message", "TEXT"),
        ("clock_event_reasons", "TEXT"),
        *_details(_GPU),
    ),
    indexes=(("uuid", "time_ns"),),
)
HOST = Table(
    "host",
    key=(("time_ns", "INTEGER"), ("node", "TEXT")),
    columns=(("cluster", "TEXT"), *scalar_columns(_HOST), *_details(_HOST)),
    indexes=(("node", "time_ns"),),
)
EVENT = Table(
    "event",
    key=(
        ("time_ns", "INTEGER"),
        ("node", "TEXT"),
        ("kind", "TEXT"),
        ("gpu_index", "INTEGER"),
        ("code", "INTEGER"),
    ),
    columns=(
        ("cluster", "TEXT"),
        ("boot_id", "TEXT"),
        ("seq", "INTEGER"),
        *scalar_columns(_EVENT),
        *_details(_EVENT),
    ),
    indexes=(("node", "time_ns"),),
)
AGENT = Table(
    "agent",
    key=(("time_ns", "INTEGER"), ("node", "TEXT")),
    columns=(*scalar_columns(_REPORT), *scalar_columns(_AGENT), *_details(_REPORT, _AGENT)),
    indexes=(("boot_id", "seq"), ("node", "time_ns")),
)
TABLES = (GPU, HOST, EVENT, AGENT)


def _check_names() -> None:
    """Refuse at import a model field whose name clashes with a column of ours."""
    for table in TABLES:
        names = [name for name, _ in table.all_columns()]
        clash = {n for n in names if names.count(n) > 1}
        if clash:
            raise TypeError(f"sqlite table {table.name}: model field(s) clash: {sorted(clash)}")


_check_names()

Nested = tuple[tuple[str, bool], ...]


def _json(obj: Any, fields: Nested, found: dict[str, Any] | None = None) -> str | None:
    """The nested fields of ``obj`` (added to ``found``) as one JSON object, or None."""
    found = {} if found is None else found
    found.update(_nested_items(obj, fields))
    return encode_json(found).decode() if found else None


def _nested_items(obj: Any, fields: Nested) -> list[tuple[str, Any]]:
    items = []
    for name, optional in fields:
        value = getattr(obj, name)
        if value is not None and (optional or value):
            items.append((name, value))
    return items


_gpu_values = _GPU.getter()
_host_values = _HOST.getter()
_event_values = _EVENT.getter()
_agent_values = _AGENT.getter()
_report_values = _REPORT.getter()
_GPU_NESTED = _GPU.nested
_HOST_NESTED = _HOST.nested
_EVENT_NESTED = _EVENT.nested
_REPORT_NESTED = _REPORT.nested
_AGENT_NESTED = _AGENT.nested
_AGENT_DETAILS = bool(_REPORT_NESTED or _AGENT_NESTED)


@dataclass(slots=True)
class Batch:
    """A batch of reports as rows, one list per table, in ``TABLES`` order."""

    gpu: list[Row]
    host: list[Row]
    event: list[Row]
    agent: list[Row]

    def by_table(self) -> tuple[tuple[Table, list[Row]], ...]:
        """(table, rows) pairs, the order rows are written in."""
        return ((GPU, self.gpu), (HOST, self.host), (EVENT, self.event), (AGENT, self.agent))


def to_rows(reports: Sequence[Report]) -> Batch:
    """Turn reports into row tuples in each table's column order.

    The tuple layouts here must match ``Table.all_columns()``; tests/unit/
    test_sqlite_sink.py checks the lengths and reads every kind of value back.
    """
    gpu: list[Row] = []
    host: list[Row] = []
    event: list[Row] = []
    agent: list[Row] = []
    gpu_details = bool(_GPU_NESTED)
    for r in reports:
        node = r.node
        t = r.time_ns
        cluster = r.cluster
        for g in r.gpus:
            err = g.error
            reasons = g.clock_event_reasons
            row = (
                t,
                node,
                g.index,
                cluster,
                *_gpu_values(g),
                None if err is None else err.code,
                None if err is None else err.message,
                None if reasons is None else ",".join(reasons),
            )
            gpu.append((*row, _json(g, _GPU_NESTED)) if gpu_details else row)
        h = r.host
        if h is not None:
            row = (t, node, cluster, *_host_values(h))
            host.append((*row, _json(h, _HOST_NESTED)) if _HOST_NESTED else row)
        for e in r.events:
            gi = e.gpu_index
            code = e.code
            row = (
                e.time_ns,
                node,
                e.kind,
                ABSENT_KEY if gi is None else gi,
                ABSENT_KEY if code is None else code,
                cluster,
                r.boot_id,
                r.seq,
                *_event_values(e),
            )
            event.append((*row, _json(e, _EVENT_NESTED)) if _EVENT_NESTED else row)
        a = r.agent
        row = (t, node, *_report_values(r), *_agent_values(a))
        if _AGENT_DETAILS:
            # An AgentStats field that is not scalar (none today) is kept as "agent.<name>".
            extra = {f"agent.{k}": v for k, v in _nested_items(a, _AGENT_NESTED)}
            row = (*row, _json(r, _REPORT_NESTED, extra))
        agent.append(row)
    return Batch(gpu, host, event, agent)


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def fit_int64(row: Row) -> Row:
    """``row`` with integers beyond SQLite's 64-bit INTEGER as REAL (rare: the slow path)."""
    return tuple(
        float(v) if type(v) is int and not _INT64_MIN <= v <= _INT64_MAX else v for v in row
    )


def where(*, node: str | None, since_ns: int | None) -> tuple[str, list[Any]]:
    """A WHERE clause (or "") and its bound values, for the reader's optional filters."""
    clauses: list[str] = []
    args: list[Any] = []
    if node is not None:
        clauses.append("node = ?")
        args.append(node)
    if since_ns is not None:
        clauses.append("time_ns >= ?")
        args.append(since_ns)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


OPTIONS = ("retention_days",)


def retention_days(url: SinkUrl) -> float:
    """The URL's ``retention_days`` (default 7; 0 keeps everything), or UrlError.

    Unknown options are refused too, so a misspelt ``retention_day=1`` is not 7 days.
    """
    unknown = sorted({k for k, _ in url.options} - set(OPTIONS))
    if unknown:
        raise UrlError(
            f"sqlite://{url.path}: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(OPTIONS)}"
        )
    raw = url.option("retention_days", "7")
    try:
        days = float(raw)
    except ValueError:
        days = -1.0
    if not (math.isfinite(days) and days >= 0):
        raise UrlError(
            f"sqlite://{url.path}: retention_days={raw!r}; expected a number of days >= 0 "
            "(0 keeps everything)"
        )
    return days


class Retention:
    """When a retention pass is due, what it deletes, and which tables it still has to visit.

    A pass starts at most once per ``every_s`` of the injected wall clock (so tests need
    not wait an hour), or at once when the clock went back rather than waiting for it.
    """

    def __init__(self, days: float, every_s: float) -> None:
        self.keep_ns = int(days * 86400 * 1e9)
        self.every_s = every_s
        self.started = -math.inf
        self.cutoff_ns = 0
        self.pending: list[Table] = []
        self.deleted = 0  # by the current pass so far

    def begin(self, now: float) -> bool:
        """Start a pass if one is due; True while a pass has tables left to visit."""
        if self.pending:
            return True
        if self.keep_ns <= 0 or self.started <= now < self.started + self.every_s:
            return False
        self.started = now
        self.cutoff_ns = int(now * 1e9) - self.keep_ns
        self.pending = list(TABLES)
        self.deleted = 0
        return True

    def make_due(self) -> None:
        """Let the next ``begin`` start a pass whatever the schedule."""
        if not self.pending:
            self.started = -math.inf
