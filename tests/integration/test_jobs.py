"""A job across two sim nodes, end to end: Slurm prolog, agents, Mosquitto, aggregator, stores.

The job map directories are written and cleared by the shipped examples/slurm scripts
(the same job id on both nodes, as Slurm's prolog runs on every node of an allocation);
two real agents on the simulator account the job's energy from their GPUs' counters,
real Mosquitto carries the reports, and one aggregator writes SQLite and a real InfluxDB
1.x. After the epilog the joined job must be the same in `telemetryd jobs --json` (from
either store), the SQLite ``job`` table and InfluxDB's ``job`` measurement: two nodes,
their GPUs, energy the sum of the nodes' parts, each part the exact counter delta of its
GPUs.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from exporters.base import SinkError
from exporters.sqlite_reader import SqliteReader
from telemetryd.model import JobRecord, Report
from tests.integration.influxdb import InfluxDB
from tests.integration.mosquitto import Mosquitto
from tests.integration.pipeline import agent, aggregator, retained, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
JOB = "4242"
GPUS = {"n1": (0, 1), "n2": (1,)}
RULE = """
[[rule]]
name = "JobHoldsGpus"
scope = "job"
expr = "gpus >= 3 and nodes == 2"
severity = "info"
annotations = { summary = "job {{ job }} holds GPUs" }
"""


def slurm(script: str, node: str, tmp: Path) -> None:
    """Run examples/slurm/<script> for the job as slurmd would on ``node``."""
    env = {**os.environ, "SLURM_JOB_ID": JOB, "JOB_MAP_DIR": str(tmp / f"jobs-{node}"),
           "SLURM_JOB_GPUS": ",".join(map(str, GPUS[node]))}  # fmt: skip
    done = subprocess.run(["sh", str(ROOT / "examples" / "slurm" / script)], env=env,
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr


def parts(store: Path) -> list[tuple[str, str, JobRecord]]:
    """The store's parts of the job ([] while the aggregator has not created it yet)."""
    if not store.exists():
        return []
    try:
        reader = SqliteReader(store)
    except SinkError:
        return []
    try:
        return reader.job_parts(job=JOB)
    finally:
        reader.close()


def reports(store: Path) -> list[Report]:
    reader = SqliteReader(store)
    try:
        return [r for page in reader.reports() for r in page]
    finally:
        reader.close()


def counter_delta(store: Path, node: str, index: int) -> int:
    """The GPU's energy counter from the first to the last report that listed the job."""
    seen = [
        g.energy_mj
        for r in sorted(reports(store), key=lambda r: r.time_ns)
        if r.node == node
        for g in r.gpus
        if g.index == index and any(o.job == JOB for o in g.owners or [])
    ]
    assert len(seen) >= 2 and None not in seen, seen
    return seen[-1] - seen[0]  # type: ignore[operator]


def jobs_cli(store: str) -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "telemetryd", "jobs", "--store", store, "--json", "--job", JOB],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    jobs = json.loads(done.stdout)["jobs"]
    assert isinstance(jobs, list)
    return jobs


def test_job_on_two_nodes_joined_in_sqlite_influxdb_and_the_cli(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB
) -> None:
    influxdb.create_database("telemetry")
    store = tmp_path / "aggregator" / "telemetry.db"
    sinks = f"sqlite://{store},{influxdb.sink_url('telemetry')}"
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "jobs.toml").write_text(RULE)
    agg = aggregator(tmp_path, mosquitto.url, sinks=sinks,
                     alerts_rules_dir=str(tmp_path / "rules")).start()  # fmt: skip
    agg.wait_log("consuming")
    for node in GPUS:
        slurm("prolog.sh", node, tmp_path)
    agents = [
        agent(tmp_path, mosquitto.url, node, gpus=4, interval=0.2,
              attribution_job_map_dir=str(tmp_path / f"jobs-{node}"),
              attribution_jobs="true").start()
        for node in GPUS
    ]  # fmt: skip

    def running_on_both() -> bool:
        found = {(node, rec.state, rec.samples >= 5) for _c, node, rec in parts(store)}
        return found == {("n1", "running", True), ("n2", "running", True)}

    wait_until(running_on_both, 60, "the job running on n1 and n2 in the SQLite store")

    def job_alert() -> list[dict[str, object]]:
        found = retained(mosquitto.port, "telemetry/v1/c1/_alerts/+", wait=0.5).values()
        alerts = [json.loads(payload) for payload in found if payload]
        return [a["labels"] for a in alerts if a["labels"]["alertname"] == "JobHoldsGpus"]

    # The aggregator's live table feeds the job scope: joined across both nodes.
    wait_until(lambda: len(job_alert()) == 1, 30, "the job rule firing in the aggregator")
    [labels] = job_alert()
    assert (labels["scope"], labels["cluster"], labels["job"]) == ("job", "c1", JOB)
    for node in GPUS:
        slurm("epilog.sh", node, tmp_path)
        assert not list((tmp_path / f"jobs-{node}").glob("[0-9]*")), "epilog left a map file"

    def ended_on_both() -> bool:
        return {(node, rec.state) for _c, node, rec in parts(store)} == {
            ("n1", "ended"), ("n2", "ended")}  # fmt: skip

    wait_until(ended_on_both, 30, "the job ended on n1 and n2 in the SQLite store")
    wait_until(lambda: job_alert() == [], 30, "the job alert resolved once the job ended")
    for service in agents:
        assert service.stop() == 0, service.tail()

    # The nodes' parts: each the exact counter delta of its GPUs.
    by_node = {node: rec for _c, node, rec in parts(store)}
    for node, rec in by_node.items():
        assert [g.index for g in rec.gpus] == list(GPUS[node])
        for g in rec.gpus:
            assert g.energy_mj == counter_delta(store, node, g.index), (node, g.index)
        assert rec.energy_mj == sum(g.energy_mj or 0 for g in rec.gpus) > 0
    total = sum(rec.energy_mj or 0 for rec in by_node.values())

    # telemetryd jobs, as an operator runs it.
    [job] = jobs_cli(f"sqlite://{store}")
    assert (job["state"], job["kind"], job["cluster"]) == ("ended", "hpc", "c1")
    assert job["nodes"] == ["n1", "n2"] and job["gpus"] == ["n1:0", "n1:1", "n2:1"]
    assert job["energy_mj"] == total
    assert job["start_ns"] == min(r.start_ns for r in by_node.values())
    assert job["end_ns"] == max(r.end_ns for r in by_node.values())

    # The SQLite job table itself: one ended row per node.
    with sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True) as con:
        rows = con.execute("SELECT node, state, energy_mj, gpu_count FROM job WHERE job = ? "
                           "ORDER BY node", (JOB,)).fetchall()  # fmt: skip
    assert rows == [("n1", "ended", by_node["n1"].energy_mj, 2),
                    ("n2", "ended", by_node["n2"].energy_mj, 1)]  # fmt: skip

    # InfluxDB: one point per node's ended part, in the job measurement.
    def influx_points() -> list[dict[str, object]]:
        return influxdb.points(f"SELECT * FROM job WHERE job = '{JOB}' GROUP BY *", "telemetry")

    wait_until(lambda: len(influx_points()) == 2, 30, "two job points in InfluxDB")
    points = sorted(influx_points(), key=lambda p: str(p["node"]))
    assert [p["node"] for p in points] == ["n1", "n2"]
    assert [p["energy_mj"] for p in points] == [by_node["n1"].energy_mj, by_node["n2"].energy_mj]
    assert [p["gpus"] for p in points] == ["0,1", "1"]
    assert sum(int(str(p["energy_mj"])) for p in points) == total

    # telemetryd jobs reading InfluxDB joins the same job (only the GPU UUIDs are not there).
    assert jobs_cli(influxdb.sink_url("telemetry")) == [job]
    assert agg.stop() == 0, agg.tail()
