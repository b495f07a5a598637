"""The embedded SQLite store: the default sink, and what ``export`` and ``jobs`` read.

The only module that imports sqlite3. The connection lives on one Worker thread for its
whole life (sqlite3 objects belong to the thread that made them, and every call blocks on
disk), so the event loop only awaits. The tables come from exporters/sqlite_schema.py.

Durability: WAL with ``synchronous=FULL``, because the aggregator moves this sink's cursor
past a batch as soon as ``write`` returns, so a committed batch must survive power loss.
A batch is one ``BEGIN IMMEDIATE`` transaction (the write lock is taken up front, so a
busy database fails before anything is written, never half-way) and every row is keyed
by what identifies it, written with INSERT OR REPLACE: writing a batch again after a
crash gives the same rows.

Retention: rows older than ``retention_days`` are deleted by a pass that starts at most
once per ``retention_every_s`` and is spread over the following writes, one bounded chunk
per table per write, so a first pass over months of data never stalls one write for long.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from exporters.base import SinkError
from exporters.sqlite_schema import (
    ABSENT_KEY,
    SCHEMA_VERSION,
    TABLES,
    Retention,
    Row,
    fit_int64,
    quote,
    retention_days,
    to_rows,
    where,
)
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
CHUNK_ROWS = 10_000  # rows per table deleted by one retention step
LARGE_DELETE_ROWS = 100_000  # a retention pass past this truncates the WAL afterwards
VACUUM_PAGES_MAX = 8192  # pages (64 MiB) handed back to the filesystem per pass, at most
# Built once: the connection's statement cache is keyed by the SQL text, so each INSERT is
# prepared once per connection and only re-bound for every row after that.
_INSERT = {table.name: table.insert() for table in TABLES}


def create(url: SinkUrl, cfg: AggregatorConfig) -> SqliteSink:
    """The factory registered for ``sqlite:///PATH[?retention_days=N]``."""
    return SqliteSink(url.path, retention_days=retention_days(url))


class SqliteSink:
    """Writes reports to one SQLite file; see the module docstring for the guarantees."""

    def __init__(
        self,
        path: str | Path,
        *,
        retention_days: float = 7.0,
        retention_every_s: float = 3600.0,
        busy_timeout_s: float = 10.0,
        timeout_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        # Shown in logs, metrics and the fleet summary: the file, without the options.
        self.name = f"sqlite://{self.path}"
        self.retention = Retention(retention_days, retention_every_s)
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
            "retention_passes": 0,
            "retention_errors": 0,
        }

    def stats(self) -> dict[str, int]:
        """Counters for the operator: rows per table, batches, errors, retention deletes."""
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
        """Run a whole retention pass now, whatever the schedule; the rows deleted."""
        step = await self._call(self._prune_sync, "sqlite retention")
        self._count_retention(step)
        return step[0]

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

    def _count_retention(self, step: tuple[int, int, int]) -> None:
        deleted, passes, errors = step
        self._stats["retention_deleted"] += deleted
        self._stats["retention_passes"] += passes
        self._stats["retention_errors"] += errors

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

    def _write_sync(self, reports: Sequence[Report]) -> tuple[dict[str, int], tuple[int, int, int]]:
        con = self._open_sync()
        try:
            batch = to_rows(reports)
            con.execute("BEGIN IMMEDIATE")
            try:
                for table, rows in batch.by_table():
                    if rows:
                        _insert(con, _INSERT[table.name], rows)
                con.execute("COMMIT")
            except BaseException:
                _rollback(con)
                raise
        except (sqlite3.Error, TypeError, ValueError, AttributeError, OverflowError) as exc:
            # We would rather be retried than drop a report: the aggregator keeps the batch.
            raise self._error(f"write of {len(reports)} report(s) failed", exc) from None
        written = {table.name: len(rows) for table, rows in batch.by_table()}
        return written, self._retention_step(con, full=False)

    def _prune_sync(self) -> tuple[int, int, int]:
        con = self._open_sync()
        self.retention.make_due()
        return self._retention_step(con, full=True)

    def _retention_step(self, con: sqlite3.Connection, *, full: bool) -> tuple[int, int, int]:
        """Delete one chunk per table of an ongoing pass; (deleted, passes ended, errors).

        Failures are logged and counted, not raised: the batch is already committed, and
        the next step retries. A clock that went back starts a pass instead of waiting.
        """
        plan = self.retention
        if not plan.begin(self._clock()):
            return 0, 0, 0
        deleted = 0
        try:
            while plan.pending:
                for table in list(plan.pending):
                    n, done = _delete_chunk(con, table.name, plan.cutoff_ns)
                    deleted += n
                    if done:
                        plan.pending.remove(table)
                if not full:
                    break
            plan.deleted += deleted
            if plan.pending:
                return deleted, 0, 0
            shrunk = _give_back_space(con)
            if shrunk or plan.deleted >= LARGE_DELETE_ROWS:
                # Copies the WAL into the file (which is when it shrinks) and truncates it.
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            _rollback(con)
            log.warning("sqlite %s: retention: %s (retried on a later write)", self.path, exc)
            return deleted, 0, 1
        if plan.deleted:
            log.info("sqlite %s: retention deleted %d rows", self.path, plan.deleted)
        return deleted, 1, 0

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
    """Create or check the tables in one transaction, so a crash leaves no half schema."""
    con.execute("BEGIN IMMEDIATE")
    try:
        _check_version(con, path)
        for table in TABLES:
            for statement in table.create():
                con.execute(statement)
            have = {row[1] for row in con.execute(f"PRAGMA table_info({table.name})")}
            for name, kind in table.columns:
                if name not in have:  # a field the model gained since the file was made
                    con.execute(f"ALTER TABLE {table.name} ADD COLUMN {quote(name)} {kind}")
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        con.execute("COMMIT")
    except BaseException:
        _rollback(con)
        raise


def _check_version(con: sqlite3.Connection, path: Path) -> None:
    """Refuse a file another program or a newer telemetryd made: we would corrupt it."""
    version = con.execute("PRAGMA user_version").fetchone()[0]
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
    if 0 < version < SCHEMA_VERSION:
        raise SinkError(
            f"sqlite {path}: database schema version {version} has no migration to {SCHEMA_VERSION}"
        )


def _insert(con: sqlite3.Connection, sql: str, rows: list[Row]) -> None:
    try:
        con.executemany(sql, rows)
    except OverflowError:
        # A counter past 2**63 (the wire allows uint64) does not fit an SQLite INTEGER;
        # stored as REAL it keeps its magnitude, where refusing it would block the sink
        # forever. Rows already inserted by the first attempt are simply replaced.
        con.executemany(sql, [fit_int64(row) for row in rows])


def _rollback(con: sqlite3.Connection) -> None:
    # SQLite rolls back by itself on some errors (disk full, I/O); then there is nothing to do.
    if con.in_transaction:
        try:
            con.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.warning("sqlite rollback failed: %s", exc)


def _delete_chunk(con: sqlite3.Connection, table: str, cutoff_ns: int) -> tuple[int, bool]:
    """Delete up to about CHUNK_ROWS rows older than ``cutoff_ns``; (deleted, table done).

    WITHOUT ROWID tables have no rowid to page through, so the chunk is a time bound: the
    time of the CHUNK_ROWS-th oldest expired row, found on the key (time_ns comes first).
    """
    con.execute("BEGIN IMMEDIATE")
    try:
        bound = con.execute(
            f"SELECT time_ns FROM {table} WHERE time_ns < ? ORDER BY time_ns LIMIT 1 OFFSET ?",  # noqa: S608
            (cutoff_ns, CHUNK_ROWS),
        ).fetchone()
        if bound is None:
            n = con.execute(f"DELETE FROM {table} WHERE time_ns < ?", (cutoff_ns,)).rowcount  # noqa: S608
        else:
            n = con.execute(f"DELETE FROM {table} WHERE time_ns <= ?", (bound[0],)).rowcount  # noqa: S608
        con.execute("COMMIT")
    except BaseException:
        _rollback(con)
        raise
    return n, bound is None


def _give_back_space(con: sqlite3.Connection) -> bool:
    """Return free pages to the filesystem once a quarter of the file is free.

    Pages freed by steady retention are reused by new rows, so shrinking the file each
    hour would only grow it again; a large free share means retention was shortened or
    nodes retired, and then the space is worth returning, a bounded slice per pass.
    """
    free = con.execute("PRAGMA freelist_count").fetchone()[0]
    pages = con.execute("PRAGMA page_count").fetchone()[0]
    if free <= pages // 4:
        return False
    # Not execute(): through it the pragma frees one page and stops; executescript steps
    # it to the end.
    con.executescript(f"PRAGMA incremental_vacuum({min(free, VACUUM_PAGES_MAX)});")
    return True


class SqliteReader:
    """Read-only access to a sink's file, for tests, ``telemetryd export`` and ``jobs``.

    Rows come back as dicts of column name to stored value: bools as 0/1, absent as None,
    ``clock_event_reasons`` comma-joined, lists and dicts as the JSON text in ``details``.
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        uri = self.path.resolve().as_uri() + "?mode=ro"
        try:
            self._con = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s)
            self._con.row_factory = sqlite3.Row
            version = self._con.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise SinkError(f"sqlite {self.path}: cannot open for reading: {exc}") from None
        if version != SCHEMA_VERSION:
            self._con.close()
            raise SinkError(
                f"sqlite {self.path}: schema version {version}, this telemetryd reads "
                f"{SCHEMA_VERSION}" + (" (not a telemetryd database?)" if version == 0 else "")
            )

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        try:
            return [dict(row) for row in self._con.execute(sql, args)]
        except sqlite3.Error as exc:
            raise SinkError(f"sqlite {self.path}: read failed: {exc}") from None

    def report_keys(self) -> set[tuple[str, str, int]]:
        """(node, boot_id, seq) of every report stored: what loss tests count against."""
        rows = self._rows("SELECT node, boot_id, seq FROM agent")
        return {(r["node"], r["boot_id"], r["seq"]) for r in rows}

    def gpu_rows(
        self, node: str | None = None, since_ns: int | None = None
    ) -> list[dict[str, Any]]:
        """GPU rows, oldest first, optionally of one node and from a time on."""
        clause, args = where(node=node, since_ns=since_ns)
        sql = f"SELECT * FROM gpu{clause} ORDER BY time_ns, node, gpu_index"  # noqa: S608
        return self._rows(sql, args)

    def events(self, node: str | None = None) -> list[dict[str, Any]]:
        """Events, oldest first; absent gpu_index and code are None again."""
        clause, args = where(node=node, since_ns=None)
        sql = f"SELECT * FROM event{clause} ORDER BY time_ns, node"  # noqa: S608
        rows = self._rows(sql, args)
        for row in rows:
            for key in ("gpu_index", "code"):
                if row[key] == ABSENT_KEY:
                    row[key] = None
        return rows

    def counts(self) -> dict[str, int]:
        """Rows per table."""
        counts = {}
        for t in TABLES:
            counts[t.name] = self._rows(f"SELECT count(*) AS n FROM {t.name}")[0]["n"]  # noqa: S608
        return counts

    def close(self) -> None:
        """Release the file."""
        self._con.close()

    def __enter__(self) -> SqliteReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
