"""The embedded SQLite store: the default sink, and what ``export`` and ``jobs`` read.

The exporters/sqlite*.py modules are the only ones that import sqlite3: this one (the
sink), sqlite_schema.py (the raw tables, derived from the wire model), sqlite_rollup.py
(the 1-minute rollups), sqlite_upkeep.py (expiry and rollups, in chunks),
sqlite_migrate.py (older files brought up to date) and sqlite_reader.py (reading back,
for ``export``, ``jobs`` and tests). The connection lives on one
Worker thread for its whole life (sqlite3 objects belong to the thread that made them,
and every call blocks on disk), so the event loop only awaits.

Durability: WAL with ``synchronous=FULL``, because the aggregator moves this sink's cursor
past a batch as soon as ``write`` returns, so a committed batch must survive power loss.
A batch is one ``BEGIN IMMEDIATE`` transaction (the write lock is taken up front, so a
busy database fails before anything is written, never half-way) and every row is keyed
by what identifies it, written with INSERT OR REPLACE: writing a batch again after a
crash gives the same rows, also once they were rolled up (``drop_rolled`` in
exporters/sqlite_rollup.py).

Retention and downsampling: gpu and host rows older than ``raw_days`` (default 2) become
1-minute rollups (gpu_1m, host_1m: min, mean, max), and every row older than
``retention_days`` (default 30; rollups included) is deleted. Events and agent rows stay
raw until ``retention_days``: they are small, and the agent table is how loss is counted.
Both are done by one pass that starts at most once per ``retention_every_s`` and is spread
over the following writes, one bounded chunk per step per write, so a first pass over
months of data never stalls one write for long (exporters/sqlite_upkeep.py).

Schema versions: a file of an older version is migrated on open, in one transaction; a
newer one is refused (we would corrupt it).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from exporters.base import SinkError
from exporters.sqlite_migrate import MIGRATIONS, create_table
from exporters.sqlite_reader import SqliteReader
from exporters.sqlite_rollup import ROLLUPS, drop_rolled, rollback
from exporters.sqlite_schema import (
    SCHEMA_VERSION,
    TABLES,
    Row,
    Table,
    to_rows,
)
from exporters.sqlite_upkeep import Options, Retention, options
from telemetryd.codec import encode_json
from telemetryd.workers import Worker, WorkerBusy, WorkerTimeout

if TYPE_CHECKING:
    from telemetryd.config import AggregatorConfig
    from telemetryd.model import Report
    from telemetryd.urls import SinkUrl

log = logging.getLogger(__name__)
T = TypeVar("T")

PAGE_SIZE = 8192
"""Set when the file is created. Rows of the gpu table are ~0.5 KiB and are stored inside
the primary-key b-tree (WITHOUT ROWID); SQLite advises rows under 1/20 of a page for that."""
CACHE_KIB = 64 * 1024  # page cache per connection: index inserts stay in memory
WAL_LIMIT_BYTES = 64 << 20  # the WAL file is truncated back to this after a checkpoint
ALL_TABLES = (*TABLES, *(r.table for r in ROLLUPS))
# Built once: the connection's statement cache is keyed by the SQL text, so each INSERT is
# prepared once per connection and only re-bound for every row after that.
_INSERT = {table.name: table.insert() for table in TABLES}
_DEFAULT = Options()

__all__ = ["SqliteReader", "SqliteSink", "create"]


def create(url: SinkUrl, cfg: AggregatorConfig) -> SqliteSink:
    """The factory registered for ``sqlite:///PATH[?retention_days=N&raw_days=N]``."""
    opts = options(url)
    return SqliteSink(url.path, retention_days=opts.retention_days, raw_days=opts.raw_days)


class SqliteSink:
    """Writes reports to one SQLite file; see the module docstring for the guarantees."""

    def __init__(
        self,
        path: str | Path,
        *,
        retention_days: float = _DEFAULT.retention_days,
        raw_days: float = _DEFAULT.raw_days,
        retention_every_s: float = 3600.0,
        busy_timeout_s: float = 10.0,
        timeout_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        # Shown in logs, metrics and the fleet summary: the file, without the options.
        self.name = f"sqlite://{self.path}"
        self.retention = Retention(retention_days, retention_every_s, raw_days)
        self.busy_timeout_s = busy_timeout_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._worker: Worker[Any] | None = None
        # Touched only on the worker thread:
        self._con: sqlite3.Connection | None = None
        # Touched only on the event loop:
        self._stats = {f"rows_{t.name}": 0 for t in TABLES} | {
            "batches": 0,
            "write_errors": 0,
            "retention_deleted": 0,
            "rollup_rows": 0,
            "retention_passes": 0,
            "retention_errors": 0,
        }

    def stats(self) -> dict[str, int]:
        """Counters for the operator: rows per table, batches, errors, rows expired or rolled up.

        ``rows_<table>``: rows written, less gpu and host rows of a report written again
        after it was rolled up. ``rollup_rows``: raw rows rolled into gpu_1m and host_1m.
        """
        return dict(self._stats)

    async def open(self) -> None:
        """Create the file, its directory and tables; SinkError if that cannot be done."""
        await self._call(self._open_sync, "sqlite open")

    async def write(self, reports: Sequence[Report]) -> None:
        """Write a batch in one transaction; SinkError (nothing written) on any failure."""
        if not reports:
            return
        try:
            rows, step = await self._call(partial(self._write_sync, reports), "sqlite write")
        except SinkError:
            self._stats["write_errors"] += 1
            raise
        self._stats["batches"] += 1
        for name, n in rows.items():
            self._stats[f"rows_{name}"] += n
        self._count_retention(step)

    async def prune(self) -> int:
        """Run a whole pass (expiry and rollups) now, whatever the schedule; rows deleted."""
        step = await self._call(self._prune_sync, "sqlite retention")
        self._count_retention(step)
        return step.deleted

    async def close(self) -> None:
        """Close the connection on its thread; safe after a failed or no ``open``."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        try:
            await worker.run(self._close_sync, "sqlite close", self.timeout_s)
        except (WorkerBusy, WorkerTimeout, sqlite3.Error) as exc:
            # Committed batches are safe in the WAL; SQLite recovers it on the next open.
            # A stuck call keeps its own reference; a later open must make a connection
            # on its new thread, not reuse one that belongs to this one.
            log.warning("sqlite %s: not closed cleanly: %s", self.path, exc)
            self._con = None
        finally:
            worker.stop()

    async def _call(self, fn: Callable[[], T], label: str) -> T:
        if self._worker is None:
            self._worker = Worker[Any](f"telemetryd-sqlite-{self.path.name}")
        try:
            result: T = await self._worker.run(fn, label, self.timeout_s)
        except (WorkerBusy, WorkerTimeout) as exc:
            raise SinkError(f"sqlite {self.path}: {exc}") from None
        return result

    def _count_retention(self, step: Progress) -> None:
        self._stats["retention_deleted"] += step.deleted
        self._stats["rollup_rows"] += step.rolled
        self._stats["retention_passes"] += step.passes
        self._stats["retention_errors"] += step.errors

    # --- on the worker thread -------------------------------------------------------

    def _error(self, doing: str, exc: BaseException) -> SinkError:
        text = " ".join(str(exc).split()) or type(exc).__name__
        return SinkError(f"sqlite {self.path}: {doing}: {text}")

    def _open_sync(self) -> sqlite3.Connection:
        if self._con is not None:
            return self._con
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._error("cannot create its directory", exc) from None
        try:
            con = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._error("cannot open", exc) from None
        try:
            _configure(con, self.path)
            _create_schema(con, self.path)
        except sqlite3.Error as exc:
            con.close()
            raise self._error("cannot open", exc) from None
        except BaseException:
            con.close()
            raise
        self._con = con
        return con

    def _write_sync(self, reports: Sequence[Report]) -> tuple[dict[str, int], Progress]:
        con = self._open_sync()
        try:
            batch = to_rows(reports)
            con.execute("BEGIN IMMEDIATE")
            try:
                rolled_before = self.retention.rolled_before_ns(self._clock())
                if rolled_before is not None:
                    batch = drop_rolled(con, batch, rolled_before)
                for table, rows in batch.by_table():
                    if rows:
                        _insert(con, table, rows)
                con.execute("COMMIT")
            except BaseException:
                rollback(con)
                raise
        except (sqlite3.Error, TypeError, ValueError, AttributeError, OverflowError) as exc:
            # We would rather be retried than drop a report: the aggregator keeps the batch.
            raise self._error(f"write of {len(reports)} report(s) failed", exc) from None
        written = {table.name: len(rows) for table, rows in batch.by_table()}
        return written, self._retention_step(con, full=False)

    def _prune_sync(self) -> Progress:
        con = self._open_sync()
        self.retention.make_due()
        return self._retention_step(con, full=True)

    def _retention_step(self, con: sqlite3.Connection, *, full: bool) -> Progress:
        """One chunk per step of an ongoing pass (all of the pass if ``full``).

        Failures are logged and counted, not raised: the batch is already committed, and
        the next step retries. A clock that went back starts a pass instead of waiting.
        """
        plan = self.retention
        if not plan.begin(self._clock()):
            return Progress()
        deleted, rolled = plan.deleted, plan.rolled
        try:
            plan.advance(con, full=full)
            if plan.pending:
                return Progress(plan.deleted - deleted, plan.rolled - rolled)
            plan.finish(con)
        except sqlite3.Error as exc:
            rollback(con)
            log.warning("sqlite %s: retention: %s (retried on a later write)", self.path, exc)
            return Progress(plan.deleted - deleted, plan.rolled - rolled, errors=1)
        if plan.deleted or plan.rolled:
            log.info(
                "sqlite %s: retention deleted %d rows, rolled up %d",
                self.path,
                plan.deleted,
                plan.rolled,
            )
        return Progress(plan.deleted - deleted, plan.rolled - rolled, passes=1)

    def _close_sync(self) -> None:
        con, self._con = self._con, None
        if con is None:
            return
        try:
            con.execute("PRAGMA optimize")  # cheap; keeps the planner's statistics useful
        finally:
            con.close()


def _configure(con: sqlite3.Connection, path: Path) -> None:
    if con.execute("PRAGMA page_count").fetchone()[0] == 0:
        # Only possible before the first table exists: an empty file becomes ours.
        # page_size first: set after auto_vacuum, SQLite 3.40 silently keeps 4096.
        con.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        con.execute("PRAGMA auto_vacuum = INCREMENTAL")
    mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise SinkError(
            f"sqlite {path}: cannot use WAL journal mode (got {mode}); "
            "keep the database on a local filesystem"
        )
    con.execute("PRAGMA synchronous = FULL")
    con.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    con.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")


def _create_schema(con: sqlite3.Connection, path: Path) -> None:
    """Create, migrate or check the tables in one transaction: a crash leaves no half schema."""
    con.execute("BEGIN IMMEDIATE")
    try:
        version = _check_version(con, path)
        if version:
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](con)
                version += 1
                log.info("sqlite %s: migrated to schema version %d", path, version)
        for table in ALL_TABLES:
            create_table(con, table)
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        con.execute("COMMIT")
    except BaseException:
        rollback(con)
        raise


def _check_version(con: sqlite3.Connection, path: Path) -> int:
    """The file's schema version; refuse one another program or a newer telemetryd made."""
    version: int = con.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SinkError(
            f"sqlite {path}: database schema version {version} is newer than this "
            f"telemetryd understands ({SCHEMA_VERSION}); upgrade telemetryd or use "
            "another file"
        )
    if version == 0 and con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        raise SinkError(
            f"sqlite {path}: has tables but no telemetryd schema version; not a telemetryd database"
        )
    if 0 < version < SCHEMA_VERSION and version not in MIGRATIONS:
        raise SinkError(
            f"sqlite {path}: database schema version {version} has no migration to {SCHEMA_VERSION}"
        )
    return version


def _insert(con: sqlite3.Connection, table: Table, rows: list[Row]) -> None:
    sql = _INSERT[table.name]
    try:
        con.executemany(sql, rows)
    except OverflowError:
        # A counter past 2**63 (the wire allows uint64) does not fit an SQLite INTEGER;
        # stored as REAL it keeps its magnitude, where refusing it would block the sink
        # forever, and its exact value goes into details. Rows already inserted by the
        # first attempt are simply replaced.
        con.executemany(sql, [fit_int64(table, row) for row in rows])


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def fit_int64(table: Table, row: Row) -> Row:
    """``row`` with integers beyond SQLite's 64-bit INTEGER as REAL (rare: the slow path).

    The column keeps the magnitude, for queries; the exact integer goes into ``details``
    under the column's name, for the reader. Every table's last column is ``details``.
    """
    names = [name for name, _ in table.all_columns()]
    exact = {
        names[i]: v
        for i, v in enumerate(row)
        if type(v) is int and not _INT64_MIN <= v <= _INT64_MAX
    }
    if not exact:
        return row
    details = json.loads(row[-1]) if row[-1] else {}
    details.update(exact)
    fitted = tuple(float(v) if names[i] in exact else v for i, v in enumerate(row[:-1]))
    return (*fitted, encode_json(details).decode())


@dataclass(frozen=True, slots=True)
class Progress:
    """What one retention step did: rows deleted, raw rows rolled up, passes ended, errors."""

    deleted: int = 0
    rolled: int = 0
    passes: int = 0
    errors: int = 0
