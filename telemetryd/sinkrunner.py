"""Each sink reads the write-ahead log at its own pace, through its own cursor.

A sink that keeps up takes reports already decoded from memory (the feed keeps the
newest batches); one that lags or restarts reads them back from the WAL. A failed write
is retried with capped, jittered backoff (honouring the store's Retry-After) and never
skipped; reports the store refuses for good go to the dead-letter file with its reason.
The cursor is saved at most once a second, so a restart writes again at most the last
second's batches, which sinks absorb because their writes are idempotent; the WAL is only
released up to the saved cursor. A short batch lingers a moment for company (LINGER_S).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import re
import time
from collections import deque
from pathlib import Path

from exporters.base import LineStats, Sink, SinkError, SinkRejected
from telemetryd.backoff import Backoff
from telemetryd.codec import DecodeError
from telemetryd.deadletter import DeadLetters
from telemetryd.durable import replace_file
from telemetryd.histogram import Histogram
from telemetryd.model import Report, SinkState, decode_report
from telemetryd.service import stopped_within
from telemetryd.wal import Wal

log = logging.getLogger(__name__)

CURSOR_SAVE_S = 1.0
LINGER_S = 0.1


class Feed:
    """Committed reports in order: the newest in memory, all of them in the WAL."""

    def __init__(self, wal: Wal, keep: int = 2048) -> None:
        self.wal = wal
        self._recent: deque[tuple[int, Report]] = deque(maxlen=keep)
        self._changed = asyncio.Event()

    def committed(self, first: int, reports: list[Report]) -> None:
        """Announce a batch that is now durable in the WAL."""
        if self._recent and self._recent[-1][0] + 1 != first:
            self._recent.clear()  # never serve across a gap: read those from the WAL instead
        self._recent.extend(zip(itertools.count(first), reports, strict=False))
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait(self, index: int) -> None:
        """Return once a record at ``index`` exists."""
        while index >= self.wal.next_index:
            await self._changed.wait()

    async def read(self, index: int, max_records: int) -> list[tuple[int, Report | None]]:
        """Up to ``max_records`` committed reports from ``index`` on (waits for the first).

        A record that does not decode (only disk damage can do that: it was validated
        before it was written) comes back as None, so the reader moves past it.
        """
        await self.wait(index)
        if self._recent and self._recent[0][0] <= index:
            offset = index - self._recent[0][0]
            return list(itertools.islice(self._recent, offset, offset + max_records))
        records = await asyncio.to_thread(self.wal.read, index, max_records)
        out: list[tuple[int, Report | None]] = []
        for position, payload in records:
            try:
                out.append((position, decode_report(payload)))
            except DecodeError as exc:
                log.error("WAL record %d does not decode (%s); skipped", position, exc)
                out.append((position, None))
        return out


def cursor_file(directory: Path, name: str) -> Path:
    """Where a sink's cursor is kept: one file per sink, keyed by its name (its location).

    The name, not the whole URL: changing an option such as retention must not make the
    sink start over from the oldest record in the log.
    """
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    kind = re.sub(r"[^A-Za-z0-9_-]", "_", name.split(":", 1)[0])[:32]
    return directory / f"cursor-{kind}-{digest}"


class SinkRunner:
    """Drives one sink from its cursor in the WAL."""

    def __init__(
        self,
        sink: Sink,
        feed: Feed,
        cursor_path: Path,
        deadletters: DeadLetters,
        *,
        batch_size: int,
        retry_max: float = 60.0,
        linger_s: float = LINGER_S,
    ) -> None:
        self.sink = sink
        self.feed = feed
        self.cursor_path = cursor_path
        self.deadletters = deadletters
        self.batch_size = batch_size
        self.retry_max = retry_max
        self.linger_s = linger_s
        self.cursor = self._load_cursor()
        self.saved = self.cursor  # the cursor on disk: the WAL is released only up to here
        self._saved_at = 0.0
        feed.wal.advance_to(self.cursor)  # never let new records take indices we went past
        self.state = SinkState(name=sink.name[:256], state="starting")
        self.write_seconds = Histogram()  # every write attempt, failed ones included

    def _load_cursor(self) -> int:
        try:
            return max(int(self.cursor_path.read_text().strip()), self.feed.wal.first_index)
        except (OSError, ValueError):
            return self.feed.wal.first_index

    def _save_cursor(self) -> None:
        cursor = self.cursor
        replace_file(self.cursor_path, str(cursor).encode())
        self.saved = cursor

    async def _save_cursor_due(self, *, now: bool = False) -> None:
        """Save the cursor at most every CURSOR_SAVE_S (or ``now``).

        A file replace after every write was a thread hop and a rename per batch, most of
        the cost of a quiet aggregator's batch of one report. A cursor older than the
        writes only means a crash writes those reports again, and every store's writes
        are idempotent; the WAL keeps them until the saved cursor is past them.
        """
        loop = asyncio.get_running_loop()
        if now or loop.time() - self._saved_at >= CURSOR_SAVE_S:
            self._saved_at = loop.time()
            await asyncio.to_thread(self._save_cursor)

    def lag(self) -> int:
        """Committed reports this sink has not written yet."""
        return max(0, self.feed.wal.next_index - self.cursor)

    def report(self) -> SinkState:
        """Its state for the fleet summary and /metrics."""
        self.state.lag = self.lag()
        self.state.lag_bytes = self.feed.wal.bytes_from(self.cursor)
        stats = getattr(self.sink, "line_stats", None)
        if stats is not None:
            line_stats: LineStats = stats
            self.state.lines_written = line_stats.lines_written
            self.state.lines_retried = line_stats.lines_retried
            self.state.lines_set_aside = line_stats.lines_set_aside
            self.state.fields_dropped = line_stats.fields_dropped
        return self.state

    async def _open(self, stop: asyncio.Event, backoff: Backoff) -> bool:
        while not stop.is_set():
            try:
                await self.sink.open()
            except SinkError as exc:
                self._failed(exc)
                if await stopped_within(stop, max(backoff.next(), exc.retry_after or 0)):
                    return False
                continue
            backoff.reset()
            self.state.state = "ok"
            return True
        return False

    def _failed(self, exc: SinkError) -> None:
        self.state.state = "retrying"
        self.state.retries += 1
        text = str(exc)
        if self.state.last_error != text[:256]:
            # One line per new problem, naming the sink once (its errors may already do so).
            where = "" if text.startswith(self.sink.name) else f"sink {self.sink.name}: "
            log.warning("%s%s; retrying", where, text)
        self.state.last_error = text[:256]

    async def run(self, stop: asyncio.Event, *, drain_s: float = 3.0) -> None:
        """Write until ``stop``; then keep writing for at most ``drain_s`` to catch up."""
        backoff = Backoff(0.5, self.retry_max)
        draining_until: float | None = None
        loop = asyncio.get_running_loop()
        try:
            if not await self._open(stop, backoff):
                return  # stopped before the store ever answered; still closed below
            while True:
                if stop.is_set():
                    draining_until = draining_until or loop.time() + drain_s
                    if self.lag() == 0 or loop.time() > draining_until:
                        return
                wait = asyncio.ensure_future(self.feed.read(self.cursor, self.batch_size))
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait({wait, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not wait.done():
                    wait.cancel()
                    continue
                items = await self._linger(wait.result(), stop)
                if not items:  # records lost to corruption (or deleted): skip to what exists
                    present = self.feed.wal.next_present(self.cursor)
                    if present > self.cursor:
                        log.error("sink %s: records %d-%d are gone from the WAL; skipped",
                                  self.sink.name, self.cursor, present - 1)  # fmt: skip
                        self.state.skipped += present - self.cursor
                        self.cursor = present
                        await self._save_cursor_due(now=True)
                    else:
                        await asyncio.sleep(0.1)
                    continue
                await self._write(items, stop, backoff)
        finally:
            if self.saved != self.cursor:
                with contextlib.suppress(OSError):
                    self._save_cursor()  # small and local: not worth a thread while stopping
            await self.sink.close()

    async def _linger(
        self, items: list[tuple[int, Report | None]], stop: asyncio.Event
    ) -> list[tuple[int, Report | None]]:
        """A short batch waits ``linger_s`` for more, unless the sink is already behind.

        On a quiet aggregator every report came alone and cost a whole store transaction
        (two fsyncs for SQLite, one HTTP request for InfluxDB); a tenth of a second of
        store latency turns that into one write per tenth of a second.
        """
        if not items or len(items) >= self.batch_size or self.linger_s <= 0 or stop.is_set():
            return items
        if self.lag() > len(items):
            return items  # more is already committed: write at once, the next read takes it
        await stopped_within(stop, self.linger_s)
        following = items[-1][0] + 1
        if self.feed.wal.next_index > following:
            items += await self.feed.read(following, self.batch_size - len(items))
        return items

    async def _write(
        self, items: list[tuple[int, Report | None]], stop: asyncio.Event, backoff: Backoff
    ) -> bool:
        reports = [r for _, r in items if r is not None]
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            if reports:
                try:
                    await self.sink.write(reports)
                finally:
                    self.write_seconds.observe(loop.time() - started)
        except SinkRejected as exc:
            now = time.time_ns()
            for report, why in exc.rejected:
                payload = report.node.encode() + b":" + str(report.seq).encode()
                self.deadletters.add(f"sink:{self.sink.name}", "store_rejected", why, payload,
                                     report.time_ns)  # fmt: skip
            for line, why in exc.lines:
                self.deadletters.add(f"sink:{self.sink.name}", "store_rejected", why, line, now)
            try:
                await asyncio.to_thread(self.deadletters.flush)
            except OSError as error:  # kept pending: the next flush writes them
                log.error("sink %s: dead letters not written yet: %s", self.sink.name, error)
            self.state.rejected += len(exc.rejected)
            rejected = len(exc.rejected)
        except SinkError as exc:
            self._failed(exc)
            await stopped_within(stop, max(backoff.next(), exc.retry_after or 0))
            return False
        else:
            rejected = 0
        backoff.reset()
        self.state.state = "ok"
        self.state.written += len(reports) - rejected
        self.cursor = items[-1][0] + 1
        await self._save_cursor_due()
        return True


class SinkRunners(list[SinkRunner]):
    """The aggregator's runners, each with its own stop, so a reload can add or remove one.

    A list (callers read cursors and states from it) that also runs its members: ``start``
    runs every runner in the aggregator's task group until its stop; ``add`` and
    ``stop`` then start and stop single ones (telemetryd/reload.py).
    """

    def __init__(
        self, feed: Feed, deadletters: DeadLetters, *, batch_size: int, retry_max: float
    ) -> None:
        super().__init__()
        self.feed, self.deadletters = feed, deadletters
        self.batch_size, self.retry_max = batch_size, retry_max
        self._group: asyncio.TaskGroup | None = None
        self._tasks: dict[int, tuple[asyncio.Event, asyncio.Task[None]]] = {}

    def add(self, sink: Sink) -> SinkRunner:
        """A runner for ``sink`` from the cursor saved under its name; started if running."""
        runner = SinkRunner(sink, self.feed, cursor_file(self.feed.wal.directory, sink.name),
                            self.deadletters, batch_size=self.batch_size,
                            retry_max=self.retry_max)  # fmt: skip
        self.append(runner)
        if self._group is not None:
            self._run(runner)
        return runner

    async def stop(self, runner: SinkRunner) -> None:
        """Stop ``runner`` (it drains briefly and saves its cursor), then drop it."""
        halt, task = self._tasks.pop(id(runner))
        halt.set()
        await asyncio.wait({task})
        self.remove(runner)

    def start(self, group: asyncio.TaskGroup, stop: asyncio.Event) -> None:
        """Run every runner in ``group`` until ``stop``."""
        self._group = group
        for runner in self:
            self._run(runner)
        group.create_task(self._stop_all(stop), name="aggregator.sinks.stop")

    def _run(self, runner: SinkRunner) -> None:
        assert self._group is not None
        halt = asyncio.Event()
        name = f"aggregator.sink.{runner.sink.name}"
        self._tasks[id(runner)] = (halt, self._group.create_task(runner.run(halt), name=name))

    async def _stop_all(self, stop: asyncio.Event) -> None:
        await stop.wait()
        for halt, _task in self._tasks.values():
            halt.set()
