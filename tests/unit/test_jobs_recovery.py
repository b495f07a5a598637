"""The aggregator's job table over a restart: saved with the fleet snapshot, WAL replayed.

A real aggregator object (WAL, no sinks, no broker): reports go through the same commit
step as from MQTT, then a second aggregator on the same state directory recovers.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import msgspec

from telemetryd.aggregator import Aggregator
from telemetryd.config import AggregatorConfig
from telemetryd.connect import mqtt_settings
from telemetryd.deadletter import DeadLetters
from telemetryd.fleet import Fleet
from telemetryd.model import JobGpu, JobRecord, Report, encode_report
from telemetryd.wal import Wal
from tests.unit.test_alert_engine import report as gpu_report

S = 1_000_000_000


def open_aggregator(directory: Path) -> Aggregator:
    cfg = AggregatorConfig(broker="mqtt://127.0.0.1:1883")
    wal = Wal(directory / "wal", max_bytes=cfg.wal_max_bytes)
    wal.open()
    return Aggregator(
        cfg, wal=wal, fleet=Fleet(silent_after=3.0),
        deadletters=DeadLetters(directory / "deadletter.jsonl", max_bytes=1 << 20),
        sinks=[], settings=mqtt_settings(cfg, client_id="test", env={}), directory=directory,
    )  # fmt: skip


def report(node: str, seq: int, state: str, now: int) -> Report:
    t = now + seq * 10 * S
    rec = JobRecord(
        job="77", kind="hpc", state=state, start_ns=now, end_ns=t, samples=seq + 1,  # type: ignore[arg-type]
        gpus=[JobGpu(index=1, uuid="GPU-1", start_ns=now)], energy_mj=1000 * (seq + 1),
    )  # fmt: skip
    return msgspec.structs.replace(gpu_report(seq, node=node, t=t), jobs=[rec])


def commit(agg: Aggregator, *reports: Report) -> None:
    payloads = [encode_report(r) for r in reports]
    done = asyncio.run(agg._make_durable(payloads, list(reports), [], reports[0].time_ns,
                                         asyncio.Event()))  # fmt: skip
    assert done is not None


def test_jobs_survive_a_restart_from_snapshot_and_wal(tmp_path: Path) -> None:
    now = time.time_ns() - 60 * S  # recent: the table keeps jobs for an hour
    agg = open_aggregator(tmp_path)
    commit(agg, report("n1", 0, "running", now), report("n2", 0, "running", now))
    asyncio.run(agg._save_snapshot())
    commit(agg, report("n1", 1, "ended", now))  # after the snapshot: only in the WAL
    before = agg.jobs.jobs()
    agg.wal.close()
    saved = json.loads((tmp_path / "fleet-state.json").read_bytes())
    assert [p[1] for p in saved["jobs"]["parts"]] == ["n1", "n2"]

    again = open_aggregator(tmp_path)
    again.recover()
    assert again.jobs.jobs() == before
    [job] = before
    assert (job.nodes, job.state, job.energy_mj) == (["n1", "n2"], "running", 2000 + 1000)
    again.wal.close()


def test_a_snapshot_without_or_with_a_bad_job_table_still_recovers(tmp_path: Path) -> None:
    agg = open_aggregator(tmp_path)
    commit(agg, report("n1", 0, "running", time.time_ns()))
    asyncio.run(agg._save_snapshot())
    agg.wal.close()
    path = tmp_path / "fleet-state.json"
    data = json.loads(path.read_bytes())
    for jobs in ("junk", None):
        data["jobs"] = jobs
        path.write_text(json.dumps(data))
        again = open_aggregator(tmp_path)
        again.recover()
        assert again.fleet.accepted == 1  # the fleet part was still restored
        assert again.jobs.jobs() == []  # the job table did not decode: empty, not a crash
        again.wal.close()
