"""The SQLite sink's tables, derived from the wire model, and the rows a batch becomes.

Why derived (telemetryd/fields.py): the report gains fields over time, and a store whose
columns are a hand-kept list silently drops every field nobody remembered to add. Here each
scalar field of a struct (number, bool, text, after unwrapping ``X | None`` and
``Annotated``) becomes a column of the same name; every other field (lists, dicts,
structs without a table of their own) goes into one ``details`` JSON column of the row,
so nothing in a report is ever lost on its way into SQLite. A column that a newer model
adds to an existing database is added on open (``ALTER TABLE ... ADD COLUMN``, nullable,
so it is instant); ``SCHEMA_VERSION`` only changes when keys or tables change shape.

Why every table has ``details``, even one whose struct has no nested field: it is also
where a value goes whose column cannot hold it exactly (an integer past SQLite's 64 bits,
stored as REAL in its column; clock_event_reasons that commas cannot join back). A details
key that names a column of the row holds that column's exact value, which is how
exporters/sqlite_reader.py rebuilds every report exactly.

Why every key but one starts with ``time_ns``: the key is what makes a write idempotent,
but its column order is also the order rows are stored in. Keyed ``(node, gpu_index, time_ns)``,
a batch from 1000 nodes lands in 8000 places of the table and each of those pages is
rewritten; keyed by time first, a batch appends at one end. Measured on 2 cores, gpu
table alone, 1000 simulated 8-GPU nodes up to 1.2M rows: node first 2,500 reports/s and
falling (the last batches at 2,100/s), time first 11,000/s and flat. The same reason keeps
the gpu table to one secondary index, (uuid, time_ns): an index not led by time costs one
page write per GPU per batch, and adding (node, gpu_index, time_ns) cost a third (7,200/s).
Per-node questions go through the time-ordered key with a time bound, or the uuid index.
The exception is ``job``, a row per job and node replaced while the job runs (a few rows
per job, not per interval): keyed by what it is, it expires on ``end_ns``.

Processes get a table (``gpu_process``, ``slot`` the place in the GPU's list) so "what
did job 1234 run" is a query, not JSON digging; the gpu row keeps ``process_count`` (NULL:
the report said nothing, 0: "none") and its owners as query columns (exporters/owners.py;
the exact list stays in ``details``). Job records are stored twice on purpose: in each
report's agent ``details`` (exact rebuild) and, the newest per job and node, in ``job``.

No sqlite3 here: this module only says what the raw tables look like and turns reports
into tuples in column order, with plain attribute access (``operator.attrgetter``) because
row building is the sink's hot loop. The 1-minute rollup tables are derived from these in
exporters/sqlite_rollup.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from exporters.owners import owner_labels
from telemetryd.codec import encode_json
from telemetryd.fields import Fields, split_fields
from telemetryd.model import AgentStats, Event, Gpu, GpuProcess, Host, JobRecord, Report

SCHEMA_VERSION = 3
"""``PRAGMA user_version`` of the layout below; bump when a key, table or index changes.

1: gpu, host, event, agent. 2: adds the gpu_1m and host_1m rollups, event ``position``
(the event's place in its report) and ``details``, and the event (boot_id, seq) index.
3: adds gpu_process and job, and gpu ``process_count`` and owner columns (processes
move out of the gpu rows' ``details``)."""

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
    booleans: frozenset[str] = field(default=frozenset())
    """INTEGER columns that hold a bool: a rollup keeps their last value, not a mean."""
    expires_on: str = ""
    """The time column when it is not first in the key (the job table: ``end_ns``)."""
    newer: str = ""
    """For a table whose rows are replaced by newer versions of themselves (job): the
    condition, on ``excluded`` (the new row) and the stored row, under which the new one
    wins; an older version written later (a spool drained after an outage) is ignored."""

    @property
    def time(self) -> str:
        """The time column, first in the key unless said: what retention bounds on."""
        return self.expires_on or self.key[0][0]

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
        if not self.newer:
            return f"INSERT OR REPLACE INTO {self.name} ({names}) VALUES ({marks})"  # noqa: S608
        key = ", ".join(quote(name) for name, _ in self.key)
        sets = ", ".join(f"{quote(n)} = excluded.{quote(n)}" for n, _ in self.columns)
        return (
            f"INSERT INTO {self.name} ({names}) VALUES ({marks}) "  # noqa: S608
            f"ON CONFLICT ({key}) DO UPDATE SET {sets} WHERE {self.newer}"
        )


def quote(name: str) -> str:
    """A column name as an SQL identifier: a future field may be called ``order``."""
    return '"' + name.replace('"', '""') + '"'


def booleans(*fields: Fields) -> frozenset[str]:
    """The names of the bool scalars (stored as INTEGER 0/1)."""
    return frozenset(name for f in fields for name, kind in f.scalars if kind is bool)


DETAILS = (("details", "TEXT"),)

# The report's own fields: each is stored by a table below or (if nested and unclaimed)
# in the agent row's details, so a new top-level field cannot be dropped either.
REPORT_FIELDS = split_fields(Report, skip={"node", "time_ns", "agent", "gpus", "host", "events"})
GPU_FIELDS = split_fields(Gpu, skip={"index", "error", "clock_event_reasons", "processes"})
HOST_FIELDS = split_fields(Host)
EVENT_FIELDS = split_fields(Event, skip={"time_ns", "kind", "gpu_index", "code"})
AGENT_FIELDS = split_fields(AgentStats)
PROCESS_FIELDS = split_fields(GpuProcess)
JOB_FIELDS = split_fields(JobRecord, skip={"job", "start_ns"})
OWNER_COLUMNS = (("hpc_job", "TEXT"), ("pod", "TEXT"), ("namespace", "TEXT"), ("container", "TEXT"))
"""The GPU's owners as exporters/owners.py joins them: for queries, not read back."""

GPU = Table(
    "gpu",
    key=(("time_ns", "INTEGER"), ("node", "TEXT"), ("gpu_index", "INTEGER")),
    columns=(
        ("cluster", "TEXT"),
        *scalar_columns(GPU_FIELDS),
        ("error_code", "TEXT"),
        ("error_message", "TEXT"),
        ("clock_event_reasons", "TEXT"),
        ("process_count", "INTEGER"),
        *OWNER_COLUMNS,
        *DETAILS,
    ),
    indexes=(("uuid", "time_ns"),),
    booleans=booleans(GPU_FIELDS),
)
GPU_PROCESS = Table(
    "gpu_process",
    key=(("time_ns", "INTEGER"), ("node", "TEXT"), ("gpu_index", "INTEGER"), ("slot", "INTEGER")),
    columns=(("cluster", "TEXT"), *scalar_columns(PROCESS_FIELDS), *DETAILS),
    indexes=(),
    booleans=booleans(PROCESS_FIELDS),
)
HOST = Table(
    "host",
    key=(("time_ns", "INTEGER"), ("node", "TEXT")),
    columns=(("cluster", "TEXT"), *scalar_columns(HOST_FIELDS), *DETAILS),
    indexes=(("node", "time_ns"),),
    booleans=booleans(HOST_FIELDS),
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
        ("position", "INTEGER"),
        *scalar_columns(EVENT_FIELDS),
        *DETAILS,
    ),
    # (boot_id, seq): how a report finds its events again. Events are rare, so this index
    # not led by time costs little.
    indexes=(("node", "time_ns"), ("boot_id", "seq")),
    booleans=booleans(EVENT_FIELDS),
)
AGENT = Table(
    "agent",
    key=(("time_ns", "INTEGER"), ("node", "TEXT")),
    columns=(*scalar_columns(REPORT_FIELDS), *scalar_columns(AGENT_FIELDS), *DETAILS),
    indexes=(("boot_id", "seq"), ("node", "time_ns")),
    booleans=booleans(REPORT_FIELDS, AGENT_FIELDS),
)
JOB = Table(
    "job",
    key=(("cluster", "TEXT"), ("job", "TEXT"), ("node", "TEXT"), ("start_ns", "INTEGER")),
    columns=(
        *scalar_columns(JOB_FIELDS),
        ("gpu_count", "INTEGER"),
        ("gpu_indices", "TEXT"),
        *DETAILS,
    ),
    indexes=(("end_ns",),),
    booleans=booleans(JOB_FIELDS),
    expires_on="end_ns",
    # An ended record beats a running one; among equals the later, then the longer one.
    newer="(excluded.state = 'ended', excluded.end_ns, excluded.samples) >= "
    "(job.state = 'ended', job.end_ns, job.samples)",
)
TABLES = (GPU, GPU_PROCESS, HOST, EVENT, AGENT, JOB)
_NESTED = {
    "gpu": GPU_FIELDS.nested,
    "gpu_process": PROCESS_FIELDS.nested,
    "host": HOST_FIELDS.nested,
    "event": EVENT_FIELDS.nested,
    "agent": REPORT_FIELDS.nested,
    "job": JOB_FIELDS.nested,
}


def check_names(table: Table, nested: tuple[tuple[str, bool], ...] = ()) -> None:
    """Refuse at import a model field whose name clashes with a column of ours.

    A nested field may not be named like a column either: in ``details`` a column's name
    means that column's exact value.
    """
    names = [name for name, _ in table.all_columns()]
    clash = {n for n in names if names.count(n) > 1} | ({n for n, _ in nested} & set(names))
    if clash:
        raise TypeError(f"sqlite table {table.name}: model field(s) clash: {sorted(clash)}")


for _table in TABLES:
    check_names(_table, _NESTED[_table.name])

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


_gpu_values = GPU_FIELDS.getter()
_host_values = HOST_FIELDS.getter()
_event_values = EVENT_FIELDS.getter()
_agent_values = AGENT_FIELDS.getter()
_report_values = REPORT_FIELDS.getter()
_process_values = PROCESS_FIELDS.getter()
_job_values = JOB_FIELDS.getter()
_GPU_NESTED = GPU_FIELDS.nested
_HOST_NESTED = HOST_FIELDS.nested
_EVENT_NESTED = EVENT_FIELDS.nested
_REPORT_NESTED = REPORT_FIELDS.nested
_AGENT_NESTED = AGENT_FIELDS.nested
_PROCESS_NESTED = PROCESS_FIELDS.nested
_JOB_NESTED = JOB_FIELDS.nested


def joinable(reasons: list[str]) -> bool:
    """Whether ``",".join(reasons)`` splits back into ``reasons``."""
    return all(reasons) and not any("," in r for r in reasons)


@dataclass(slots=True)
class Batch:
    """A batch of reports as rows, one list per table, in ``TABLES`` order."""

    gpu: list[Row]
    gpu_process: list[Row]
    host: list[Row]
    event: list[Row]
    agent: list[Row]
    job: list[Row]

    def by_table(self) -> tuple[tuple[Table, list[Row]], ...]:
        """(table, rows) pairs, the order rows are written in."""
        return tuple((table, getattr(self, table.name)) for table in TABLES)


def to_rows(reports: Sequence[Report]) -> Batch:
    """Turn reports into row tuples in each table's column order.

    The tuple layouts here must match ``Table.all_columns()``; tests/unit/
    test_sqlite_sink.py checks the lengths and reads every kind of value back.
    """
    gpu: list[Row] = []
    processes: list[Row] = []
    host: list[Row] = []
    event: list[Row] = []
    agent: list[Row] = []
    jobs: list[Row] = []
    for r in reports:
        node = r.node
        t = r.time_ns
        cluster = r.cluster
        for g in r.gpus:
            err = g.error
            reasons = g.clock_event_reasons
            exact = (
                None if reasons is None or joinable(reasons) else {"clock_event_reasons": reasons}
            )
            procs = g.processes
            gpu.append(
                (
                    t,
                    node,
                    g.index,
                    cluster,
                    *_gpu_values(g),
                    None if err is None else err.code,
                    None if err is None else err.message,
                    None if reasons is None else ",".join(reasons),
                    None if procs is None else len(procs),
                    *owner_labels(g.owners),
                    _json(g, _GPU_NESTED, exact),
                )
            )
            if procs:
                processes += process_rows(t, node, g.index, cluster, procs)
        h = r.host
        if h is not None:
            host.append((t, node, cluster, *_host_values(h), _json(h, _HOST_NESTED)))
        for position, e in enumerate(r.events):
            gi = e.gpu_index
            code = e.code
            event.append(
                (
                    e.time_ns,
                    node,
                    e.kind,
                    ABSENT_KEY if gi is None else gi,
                    ABSENT_KEY if code is None else code,
                    cluster,
                    r.boot_id,
                    r.seq,
                    position,
                    *_event_values(e),
                    _json(e, _EVENT_NESTED),
                )
            )
        a = r.agent
        # An AgentStats field that is not scalar (none today) is kept as "agent.<name>".
        extra = {f"agent.{k}": v for k, v in _nested_items(a, _AGENT_NESTED)}
        agent.append(
            (t, node, *_report_values(r), *_agent_values(a), _json(r, _REPORT_NESTED, extra))
        )
        jobs += job_rows(cluster, node, r.jobs)
    return Batch(gpu, processes, host, event, agent, jobs)


def process_rows(
    t: int, node: str, index: int, cluster: str, processes: Sequence[GpuProcess]
) -> list[Row]:
    """The gpu_process rows of one GPU: ``slot`` is the place in its list, kept on rebuild."""
    return [
        (t, node, index, slot, cluster, *_process_values(p), _json(p, _PROCESS_NESTED))
        for slot, p in enumerate(processes)
    ]


def job_rows(cluster: str, node: str, records: Sequence[JobRecord]) -> list[Row]:
    """The job rows of one report's job records (the GPUs' own shares go into details)."""
    return [
        (
            cluster,
            j.job,
            node,
            j.start_ns,
            *_job_values(j),
            len(j.gpus),
            ",".join(str(g.index) for g in j.gpus),
            _json(j, _JOB_NESTED),
        )
        for j in records
    ]
