"""1-minute rollups of the gpu and host tables, derived from the raw tables, and the SQL.

Raw rows are kept for ``raw_days``; after that, each minute of a GPU (``gpu_1m``, keyed
``(minute_ns, node, gpu_index)``) or a node (``host_1m``, keyed ``(minute_ns, node)``)
becomes one row: for every numeric column ``min_<col>``, ``mean_<col>`` and ``max_<col>``,
for every other column (text, bools, ``details``) its value in the minute's last sample,
``samples`` (the raw rows rolled in) and ``last_ns`` (the time of the last of them). At a
10 s interval that is six rows into one, and months of history stay queryable.

Why the statistic comes first: as a suffix, the maximum of ``pcie_gen`` would be called
``pcie_gen_max``, the name of another field of the model (the GPU's highest generation),
and a query written against the raw table would read the wrong value without noticing.
``max_pcie_gen`` cannot be mistaken, and it is what InfluxDB's own downsampling
(``SELECT max(*) ... INTO``) calls it. ``rollup_of`` refuses any name a raw column has.

Why derived: the rollup columns come from the raw table's definition (exporters/
sqlite_schema.py, itself derived from the wire model), so a field the model gains is
rolled up without anybody listing it. Bools are INTEGER in SQLite; the table says which.

Why merge, never replace: an agent that drains a spool days old sends raw rows for minutes
that were rolled up long ago. They are stored raw like any other and rolled up by the next
pass into the existing row: min of the mins, max of the maxes, the means weighted by
samples, samples summed, the kept values of whichever part has the later sample. The
weighting is by rows: where a column was NULL in part of a minute on one side (a GPU that
failed for a few samples) the merged mean counts those rows too; a minute rolled in one
piece, the normal case, is exact. Rows rolled up are deleted from the raw table in the
same transaction, so a crash never counts a row twice or loses it. A batch written again
after it was rolled up (the aggregator replays from its cursor after a crash) would count
twice; ``drop_rolled`` keeps those rows out (see there).

Process rows (gpu_process) have no rollup: a pid averaged over a minute means nothing.
They are deleted with the raw gpu rows they belong to, in the same transaction, so they
are kept ``raw_days``: pids are the short-retention data ../DESIGN.md asks for.

Events and agent rows are never rolled up: they are small, the agent table is how loss is
counted (one row per report), and both stay raw until ``retention_days``.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass

from exporters.sqlite_schema import (
    AGENT,
    GPU,
    GPU_PROCESS,
    HOST,
    Batch,
    Row,
    Table,
    check_names,
    quote,
)

log = logging.getLogger(__name__)
MINUTE_NS = 60 * 10**9
_NUMERIC = ("INTEGER", "REAL")
_STATS = (("min", None), ("mean", "REAL"), ("max", None))
"""The columns each numeric column becomes: prefix, SQL type (None: the source's)."""


def stat_column(stat: str, column: str) -> str:
    """The rollup column holding ``stat`` (min, mean, max) of a raw ``column``."""
    return f"{stat}_{column}"


def minute(time_ns: int) -> int:
    """The start of the minute ``time_ns`` falls in."""
    return time_ns - time_ns % MINUTE_NS


@dataclass(frozen=True, slots=True)
class Rollup:
    """A rollup table and where its columns come from."""

    table: Table
    source: Table
    numeric: tuple[str, ...]
    """Source columns rolled up as min, mean and max."""
    kept: tuple[str, ...]
    """Source columns whose last value in the minute is kept (text, bools, details)."""
    companions: tuple[Table, ...] = ()
    """Tables of rows that belong to a source row (same time and node) and have no rollup
    of their own: deleted with it, in the same transaction, so a report never comes back
    with its GPUs but not their processes, or the other way round."""

    def upsert(self) -> str:
        """Roll the raw rows of ``[?, ?)`` up, merging into rows already there."""
        src, t = self.source, quote(self.source.time)
        group = [quote(name) for name, _ in src.key[1:]]
        aggregates = ["count(*) AS samples", f"max({t}) AS last_ns"]
        for col in self.numeric:
            q = quote(col)
            aggregates += [
                f"min({q}) AS {quote(stat_column('min', col))}",
                f"avg({q}) AS {quote(stat_column('mean', col))}",
                f"max({q}) AS {quote(stat_column('max', col))}",
            ]
        stats = [stat_column(s, col) for col in self.numeric for s, _ in _STATS]
        into = ["minute_ns", *(n for n, _ in src.key[1:]), "samples", "last_ns"]
        into += [*self.kept, *stats]
        select = ["a.minute_ns", *(f"a.{g}" for g in group), "a.samples", "a.last_ns"]
        select += [f"r.{quote(c)}" for c in self.kept] + [f"a.{quote(c)}" for c in stats]
        join = " AND ".join([f"r.{t} = a.last_ns", *(f"r.{g} = a.{g}" for g in group)])
        # The kept values come from the minute's last row, found on the raw key. (A bare
        # column beside max() would do it, but not beside the other min()s and max()es.)
        # "WHERE true": SQLite needs a WHERE before ON CONFLICT to parse an INSERT ... SELECT.
        return (
            f"INSERT INTO {self.table.name} ({', '.join(map(quote, into))})\n"  # noqa: S608
            f"SELECT {', '.join(select)} FROM (\n"
            f"  SELECT {t} / {MINUTE_NS} * {MINUTE_NS} AS minute_ns, {', '.join(group)},\n"
            f"    {', '.join(aggregates)}\n"
            f"  FROM {src.name} WHERE {t} >= ? AND {t} < ?\n"
            f"  GROUP BY minute_ns, {', '.join(group)}\n"
            f") AS a JOIN {src.name} AS r ON {join}\nWHERE true\n"
            f"ON CONFLICT ({', '.join(map(quote, into[: len(src.key)]))}) DO UPDATE SET\n  "
            + ",\n  ".join(self._merge())
        )

    def _merge(self) -> list[str]:
        """SET clauses merging the new part (``excluded``) into the stored row.

        In an UPDATE every expression sees the stored row as it was, so ``samples`` below
        is the old count everywhere.
        """
        sets = ["samples = samples + excluded.samples", "last_ns = max(last_ns, excluded.last_ns)"]
        for col in self.kept:
            q = quote(col)
            sets.append(
                f"{q} = CASE WHEN excluded.last_ns >= last_ns THEN excluded.{q} ELSE {q} END"
            )
        for col in self.numeric:
            lo, mean, hi = (quote(stat_column(s, col)) for s, _ in _STATS)
            # min()/max() of two values is NULL if either is: a column absent on one side.
            sets.append(f"{lo} = coalesce(min({lo}, excluded.{lo}), {lo}, excluded.{lo})")
            sets.append(f"{hi} = coalesce(max({hi}, excluded.{hi}), {hi}, excluded.{hi})")
            sets.append(
                f"{mean} = CASE WHEN excluded.{mean} IS NULL THEN {mean}"
                f" WHEN {mean} IS NULL THEN excluded.{mean}"
                f" ELSE ({mean} * samples + excluded.{mean} * excluded.samples)"
                f" / (samples + excluded.samples) END"
            )
        return sets


def rollup_of(source: Table, companions: tuple[Table, ...] = ()) -> Rollup:
    """The 1-minute rollup of a raw table keyed (time_ns, ...)."""
    numeric: list[str] = []
    kept: list[str] = []
    columns: list[tuple[str, str]] = [("samples", "INTEGER"), ("last_ns", "INTEGER")]
    for name, kind in source.columns:
        if kind in _NUMERIC and name not in source.booleans:
            numeric.append(name)
            columns += [(stat_column(s, name), stat or kind) for s, stat in _STATS]
        else:
            kept.append(name)
            columns.append((name, kind))
    time = source.time
    table = Table(
        f"{source.name}_1m",
        key=(("minute_ns", "INTEGER"), *source.key[1:]),
        columns=tuple(columns),
        indexes=tuple(
            tuple("minute_ns" if col == time else col for col in index) for index in source.indexes
        ),
        booleans=source.booleans,
    )
    check_names(table)
    raw = {name for name, _ in source.all_columns()}
    reused = sorted({stat_column(s, n) for n in numeric for s, _ in _STATS} & raw)
    if reused:
        raise TypeError(
            f"sqlite table {table.name}: rollup column(s) named like raw ones: {reused}"
        )
    return Rollup(table, source, tuple(numeric), tuple(kept), companions)


GPU_1M = rollup_of(GPU, companions=(GPU_PROCESS,))
HOST_1M = rollup_of(HOST)
ROLLUPS = (GPU_1M, HOST_1M)
_UPSERT = {r.table.name: r.upsert() for r in ROLLUPS}


def roll_chunk(
    con: sqlite3.Connection, rollup: Rollup, lo_ns: int, hi_ns: int, limit: int
) -> tuple[int, bool]:
    """Roll up about ``limit`` raw rows of ``[lo_ns, hi_ns)``; (rows rolled, range done).

    Whole minutes only, so that a minute is normally rolled in one piece (exact means):
    the chunk ends at the minute of the ``limit``-th row, or after the first minute if
    that alone holds more rows. ``hi_ns`` is a minute boundary.
    """
    src, t = rollup.source, quote(rollup.source.time)
    con.execute("BEGIN IMMEDIATE")
    try:
        [first] = con.execute(
            f"SELECT min({t}) FROM {src.name} WHERE {t} >= ? AND {t} < ?",  # noqa: S608
            (lo_ns, hi_ns),
        ).fetchone()
        if first is None:
            _delete(con, rollup.companions, lo_ns, hi_ns)
            con.execute("COMMIT")
            return 0, True
        bound = con.execute(
            f"SELECT {t} FROM {src.name} WHERE {t} >= ? AND {t} < ? ORDER BY {t} LIMIT 1 OFFSET ?",  # noqa: S608
            (first, hi_ns, limit),
        ).fetchone()
        end = (
            hi_ns if bound is None else min(hi_ns, max(minute(bound[0]), minute(first) + MINUTE_NS))
        )
        con.execute(_UPSERT[rollup.table.name], (first, end))
        n: int = con.execute(
            f"DELETE FROM {src.name} WHERE {t} >= ? AND {t} < ?",  # noqa: S608
            (first, end),
        ).rowcount
        _delete(con, rollup.companions, lo_ns, end)
        con.execute("COMMIT")
    except BaseException:
        rollback(con)
        raise
    return n, end >= hi_ns


def _delete(con: sqlite3.Connection, tables: tuple[Table, ...], lo_ns: int, hi_ns: int) -> None:
    for table in tables:
        t = quote(table.time)
        con.execute(f"DELETE FROM {table.name} WHERE {t} >= ? AND {t} < ?", (lo_ns, hi_ns))  # noqa: S608


def drop_rolled(con: sqlite3.Connection, batch: Batch, before_ns: int) -> Batch:
    """``batch`` without the gpu, gpu_process and host rows of reports already rolled up.

    A report of ``(time_ns, node)`` was rolled up if its agent row is stored (agent rows
    are never rolled up) but its raw rows are not: writing those again would count them
    twice. Only reports older than ``before_ns`` (the newest rollup bound used) can be in
    that state, so a batch of fresh reports costs no lookup. Runs inside the write's
    transaction, before its inserts.
    """
    return Batch(
        gpu=_unrolled(con, GPU, batch.gpu, before_ns),
        gpu_process=_unrolled(con, GPU, batch.gpu_process, before_ns),
        host=_unrolled(con, HOST, batch.host, before_ns),
        event=batch.event,
        agent=batch.agent,
        job=batch.job,
    )


def _unrolled(con: sqlite3.Connection, source: Table, rows: list[Row], before_ns: int) -> list[Row]:
    old = {(row[0], row[1]) for row in rows if row[0] < before_ns}
    rolled = {key for key in old if _was_rolled(con, source, key)}
    return [row for row in rows if (row[0], row[1]) not in rolled] if rolled else rows


def _was_rolled(con: sqlite3.Connection, source: Table, key: tuple[int, str]) -> bool:
    time_ns, node = key
    [answer] = con.execute(
        f"SELECT EXISTS (SELECT 1 FROM {AGENT.name} WHERE time_ns = ?1 AND node = ?2)"  # noqa: S608
        f" AND NOT EXISTS (SELECT 1 FROM {source.name} WHERE time_ns = ?1 AND node = ?2)",
        (time_ns, node),
    ).fetchone()
    return bool(answer)


def rollback(con: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any, without hiding the error that led here."""
    # SQLite rolls back by itself on some errors (disk full, I/O); then there is nothing to do.
    if con.in_transaction:
        try:
            con.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.warning("sqlite rollback failed: %s", exc)
