"""Joining per-node job records into jobs, and the aggregator's live job table."""

from __future__ import annotations

import json

import msgspec
import pytest

from telemetryd.jobs import JobTable, join, settle
from telemetryd.model import JobGpu, JobRecord, Report
from tests.unit.test_alert_engine import report as gpu_report

S = 1_000_000_000
T0 = 1_700_000_000 * S


def record(
    job: str = "1234",
    *,
    gpus: tuple[int, ...] = (0,),
    start: int = 0,
    end: int = 100,
    state: str = "ended",
    energy_mj: int | None = 1_000_000,
    samples: int = 10,
    util: float | None = 50.0,
    peak: int | None = 80,
    mem: int | None = 1 << 30,
    **extra: object,
) -> JobRecord:
    """A record whose times are seconds after T0."""
    return JobRecord(
        job=job, kind="hpc", state=state,  # type: ignore[arg-type]
        start_ns=T0 + start * S, end_ns=T0 + end * S, samples=samples,
        gpus=[JobGpu(index=i, uuid=f"GPU-{i}", start_ns=T0 + start * S) for i in gpus],
        energy_mj=energy_mj, util_mean_pct=util, util_peak_pct=peak, mem_peak_bytes=mem,
        **extra,  # type: ignore[arg-type]
    )  # fmt: skip


def report(node: str, t: int, *records: JobRecord, cluster: str = "c1") -> Report:
    return msgspec.structs.replace(gpu_report(t, node=node, t=T0 + t * S), cluster=cluster,
                                   jobs=list(records))  # fmt: skip


def test_join_two_nodes_sums_energy_and_weights_utilisation() -> None:
    a = record(gpus=(0, 1), start=0, end=100, energy_mj=2_000_000, samples=10, util=90.0,
               peak=99, mem=5, user="alice")  # fmt: skip
    b = record(gpus=(3,), start=10, end=200, energy_mj=500_000, samples=20, util=30.0,
               peak=40, mem=7)  # fmt: skip
    [job] = join([("c1", "n2", b), ("c1", "n1", a)])
    assert job.nodes == ["n1", "n2"]
    assert job.gpus == ["n1:0", "n1:1", "n2:3"]
    assert job.state == "ended"
    assert (job.start_ns, job.end_ns) == (T0, T0 + 200 * S)
    assert job.energy_mj == 2_500_000
    assert job.mean_power_w == pytest.approx(2500 / 200)
    # 10 samples x 2 GPUs at 90 %, 20 samples x 1 GPU at 30 %
    assert job.util_mean_pct == pytest.approx((90 * 20 + 30 * 20) / 40)
    assert (job.util_peak_pct, job.mem_peak_bytes, job.user) == (99, 7, "alice")
    assert job.samples == 30


def test_running_if_any_part_runs_and_energy_absent_only_when_all_lack_it() -> None:
    [job] = join([("c1", "n1", record(energy_mj=None)),
                  ("c1", "n2", record(state="running", energy_mj=None))])  # fmt: skip
    assert job.state == "running"
    assert job.energy_mj is None and job.mean_power_w is None
    [job] = join([("c1", "n1", record(energy_mj=None)), ("c1", "n2", record(energy_mj=7))])
    assert job.energy_mj == 7


def test_a_running_job_unheard_of_for_five_intervals_is_silent() -> None:
    # 101 samples over 100 s on each of two nodes: an interval of about 1 s
    parts = [("c1", n, record(state="running", end=100, samples=101)) for n in ("n1", "n2")]
    [job] = join(parts)
    settle([job], T0 + 159 * S)  # 59 s without a record: under the one-minute floor
    assert job.state == "running"
    settle([job], T0 + 161 * S)
    assert job.state == "silent"
    # a 30 s interval: five of them is 150 s, longer than the floor
    [job] = join([("c1", "n1", record(state="running", end=3000, samples=101))])
    settle([job], T0 + 3100 * S)
    assert job.state == "running"
    settle([job], T0 + 3151 * S)
    assert job.state == "silent"
    [ended] = join([("c1", "n1", record(state="ended", end=100))])
    settle([ended], T0 + 10**6 * S)
    assert ended.state == "ended"


def test_same_job_id_in_two_clusters_are_two_jobs_ordered_by_start() -> None:
    jobs = join([("c2", "n1", record(start=5)), ("c1", "n1", record(start=1)),
                 ("c1", "n1", record("99", start=3))])  # fmt: skip
    assert [(j.cluster, j.job) for j in jobs] == [("c1", "1234"), ("c1", "99"), ("c2", "1234")]


def test_a_part_seen_running_and_ended_counts_once() -> None:
    running = record(state="running", end=50, energy_mj=400)
    ended = record(state="ended", end=60, energy_mj=500)
    for parts in ([running, ended], [ended, running]):
        [job] = join([("c1", "n1", p) for p in parts])
        assert (job.state, job.energy_mj) == ("ended", 500)
    # the same node again later (a new start) is a second part of the same job
    [job] = join([("c1", "n1", ended), ("c1", "n1", record(start=300, end=400, energy_mj=1))])
    assert job.energy_mj == 501 and job.nodes == ["n1"]


def test_util_mean_ignores_parts_without_it_and_zero_length_job_has_no_power() -> None:
    [job] = join([("c1", "n1", record(util=None)), ("c1", "n2", record(util=20.0))])
    assert job.util_mean_pct == 20.0
    [job] = join([("c1", "n1", record(start=5, end=5))])
    assert job.mean_power_w is None and job.duration_s == 0


def test_to_dict_is_json_with_joules() -> None:
    [job] = join([("c1", "n1", record(energy_mj=1500))])
    data = json.loads(json.dumps(job.to_dict()))
    assert data["energy_j"] == 1.5 and data["duration_s"] == 100.0
    assert data["gpus"] == ["n1:0"] and data["kind"] == "hpc"


def test_table_keeps_only_the_newest_record_per_node() -> None:
    table = JobTable()
    table.observe(report("n1", 20, record(state="ended", end=20, energy_mj=9)))
    table.observe(report("n1", 10, record(state="running", end=10, energy_mj=5)))  # late
    [job] = table.jobs()
    assert (job.state, job.energy_mj) == ("ended", 9)


def test_table_joins_nodes_and_ends_a_part_the_newest_report_no_longer_lists() -> None:
    table = JobTable()
    table.observe(report("n1", 10, record(state="running", end=10)))
    table.observe(report("n2", 10, record(state="running", gpus=(4,), end=10)))
    [job] = table.running()
    assert job.nodes == ["n1", "n2"] and job.gpus == ["n1:0", "n2:4"]
    table.observe(report("n1", 5))  # an older report without it: history, changes nothing
    assert table.running()[0].nodes == ["n1", "n2"]
    table.observe(report("n1", 20))  # n1's newest report: the job no longer runs there
    [job] = table.jobs()
    assert job.state == "running"  # still on n2
    table.observe(report("n2", 20))
    assert table.running() == [] and table.jobs()[0].state == "ended"


def test_table_drops_jobs_an_hour_after_their_last_record() -> None:
    table = JobTable(keep_s=3600)
    table.observe(report("n1", 100, record(end=100)))
    table.observe(report("n2", 100, record("2", end=100, state="running")))
    assert len(table.jobs(T0 + 3000 * S)) == 2
    assert [j.job for j in table.jobs(T0 + 3701 * S)] == []  # a silent running part too


def test_snapshot_restore_round_trip_through_json() -> None:
    table = JobTable()
    table.observe(report("n1", 10, record(state="running", end=10, user="bob")))
    table.observe(report("n2", 10, record(end=10), cluster="c2"))
    copy = JobTable()
    copy.restore(json.loads(json.dumps(table.snapshot())))
    assert copy.jobs() == table.jobs()
    copy.observe(report("n1", 5))  # the restored node time still orders late reports
    assert [j.state for j in copy.jobs()] == ["running", "ended"]


def test_restore_skips_what_does_not_decode() -> None:
    table = JobTable()
    table.restore({"parts": [["c1", "n1", 1, {"job": "x"}], "junk",
                             ["c1", "n1", 5, msgspec.to_builtins(record())]],
                   "latest": [["c1"], ["c1", "n1", 5]]})  # fmt: skip
    assert [j.job for j in table.jobs()] == ["1234"]
    assert table.latest == {("c1", "n1"): 5}
