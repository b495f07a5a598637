"""Bringing an older SQLite store up to ``SCHEMA_VERSION``, one version at a time.

exporters/sqlite.py runs ``MIGRATIONS[v]`` for each version ``v`` from the file's up to
ours, all inside the open's one transaction, so a crash or an error half-way leaves the
file exactly at its old version (and the next open tries again). Each step only adds:
tables, columns, indexes, and rows moved into a new table from where the older layout
kept them, so every report stored before still rebuilds exactly (exporters/
sqlite_reader.py).

Version 3 moved processes out of the gpu rows' ``details`` into ``gpu_process``, and
added the ``job`` table. The step moves what older rows hold (processes; owners into the
new gpu columns; the job records of each report's agent row into ``job``); rows without
them are not touched. Processes are in most gpu rows, so they are moved by SQLite's JSON
functions in a few statements (measured on 2 cores, 90,000 gpu rows with process lists,
120,000 processes: 3.1 s, against 8.5 s row by row in Python, which at a million rows
would outlast the sink's 60 s open); owners and job records are rare (only agents of the
issue 7 foundation sent them) and go through Python, reading pages on the key so memory
stays bounded.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

from exporters.owners import owner_labels
from exporters.sqlite_rollup import ROLLUPS
from exporters.sqlite_schema import (
    EVENT,
    GPU,
    GPU_PROCESS,
    JOB,
    PROCESS_FIELDS,
    Table,
    job_rows,
    process_rows,
    quote,
)
from telemetryd.codec import convert, encode_json
from telemetryd.model import GpuOwner, GpuProcess, JobRecord

PAGE = 1000  # rows read per query while moving details into tables


def create_table(con: sqlite3.Connection, table: Table) -> None:
    """Create the table and its indexes if missing, and add the columns it lacks."""
    for statement in table.create():
        con.execute(statement)
    have = {row[1] for row in con.execute(f"PRAGMA table_info({table.name})")}
    for name, kind in table.columns:
        if name not in have:  # a field the model gained since the file was made
            con.execute(f"ALTER TABLE {table.name} ADD COLUMN {quote(name)} {kind}")


def _to_2(con: sqlite3.Connection) -> None:
    """1 to 2: the rollup tables; event ``position``, ``details`` and (boot_id, seq) index.

    Only additions: every row keeps its values. Events stored by version 1 have no
    position; the reader returns those of one report in key order.
    """
    for rollup in ROLLUPS:
        create_table(con, rollup.table)
    create_table(con, EVENT)


def _to_3(con: sqlite3.Connection) -> None:
    """2 to 3: gpu_process and job; processes and owners leave the gpu rows' details."""
    for table in (GPU, GPU_PROCESS, JOB):
        create_table(con, table)
    if has_json(con):
        _move_processes_in_sql(con)
    else:
        _move_processes(con)
    for time_ns, node, index, text in _paged(
        con, "gpu", ("time_ns", "node", "gpu_index"), ("details",), _LIKE.format("owners")
    ):
        owners = convert(json.loads(text).get("owners"), list[GpuOwner] | None)
        con.execute(
            "UPDATE gpu SET hpc_job = ?, pod = ?, namespace = ?, container = ?"
            " WHERE time_ns = ? AND node = ? AND gpu_index = ?",
            (*owner_labels(owners), time_ns, node, index),
        )
    for _time, node, cluster, text in _paged(
        con, "agent", ("time_ns", "node"), ("cluster", "details"), _LIKE.format("jobs")
    ):
        records = convert(json.loads(text).get("jobs", []), list[JobRecord])
        con.executemany(JOB.insert(), job_rows(cluster, node, records))


_LIKE = "details LIKE '%\"{}\"%'"
"""Rows that may hold the key (a string value could say it too: each step checks)."""
_HAS_PROCESSES = f"{_LIKE.format('processes')} AND json_type(details, '$.processes') = 'array'"


def has_json(con: sqlite3.Connection) -> bool:
    """Whether this SQLite has its JSON functions (built in since 3.38, usual before)."""
    try:
        con.execute("SELECT json_type('[]')").fetchone()
    except sqlite3.OperationalError:
        return False
    return True


def _move_processes_in_sql(con: sqlite3.Connection) -> None:
    """The processes of every gpu row into gpu_process, inside SQLite (see the module doc).

    Integers and text come out of JSON exactly. Floats are taken from Python's parse
    instead, as SQLite's text-to-double conversion is not promised to round the same way
    (none in practice: version 2 never stored a process field that is a float). The rest
    of ``details`` is rewritten by ``json_remove``, which keeps every other value's text.
    """
    names = PROCESS_FIELDS.names()
    values = ", ".join(f"json_extract(p.value, '$.{name}')" for name in names)
    found = "FROM gpu AS g, json_each(g.details, '$.processes') AS p WHERE " + (
        _HAS_PROCESSES.replace("details", "g.details")
    )
    con.execute(
        f"INSERT INTO gpu_process (time_ns, node, gpu_index, slot, cluster, "
        f"{', '.join(map(quote, names))}) "
        f"SELECT g.time_ns, g.node, g.gpu_index, p.key, g.cluster, {values} {found}"
    )
    floats = [name for name, kind in PROCESS_FIELDS.scalars if kind is float]
    if floats:
        present = " OR ".join(f"json_extract(p.value, '$.{name}') IS NOT NULL" for name in floats)
        sets = ", ".join(f"{quote(name)} = ?" for name in floats)
        found_floats = con.execute(
            f"SELECT g.time_ns, g.node, g.gpu_index, p.key, p.value {found} AND ({present})"
        ).fetchall()
        con.executemany(
            f"UPDATE gpu_process SET {sets} WHERE time_ns = ? AND node = ? "  # noqa: S608
            "AND gpu_index = ? AND slot = ?",
            [(*(json.loads(text).get(n) for n in floats), *key) for *key, text in found_floats],
        )
    con.execute(
        "UPDATE gpu SET process_count = json_array_length(details, '$.processes'), "  # noqa: S608
        "details = nullif(json_remove(details, '$.processes'), '{}') WHERE " + _HAS_PROCESSES
    )


def _move_processes(con: sqlite3.Connection) -> None:
    """The same, row by row in Python, for an SQLite built without its JSON functions."""
    for time_ns, node, index, cluster, text in _paged(
        con, "gpu", ("time_ns", "node", "gpu_index"), ("cluster", "details"),
        _LIKE.format("processes"),
    ):  # fmt: skip
        details = json.loads(text)
        procs = details.pop("processes", None)
        if procs is None:
            continue
        rows = process_rows(time_ns, node, index, cluster, convert(procs, list[GpuProcess]))
        con.executemany(GPU_PROCESS.insert(), rows)
        con.execute(
            "UPDATE gpu SET details = ?, process_count = ? "
            "WHERE time_ns = ? AND node = ? AND gpu_index = ?",
            (encode_json(details).decode() if details else None, len(procs), time_ns, node, index),
        )


def _paged(
    con: sqlite3.Connection, table: str, key: tuple[str, ...], columns: tuple[str, ...], where: str
) -> Iterator[Any]:
    """(key..., columns...) of the rows matching ``where``, read a page at a time.

    Each page is fetched whole before the caller changes those rows, and the next starts
    after the last key, so rows updated meanwhile are neither skipped nor seen twice.
    """
    after: tuple[object, ...] | None = None
    names = ", ".join((*key, *columns))
    while True:
        clause = f"({where})"
        args: list[object] = []
        if after is not None:
            clause += f" AND ({', '.join(key)}) > ({', '.join('?' * len(key))})"
            args += after
        page = con.execute(
            f"SELECT {names} FROM {table} WHERE {clause} ORDER BY {', '.join(key)} LIMIT ?",  # noqa: S608
            [*args, PAGE],
        ).fetchall()
        yield from page
        if len(page) < PAGE:
            return
        after = tuple(page[-1][: len(key)])


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _to_2, 2: _to_3}
"""From each older version to the next, run in order inside the open's transaction."""
