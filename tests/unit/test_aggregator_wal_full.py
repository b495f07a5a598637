"""A full write-ahead log must not keep housekeeping from releasing it.

At 10,000 nodes (bench/fleet_run.py) the WAL filled while the SQLite sink was behind; the
commit waited for room while holding the commit lock, so housekeeping could not save the
fleet snapshot, and segments are released only up to the saved snapshot: the aggregator
stopped acknowledging for good although the sink had caught up.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from telemetryd.aggregator import Aggregator
from telemetryd.config import AggregatorConfig
from telemetryd.connect import mqtt_settings
from telemetryd.deadletter import DeadLetters
from telemetryd.fleet import Fleet
from telemetryd.model import encode_report
from telemetryd.wal import Wal
from tests.unit.test_jobs_recovery import report


def test_a_full_wal_is_released_by_housekeeping_and_the_commit_goes_on(tmp_path: Path) -> None:
    cfg = AggregatorConfig()
    now = time.time_ns() - 60 * 1_000_000_000
    reports = [report("n1", seq, "running", now) for seq in range(4)]
    payloads = [encode_report(r) for r in reports]
    wal = Wal(tmp_path / "wal", max_bytes=2 * len(payloads[0]), segment_bytes=len(payloads[0]))
    wal.open()
    agg = Aggregator(
        cfg, wal=wal, fleet=Fleet(silent_after=3.0),
        deadletters=DeadLetters(tmp_path / "deadletter.jsonl", max_bytes=1 << 20),
        sinks=[], settings=mqtt_settings(cfg, client_id="test", env={}), directory=tmp_path,
    )  # fmt: skip

    async def main() -> None:
        stop = asyncio.Event()
        for i in range(2):
            assert await agg._make_durable([payloads[i]], [reports[i]], [], now, stop) is not None
        assert wal.full()
        blocked = asyncio.create_task(agg._make_durable([payloads[2]], [reports[2]], [], now, stop))
        await asyncio.sleep(0.2)
        assert not blocked.done()  # full: nothing is acknowledged
        # Housekeeping's step: save the snapshot (takes the commit lock), then release.
        await asyncio.wait_for(agg._save_snapshot(), 2)
        wal.release(min([r.saved for r in agg.runners] + [agg.snapshot_index]))
        assert not wal.full()
        assert await asyncio.wait_for(blocked, 3) is not None  # room again: committed
        assert agg.fleet.accepted == 3

    asyncio.run(main())
