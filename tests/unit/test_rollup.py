"""Rollups: what a site's aggregator tells the national broker about each node per interval."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from exporters.mqtt import MqttUnavailable
from telemetryd.codec import DecodeError, encode_json
from telemetryd.configload import load
from telemetryd.errors import ConfigError
from telemetryd.fleet import Fleet
from telemetryd.model import Event, GpuError, GpuOwner, GpuProcess, Report, decode_report
from telemetryd.rollup import Rollups
from telemetryd.rollupmodel import decode_rollup
from telemetryd.topics import parse_rollup_topic, rollup_topic
from tests.reports import sampled

S = 1_000_000_000
T = 1_800_000_000 * S


def report(seq: int, *, node: str = "n1", util: int = 50, energy: int = 1000) -> Report:
    r = decode_report(sampled())
    r.node, r.seq, r.time_ns = node, seq, T + seq * S
    for gpu in r.gpus:
        gpu.util_gpu_pct, gpu.power_w, gpu.temp_c = util, 100.0 + seq, 40.0 + seq
        gpu.fb_used_bytes, gpu.energy_mj = 1000 * seq, energy
    return r


def accept(fleet: Fleet, rollups: Rollups, r: Report) -> None:
    assert fleet.claim(r)
    fleet.on_report(r, r.time_ns)
    rollups.observe(r)


def test_a_rollup_summarises_the_interval_and_nothing_raw() -> None:
    fleet, rollups = Fleet(silent_after=3), Rollups(60)
    first = report(1, util=20, energy=5_000)
    first.gpus[0].processes = [GpuProcess(pid=42, type="compute", user="alice",
                                          command="python train.py --key=s3cret")]  # fmt: skip
    first.gpus[0].owners = [GpuOwner(source="jobmap", job="1234"),
                            GpuOwner(source="kubelet", pod="p", namespace="ns")]  # fmt: skip
    first.events = [
        Event(time_ns=first.time_ns, kind="xid", code=79, gpu_index=1, message="x"),
        Event(time_ns=first.time_ns, kind="ecc_dbe", gpu_index=1, message="y"),
    ]
    accept(fleet, rollups, first)
    second = report(2, util=60, energy=8_000)
    second.gpus[1].error = GpuError(code="gpu_lost", message="fell off the bus")
    accept(fleet, rollups, second)

    (rollup,), gone = rollups.build(fleet, T + 3 * S)
    assert gone == []
    assert (rollup.cluster, rollup.node, rollup.reports, rollup.state) == ("c1", "n1", 2, "online")
    assert rollup.last_seen_ns == second.time_ns and rollup.jobs == ["1234", "ns/p"]
    g0, g1 = rollup.gpus[0], rollup.gpus[1]
    assert len(rollup.gpus) == 8
    assert (g0.samples, g0.util_mean_pct, g0.util_max_pct) == (2, 40.0, 60)
    assert (g0.power_mean_w, g0.temp_max_c, g0.mem_used_max_bytes) == (101.5, 42.0, 2000)
    assert (g0.energy_mj, g0.health, g0.jobs) == (3_000, "ok", ["1234", "ns/p"])
    assert (g1.health, g1.failed, g1.xids, g1.errors) == ("gpu_lost", 1, 1, 1)
    wire = encode_json(rollup)
    assert decode_rollup(wire) == rollup
    for raw in (b"train.py", b"s3cret", b"alice", b"pid", b"command", b"host"):
        assert raw not in wire

    # The next interval counts its energy from the counter the previous one ended at.
    accept(fleet, rollups, report(3, energy=8_500))
    (rollup,), _ = rollups.build(fleet, T + 4 * S)
    assert rollup.gpus[0].energy_mj == 500 and rollup.reports == 1
    # An interval without a report: the node stays listed, its GPUs known but unread.
    (rollup,), _ = rollups.build(fleet, T + 5 * S)
    assert rollup.reports == 0 and [g.health for g in rollup.gpus] == ["unknown"] * 8
    assert all(g.samples == 0 and g.util_mean_pct is None for g in rollup.gpus)


def test_a_late_report_is_history_and_not_rolled_up() -> None:
    fleet, rollups = Fleet(silent_after=3), Rollups(60)
    accept(fleet, rollups, report(5, util=10))
    accept(fleet, rollups, report(4, util=90))  # drained from a spool after an outage
    (rollup,), _ = rollups.build(fleet, T + 6 * S)
    assert rollup.reports == 1 and rollup.gpus[0].util_max_pct == 10


def test_a_node_no_longer_held_gets_an_empty_retained_rollup() -> None:
    fleet, rollups = Fleet(silent_after=3), Rollups(60)
    for node in ("n1", "n2"):
        accept(fleet, rollups, report(1, node=node))
    sent: list[tuple[str, bytes]] = []

    async def publish(topic: str, payload: bytes) -> None:
        sent.append((topic, payload))

    asyncio.run(rollups.publish(fleet, publish))
    assert [t for t, _ in sent] == [rollup_topic("c1", "n1"), rollup_topic("c1", "n2")]
    del fleet.nodes[("c1", "n2")]  # forgotten, or now owned by another aggregator
    sent.clear()
    asyncio.run(rollups.publish(fleet, publish))
    assert [(t, p == b"") for t, p in sent] == [
        (rollup_topic("c1", "n1"), False), (rollup_topic("c1", "n2"), True)]  # fmt: skip
    sent.clear()
    asyncio.run(rollups.publish(fleet, publish))
    assert [t for t, _ in sent] == [rollup_topic("c1", "n1")]  # cleared once


def test_rollups_off_observe_nothing() -> None:
    rollups = Rollups(0)
    rollups.observe(report(1))
    assert not rollups.nodes and not rollups.due()


def test_rollup_topics() -> None:
    assert rollup_topic("c1", "n1") == "telemetry/v1/c1/_rollup/n1"
    assert parse_rollup_topic("telemetry/v1/c1/_rollup/n1") == ("c1", "n1")
    assert "expected" in str(parse_rollup_topic("telemetry/v1/c1/n1/report"))
    assert "node '_x'" in str(parse_rollup_topic("telemetry/v1/c1/_rollup/_x"))


def test_a_bad_rollup_is_refused_naming_the_field() -> None:
    bad = {"schema": 1, "cluster": "c", "node": "n", "time_ns": 1, "start_ns": 1,
           "state": "online", "gpus": [{"index": -1, "uuid": "u", "health": "ok"}]}  # fmt: skip
    with pytest.raises(DecodeError, match=r"^gpus\[0\]\.index"):
        decode_rollup(json.dumps(bad))


@pytest.mark.parametrize(("value", "expected"), [
    ("-1", "aggregator.rollup_interval: expected"),
    ("2", "aggregator.rollup_interval: 2 is below fleet_interval (5)"),
])  # fmt: skip
def test_config_refuses_a_bad_rollup_interval(tmp_path: Path, value: str, expected: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[aggregator]\nrollup_interval = {value}\n")
    with pytest.raises(ConfigError) as info:
        load(str(path), env={})
    (problem,) = info.value.problems
    assert expected in problem and "\n" not in problem


def test_rollup_interval_defaults_and_may_be_off(tmp_path: Path) -> None:
    assert load(None, env={}).config.aggregator.rollup_interval == 60
    path = tmp_path / "c.toml"
    path.write_text("[aggregator]\nrollup_interval = 0\n")
    assert load(str(path), env={}).config.aggregator.rollup_interval == 0


def test_tick_publishes_when_due_and_survives_a_lost_broker() -> None:
    class Session:
        def __init__(self, fail: bool) -> None:
            self.fail = fail
            self.sent: list[tuple[str, bool]] = []

        async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
            if self.fail:
                raise MqttUnavailable("the connection closed")
            self.sent.append((topic, retain))

    fleet, rollups = Fleet(silent_after=3), Rollups(0.05)
    accept(fleet, rollups, report(1))
    ok, broken = Session(False), Session(True)
    asyncio.run(rollups.tick(fleet, ok))  # type: ignore[arg-type]  # not due yet
    assert ok.sent == []
    time.sleep(0.06)
    asyncio.run(rollups.tick(fleet, None))  # not connected: waits, stays due
    assert rollups.due()
    asyncio.run(rollups.tick(fleet, broken))  # type: ignore[arg-type]  # logged, not raised
    assert rollups._error == "the connection closed"
    time.sleep(0.06)
    asyncio.run(rollups.tick(fleet, ok))  # type: ignore[arg-type]
    assert ok.sent == [(rollup_topic("c1", "n1"), True)] and rollups._error == ""
