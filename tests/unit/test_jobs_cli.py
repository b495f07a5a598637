"""``telemetryd jobs`` over a real SQLite store written by the aggregator's sink."""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgspec
import pytest

from telemetryd.model import JobGpu, JobRecord, Report
from tests.unit.sqlite_cases import run, write_all
from tests.unit.test_alert_engine import report as gpu_report
from tests.unit.test_cli import call

S = 1_000_000_000
T0 = (time.time_ns() // S - 6 * 3600) * S  # recent: nothing in the store is expired


def rec(job: str, state: str, start: int, end: int, gpus: tuple[int, ...], mj: int,
        **extra: object) -> JobRecord:  # fmt: skip
    return JobRecord(
        job=job, kind="hpc", state=state, start_ns=T0 + start * S, end_ns=T0 + end * S,  # type: ignore[arg-type]
        samples=(end - start) // 10 + 1,
        gpus=[JobGpu(index=i, uuid=f"GPU-{i}", start_ns=T0 + start * S) for i in gpus],
        energy_mj=mj, util_mean_pct=40.0, util_peak_pct=90, mem_peak_bytes=3 << 30,
        **extra,  # type: ignore[arg-type]
    )  # fmt: skip


def report(node: str, t: int, *jobs: JobRecord) -> Report:
    return msgspec.structs.replace(gpu_report(t // 10, node=node, t=T0 + t * S), jobs=list(jobs))


@pytest.fixture
def store(tmp_path: Path) -> str:
    """Job 100 on n1 (GPUs 0, 1) and n2 (GPU 3), ended; job 200 running on n2 alone;
    job 50 on n3 ended long before the others started."""
    db = tmp_path / "telemetry.db"
    batches = [
        [report("n3", 100, rec("50", "ended", 0, 100, (0,), 1_000))],
        [report("n1", 3600, rec("100", "running", 3000, 3600, (0, 1), 10_000_000, user="ana")),
         report("n2", 3600, rec("100", "running", 3010, 3600, (3,), 2_000_000))],
        [report("n1", 7200, rec("100", "ended", 3000, 7200, (0, 1), 50_000_000, user="ana")),
         report("n2", 7210, rec("100", "ended", 3010, 7210, (3,), 25_000_000),
                rec("200", "running", 7000, 7210, (5,), 300_000))],
    ]  # fmt: skip
    run(write_all(db, *batches))
    return f"sqlite://{db}"


def jobs_json(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, object]]:
    code, out, err = call(["jobs", *args, "--json"], capsys)
    assert (code, err) == (0, "")
    jobs = json.loads(out)["jobs"]
    assert isinstance(jobs, list)
    return jobs


def test_joins_a_two_node_job_from_the_store(
    store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = {j["job"]: j for j in jobs_json(capsys, "--store", store)}
    assert set(jobs) == {"50", "100", "200"}
    job = jobs["100"]
    assert job["state"] == "ended" and job["cluster"] == "c1"
    assert job["nodes"] == ["n1", "n2"] and job["gpus"] == ["n1:0", "n1:1", "n2:3"]
    assert job["energy_mj"] == 75_000_000 and job["energy_j"] == 75_000.0
    assert job["start_ns"] == T0 + 3000 * S and job["end_ns"] == T0 + 7210 * S
    assert job["mean_power_w"] == pytest.approx(75_000 / 4210)
    assert job["user"] == "ana"
    # running in its last record, which is years old: the store cannot know, so "silent"
    assert jobs["200"]["state"] == "silent"


def test_since_and_node_select_whole_jobs(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    since = str((T0 + 7205 * S) / S)  # n1's part of job 100 ended before this: still shown
    jobs = jobs_json(capsys, "--store", store, "--since", since)
    assert [(j["job"], j["nodes"], j["energy_mj"]) for j in jobs] == [
        ("100", ["n1", "n2"], 75_000_000), ("200", ["n2"], 300_000)]  # fmt: skip
    jobs = jobs_json(capsys, "--store", store, "--node", "n1")
    assert [(j["job"], j["nodes"]) for j in jobs] == [("100", ["n1", "n2"])]
    assert [j["job"] for j in jobs_json(capsys, "--store", store, "--job", "50")] == ["50"]
    assert jobs_json(capsys, "--store", store, "--job", "nope") == []


def test_table_for_a_person(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = call(["jobs", "--store", store], capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["job", "state", "nodes", "GPUs"]
    [row] = [line for line in lines if line.startswith("100 ")]
    assert lines[0].split()[7:9] == ["energy", "kJ"]  # no job reached 1 kWh
    assert "ended" in row and "n1,n2" in row and " 75.0 " in row and "ana" in row
    assert "1h10m" in row  # 4210 s
    [row] = [line for line in lines if line.startswith("50 ")]
    assert " 0.0 " in row  # 1 J
    code, out, _ = call(["jobs", "--store", store, "--job", "nope"], capsys)
    assert (code, out) == (0, "no jobs in the store for this selection\n")


def test_default_store_is_the_configured_aggregators(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "t.toml"
    conf.write_text(f'[aggregator]\nstate_dir = "{tmp_path}"\n')
    assert len(jobs_json(capsys, "-c", str(conf))) == 3  # <state_dir>/telemetry.db
    conf.write_text(f'[aggregator]\nsinks = ["{store}"]\nstate_dir = "{tmp_path / "x"}"\n')
    assert len(jobs_json(capsys, "-c", str(conf))) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--store", "sqlite:///nowhere/telemetry.db"], "/nowhere/telemetry.db: no such file"),
        (["--store", "influxdb2://db.example:8086?org=o&bucket=b"], "InfluxDB 2.x is not"),
        (["--store", "ftp://x"], "--store: "),
        (["--since", "yesterday-ish"], "is not a time"),
    ],
)
def test_bad_store_or_time_is_one_line_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = call(["jobs", *args], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err


def test_a_file_that_is_not_a_store_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "notes.db"
    bad.write_text("hello")
    code, _out, err = call(["jobs", "--store", f"sqlite://{bad}"], capsys)
    assert code == 2 and err.count("\n") == 1 and str(bad) in err, err


def test_an_influxdb_that_does_not_answer_is_one_line_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.integration.mosquitto import free_port

    url = f"influxdb://127.0.0.1:{free_port()}/telemetry"
    code, out, err = call(["jobs", "--store", url], capsys)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and err.startswith("telemetryd: error: influxdb://127.0.0.1:"), err


def test_influxql_quotes_the_job_id() -> None:
    from telemetryd.jobsinflux import query
    from telemetryd.urls import parse_sink_url

    url = parse_sink_url("influxdb://h:8086/db?rp=week")
    assert query(url, since_ns=5, job="a'b\\") == (
        'SELECT * FROM "week"."job" WHERE time >= 5 AND "job" = \'a\\\'b\\\\\' GROUP BY *'
    )
    assert query(parse_sink_url("influxdb://h:8086/db"), since_ns=None, job=None) == (
        'SELECT * FROM "job" GROUP BY *'
    )


def test_a_refused_query_or_a_bad_point_is_one_clear_error() -> None:
    from telemetryd.jobsinflux import InfluxReadError, records

    with pytest.raises(InfluxReadError, match="refused: database not found"):
        records({"results": [{"error": "database not found: x"}]}, "influxdb://h/x")
    series = {"tags": {"cluster": "c1", "node": "n1"}, "columns": ["time", "job", "kind"],
              "values": [[1, "7", "batch"]]}  # fmt: skip
    with pytest.raises(InfluxReadError, match="of node 'n1' is not a job record"):
        records({"results": [{"series": [series]}]}, "influxdb://h/x")
