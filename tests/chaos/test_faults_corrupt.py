"""A corrupted spool file and a corrupted WAL segment: the damage is bounded and counted.

Spool: an agent is killed while its broker is away (so its spool holds a backlog), some
spooled reports are damaged on disk (cut in half, overwritten with noise), and the next
boot sends the backlog. The agent sends spooled bytes as they are, so each damaged report
must reach the aggregator's dead letters (reason ``json``, or ``schema`` for noise that
starts like a number) and the fleet summary's ``rejected``; the holes must be damaged
reports, and a damaged report not a hole only when the broker had it before the kill.

WAL: the aggregator's SQLite store is held locked (the sink retries, the WAL keeps the
reports it already acknowledged), the aggregator is killed, one record in the middle of
its WAL segment is damaged, and it starts again. What follows the damage in that segment
is moved aside and counted: the sink's ``skipped`` in the fleet summary must cover every
report missing from the store.
"""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from tests.chaos.faults import Tally, duplicates, rounds, seeded
from tests.integration.pipeline import (
    agent,
    aggregator,
    by_boot,
    spool_files,
    stored,
    wait_until,
)
from tests.integration.test_pipeline_edges import _summary

pytestmark = pytest.mark.integration


def test_corrupted_spool_files_are_dead_lettered_and_counted(tmp_path, mosquitto, witness):
    random = seeded("spool-corrupt")
    tally = Tally("corrupted spool file", runs=rounds(1, 8))
    agg = aggregator(tmp_path, mosquitto.url, fleet_interval="1").start().wait_log("consuming")
    damaged: set[tuple[str, str, int]] = set()
    for _ in range(tally.runs):
        a = agent(tmp_path, mosquitto.url, "n0").start()
        time.sleep(random.uniform(0.5, 1.5))
        mosquitto.stop()
        time.sleep(random.uniform(1.5, 2.5))  # ~10 reports spooled
        a.kill()
        files = spool_files(tmp_path, "n0")
        assert len(files) >= 4, a.tail()
        for i, path in enumerate(random.sample(files, 2)):
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2] if i == 0 else bytes(random.randbytes(64)))
            _, boot, seq = path.stem.split("-")
            damaged.add(("n0", boot, int(seq)))
        mosquitto.start()
        back = time.monotonic()
        a.start()
        wait_until(lambda: len(spool_files(tmp_path, "n0")) <= 1, 30, "the backlog sent")
        tally.recovered(back)
        assert a.stop() == 0, a.tail()
    time.sleep(1.5)  # the witness's and the aggregator's sessions reconnect (at most 1 s)
    wait_until(lambda: witness.seen() <= stored(tmp_path), 30, "the store to hold what came")
    keys = stored(tmp_path)
    summary = _summary(
        mosquitto.port, until=lambda s: sum(s.get("rejected", {}).values()) >= len(damaged)
    )
    letters = (tmp_path / "aggregator" / "deadletter.jsonl").read_text().splitlines()
    tally.counters = {
        "damaged": len(damaged),
        "rejected": summary["rejected"],
        "dead_letters": len(letters),
    }
    got = tally.report(keys, witness.seen(), duplicates(tmp_path))
    assert agg.stop() == 0, agg.tail()
    # Noise that starts like a number is refused as "schema" ("expected object, got int"):
    # refused either way, with a reason.
    assert sum(summary["rejected"].values()) == len(damaged) == len(letters)
    assert set(summary["rejected"]) <= {"json", "schema"}
    assert {json.loads(line)["reason"] for line in letters} <= {"json", "schema"}
    # A damaged report is a hole, unless the broker had it before the kill (its PUBACK
    # lost with the broker): then the good copy is stored. Nothing else is missing.
    gaps = {
        (node, boot, seq)
        for (node, boot), seqs in by_boot(keys).items()
        for seq in range(seqs[-1] + 1)  # from 0: a damaged seq 0 is a hole too
        if seq not in seqs
    }
    newest = {boot: seqs[-1] for (_, boot), seqs in by_boot(keys).items()}
    assert gaps <= damaged
    # ... or it was its boot's last report, after which no number can show it missing.
    assert all(k in gaps | keys or k[2] > newest.get(k[1], -1) for k in damaged)
    assert got["lost"] == 0 and got["duplicates"] == 0


def test_corrupted_wal_segment_loss_is_counted_as_skipped(tmp_path, mosquitto, witness):
    random = seeded("wal-corrupt")
    tally = Tally("corrupted WAL segment", runs=rounds(1, 5))
    db_path = tmp_path / "aggregator" / "telemetry.db"
    a = agent(tmp_path, mosquitto.url, "n0").start()
    for _ in range(tally.runs):
        agg = aggregator(tmp_path, mosquitto.url, fleet_interval="1").start().wait_log("consuming")
        wait_until(lambda: db_path.exists() and len(stored(tmp_path)) > 0, 15, "a first report")
        lock = sqlite3.connect(db_path, timeout=30)
        lock.execute("BEGIN EXCLUSIVE")  # the sink cannot write: the WAL holds what comes
        time.sleep(random.uniform(2.0, 3.0))
        agg.kill()
        lock.rollback()
        lock.close()
        (segment,) = sorted((tmp_path / "aggregator" / "wal").glob("*.wal"))
        data = bytearray(segment.read_bytes())
        spot = random.randrange(len(data) // 3, 2 * len(data) // 3)
        data[spot] ^= 0xFF  # one flipped byte: a bad checksum (or length) there
        segment.write_bytes(bytes(data))
        back = time.monotonic()
        count = len(stored(tmp_path))
        agg.start()
        wait_until(lambda c=count: len(stored(tmp_path)) > c, 30, "the store to grow")
        tally.recovered(back)
        if _ != tally.runs - 1:
            assert agg.stop() == 0, agg.tail()
    assert a.stop() == 0, a.tail()
    time.sleep(1.5)
    summary = _summary(mosquitto.port, until=lambda s: bool(s.get("sinks")))
    skipped = sum(s.get("skipped", 0) for s in summary["sinks"])
    keys = stored(tmp_path)
    tally.counters = {"sink_skipped": skipped, "aside": "corrupt" in agg.tail(400)}
    got = tally.report(keys, witness.seen(), duplicates(tmp_path))
    assert agg.stop() == 0, agg.tail()
    assert got["duplicates"] == 0
    # Acknowledged, then lost with the damaged disk: never more than was counted. The count
    # is an upper bound (the WAL cannot know how many records the damaged bytes held; it
    # skips ~bytes/9 indices), so the operator sees thousands where a dozen were lost.
    assert 0 < got["holes"] + got["lost"] <= skipped
