"""The agent's spool on a small filesystem that fills up, again and again.

The single outage is tests/integration/test_pipeline_edges.py (its ``tiny_disk`` fixture,
a 96 KiB tmpfs, is used here). Here the broker goes away several times for a random while,
each time long enough to fill the disk and the agent's in-memory bound; every report that
did not fit must be counted in the agent's ``dropped`` (what the operator sees in the
store and the fleet summary), exactly: holes == dropped, nothing else missing.
"""

from __future__ import annotations

import time

import pytest

from tests.chaos.faults import Tally, duplicates, rounds, seeded
from tests.integration.pipeline import (
    Witness,
    agent,
    aggregator,
    by_boot,
    spool_files,
    stored,
    wait_until,
)
from tests.integration.test_pipeline_edges import _agent_row, tiny_disk  # noqa: F401

pytestmark = pytest.mark.integration


def test_full_spool_disk_repeatedly_every_drop_counted(tmp_path, mosquitto, tiny_disk):  # noqa: F811
    random = seeded("disk-full")
    tally = Tally("spool disk full (96 KiB tmpfs)", runs=rounds(1, 10))
    witness = Witness(mosquitto.port)
    agg = aggregator(tmp_path, mosquitto.url).start().wait_log("consuming")
    a = agent(tmp_path, mosquitto.url, "n0", interval=0.1).start()
    time.sleep(1)
    for _ in range(tally.runs):
        mosquitto.stop()
        # ~100 reports at 0.1 s: the disk holds ~25, memory 64 (MEMORY_REPORTS), the rest dropped
        time.sleep(random.uniform(9.5, 12.0) if tally.runs > 1 else 9.5)
        assert a.alive(), a.tail()
        mosquitto.start()
        back = time.monotonic()
        wait_until(lambda: len(spool_files(tmp_path, "n0")) <= 1, 60, "the backlog to drain")
        tally.recovered(back)
        time.sleep(random.uniform(0.5, 2.0))
    assert a.stop() == 0, a.tail()
    wait_until(lambda: _agent_row(tmp_path, "spool_errors") or False, 20, "the last report")
    keys = stored(tmp_path)
    (seqs,) = by_boot(keys).values()
    dropped = _agent_row(tmp_path, "dropped")
    tally.counters = {"dropped": dropped, "spool_errors": _agent_row(tmp_path, "spool_errors")}
    got = tally.report(keys, witness.seen(), duplicates(tmp_path))
    witness.close()
    assert agg.stop() == 0
    assert dropped > 0 and tally.counters["spool_errors"] > 0
    assert got == {"lost": 0, "holes": dropped, "duplicates": 0}  # every loss counted
    assert seqs[0] == 0
