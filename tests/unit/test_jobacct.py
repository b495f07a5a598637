"""Energy per job in the agent: exact counter deltas, GPUs leaving, resets, restarts."""

from __future__ import annotations

import logging

import pytest

from telemetryd.jobacct import JobAccountant, job_key
from telemetryd.model import (
    REPORT_SCHEMA,
    AgentStats,
    Gpu,
    GpuError,
    GpuOwner,
    GpuProcess,
    JobRecord,
    MigDevice,
    Report,
    SourceError,
    decode_report,
    encode_report,
)

S = 1_000_000_000  # ns per second
T0 = 1_764_600_000 * S


def gpu(index: int, energy: int | None, *jobs: str, util: int | None = 50,
        mem: int | None = 1 << 30, **kw: object) -> Gpu:  # fmt: skip
    owners = [GpuOwner(source="jobmap", job=j) for j in jobs]
    return Gpu(index=index, uuid=f"GPU-{index}", pci_bus_id=f"0:{index}", name="H100",
               driver="550", energy_mj=energy, util_gpu_pct=util, fb_used_bytes=mem,
               owners=owners or None, **kw)  # type: ignore[arg-type]  # fmt: skip


def report(t: int, *gpus: Gpu, errors: list[SourceError] | None = None) -> Report:
    return Report(schema=REPORT_SCHEMA, cluster="c1", node="n1", boot_id="0" * 32, seq=t,
                  time_ns=T0 + t * S, interval_s=1.0, agent=AgentStats(version="t"),
                  gpus=list(gpus), errors=errors or [])  # fmt: skip


def run(acct: JobAccountant, r: Report) -> dict[tuple[str, str], JobRecord]:
    """Update, check the report still passes the wire decoder, and index its records."""
    acct.update(r)
    assert decode_report(encode_report(r)).jobs == r.jobs
    return {(j.job, j.state): j for j in r.jobs}


def test_two_jobs_in_turn_on_one_gpu():
    acct = JobAccountant(None)
    run(acct, report(1, gpu(0, 1_000, "A")))
    run(acct, report(2, gpu(0, 1_500, "A", util=90)))
    jobs = run(acct, report(3, gpu(0, 2_301, "A", util=10, mem=5 << 30)))
    a = jobs["A", "running"]
    assert (a.energy_mj, a.samples, a.end_ns) == (1_301, 3, T0 + 3 * S)
    jobs = run(acct, report(4, gpu(0, 9_000, "B")))
    a = jobs["A", "ended"]
    assert a.energy_mj == 1_301  # the last report that saw it; not the one that missed it
    assert (a.start_ns, a.end_ns, a.samples) == (T0 + S, T0 + 3 * S, 3)
    assert a.mean_power_w == pytest.approx(1.301 / 2)
    assert (a.util_mean_pct, a.util_peak_pct, a.mem_peak_bytes) == (50, 90, 5 << 30)
    assert a.gpus[0].end_ns == T0 + 3 * S and a.gpus[0].energy_mj == 1_301
    assert jobs["B", "running"].energy_mj == 0
    jobs = run(acct, report(5, gpu(0, 9_777, "B")))
    assert set(jobs) == {("B", "running")}  # A went out once
    jobs = run(acct, report(6, gpu(0, 12_000)))
    assert jobs["B", "ended"].energy_mj == 777
    assert run(acct, report(7, gpu(0, 13_000))) == {}


def test_a_job_on_four_gpus_leaving_them_one_by_one():
    acct = JobAccountant(None)
    counters = {i: 10_000 * (i + 1) for i in range(4)}

    def tick(t: int, held: range) -> dict[tuple[str, str], JobRecord]:
        for i in range(4):
            counters[i] += 700 * t + i
        return run(acct, report(t, *(gpu(i, counters[i], *(["J"] if i in held else []))
                                     for i in range(4))))  # fmt: skip

    tick(1, range(4))
    first = {i: counters[i] for i in range(4)}
    tick(2, range(4))
    last = {i: counters[i] for i in range(4)}
    jobs = tick(3, range(3))  # GPU 3 left after report 2
    job = jobs["J", "running"]
    assert [g.end_ns for g in job.gpus] == [None, None, None, T0 + 2 * S]
    assert job.gpus[3].energy_mj == last[3] - first[3]
    last.update({i: counters[i] for i in range(3)})
    tick(4, range(1))
    last[0] = counters[0]
    jobs = tick(5, range(0))
    job = jobs["J", "ended"]
    assert [g.end_ns for g in job.gpus] == [T0 + 4 * S, T0 + 3 * S, T0 + 3 * S, T0 + 2 * S]
    assert [g.energy_mj for g in job.gpus] == [last[i] - first[i] for i in range(4)]
    assert job.energy_mj == sum(last[i] - first[i] for i in range(4))
    assert (job.start_ns, job.end_ns, job.samples) == (T0 + S, T0 + 4 * S, 4)


def test_a_counter_that_goes_back_counts_on_from_zero(caplog):
    acct = JobAccountant(None)
    run(acct, report(1, gpu(0, 1_000, "A", "B")))
    run(acct, report(2, gpu(0, 5_000, "A", "B")))
    with caplog.at_level(logging.WARNING):
        run(acct, report(3, gpu(0, 200, "A", "B")))
    jobs = run(acct, report(4, gpu(0, 700, "A", "B")))
    assert jobs["A", "running"].energy_mj == 4_000 + 700
    assert jobs["B", "running"].energy_mj == 4_700  # a shared GPU counts for each job
    resets = [r for r in caplog.records if "went back from 5000 to 200" in r.message]
    assert len(resets) == 1  # once per GPU, not per job


def test_a_gpu_without_a_counter_leaves_its_share_absent():
    acct = JobAccountant(None)
    run(acct, report(1, gpu(0, 100, "A"), gpu(1, None, "A"), gpu(2, None, "B")))
    jobs = run(acct, report(2, gpu(0, 600, "A"), gpu(1, None, "A"), gpu(2, None, "B")))
    a, b = jobs["A", "running"], jobs["B", "running"]
    assert [g.energy_mj for g in a.gpus] == [500, None]
    assert a.energy_mj == 500
    assert b.energy_mj is None and b.mean_power_w is None and b.gpus[0].energy_mj is None


def test_a_gpu_in_error_keeps_its_job():
    acct = JobAccountant(None)
    run(acct, report(1, gpu(0, 100, "A")))
    lost = gpu(0, None, util=None, mem=None, error=GpuError(code="gpu_lost", message="off"))
    jobs = run(acct, report(2, lost))
    assert jobs["A", "running"].energy_mj == 0
    jobs = run(acct, report(3, gpu(0, 900, "A", util=100)))
    a = jobs["A", "running"]
    assert (a.energy_mj, a.samples, a.util_mean_pct, a.util_peak_pct) == (800, 3, 75, 100)


def test_failed_attribution_keeps_every_job():
    acct = JobAccountant(None)
    run(acct, report(1, gpu(0, 100, "A"), gpu(1, 100, "B")))
    failed = [SourceError(source="attribution", message="timed out")]
    jobs = run(acct, report(2, gpu(0, 300), gpu(1, 400), errors=failed))
    assert {k: j.energy_mj for k, j in jobs.items()} == {("A", "running"): 200,
                                                        ("B", "running"): 300}  # fmt: skip
    jobs = run(acct, report(3, gpu(0, 500), gpu(1, 500, "B")))
    assert jobs["A", "ended"].end_ns == T0 + 2 * S


def test_a_job_back_on_a_gpu_it_left_does_not_count_the_gap():
    acct = JobAccountant(None)
    run(acct, report(1, gpu(0, 0, "A"), gpu(1, 0, "A")))
    run(acct, report(2, gpu(0, 100, "A"), gpu(1, 100, "A")))
    run(acct, report(3, gpu(0, 200, "A"), gpu(1, 5_000)))
    run(acct, report(4, gpu(0, 300, "A"), gpu(1, 6_000, "A")))
    jobs = run(acct, report(5, gpu(0, 400, "A"), gpu(1, 6_050, "A")))
    a = jobs["A", "running"]
    assert [g.energy_mj for g in a.gpus] == [400, 100 + 50]
    assert a.gpus[1].start_ns == T0 + S and a.gpus[1].end_ns is None


def test_owners_make_job_keys_and_cgroup_owners_count_only_alone():
    assert job_key(GpuOwner(source="jobmap", job="42")) == ("42", "hpc")
    pod = GpuOwner(source="kubelet", pod="train-0", namespace="ml", pod_uid="u1")
    assert job_key(pod) == ("ml/train-0", "pod")
    assert job_key(GpuOwner(source="cgroup", pod_uid="u2")) == ("u2", "pod")
    acct = JobAccountant(None)
    g0 = gpu(0, 10, "7")
    g0.owners = [GpuOwner(source="cgroup", job="8"), *(g0.owners or [])]
    g1 = gpu(1, 10)
    g1.owners = [GpuOwner(source="cgroup", job="9")]
    g2 = gpu(2, 10)
    g2.owners = [pod]
    g2.processes = [GpuProcess(pid=5, type="compute", user="alice", pod="train-0")]
    jobs = run(acct, report(1, g0, g1, g2))
    assert set(jobs) == {("7", "running"), ("9", "running"), ("ml/train-0", "running")}
    p = jobs["ml/train-0", "running"]
    assert (p.kind, p.pod, p.namespace, p.user) == ("pod", "train-0", "ml", "alice")


def test_a_mig_job_peaks_at_its_instance_memory():
    acct = JobAccountant(None)
    g = gpu(0, 10, mem=70 << 30)
    g.mig = [MigDevice(uuid="MIG-1", gi_id=1, fb_used_bytes=3 << 30),
             MigDevice(uuid="MIG-2", gi_id=2, fb_used_bytes=9 << 30)]  # fmt: skip
    g.owners = [GpuOwner(source="jobmap", gi_id=1, job="a"),
                GpuOwner(source="jobmap", gi_id=2, job="b")]  # fmt: skip
    jobs = run(acct, report(1, g))
    assert jobs["a", "running"].mem_peak_bytes == 3 << 30
    assert jobs["b", "running"].mem_peak_bytes == 9 << 30


def test_restart_continues_a_running_job_and_ends_a_gone_one(tmp_path):
    state = tmp_path / "jobs.json"
    before = JobAccountant(state)
    run(before, report(1, gpu(0, 1_000, "A"), gpu(1, 50_000, "B")))
    run(before, report(2, gpu(0, 2_000, "A"), gpu(1, 51_000, "B")))
    del before  # the agent stops; the GPUs go on working
    after = JobAccountant(state)
    jobs = run(after, report(9, gpu(0, 30_000, "A"), gpu(1, 90_000)))
    a, b = jobs["A", "running"], jobs["B", "ended"]
    assert (a.energy_mj, a.start_ns, a.samples) == (29_000, T0 + S, 3)  # spans the downtime
    assert (b.energy_mj, b.end_ns, b.samples) == (1_000, T0 + 2 * S, 2)  # at its last sight
    again = JobAccountant(state)
    assert set(again.accounts) == {"A"}


def test_an_ended_record_lost_with_its_unspooled_report_is_sent_after_a_restart(tmp_path):
    state = tmp_path / "jobs.json"
    acct = JobAccountant(state)
    run(acct, report(1, gpu(0, 1_000, "A"), gpu(1, 5_000, "B")))
    acct.spooled()
    ended = run(acct, report(2, gpu(0, 3_000, "A"), gpu(1, 6_000)))["B", "ended"]
    del acct  # the agent dies before this report reaches its spool
    after = JobAccountant(state)
    jobs = run(after, report(3, gpu(0, 4_000, "A"), gpu(1, 7_000)))
    assert jobs["B", "ended"] == ended  # sent again, the same record
    after.spooled()  # now it is durable: never again
    assert ("B", "ended") not in run(JobAccountant(state), report(4, gpu(0, 5_000, "A")))


def test_a_corrupt_state_file_is_named_once_and_replaced(tmp_path, caplog):
    state = tmp_path / "jobs.json"
    state.write_text('{"version": 1, "jobs": [{"job": 5}]}')
    with caplog.at_level(logging.WARNING):
        acct = JobAccountant(state)
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(state) in warnings[0] and "corrupt" in warnings[0]
    assert acct.accounts == {}
    run(acct, report(1, gpu(0, 5, "A")))
    assert set(JobAccountant(state).accounts) == {"A"}
    state.write_bytes(b"\x00{not json")
    caplog.clear()
    assert JobAccountant(state).accounts == {}
    assert "corrupt" in caplog.text
