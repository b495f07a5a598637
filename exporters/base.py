"""The sink interface: where the aggregator writes accepted reports.

A sink is a small async object: ``open``, ``write(batch)``, ``close``. The aggregator owns
batching, retries and durability: every accepted report is already in its synced
write-ahead log before the broker is acknowledged, and each sink reads that log at its own
pace through its own cursor. So a sink may fail, block or lag without losing anything or
stalling the others; it only has to make ``write`` all-or-nothing and idempotent (the
same report written twice gives the same rows), because after a crash the aggregator
writes again from the sink's last committed cursor.

Errors: raise ``SinkError`` for anything worth retrying (the runner backs off, honouring
``retry_after``), ``SinkRejected`` when the store refused some reports for good (they are
set aside in the dead-letter file with the reason and the rest counts as written).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from telemetryd.config import AggregatorConfig
    from telemetryd.model import Report
    from telemetryd.urls import SinkUrl


class SinkError(Exception):
    """A write that failed but may succeed later (connection, lock, 5xx, 429)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SinkRejected(Exception):
    """The store refused some items for good; the others in the batch were written.

    ``rejected`` are whole reports (not written at all); ``lines`` are single points of
    a line-protocol store (the rest of their report was written). Both are set aside in
    the dead-letter file with the store's reason, never retried.
    """

    def __init__(
        self,
        rejected: Sequence[tuple[Report, str]] = (),
        *,
        lines: Sequence[tuple[bytes, str]] = (),
    ) -> None:
        super().__init__(f"{len(rejected)} report(s) and {len(lines)} line(s) refused by the store")
        self.rejected = list(rejected)
        self.lines = list(lines)


class Sink(Protocol):
    """One store the aggregator writes to."""

    name: str

    async def open(self) -> None:
        """Connect or create; raise SinkError if the store is not reachable yet."""
        ...

    async def write(self, reports: Sequence[Report]) -> None:
        """Write a batch, all or nothing, idempotently; raise SinkError or SinkRejected."""
        ...

    async def close(self) -> None:
        """Flush and release; safe after a failed or no ``open``."""
        ...


class LineStats(Protocol):
    """What a line-protocol sink counts, shown per sink in /metrics and the fleet summary."""

    lines_written: int
    lines_retried: int
    lines_set_aside: int
    fields_dropped: int


SinkFactory = Callable[["SinkUrl", "AggregatorConfig"], Sink]
