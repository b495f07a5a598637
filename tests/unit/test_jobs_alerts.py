"""The ``job`` alert scope: rules over running jobs, joined across nodes, on the tick."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from telemetryd.alerting.engine import Engine
from telemetryd.alerting.rules import load_rules, parse_rules
from telemetryd.errors import ConfigError
from telemetryd.fleet import Fleet
from telemetryd.jobs import JobTable
from telemetryd.model import JobGpu, JobRecord, Report
from tests.unit.test_alert_engine import report as gpu_report

S = 1_000_000_000
T0 = 1_700_000_000 * S
MIN = 60 * S


def job(state: str = "running", *, end: int, user: str | None = "alice") -> JobRecord:
    return JobRecord(
        job="1234", kind="hpc", state=state, start_ns=T0, end_ns=end, samples=3,  # type: ignore[arg-type]
        gpus=[JobGpu(index=0, uuid="GPU-x", start_ns=T0)], energy_mj=5_000_000, user=user,
    )  # fmt: skip


def report(node: str, t: int, util: int, *jobs: JobRecord) -> Report:
    r = gpu_report(t // (10 * S), node=node, t=t, util_gpu_pct=util, power_w=70.0)
    return msgspec.structs.replace(r, jobs=list(jobs))


class Setup:
    """An engine with the shipped GpuJobIdle rule and a job table, fed like the aggregator."""

    def __init__(self) -> None:
        rules = [r for r in load_rules([], default_pack=True) if r.scope == "job"]
        assert [r.name for r in rules] == ["GpuJobIdle"]
        self.fleet = Fleet(silent_after=3.0)
        self.engine = Engine(rules, self.fleet)
        self.engine.jobs = self.table = JobTable()

    def feed(self, r: Report) -> None:
        self.fleet.claim(r)
        self.fleet.on_report(r, r.time_ns)
        self.table.observe(r)
        self.engine.on_report(r, r.time_ns)

    def tick(self, t: int) -> list[tuple[str, dict[str, str]]]:
        self.engine.tick(t, {})
        return [(a.status, a.labels) for a in self.engine.drain()]


def test_idle_job_on_two_nodes_fires_after_30m_and_resolves_when_it_ends() -> None:
    s = Setup()
    fired = []
    for t in range(T0, T0 + 31 * MIN, 10 * S):  # 31 minutes idle on both nodes
        s.feed(report("n1", t, 2, job(end=t)))
        s.feed(report("n2", t, 3, job(end=t, user=None)))
        fired += [(t, *change) for change in s.tick(t)]
    [(t, status, labels)] = fired
    assert t == T0 + 30 * MIN
    assert status == "firing"
    assert labels["scope"] == "job" and labels["alertname"] == "GpuJobIdle"
    assert (labels["cluster"], labels["job"], labels["user"]) == ("c1", "1234", "alice")
    assert "node" not in labels
    [alert] = s.engine.firing()
    assert alert.value == 3  # the busiest GPU of the job
    t = T0 + 32 * MIN
    s.feed(report("n1", t, 2, job("ended", end=t)))  # the epilog ran on n1: still on n2
    assert s.tick(t) == []
    s.feed(report("n2", t, 3, job("ended", end=t)))
    assert [status for status, _ in s.tick(t + S)] == ["resolved"]


def test_one_busy_gpu_keeps_a_multi_node_job_quiet() -> None:
    s = Setup()
    for t in range(T0, T0 + 40 * MIN, 10 * S):
        s.feed(report("n1", t, 0, job(end=t)))
        s.feed(report("n2", t, 60, job(end=t)))
        assert s.tick(t) == []
    assert s.engine.active == {}


def test_busy_again_drops_the_pending_alert_and_restarts_the_30_minutes() -> None:
    s = Setup()
    t = T0
    for util in [1] * 100 + [50] + [1] * 100:  # idle 16.5 min, busy once, idle 16.5 min
        s.feed(report("n1", t, util, job(end=t)))
        assert s.tick(t) == []
        t += 10 * S
    assert [a.state for a in s.engine.active.values()] == ["pending"]


def test_no_reading_is_undefined_not_idle() -> None:
    s = Setup()
    for t in range(T0, T0 + 40 * MIN, 10 * S):
        r = report("n1", t, 0, job(end=t))
        gpus = [msgspec.structs.replace(r.gpus[0], util_gpu_pct=None), *r.gpus[1:]]
        s.feed(msgspec.structs.replace(r, gpus=gpus))
        assert s.tick(t) == []


def test_job_alert_state_survives_a_restart_and_a_vanished_job_resolves() -> None:
    s = Setup()
    for t in range(T0, T0 + 31 * MIN, 10 * S):
        s.feed(report("n1", t, 1, job(end=t)))
        s.tick(t)
    assert len(s.engine.firing()) == 1
    again = Setup()
    again.engine.restore(s.engine.snapshot(), T0 + 31 * MIN)
    assert again.tick(T0 + 31 * MIN) != []  # no job table content: the job is gone
    again = Setup()
    again.engine.restore(s.engine.snapshot(), T0 + 31 * MIN)
    again.table.restore(s.table.snapshot())
    t = T0 + 31 * MIN
    again.feed(report("n1", t, 1, job(end=t)))
    assert again.tick(t) == [] and len(again.engine.firing()) == 1


def test_rules_of_the_job_scope_are_checked_by_name() -> None:
    problems: list[str] = []
    parse_rules(
        '[[rule]]\nname = "X"\nscope = "job"\nexpr = "temp_c > 1"\nseverity = "info"\n'
        'annotations = { summary = "s" }\n', "j.toml", problems,
    )  # fmt: skip
    assert len(problems) == 1 and "unknown name 'temp_c'" in problems[0]
    assert "util_max_pct" in problems[0]
    problems = []
    parse_rules(
        '[[rule]]\nname = "X"\nscope = "job"\nexpr = \'rate(energy_j, "5m") > 1\'\n'
        'severity = "info"\nannotations = { summary = "s" }\n', "j.toml", problems,
    )  # fmt: skip
    assert len(problems) == 1


def test_check_rules_accepts_a_job_rule_file(tmp_path: Path) -> None:
    (tmp_path / "jobs.toml").write_text(
        '[[rule]]\nname = "BigJobHot"\nscope = "job"\n'
        'expr = "gpus >= 16 and power_w > 10000 and age_s > 600"\nseverity = "info"\n'
        'annotations = { summary = "{{ job }} draws {{ value }} W" }\n'
    )
    [rule] = load_rules([tmp_path / "jobs.toml"])
    assert rule.scope == "job"
    (tmp_path / "jobs.toml").write_text('[[rule]]\nname = "B"\nscope = "jobs"\nexpr = "1"\n')
    with pytest.raises(ConfigError, match=r"scope: expected one of .*job"):
        load_rules([tmp_path / "jobs.toml"])
