"""``telemetryd export`` from a real SQLite store into a real InfluxDB 1.x, as a command.

The store holds fresh reports (raw) and three-day-old ones whose GPU and host rows were
rolled up into minutes; the export must bring both over, as the same points the
aggregator's own InfluxDB sink would write, and be safe to run twice.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from exporters.influxdb import InfluxV1Sink
from exporters.sqlite import SqliteSink
from telemetryd.config import InfluxConfig
from telemetryd.model import Report, decode_report
from telemetryd.urls import parse_sink_url
from tests.integration.influxdb import InfluxDB
from tests.reports import sampled
from tests.richreport import rich

pytestmark = pytest.mark.integration

NOW = time.time()
OLD_NS = int((NOW - 3 * 86400) // 60 * 60 * 1e9)  # three days ago, on a minute boundary
NEW_NS = int((NOW - 600) * 1e9)


def old_reports() -> list[Report]:
    """Node old-01: 12 reports 10 s apart, three days old (rolled up in the store)."""
    base = decode_report(sampled())
    out = []
    for i in range(12):
        r = msgspec.structs.replace(base, node="old-01", seq=i, time_ns=OLD_NS + i * 10**10)
        r.gpus = [msgspec.structs.replace(g, power_w=100.0 + i, util_gpu_pct=i) for g in r.gpus]
        out.append(r)
    return out


def new_reports() -> list[Report]:
    """Nodes rich-01 (every part of the model) and new-01: raw in the store."""
    sim = decode_report(sampled())
    fresh = [msgspec.structs.replace(sim, node="new-01", seq=i, time_ns=NEW_NS + i * 10**10)
             for i in range(5)]  # fmt: skip
    return [rich(seq=i, time_ns=NEW_NS + i * 10**10) for i in range(3)] + fresh


def make_store(path: Path) -> None:
    old, new = old_reports(), new_reports()

    async def fill() -> None:
        sink = SqliteSink(path, raw_days=1, retention_days=30)
        await sink.open()
        try:
            await sink.write(old)
            await sink.write(new)
            await sink.prune()  # the old minutes are rolled up now
        finally:
            await sink.close()

    asyncio.run(fill())


def run_export(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "telemetryd", "export", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def count(server: InfluxDB, db: str, query: str) -> int:
    series = server.query(query, db)
    return int(series[0]["values"][0][1]) if series else 0


def everything(server: InfluxDB, db: str, measurements: list[str]) -> dict[str, Any]:
    return {m: server.query(f'SELECT * FROM "{m}" GROUP BY *', db) for m in measurements}


def test_export_brings_raw_reports_and_rollups_and_can_run_twice(
    tmp_path: Path, influxdb: InfluxDB
) -> None:
    store = tmp_path / "telemetry.db"
    make_store(store)
    influxdb.create_database("backfill")
    args = ["--from", f"sqlite://{store}", "--to", influxdb.sink_url("backfill")]
    done = run_export(*args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("exported 20 report(s) and 16 rollup row(s) in "), done.stdout

    # Every report has its agent point; raw GPU points only where the store kept them raw.
    assert count(influxdb, "backfill", "SELECT count(seq) FROM agent") == 20
    assert count(influxdb, "backfill", "SELECT count(temp_c) FROM gpu WHERE node='new-01'") == 40
    assert count(influxdb, "backfill", "SELECT count(temp_c) FROM gpu WHERE node='old-01'") == 0
    # Two minutes of 6 samples for 8 GPUs and the host... the sim node has no host part.
    rows = influxdb.points("SELECT * FROM gpu_1m WHERE node='old-01' GROUP BY *", "backfill")
    assert len(rows) == 16  # 8 GPUs x 2 minutes
    first = sorted((r for r in rows if r["gpu"] == "0"), key=lambda r: r["time"])[0]
    assert first["time"] == OLD_NS and first["samples"] == 6
    assert (first["min_power_w"], first["mean_power_w"], first["max_power_w"]) == (
        100.0,
        102.5,
        105.0,
    )
    assert (first["min_util_gpu_pct"], first["max_util_gpu_pct"]) == (0, 5)  # integers stay so
    assert first["model"] == "NVIDIA H100 80GB HBM3" and first["uuid"].startswith("GPU-")

    before = everything(influxdb, "backfill", ["agent", "gpu", "gpu_1m", "event", "host"])
    again = run_export(*args)
    assert again.returncode == 0, again.stderr
    assert everything(influxdb, "backfill", ["agent", "gpu", "gpu_1m", "event", "host"]) == before


def test_export_writes_what_the_aggregator_would_have_written(
    tmp_path: Path, influxdb: InfluxDB
) -> None:
    store = tmp_path / "telemetry.db"
    make_store(store)
    influxdb.create_database("live")
    influxdb.create_database("export")
    live = InfluxV1Sink(parse_sink_url(influxdb.sink_url("live")), InfluxConfig())
    reports = new_reports()

    async def write_live() -> None:
        await live.open()
        try:
            await live.write(reports)
        finally:
            await live.close()

    asyncio.run(write_live())
    done = run_export("--from", f"sqlite://{store}", "--to", influxdb.sink_url("export"),
                      "--node", "rich-01", "--no-rollups")  # fmt: skip
    assert done.returncode == 0, done.stderr
    measurements = [row[0] for row in influxdb.query("SHOW MEASUREMENTS", "export")[0]["values"]]
    assert {"gpu", "gpu_mig", "gpu_process", "host", "host_disk", "event", "agent"} <= set(
        measurements
    )
    for m in measurements:
        query = f"SELECT * FROM \"{m}\" WHERE node = 'rich-01' GROUP BY *"
        assert points(influxdb, query, "export") == points(influxdb, query, "live"), m


def points(server: InfluxDB, query: str, db: str) -> list[dict[str, Any]]:
    """Each point's present values and tags (SELECT * also lists other series' fields)."""
    return sorted(
        (({k: v for k, v in row.items() if v is not None}) for row in server.points(query, db)),
        key=lambda row: sorted(map(str, row.items())),
    )


def test_export_sets_refused_lines_aside_and_says_so(tmp_path: Path, influxdb: InfluxDB) -> None:
    store = tmp_path / "telemetry.db"
    make_store(store)
    influxdb.create_database("conflict")
    influxdb.write("conflict", f'gpu,node=x,cluster=c,gpu=0 power_w="text" {NEW_NS}\n')
    letters = tmp_path / "refused.jsonl"
    done = run_export("--from", f"sqlite://{store}", "--to", influxdb.sink_url("conflict"),
                      "--since", "1h", "--dead-letters", str(letters))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "refused by the target" in done.stdout
    assert f"refused items are in {letters}" in done.stderr
    refused = letters.read_text().splitlines()
    assert len(refused) == 3 * 1 + 5 * 8  # rich-01's readable GPU, new-01's eight, per report
    assert all('"reason": "store_rejected"' in line and "field type conflict" in line
               for line in refused)  # fmt: skip


def test_a_target_that_stays_down_stops_the_export_with_a_way_to_resume(
    tmp_path: Path, influxdb: InfluxDB
) -> None:
    store = tmp_path / "telemetry.db"
    make_store(store)
    influxdb.stop()
    done = run_export("--from", f"sqlite://{store}", "--to", influxdb.sink_url("x"),
                      "--retry-for", "1")  # fmt: skip
    assert done.returncode == 1
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("telemetryd: error:")]
    assert "cannot connect" in line and "gave up after 1 s" in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--from", "influxdb://h/db", "--to", "sqlite:///tmp/x.db"],
         "--from 'influxdb://h/db': export reads the embedded store only"),
        (["--from", "sqlite:///tmp/a.db", "--to", "bogus://x"], "--to: 'bogus://x': unknown sink"),
        (["--from", "sqlite:///tmp/a.db", "--to", "sqlite:///tmp/a.db"], "that is the source"),
        (["--from", "sqlite:///tmp/a.db", "--to", "sqlite:///tmp/b.db", "--since", "soon"],
         "Invalid value for '--since': 'soon' is not a time"),
    ],
)  # fmt: skip
def test_bad_usage_is_one_line_and_exit_2(args: list[str], expected: str) -> None:
    done = run_export(*args)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_missing_store_is_one_line(tmp_path: Path) -> None:
    done = run_export("--from", f"sqlite://{tmp_path}/none.db", "--to", f"sqlite://{tmp_path}/b.db")
    assert done.returncode == 1
    assert (
        done.stderr.startswith("telemetryd: error: --from: sqlite ")
        and "cannot open" in done.stderr
    )
