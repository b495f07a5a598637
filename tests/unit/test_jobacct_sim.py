"""Energy per job end to end on the simulator: sampler, job map directory, accountant, agent.

The simulated clock is driven by the test (no sleeping); the GPUs' energy counters, the
job map and the attribution stage are the real ones. A job's energy must equal the sum
of its GPUs' counter deltas between the first and the last report that saw it there,
to the millijoule, computed here from the reports alone.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from collectors.cards import card_path
from collectors.fakenvml import load_recording
from collectors.nvml import NvmlBackend
from collectors.sim import SimNvml
from collectors.simjobs import SimScheduler
from telemetryd.agent import Agent
from telemetryd.config import AgentConfig, AttributionConfig, NvmlConfig, SimConfig
from telemetryd.connect import mqtt_settings
from telemetryd.errors import SourceUnavailable
from telemetryd.jobacct import JobAccountant
from telemetryd.model import JobRecord, Report, decode_report, encode_report
from telemetryd.sampler import NodeSampler, open_sampler
from telemetryd.spool import Spool

H100 = load_recording(card_path("h100-sxm5-80gb"))
SLURM = Path(__file__).resolve().parents[2] / "examples" / "slurm"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def sampler_for(
    job_map: Path, clock: Clock, *, gpus: int = 4, jobs: bool = False, node: str = "n1"
) -> NodeSampler:
    cfg = AgentConfig(node=node, collectors=[],
                      attribution=AttributionConfig(job_map_dir=str(job_map)))  # fmt: skip
    scheduler = SimScheduler(job_map, node, gpus) if jobs else None
    if scheduler is not None:
        scheduler.open()
    lib = SimNvml(H100, gpus=gpus, node=node, clock=clock, workload="training",
                  scheduler=scheduler)  # fmt: skip
    return open_sampler(cfg, gpu_source=NvmlBackend(lambda: lib, NvmlConfig(timeout=5)))


def slurm(name: str, job_map: Path, job: str, gpus: str = "") -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "JOB_MAP_DIR": str(job_map),
           "SLURM_JOB_ID": job, "SLURM_JOB_GPUS": gpus}  # fmt: skip
    subprocess.run(["/bin/sh", str(SLURM / name)], env=env, check=True, timeout=30)


def expected_energy(reports: list[Report], job: str) -> dict[int, int]:
    """Per GPU index: counter at the last report listing the job there minus at the first."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for r in reports:
        for g in r.gpus:
            if any(o.job == job for o in g.owners or []) and g.energy_mj is not None:
                first.setdefault(g.index, g.energy_mj)
                last[g.index] = g.energy_mj
    return {i: last[i] - first[i] for i in first}


def ended(reports: list[Report]) -> dict[str, JobRecord]:
    out: dict[str, JobRecord] = {}
    for r in reports:
        for j in r.jobs:
            if j.state == "ended":
                assert j.job not in out, f"{j.job} ended twice"
                out[j.job] = j
    return out


def test_job_energy_is_the_counter_delta_to_the_millijoule(tmp_path):
    job_map, clock = tmp_path / "jobs", Clock()
    sampler = sampler_for(job_map, clock)
    acct = JobAccountant(tmp_path / "jobs.json")
    reports: list[Report] = []
    try:
        for step in range(14):
            if step == 2:
                slurm("prolog.sh", job_map, "4711", "0,1,3")
                slurm("prolog.sh", job_map, "4712", "1")
            if step == 7:
                slurm("epilog.sh", job_map, "4712")
            if step == 11:
                slurm("epilog.sh", job_map, "4711")
            clock.t += 3.7
            report = asyncio.run(sampler.sample(seq=step))
            report.time_ns = int(clock.t * 1e9)  # simulated time, as the counters see it
            acct.update(report)
            reports.append(decode_report(encode_report(report)))
    finally:
        sampler.close()
    jobs = ended(reports)
    assert set(jobs) == {"4711", "4712"}
    for job, gpus in (("4711", [0, 1, 3]), ("4712", [1])):
        per_gpu = expected_energy(reports, job)
        record = jobs[job]
        assert [g.index for g in record.gpus] == gpus == sorted(per_gpu)
        assert [g.energy_mj for g in record.gpus] == [per_gpu[i] for i in gpus]
        assert record.energy_mj == sum(per_gpu.values()) > 0
        seen = [r.time_ns for r in reports if any(job in [o.job for o in g.owners or []]
                                                  for g in r.gpus)]  # fmt: skip
        assert (record.start_ns, record.end_ns, record.samples) == (seen[0], seen[-1], len(seen))
        # a training load on an H100: between idle and the power limit
        assert record.mean_power_w is not None and 60 < record.mean_power_w / len(gpus) <= 700


def test_sim_jobs_are_written_numbered_and_accounted(tmp_path):
    job_map, clock = tmp_path / "jobs", Clock()
    (job_map).mkdir()
    (job_map / "2").write_text("n1-1\n")  # left by an earlier run: those jobs ended
    sampler = sampler_for(job_map, clock, gpus=3, jobs=True)
    acct = JobAccountant(None)
    reports: list[Report] = []
    try:
        for step in range(240):  # 20 simulated minutes
            clock.t += 5
            report = asyncio.run(sampler.sample(seq=step))
            report.time_ns = int(clock.t * 1e9)  # simulated time, as the counters see it
            acct.update(report)
            reports.append(decode_report(encode_report(report)))
            listed = {p.name for p in job_map.iterdir() if not p.name.startswith(".")}
            assert listed == {str(g.index) for g in report.gpus if g.processes}
    finally:
        sampler.close()
    jobs = ended(reports)
    assert len(jobs) >= 3
    assert all(j.startswith("n1-") for j in jobs)
    numbers = sorted(int(j.split("-")[1]) for j in jobs)
    assert len(set(numbers)) == len(numbers)
    for job, record in jobs.items():
        assert len(record.gpus) == 1  # one simulated job per GPU busy phase
        assert record.energy_mj == sum(expected_energy(reports, job).values())
    every = {int(j.job.split("-")[1]) for r in reports for j in r.jobs}
    assert (job_map / ".sim-n1-jobs").read_text() == f"{max(every) + 1}\n"  # survives a restart


def test_sim_jobs_need_a_job_map_dir(tmp_path):
    from collectors.sim import create
    from telemetryd.configload import load
    from telemetryd.errors import ConfigError

    path = tmp_path / "t.toml"
    path.write_text('[agent]\ngpu_backend = "sim"\n[agent.sim]\njobs = true\n')
    with pytest.raises(ConfigError) as info:
        load(str(path), env={})
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:4: agent.sim.jobs: needs [agent.attribution] job_map_dir")
    cfg = AgentConfig(node="n1", gpu_backend="sim", sim=SimConfig(jobs=True))
    with pytest.raises(SourceUnavailable, match=r"\[agent.sim\] jobs needs \[agent.attribution\] "
                       "job_map_dir"):  # fmt: skip
        create(cfg).open()


def test_the_agent_accounts_before_spooling_and_continues_after_a_restart(tmp_path):
    job_map, clock = tmp_path / "jobs", Clock()
    slurm("prolog.sh", job_map, "77", "2")

    def run_agent(ticks: int) -> list[Report]:
        sampler = sampler_for(job_map, clock)
        cfg = AgentConfig(node="n1", broker="mqtt://127.0.0.1:1", collectors=[])
        spool = Spool(tmp_path / "spool", max_bytes=1 << 24, max_age_s=3600)
        spool.open()
        agent = Agent(sampler, spool, mqtt_settings(cfg, client_id="t"), interval=0.05,
                      backlog_rate=1, accountant=JobAccountant(tmp_path / "jobs.json"),
                      clock=lambda: clock.t)  # fmt: skip

        async def go() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(agent._sample_loop(stop))
            for _ in range(ticks):
                await asyncio.sleep(0.06)
                clock.t += 0.05
            stop.set()
            await task

        try:
            asyncio.run(go())
        finally:
            sampler.close()
        found = [decode_report(spool.read(e) or b"") for e in spool.entries()]
        for e in spool.entries():
            spool.remove(e)
        return found

    before = run_agent(4)
    assert before and all([j.job for j in r.jobs] == ["77"] for r in before)
    clock.t += 30  # the agent is down; job 77 goes on
    after = run_agent(3)
    assert after
    record = after[-1].jobs[0]
    assert record.start_ns == before[0].jobs[0].start_ns  # continued, not restarted
    first = before[0].gpus[2].energy_mj
    assert first is not None and after[-1].gpus[2].energy_mj is not None
    assert record.energy_mj == after[-1].gpus[2].energy_mj - first


def test_the_demo_agents_schedule_jobs_and_publish_them(tmp_path):
    from telemetryd.demo import Demo, DemoOptions

    cfg = Demo(DemoOptions(), tmp_path, print).agent_config(0, "mqtt://127.0.0.1:1883")
    assert cfg.sim.jobs and cfg.attribution.jobs
    sampler = open_sampler(cfg)
    try:
        report = asyncio.run(sampler.sample())
    finally:
        sampler.close()
    JobAccountant(None).update(report)
    held = sorted(g.index for g in report.gpus if g.owners)
    assert held and held == sorted(j.gpus[0].index for j in report.jobs)
    assert all(j.job.startswith("sim-00-") for j in report.jobs)
    assert sorted(int(p.name) for p in (tmp_path / "agent-sim-00" / "jobs").glob("[0-9]")) == held
