"""``telemetryd export --from sqlite:///... --to URL``: backfill one store from another.

Two uses: after an InfluxDB outage longer than the aggregator's WAL could hold, or when a
site outgrows the embedded store and moves to InfluxDB. The source is the SQLite store;
the target is any sink URL (``influxdb2://``, ``influxdb://``, ``sqlite://``), written
through the same sink code the aggregator uses, so the points are the same points the
aggregator would have written: exporting over data that is already there changes nothing.

What is exported: every raw report in the time range (rebuilt exactly by
``SqliteReader.reports``), then, for InfluxDB targets, the 1-minute rollups of data older
than the store's ``raw_days`` as measurements ``gpu_1m`` and ``host_1m`` (docs/schema.md).
A report whose GPU and host rows were already rolled up still carries its events and its
agent point. Lines the target refuses for good go to a dead-letter file with its reason;
a target that keeps failing stops the export after ``retry_for`` seconds with the time to
resume from (``--since``), which is safe because writes are idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from exporters.base import Sink, SinkError, SinkRejected
from exporters.influx_write import LineSink
from exporters.lineprotocol import escape_key, escape_string, tag
from exporters.sqlite_reader import SqliteReader
from exporters.sqlite_rollup import GPU_1M, ROLLUPS, Rollup
from telemetryd import registry
from telemetryd.backoff import Backoff
from telemetryd.config import AggregatorConfig
from telemetryd.deadletter import DeadLetters
from telemetryd.errors import ConfigError, TelemetrydError
from telemetryd.timespec import format_time
from telemetryd.urls import UrlError, parse_sink_url, redact

log = logging.getLogger(__name__)

ROLLUP_LINES = 5000  # rollup rows per write


class ExportError(TelemetrydError):
    """The export could not start, or stopped; the message says where to resume."""


@dataclass(slots=True)
class ExportStats:
    """What an export did so far (shown as progress, then as the summary)."""

    reports: int = 0
    rollup_rows: int = 0
    lines_set_aside: int = 0
    reports_refused: int = 0
    last_ns: int | None = None  # time of the newest report written, for --since on resume

    def line(self) -> str:
        """One line for the operator."""
        text = f"{self.reports} report(s)"
        if self.rollup_rows:
            text += f" and {self.rollup_rows} rollup row(s)"
        if self.lines_set_aside or self.reports_refused:
            text += f", {self.lines_set_aside + self.reports_refused} refused by the target"
        return text


def source_path(url: str) -> str:
    """The SQLite file of ``--from``; ConfigError (a usage error) for anything else."""
    try:
        parsed = parse_sink_url(url)
    except UrlError as exc:
        raise ConfigError([f"--from: {exc}"]) from None
    if parsed.kind != "sqlite":
        raise ConfigError(
            [
                f"--from {redact(url)!r}: export reads the embedded store only; expected "
                "sqlite:///ABSOLUTE/PATH"
            ]
        )
    return parsed.path


def rollup_lines(rollup: Rollup, rows: list[dict[str, Any]]) -> list[str]:
    """Rollup rows as line protocol, typed by the raw column they summarise.

    A min or max has the type of its raw column (integers stay integers), a mean is a
    float, a kept text or bool column keeps its type; the ``details`` JSON of the last
    sample is not written (InfluxDB has no use for a JSON blob per point).
    """
    source = dict(rollup.source.all_columns())
    is_gpu = rollup is GPU_1M
    measurement = rollup.table.name
    tagged = {"minute_ns", "node", "cluster", "details"} | (
        {"gpu_index", "uuid", "name"} if is_gpu else set()
    )
    lines = []
    for row in rows:
        tags = f"cluster={escape_key(row['cluster'] or 'default')}"
        if is_gpu:
            tags += f",gpu={row['gpu_index']}{tag('model', row['name'])}"
        tags += f",node={escape_key(row['node'])}" + (tag("uuid", row["uuid"]) if is_gpu else "")
        fields = [f"samples={row['samples']}i", f"last_ns={row['last_ns']}i"]
        for col in rollup.numeric:
            for stat in ("min", "mean", "max"):
                value = row[f"{stat}_{col}"]
                if value is None:
                    continue
                if stat != "mean" and source[col] == "INTEGER":
                    fields.append(f"{stat}_{col}={int(value)}i")
                else:
                    fields.append(f"{stat}_{col}={float(value)!r}")
        for col in rollup.kept:
            value = row[col]
            if col in tagged or value is None:
                continue
            if col in rollup.source.booleans:
                fields.append(f"{col}={'true' if value else 'false'}")
            elif isinstance(value, str):
                fields.append(f'{col}="{escape_string(value)}"')
        lines.append(f"{measurement},{tags} {','.join(fields)} {row['minute_ns']}")
    return lines


def _batches(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class Exporter:
    """Copies reports (and rollups) from a SQLite store into one sink."""

    def __init__(
        self,
        reader: SqliteReader,
        sink: Sink,
        deadletters: DeadLetters,
        *,
        retry_for: float,
        progress: Callable[[ExportStats], None] = lambda _stats: None,
    ) -> None:
        self.reader = reader
        self.sink = sink
        self.deadletters = deadletters
        self.retry_for = retry_for
        self.progress = progress
        self.stats = ExportStats()

    async def _retrying(self, attempt: Callable[[], Awaitable[None]], what: str) -> None:
        """Run ``attempt`` until it succeeds, or stop after ``retry_for`` s of failures."""
        backoff = Backoff(0.5, 30.0)
        failing_since: float | None = None
        while True:
            try:
                await attempt()
            except SinkError as exc:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since >= self.retry_for:
                    resume = self.stats.last_ns
                    hint = (f"; run again with --since {format_time(resume)} to resume"
                            if resume is not None else "")  # fmt: skip
                    raise ExportError(
                        f"{what}: {exc} (gave up after {self.retry_for:g} s){hint}"
                    ) from None
                delay = max(backoff.next(), exc.retry_after or 0.0)
                log.warning("%s: %s; retrying in %.1f s", what, exc, delay)
                await asyncio.sleep(delay)
                continue
            return

    def _set_aside(self, exc: SinkRejected) -> None:
        now = time.time_ns()
        source = f"export:{self.sink.name}"
        for report, why in exc.rejected:
            key = f"{report.node}:{report.seq}".encode()
            self.deadletters.add(source, "store_rejected", why, key, report.time_ns)
        for line, why in exc.lines:
            self.deadletters.add(source, "store_rejected", why, line, now)
        self.deadletters.flush()
        self.stats.reports_refused += len(exc.rejected)
        self.stats.lines_set_aside += len(exc.lines)

    async def run(
        self, *, since_ns: int | None, until_ns: int | None, node: str | None, batch: int,
        rollups: bool,
    ) -> ExportStats:  # fmt: skip
        """Export everything in range; the counts. ExportError if the target gave up."""
        await self._retrying(self.sink.open, f"opening {self.sink.name}")
        try:
            pages = self.reader.reports(since_ns=since_ns, until_ns=until_ns, node=node,
                                        batch=batch)  # fmt: skip
            for reports in pages:

                async def write(reports: list[Any] = reports) -> None:
                    try:
                        await self.sink.write(reports)
                    except SinkRejected as exc:
                        self._set_aside(exc)

                await self._retrying(write, f"writing to {self.sink.name}")
                self.stats.reports += len(reports)
                self.stats.last_ns = reports[-1].time_ns
                self.progress(self.stats)
            if rollups and isinstance(self.sink, LineSink):
                await self._rollups(self.sink, since_ns, until_ns, node)
        finally:
            await self.sink.close()
        return self.stats

    async def _rollups(
        self, sink: LineSink, since_ns: int | None, until_ns: int | None, node: str | None
    ) -> None:
        for rollup in ROLLUPS:
            rows = self.reader.rollups(rollup.table.name, since_ns, until_ns, node)
            for chunk in _batches(rows, ROLLUP_LINES):
                lines = rollup_lines(rollup, chunk)

                async def write(lines: list[str] = lines) -> None:
                    refused = await sink.writer.deliver(lines)
                    sink.line_stats.lines_written += len(lines) - len(refused)
                    if refused:
                        self._set_aside(SinkRejected(lines=refused))

                await self._retrying(write, f"writing rollups to {sink.name}")
                self.stats.rollup_rows += len(chunk)
                self.progress(self.stats)


async def export(
    source: str, target: str, cfg: AggregatorConfig, deadletters: DeadLetters, *,
    since_ns: int | None = None, until_ns: int | None = None, node: str | None = None,
    batch: int = 500, rollups: bool = True, retry_for: float = 300.0,
    progress: Callable[[ExportStats], None] = lambda _stats: None,
) -> ExportStats:  # fmt: skip
    """Export ``source`` (a SQLite store) into ``target`` (any sink URL)."""
    path = source_path(source)
    try:
        url = parse_sink_url(target)
        sink = registry.sink_factory(url.kind)(url, cfg)
    except (UrlError, KeyError) as exc:
        raise ConfigError([f"--to: {exc}"]) from None
    if url.kind == "sqlite" and url.path == path:
        raise ConfigError([f"--to {target!r}: that is the source itself; expected another store"])
    try:
        reader = SqliteReader(path)
    except SinkError as exc:
        raise ExportError(f"--from: {exc}") from None
    try:
        exporter = Exporter(reader, sink, deadletters, retry_for=retry_for, progress=progress)
        return await exporter.run(since_ns=since_ns, until_ns=until_ns, node=node, batch=batch,
                                  rollups=rollups)  # fmt: skip
    except SinkError as exc:  # reading the source failed (a damaged file)
        raise ExportError(f"--from: {exc}") from None
    finally:
        reader.close()
