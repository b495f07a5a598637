"""What keeps the SQLite file bounded: expiry and rollups, when, and in what chunks.

One schedule for both: a pass starts at most once per ``every_s`` and is a list of steps,
expire each table (rows older than ``retention_days``, rollup tables included) and roll
the gpu and host tables up (raw rows older than ``raw_days``, see exporters/
sqlite_rollup.py). Every write that follows advances each pending step by one bounded
chunk, so a first pass over months of backlog is spread over many writes instead of
stalling one. Expiry and rollups touch disjoint ranges (rollups start at the retention
cutoff), so the steps are independent and can run side by side; both cutoffs are whole
minutes, so a minute is never split between expiry and rollup.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass, fields

from exporters.sqlite_rollup import ROLLUPS, Rollup, minute, roll_chunk, rollback
from exporters.sqlite_schema import TABLES, Table, quote
from telemetryd.urls import SinkUrl, UrlError

CHUNK_ROWS = 10_000  # rows per table deleted, or rolled up, by one step
LARGE_DELETE_ROWS = 100_000  # a pass past this truncates the WAL afterwards
VACUUM_PAGES_MAX = 8192  # pages (64 MiB) handed back to the filesystem per pass, at most
DAY_NS = 86400 * 10**9


@dataclass(frozen=True, slots=True)
class Options:
    """The sink's URL options: ``sqlite:///PATH?retention_days=N&raw_days=N``."""

    retention_days: float = 30.0
    """Every row older than this is deleted; 0 keeps everything."""
    raw_days: float = 2.0
    """GPU and host rows older than this become 1-minute rollups; 0 keeps them raw."""


def options(url: SinkUrl) -> Options:
    """The URL's options, or UrlError naming the option and what was expected.

    Unknown options are refused too, so a misspelt ``retention_day=1`` is not 30 days.
    """
    known = [f.name for f in fields(Options)]
    unknown = sorted({k for k, _ in url.options} - set(known))
    if unknown:
        raise UrlError(
            f"sqlite://{url.path}: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    default = Options()
    return Options(
        retention_days=_days(url, "retention_days", default.retention_days, "keeps everything"),
        raw_days=_days(url, "raw_days", default.raw_days, "keeps every row raw"),
    )


def _days(url: SinkUrl, key: str, default: float, zero: str) -> float:
    raw = url.option(key, str(default))
    try:
        days = float(raw)
    except ValueError:
        days = -1.0
    if not (math.isfinite(days) and days >= 0):
        raise UrlError(
            f"sqlite://{url.path}: {key}={raw!r}; expected a number of days >= 0 (0 {zero})"
        )
    return days


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a pass: expire ``table``, or roll its raw rows into ``rollup``."""

    table: Table
    rollup: Rollup | None = None


class Retention:
    """When a pass is due, its cutoffs, and the steps it still has to take.

    A pass starts at most once per ``every_s`` of the injected wall clock (so tests need
    not wait an hour), or at once when the clock went back rather than waiting for it.
    Rollups are off when ``raw_days`` is 0 or not below ``retention_days`` (0 counting
    as forever): there would be nothing to keep them for.
    """

    def __init__(self, days: float, every_s: float, raw_days: float = 0.0) -> None:
        self.keep_ns = int(days * DAY_NS)
        self.raw_ns = int(raw_days * DAY_NS)
        self.rollups = self.raw_ns > 0 and (self.keep_ns <= 0 or self.raw_ns < self.keep_ns)
        self.every_s = every_s
        self.started = -math.inf
        self.cutoff_ns = 0  # rows older than this are deleted (0: none)
        self.raw_cutoff_ns = 0  # raw rows older than this are rolled up (0: none)
        self.rolled_ns = 0  # the highest raw_cutoff_ns used by any pass
        self.pending: list[Step] = []
        self.deleted = 0  # by the current pass so far
        self.rolled = 0  # raw rows rolled up by the current pass so far

    def begin(self, now: float) -> bool:
        """Start a pass if one is due; True while a pass has steps left to take."""
        if self.pending:
            return True
        if self.keep_ns <= 0 and not self.rollups:
            return False
        if self.started <= now < self.started + self.every_s:
            return False
        self.started = now
        now_ns = int(now * 1e9)
        self.cutoff_ns = minute(now_ns - self.keep_ns) if self.keep_ns > 0 else 0
        self.pending = []
        if self.keep_ns > 0:
            self.pending += [Step(t) for t in (*TABLES, *(r.table for r in ROLLUPS))]
        if self.rollups:
            self.raw_cutoff_ns = minute(now_ns - self.raw_ns)
            self.rolled_ns = max(self.rolled_ns, self.raw_cutoff_ns)
            self.pending += [Step(r.source, r) for r in ROLLUPS]
        self.deleted = self.rolled = 0
        return True

    def make_due(self) -> None:
        """Let the next ``begin`` start a pass whatever the schedule."""
        if not self.pending:
            self.started = -math.inf

    def rolled_before_ns(self, now: float) -> int | None:
        """Raw rows older than this may already be rolled up (None: rollups are off).

        The newest bound a pass has used, or would use now: after a restart no pass has
        run yet, but an earlier process's passes used at most the bound of now.
        """
        if not self.rollups:
            return None
        return max(self.rolled_ns, minute(int(now * 1e9) - self.raw_ns))

    def advance(self, con: sqlite3.Connection, *, full: bool) -> None:
        """One chunk of every pending step (all of them if ``full``), counted as it commits.

        sqlite3.Error propagates; the step that failed stays pending, the next write retries.
        """
        while self.pending:
            for step in list(self.pending):
                if step.rollup is None:
                    n, done = delete_chunk(con, step.table, self.cutoff_ns)
                    self.deleted += n
                else:
                    n, done = roll_chunk(
                        con, step.rollup, self.cutoff_ns, self.raw_cutoff_ns, CHUNK_ROWS
                    )
                    self.rolled += n
                if done:
                    self.pending.remove(step)
            if not full:
                break

    def finish(self, con: sqlite3.Connection) -> None:
        """After the last step: hand free space back, truncate a WAL a large pass grew."""
        shrunk = give_back_space(con)
        if shrunk or self.deleted + self.rolled >= LARGE_DELETE_ROWS:
            # Copies the WAL into the file (which is when it shrinks) and truncates it.
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def delete_chunk(con: sqlite3.Connection, table: Table, cutoff_ns: int) -> tuple[int, bool]:
    """Delete up to about CHUNK_ROWS rows older than ``cutoff_ns``; (deleted, table done).

    WITHOUT ROWID tables have no rowid to page through, so the chunk is a time bound: the
    time of the CHUNK_ROWS-th oldest expired row, found on the key (time comes first) or,
    for the job table, on its ``end_ns`` index.
    """
    name, t = table.name, quote(table.time)
    con.execute("BEGIN IMMEDIATE")
    try:
        bound = con.execute(
            f"SELECT {t} FROM {name} WHERE {t} < ? ORDER BY {t} LIMIT 1 OFFSET ?",  # noqa: S608
            (cutoff_ns, CHUNK_ROWS),
        ).fetchone()
        if bound is None:
            n = con.execute(f"DELETE FROM {name} WHERE {t} < ?", (cutoff_ns,)).rowcount  # noqa: S608
        else:
            n = con.execute(f"DELETE FROM {name} WHERE {t} <= ?", (bound[0],)).rowcount  # noqa: S608
        con.execute("COMMIT")
    except BaseException:
        rollback(con)
        raise
    return n, bound is None


def give_back_space(con: sqlite3.Connection) -> bool:
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
