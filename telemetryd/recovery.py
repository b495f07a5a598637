"""Start-up of the aggregator: the last snapshot, then the WAL records written after it.

The snapshot holds the fleet's sequence accounting, the live job table and the alert
engine's state with the WAL index they cover; replaying the records after that index
(alerts on sample time, so they reach the same states) makes a crash cost nothing but the
replay.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

from telemetryd.codec import DecodeError
from telemetryd.model import decode_report

if TYPE_CHECKING:
    from telemetryd.aggregator import Aggregator

log = logging.getLogger(__name__)


def recover(agg: Aggregator) -> None:
    """Load ``agg``'s snapshot and replay its WAL after it (before consuming starts)."""
    if agg.snapshot_path.is_file():
        try:
            data = json.loads(agg.snapshot_path.read_bytes())
            agg.fleet.restore(data["fleet"])
            agg.snapshot_index = int(data["index"])
            agg.jobs.restore(data.get("jobs", {}))
            if agg.alerts is not None:
                agg.alerts.restore(data.get("alerts", {}))
        except (ValueError, KeyError, TypeError) as exc:
            log.error("fleet snapshot %s unreadable (%s); rebuilding from the WAL",
                      agg.snapshot_path, exc)  # fmt: skip
            agg.snapshot_index = agg.wal.first_index
    index = max(agg.snapshot_index, agg.wal.first_index)
    replayed = 0
    while index < agg.wal.next_index:
        records = agg.wal.read(index, 1000)
        if not records:  # a gap left by corruption: skip it
            index = agg.wal.next_present(index)
            continue
        for position, payload in records:
            try:
                report = decode_report(payload)
            except DecodeError:
                log.error("WAL record %d does not decode; not replayed", position)
            else:
                foreign = agg.shard is not None and not agg.shard.owns(report.cluster, report.node)
                if not foreign and agg.fleet.claim(report):  # stored here, owned elsewhere
                    events = agg.fleet.on_report(report, time.time_ns())
                    agg.jobs.observe(report)
                    if agg.alerts is not None:  # on sample time: the same states again
                        agg.alerts.on_report(report, report.time_ns)
                        agg.alerts.on_fleet_events(events)
                    replayed += 1
            index = position + 1
    if replayed:
        log.info("replayed %d report(s) from the WAL into the fleet state", replayed)
    if agg.shard is not None:
        from telemetryd.shard import drop_foreign

        drop_foreign(agg, agg.shard)  # nodes moved to another member since the snapshot
