"""Bringing an older SQLite store up to ``SCHEMA_VERSION``, one version at a time.

exporters/sqlite.py runs ``MIGRATIONS[v]`` for each version ``v`` from the file's up to
ours, all inside the open's one transaction, so a crash or an error half-way leaves the
file exactly at its old version (and the next open tries again). Each step only adds:
tables, columns, indexes, and rows moved into a new table from where the older layout
kept them, so every report stored before still rebuilds exactly (exporters/
sqlite_reader.py).

Version 3 moved processes out of the gpu rows' ``details`` into ``gpu_process``, and
added the ``job`` table. The step moves what older rows hold (processes; owners into the
new gpu columns; the job records of each report's agent row into ``job``), reading the
rows that have any in pages on the key, so memory stays bounded on a large file; rows
without them are not touched. The rollup rows (gpu_1m) keep their ``details`` as they
are: they are never rebuilt into reports.
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
    moved = (
        "UPDATE gpu SET details = ?, process_count = ?, hpc_job = ?, pod = ?, namespace = ?,"
        " container = ? WHERE time_ns = ? AND node = ? AND gpu_index = ?"
    )
    for time_ns, node, index, cluster, text in _paged(
        con, "gpu", ("time_ns", "node", "gpu_index"), ("cluster", "details"),
        "details LIKE '%\"processes\"%' OR details LIKE '%\"owners\"%'",
    ):  # fmt: skip
        details = json.loads(text)
        procs = details.pop("processes", None)
        owners = convert(details.get("owners"), list[GpuOwner] | None)
        count = None
        if procs is not None:
            count = len(procs)
            rows = process_rows(time_ns, node, index, cluster, convert(procs, list[GpuProcess]))
            con.executemany(GPU_PROCESS.insert(), rows)
        rest = encode_json(details).decode() if details else None
        con.execute(moved, (rest, count, *owner_labels(owners), time_ns, node, index))
    for _time, node, cluster, text in _paged(
        con, "agent", ("time_ns", "node"), ("cluster", "details"), "details LIKE '%\"jobs\"%'"
    ):
        records = convert(json.loads(text).get("jobs", []), list[JobRecord])
        con.executemany(JOB.insert(), job_rows(cluster, node, records))


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
