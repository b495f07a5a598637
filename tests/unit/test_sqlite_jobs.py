"""SQLite schema 3: processes and jobs in tables of their own, exact rebuild, v2 migration."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from exporters.sqlite import SqliteReader, SqliteSink
from telemetryd.model import JobRecord, Report, decode_report
from tests.unit.sqlite_cases import Clock, copy, full_report, raw, run, write_all
from tests.unit.test_lineprotocol import attributed, job

FIXTURES = Path(__file__).parent.parent / "fixtures" / "sqlite"
S = 10**9


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "telemetry.db"


def keep_raw(db: Path, *batches: list[Report]) -> SqliteSink:
    """Write with retention and rollups off: the reports here are from 2023."""
    return run(write_all(db, *batches, retention_days=0, raw_days=0))


def everything(db: Path) -> list[Report]:
    with SqliteReader(db) as r:
        return [x for page in r.reports() for x in page]


def on(node: str, t_s: int, *records: JobRecord, seq: int = 1, cluster: str = "c-1") -> Report:
    """A small report of ``node`` carrying ``records``."""
    r = full_report(t_s * S, seq=seq, node=node)
    r.cluster, r.events, r.jobs = cluster, [], list(records)
    return r


def test_processes_owners_and_jobs_come_back_exactly(db):
    report = attributed()
    second = copy(report, seq=report.seq + 1, time_ns=report.time_ns + 10 * S, events=[])
    second.gpus[0].processes = None  # unknown this time, which is not "none"
    second.gpus[1].processes = []
    keep_raw(db, [report, second])
    assert everything(db) == [report, second]

    # One column per process field, in the GPU's order; the gpu row says how many.
    procs = raw(db, "SELECT gpu_index, slot, pid, user, command, job, step, sm_util_pct, "
                 "cpu_pct, rss_bytes, runtime FROM gpu_process WHERE time_ns = ? ORDER BY "
                 "gpu_index, slot", (report.time_ns,))  # fmt: skip
    assert procs == [(0, 0, 4242, "alice", 'python "train.py" --lr=0.1', "1234", "0", 87, 101.5,
                      1 << 30, "systemd")]  # fmt: skip
    counts = raw(db, "SELECT time_ns, gpu_index, process_count FROM gpu ORDER BY 1, 2")
    assert [c[2] for c in counts] == [1, None, None, 0]
    # Owners as the line protocol and /metrics show them (exporters/owners.py).
    owners = raw(db, "SELECT gpu_index, hpc_job, pod, namespace, container FROM gpu "
                  "WHERE time_ns = ?", (report.time_ns,))  # fmt: skip
    assert owners == [(0, "1200,1234", "train-0", "ml", "main"), (1, None, None, None, "c0ffee")]


def test_the_job_table_keeps_the_newest_record_of_each_part(db):
    running = job("77", "running", 1000, 1010, (0, 1), energy_mj=500)
    later = job("77", "running", 1000, 1020, (0, 1), energy_mj=900)
    ended = job("77", "ended", 1000, 1030, (0, 1), energy_mj=1_200, mean_power_w=0.04)
    keep_raw(db, [on("node-a", 1010, running, seq=1), on("node-a", 1020, later, seq=2)])
    with SqliteReader(db) as r:
        assert r.job_parts() == [("c-1", "node-a", later)]
    # The ended record wins, and a running one delivered late (a spool drained after an
    # outage) or again does not bring the job back to life.
    keep_raw(db, [on("node-a", 1030, ended, seq=3)], [on("node-a", 1010, running, seq=1)])
    keep_raw(db, [on("node-a", 1020, later, seq=2), on("node-a", 1030, ended, seq=3)])
    with SqliteReader(db) as r:
        assert r.job_parts() == [("c-1", "node-a", ended)]
    stored = raw(db, "SELECT cluster, job, node, start_ns, state, end_ns, energy_mj, gpu_count,"
                  " gpu_indices FROM job")  # fmt: skip
    assert stored == [("c-1", "77", "node-a", 1000 * S, "ended", 1030 * S, 1_200, 2, "0,1")]
    # Every report still carries its own records.
    assert [r.jobs for r in everything(db)] == [[running], [later], [ended]]


def test_job_parts_filter_by_end_node_and_job(db):
    a = job("12", "ended", 100, 200, (0,), energy_mj=10)
    b = job("12", "running", 150, 400, (0, 1, 2, 3), energy_mj=99)
    c = job("ml/train-0", "ended", 300, 350, (1,), kind="pod", pod="train-0", namespace="ml")
    again = job("12", "ended", 500, 600, (0,))  # the same id started again: another part
    keep_raw(db, [on("n1", 200, a, c), on("n2", 400, b), on("n1", 600, again, seq=2),
                  on("n1", 600, a, cluster="c-0")])  # fmt: skip
    with SqliteReader(db) as r:
        assert r.job_parts() == [("c-0", "n1", a), ("c-1", "n1", a), ("c-1", "n1", again),
                                 ("c-1", "n2", b), ("c-1", "n1", c)]  # fmt: skip
        assert r.job_parts(since_ns=350 * S) == [("c-1", "n1", again), ("c-1", "n2", b),
                                                 ("c-1", "n1", c)]  # fmt: skip
        assert r.job_parts(node="n2") == [("c-1", "n2", b)]
        assert r.job_parts(job="12", node="n1", since_ns=201 * S) == [("c-1", "n1", again)]
        assert r.job_parts(job="nope") == []


def test_old_jobs_expire_on_their_end_and_processes_with_their_gpus(db):
    now = 1_800_000_000
    clock = Clock(now)
    old = job("1", "ended", now - 40 * 86400, now - 31 * 86400, (0,))
    long = job("2", "running", now - 40 * 86400, now - 60, (0,))  # started long ago, runs
    run(write_all(db, [on("n1", now - 31 * 86400, old), on("n1", now - 60, long, seq=2)],
                  clock=clock, retention_days=30, raw_days=2))  # fmt: skip
    with SqliteReader(db) as r:
        assert [p[2].job for p in r.job_parts()] == ["2"]
        assert r.counts()["gpu_process"] == 2  # the recent report's two processes
    assert raw(db, "SELECT DISTINCT time_ns FROM gpu_process") == [((now - 60) * S,)]


def test_a_version_2_file_is_migrated_and_rebuilds_every_report(db):
    """A store written by the version-2 code (tests/fixtures/sqlite/make_v2.py)."""
    con = sqlite3.connect(db)
    con.executescript((FIXTURES / "v2.sql").read_text())
    con.execute("PRAGMA user_version = 2")
    con.commit()
    con.close()
    originals = [
        decode_report(x) for x in (FIXTURES / "v2-reports.jsonl").read_bytes().splitlines()
    ]
    # Version 2 kept processes in the gpu rows' details (an empty list too: "none").
    assert raw(db, "SELECT count(*) FROM gpu WHERE details LIKE '%\"processes\"%'") == [(3,)]

    newer = copy(originals[-1], seq=52, time_ns=originals[-1].time_ns + 10 * S, jobs=[])
    keep_raw(db, [newer])
    assert raw(db, "PRAGMA user_version") == [(3,)]
    assert everything(db) == [*originals, newer]
    # What version 2 kept in details is in the new tables and columns now.
    assert raw(db, "SELECT count(*) FROM gpu WHERE details LIKE '%\"processes\"%'") == [(0,)]
    assert raw(db, "SELECT time_ns, gpu_index, slot, pid, user FROM gpu_process ORDER BY 1") == [
        (originals[0].time_ns, 0, 0, 4242, "alice"),
        (originals[0].time_ns, 0, 1, 7, None),
    ]
    gpus = raw(db, "SELECT gpu_index, process_count, hpc_job, pod, container FROM gpu "
                "WHERE time_ns = ?", (originals[0].time_ns,))  # fmt: skip
    assert gpus == [(0, 2, "4321", "train-0", "main"), (1, None, None, None, None),
                    (2, 0, None, None, "0123abcd")]  # fmt: skip
    with SqliteReader(db) as r:
        assert [(n, p.job, p.state) for _c, n, p in r.job_parts()] == [
            ("node-a", "4321", "ended"),
            ("node-a", "ml/train-0", "running"),
        ]
