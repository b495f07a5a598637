"""What every InfluxDB sink does with the server's answers: one policy for 1.x and 2.x.

A transport (``exporters/influxdb.py`` for 1.x ``/write``, ``exporters/influxdb2.py`` for
the 2.x API through influxdb-client) posts one body of line protocol and returns the
status; this module decides what it means, after Telegraf's influxdb_v2 output and the
InfluxDB docs (../shared/reference/transport.md §4.5), with one change: nothing is dropped
because it is inconvenient.

- 2xx: written.
- 413 (body too large): split the request in two and send each half; a single line the
  server still refuses is set aside.
- 400 and 422 (bad or partly refused lines; 1.x answers 400 for both a syntax error and a
  field-type conflict, after writing the other points): split in halves until the lines
  the server refuses are alone, and set those aside with its reason. The halves that were
  written already are written again, which is harmless (same points). When the server
  says it dropped every line of a request (``dropped=N``), all of them are set aside at
  once rather than one request per line.
- 401, 403, 404 and other 4xx (bad token or password, missing database or bucket): one
  clear line, and a slow retry (``auth_retry``): an operator fixes it and nothing is lost.
- 429, 5xx, timeouts and connection errors: retry with capped, jittered backoff that
  honours Retry-After (capped at ``RETRY_AFTER_MAX``).

Set-aside lines go to the dead-letter file through ``SinkRejected``; every retry raises
``SinkError`` so the sink runner backs off and sends the same reports again later.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exporters.base import SinkError, SinkRejected
from exporters.http import RETRY_AFTER_MAX as RETRY_AFTER_MAX  # re-exported: the sinks' cap
from exporters.http import retry_after as retry_after  # re-exported for the InfluxDB sinks
from exporters.lineprotocol import Encoder
from telemetryd.model import Report

if TYPE_CHECKING:
    from telemetryd.config import InfluxConfig
    from telemetryd.urls import SinkUrl

log = logging.getLogger(__name__)

_DROPPED = re.compile(r"dropped=(\d+)")


@dataclass(frozen=True, slots=True)
class WriteReply:
    """A write request's outcome as the policy needs it."""

    status: int
    message: str = ""  # the server's error text, one line
    retry_after: float | None = None


Post = Callable[[bytes], Awaitable[WriteReply]]
"""Sends one body (gzip-compressed when ``gzip``); raises SinkError when no answer came."""


class Interrupted(SinkError):
    """A delivery stopped at ``progress`` (lines before it were accepted or set aside)."""

    def __init__(
        self,
        message: str,
        retry_after: float | None,
        progress: int,
        rejected: list[tuple[bytes, str]],
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.progress = progress
        self.rejected = rejected


@dataclass(slots=True)
class LineCounters:
    """Per-sink line counters (``exporters.base.LineStats``)."""

    lines_written: int = 0
    lines_retried: int = 0
    lines_set_aside: int = 0
    fields_dropped: int = 0
    requests: int = 0


class LineWriter:
    """Delivers lines in requests of at most ``batch_lines``, following the policy above."""

    def __init__(
        self,
        name: str,
        post: Post,
        *,
        batch_lines: int,
        auth_retry: float,
        compress: bool,
        counters: LineCounters,
        what: str,
        parallel: int = 1,
    ) -> None:
        self.name = name
        self.post = post
        self.batch_lines = batch_lines
        self.auth_retry = auth_retry
        self.compress = compress
        self.counters = counters
        self.what = what  # "database 'telemetry'" / "bucket 'b' of org 'o'", for 404 messages
        self.parallel = parallel
        self.refused = False  # the last error was a refused login: log in again first

    async def deliver(self, lines: Sequence[str], start: int = 0) -> list[tuple[bytes, str]]:
        """Send every line from ``start`` on; return the lines set aside with the reason.

        Up to ``parallel`` requests are in flight at once (InfluxDB ingests on several
        cores, and we encode and compress while it works). Raises Interrupted (a
        SinkError: retry later) saying how far it got, so a retry of the same batch
        resumes at the first request that did not complete; a later one of the same
        window that did complete is sent again, which writes the same points.
        """
        rejected: list[tuple[bytes, str]] = []
        firsts = list(range(start, len(lines), self.batch_lines))
        for at in range(0, len(firsts), self.parallel):
            window = firsts[at : at + self.parallel]
            found: list[list[tuple[bytes, str]]] = [[] for _ in window]
            results = await asyncio.gather(
                *(self._send(lines[f : f + self.batch_lines], out)
                  for f, out in zip(window, found, strict=True)),
                return_exceptions=True,
            )  # fmt: skip
            for first, result, chunk_rejected in zip(window, results, found, strict=True):
                if isinstance(result, SinkError):
                    raise Interrupted(str(result), result.retry_after, first, rejected) from None
                if isinstance(result, BaseException):
                    raise result
                # Counted once the request is done: an interrupted one is sent again whole
                # and finds the same lines again.
                self.counters.lines_set_aside += len(chunk_rejected)
                rejected += chunk_rejected
        return rejected

    async def _body(self, lines: Sequence[str]) -> bytes:
        text = ("\n".join(lines) + "\n").encode()
        if not self.compress:
            return text
        # Level 1: several times cheaper than the default and most of the gain on
        # repetitive line protocol; zlib releases the GIL, so the thread runs beside us.
        return await asyncio.to_thread(gzip.compress, text, 1)

    async def _send(self, lines: Sequence[str], rejected: list[tuple[bytes, str]]) -> None:
        self.counters.requests += 1
        try:
            reply = await self.post(await self._body(lines))
        except SinkError:
            self.counters.lines_retried += len(lines)
            raise
        status = reply.status
        if 200 <= status < 300:
            return
        if status == 413 or status in (400, 422):
            if len(lines) == 1:
                rejected.append((lines[0].encode(), f"{status}: {reply.message}"))
                return
            dropped = _DROPPED.search(reply.message)
            if status != 413 and dropped and int(dropped.group(1)) >= len(lines):
                why = f"{status}: {reply.message}"
                rejected.extend((line.encode(), why) for line in lines)
                return
            half = len(lines) // 2
            await self._send(lines[:half], rejected)
            await self._send(lines[half:], rejected)
            return
        self.counters.lines_retried += len(lines)
        raise self._error(reply)

    def _error(self, reply: WriteReply) -> SinkError:
        status, text = reply.status, reply.message
        self.refused = status in (401, 403)
        if status in (401, 403):
            hint = "the credentials were refused; check the token or password file"
            return SinkError(f"{self.name}: {status} {hint} ({text})", retry_after=self.auth_retry)
        if status == 404:
            return SinkError(
                f"{self.name}: 404, {self.what} does not exist; create it ({text})",
                retry_after=self.auth_retry,
            )
        if 400 <= status < 500 and status != 429:
            return SinkError(f"{self.name}: {status} {text}", retry_after=self.auth_retry)
        return SinkError(f"{self.name}: {status} {text}", retry_after=reply.retry_after)


def server(url: SinkUrl) -> tuple[str, str]:
    """(``http[s]://host:port`` to send to, ``host:port`` for names); IPv6 in brackets."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{'https' if url.tls else 'http'}://{host}:{url.port}", f"{host}:{url.port}"


@dataclass(slots=True)
class _Pending:
    """A batch being delivered: kept across retries so a retry resumes where it stopped."""

    key: tuple[object, ...]
    lines: list[str]
    done: int = 0
    rejected: list[tuple[bytes, str]] = field(default_factory=list)


def batch_key(reports: Sequence[Report]) -> tuple[object, ...]:
    """What identifies a batch the runner sends again after a failure."""
    first, last = reports[0], reports[-1]
    return (len(reports), first.node, first.boot_id, first.seq, last.node, last.boot_id, last.seq)


class LineSink:
    """The Sink behaviour shared by the InfluxDB sinks: encode, deliver, resume, count."""

    name: str

    def __init__(self, name: str, post: Post, cfg: InfluxConfig, what: str) -> None:
        self.name = name
        self.writer = LineWriter(
            name, post, batch_lines=cfg.batch_lines, auth_retry=cfg.auth_retry,
            compress=cfg.gzip, counters=LineCounters(), what=what, parallel=cfg.parallel,
        )  # fmt: skip
        self.encoder = Encoder()
        self.line_stats = self.writer.counters
        self._pending: _Pending | None = None

    async def open(self) -> None:
        """Log in and check the server answers (each sink's own)."""
        raise NotImplementedError

    async def write(self, reports: Sequence[Report]) -> None:
        """Write a batch; SinkRejected for lines set aside, SinkError to be retried."""
        if not reports:
            return
        key = batch_key(reports)
        pending = self._pending
        if pending is None or pending.key != key:
            before = self.encoder.fields_dropped
            # Encoding is pure Python; in a thread it does not hold up the event loop's
            # other work (MQTT acknowledgements) for the whole batch at once.
            lines = await asyncio.to_thread(self.encoder.encode, reports)
            self.line_stats.fields_dropped += self.encoder.fields_dropped - before
            pending = self._pending = _Pending(key, lines)
        if self.writer.refused:
            # The runner retries writes without opening the sink again; after a refused
            # token or password, open here, which reads the secret anew: an operator's fix
            # to the file needs no restart.
            await self.open()
            self.writer.refused = False
        try:
            rejected = await self.writer.deliver(pending.lines, pending.done)
        except Interrupted as exc:
            pending.done = exc.progress
            pending.rejected += exc.rejected
            raise
        self._pending = None
        rejected = pending.rejected + rejected
        self.line_stats.lines_written += len(pending.lines) - len(rejected)
        if rejected:
            raise SinkRejected(lines=rejected)
