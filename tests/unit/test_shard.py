"""Several aggregators in one group: ownership, forward topics, the batch sort, the merge."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from exporters.mqtt import Message
from telemetryd.alerting.model import Alert
from telemetryd.alerting.wire import PendingAlerts
from telemetryd.codec import encode_json
from telemetryd.config import AggregatorConfig
from telemetryd.configload import load
from telemetryd.deadletter import DeadLetters
from telemetryd.errors import ConfigError
from telemetryd.fleet import Fleet
from telemetryd.fleetparts import merge_fleet, merge_pending
from telemetryd.ingest import Limits
from telemetryd.intake import Sorted, sort_batch
from telemetryd.model import SCHEMA_VERSION, FleetNode, FleetSummary, SinkState
from telemetryd.shard import Shard, owner
from telemetryd.topics import (
    fleet_part_topic,
    forward_filter,
    forward_topic,
    parse_forward_topic,
    part_member,
    pending_part_topic,
)
from telemetryd.watch import Watch
from tests.reports import sampled
from tests.unit.test_alert_engine import HOT, engine, feed, report

# -- ownership --------------------------------------------------------------------------------


def test_owner_is_crc32_of_cluster_slash_node() -> None:
    for node in ("n1", "gpu-a-017", "x"):
        want = zlib.crc32(f"c1/{node}".encode()) % 3
        assert owner("c1", node, 3) == want
    # Known values: a change of hash would move every node at an upgrade.
    assert [owner("c1", f"n{i:02d}", 2) for i in range(8)] == [
        zlib.crc32(f"c1/n{i:02d}".encode()) % 2 for i in range(8)
    ]
    assert zlib.crc32(b"c1/n1") == 3382059658  # the algorithm itself, pinned
    assert owner("c1", "n1", 4) == 3382059658 % 4 == 2
    assert owner("c1", "anything", 1) == 0


def test_owner_is_the_same_in_another_process() -> None:
    """Python's hash() is salted per process; the owner must not be."""
    code = "from telemetryd.shard import owner; print([owner('c1', f'n{i}', 5) for i in range(50)])"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": "12345"})  # fmt: skip
    assert other.stdout.strip() == str([owner("c1", f"n{i}", 5) for i in range(50)])


def test_owner_spreads_nodes_over_members() -> None:
    counts = [0, 0, 0]
    for i in range(3000):
        counts[owner("site", f"node{i}", 3)] += 1
    assert min(counts) > 900, counts


# -- topics -----------------------------------------------------------------------------------


def test_forward_topics_round_trip_outside_the_telemetry_tree() -> None:
    original = "telemetry/v1/c1/n7/report"
    topic = forward_topic("g1", 1, original)
    assert topic == "telemetryd/fwd/g1/1/telemetry/v1/c1/n7/report"
    assert not topic.startswith("telemetry/v1/")  # viewers on telemetry/v1/+/# never see it
    assert parse_forward_topic(topic) == original
    assert forward_filter("g1", 1) == "telemetryd/fwd/g1/1/#"
    for bad in ("telemetry/v1/c1/n7/report", "telemetryd/fwd/g1/x/telemetry/v1/c1/n/report",
                "telemetryd/fwd/g1/1/other/c1/n/report", "telemetryd/fwd/g1"):  # fmt: skip
        assert parse_forward_topic(bad) is None, bad


def test_part_topics() -> None:
    assert fleet_part_topic("c1", 3) == "telemetry/v1/c1/_fleet/part/3"
    assert pending_part_topic("c1", 0) == "telemetry/v1/c1/_pending/part/0"
    assert part_member(["part", "3"]) == 3
    assert part_member(["part"]) is None
    assert part_member(["event"]) is None


# -- configuration ----------------------------------------------------------------------------


def test_membership_is_checked_one_line_each() -> None:
    def problems(env: dict[str, str]) -> list[str]:
        with pytest.raises(ConfigError) as info:
            load(None, env=env)
        return info.value.problems

    group = {"TELEMETRYD_AGGREGATOR_SHARED_GROUP": "g1"}
    assert problems(
        {**group, "TELEMETRYD_AGGREGATOR_MEMBERS": "2", "TELEMETRYD_AGGREGATOR_MEMBER": "2"}
    ) == [
        "environment TELEMETRYD_AGGREGATOR_MEMBER: aggregator.member: expected 0 .. 1 "
        "(aggregator.members is 2), got 2"
    ]
    assert problems({"TELEMETRYD_AGGREGATOR_MEMBERS": "3"}) == [
        "environment TELEMETRYD_AGGREGATOR_MEMBERS: aggregator.members: 3 members need "
        "aggregator.shared_group (the $share group they split)"
    ]
    assert problems(
        {
            **group,
            "TELEMETRYD_AGGREGATOR_MEMBERS": "2",
            "TELEMETRYD_AGGREGATOR_MQTT_VERSION": "3.1.1",
        }
    ) == [
        "environment TELEMETRYD_AGGREGATOR_MQTT_VERSION: aggregator.mqtt_version: expected 5 "
        "with aggregator.members above 1, got 3.1.1"
    ]
    (line,) = problems({**group, "TELEMETRYD_AGGREGATOR_MEMBERS": "0"})
    assert "aggregator.members" in line and ">= 1" in line, line
    cfg = load(None, env={**group, "TELEMETRYD_AGGREGATOR_MEMBERS": "2",
                          "TELEMETRYD_AGGREGATOR_MEMBER": "1"}).config.aggregator  # fmt: skip
    assert Shard.from_config(cfg) == Shard("g1", 2, 1)
    assert Shard.from_config(AggregatorConfig()) is None  # alone: nothing changes


def test_an_invalid_membership_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match=r"aggregator\.member: expected 0 \.\. 1"):
        Shard.from_config(AggregatorConfig(shared_group="g", members=2, member=5))


def test_members_get_distinct_names() -> None:
    assert Shard("g", 2, 0).name("host") != Shard("g", 2, 1).name("host")


# -- the batch sort ---------------------------------------------------------------------------


def payload(node: str, seq: int) -> bytes:
    doc = json.loads(sampled())
    doc.update(node=node, seq=seq, time_ns=time.time_ns())
    return json.dumps(doc).encode()


def nodes_of(member: int) -> list[str]:
    return [n for n in (f"n{i}" for i in range(40)) if owner("c1", n, 2) == member][:2]


def test_sort_stores_all_feeds_own_and_forwards_the_rest(tmp_path: Path) -> None:
    shard = Shard("g1", 2, 0)
    mine, theirs = nodes_of(0)[0], nodes_of(1)[0]
    fleet = Fleet(silent_after=3.0)
    dead = DeadLetters(tmp_path / "dead.jsonl", max_bytes=1 << 20)
    limits = Limits(4 << 20, 300.0, 86400.0)
    status = encode_json({"schema": 1, "cluster": "c1", "node": theirs, "state": "online",
                          "boot_id": "b" * 32, "time_ns": time.time_ns(), "version": "1",
                          "interval_s": 1.0, "reason": "connected"})  # fmt: skip
    batch = [
        Message(f"telemetry/v1/c1/{mine}/report", payload(mine, 0), 1, False, 1),
        Message(f"telemetry/v1/c1/{theirs}/report", payload(theirs, 0), 1, False, 2),
        Message(f"telemetry/v1/c1/{theirs}/report", payload(theirs, 0), 1, False, 3),  # again
        Message(
            forward_topic("g1", 0, f"telemetry/v1/c1/{mine}/report"), payload(mine, 1), 1, False, 4
        ),
        Message(f"telemetry/v1/c1/{theirs}/status", status, 1, True, 5),
    ]
    got = sort_batch(batch, fleet=fleet, limits=limits, deadletters=dead, shard=shard,
                     now=time.time_ns())  # fmt: skip
    assert [(r.node, r.seq) for r in got.stored] == [(mine, 0), (theirs, 0)]  # not the fwd
    assert len(got.payloads) == 2
    assert [(r.node, r.seq) for r in got.fed] == [(mine, 0), (mine, 1)]  # own + forwarded
    forwarded = [parse_forward_topic(t) for t, _ in got.forwards]
    assert forwarded == [f"telemetry/v1/c1/{theirs}/report", f"telemetry/v1/c1/{theirs}/status"]
    assert all(t.startswith("telemetryd/fwd/g1/1/") for t, _ in got.forwards)
    assert got.forwards[0][1] == batch[1].payload  # the original bytes
    assert got.statuses == []  # not ours
    assert fleet.received == 4  # the forwarded copy was counted by the member that got it
    assert dead.counts == {}


def test_the_aggregators_own_topics_coming_back_are_skipped_not_dead_lettered(
    tmp_path: Path,
) -> None:
    # telemetry/v1/+/+/event matches the aggregator's own .../_fleet/event, and .../+/report
    # the rollup of a node named "report": neither is a node's message.
    fleet = Fleet(silent_after=3.0)
    dead = DeadLetters(tmp_path / "dead.jsonl", max_bytes=1 << 20)
    limits = Limits(4 << 20, 300.0, 86400.0)
    batch = [
        Message("telemetry/v1/c1/_fleet/event", b'{"schema": 1}', 1, False, 1),
        Message("telemetry/v1/c1/_rollup/report", b'{"schema": 1}', 1, True, 2),
        Message("telemetry/v1/c1/n_1/report", b"{", 1, False, 3),  # a node's: refused
    ]
    got = sort_batch(batch, fleet=fleet, limits=limits, deadletters=dead, shard=None,
                     now=time.time_ns())  # fmt: skip
    assert got.own == 2
    assert sum(dead.counts.values()) == 1
    assert fleet.received == 1


def test_a_forwarded_duplicate_is_counted_not_fed(tmp_path: Path) -> None:
    shard = Shard("g1", 2, 1)
    node = nodes_of(1)[0]
    fleet = Fleet(silent_after=3.0)
    dead = DeadLetters(tmp_path / "dead.jsonl", max_bytes=1 << 20)
    limits = Limits(4 << 20, 300.0, 86400.0)
    topic = forward_topic("g1", 1, f"telemetry/v1/c1/{node}/report")

    def sort(message: Message) -> Sorted:
        return sort_batch([message], fleet=fleet, limits=limits, deadletters=dead, shard=shard,
                          now=time.time_ns())  # fmt: skip

    first = sort(Message(topic, payload(node, 0), 1, False, 1))
    fleet.claim(first.fed[0])
    again = sort(Message(topic, payload(node, 0), 1, False, 2))
    assert again.fed == [] and again.stored == [] and fleet.duplicates == 1
    bad = sort(Message(topic, b"{", 1, False, 3))
    assert bad.fed == [] and sum(dead.counts.values()) == 1


# -- state of nodes that moved ----------------------------------------------------------------


def test_forget_nodes_resolves_their_firing_alerts() -> None:
    eng, fleet = engine(HOT)
    for seq in range(3):
        feed(eng, fleet, report(seq, node="n1", temp_c=90.0))
        feed(eng, fleet, report(seq, node="n2", temp_c=90.0))
    assert {a.labels["node"] for a in eng.firing()} == {"n1", "n2"}
    eng.forget_nodes(lambda _c, n: n == "n2", 0)
    changed = eng.drain()
    assert [(a.status, a.labels["node"]) for a in changed] == [("resolved", "n2")]
    assert {a.labels["node"] for a in eng.firing()} == {"n1"}
    assert all(key[1] != "n2" for key in eng.latest)


# -- the viewers' merge -----------------------------------------------------------------------


def summary(aggregator: str, nodes: list[tuple[str, int]], t: int, **kw: object) -> FleetSummary:
    return FleetSummary(
        schema=SCHEMA_VERSION, cluster="c1", time_ns=t, aggregator=aggregator,
        nodes=[FleetNode(node=n, state="online", last_seen_ns=seen) for n, seen in nodes],
        sinks=[SinkState(name="sqlite", state="ok", written=5)], **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_merge_fleet_unions_nodes_sums_counters_keeps_sinks_apart() -> None:
    a = summary("h-m0", [("n1", 10), ("n3", 5)], 100, received=10, accepted=8,
                rejected={"schema": 1}, broker_dropped=4, wal_bytes=100)  # fmt: skip
    b = summary("h-m1", [("n2", 10), ("n3", 9)], 90, received=5, accepted=4,
                rejected={"schema": 2, "oversized": 1}, broker_dropped=3, wal_bytes=50)  # fmt: skip
    merged = merge_fleet({1: b, 0: a})
    assert [n.node for n in merged.nodes] == ["n1", "n2", "n3"]
    assert next(n for n in merged.nodes if n.node == "n3").last_seen_ns == 9  # newest wins
    assert (merged.received, merged.accepted, merged.wal_bytes) == (15, 12, 150)
    assert merged.rejected == {"schema": 3, "oversized": 1}
    assert merged.broker_dropped == 4
    assert merged.time_ns == 90  # the oldest part: a silent member shows as stale
    assert merged.aggregator == "h-m0+h-m1"
    assert [s.name for s in merged.sinks] == ["h-m0/sqlite", "h-m1/sqlite"]


def alert(fp: str, severity: str, starts: int) -> Alert:
    return Alert(fingerprint=fp, status="firing", labels={"alertname": "X", "cluster": "c1",
                 "severity": severity}, annotations={}, starts_ns=starts)  # fmt: skip


def test_merge_pending_orders_like_one_list() -> None:
    a = PendingAlerts(time_ns=5, alerts=[alert("a", "warning", 1)], truncated=1)
    b = PendingAlerts(time_ns=7, alerts=[alert("b", "critical", 2), alert("c", "warning", 0)])
    merged = merge_pending({0: a, 1: b})
    assert [x.fingerprint for x in merged.alerts] == ["b", "c", "a"]
    assert (merged.time_ns, merged.truncated) == (7, 1)


def test_watch_merges_parts_and_prefers_them_to_a_stale_plain_summary() -> None:
    w = Watch()
    old = summary("old", [("gone", 1)], 50)
    w.ingest("telemetry/v1/c1/_fleet", encode_json(old))
    assert [n.node for n in w.fleets["c1"].nodes] == ["gone"]
    w.ingest(fleet_part_topic("c1", 0), encode_json(summary("h-m0", [("n1", 1)], 100)))
    w.ingest(fleet_part_topic("c1", 1), encode_json(summary("h-m1", [("n2", 1)], 100)))
    w.ingest("telemetry/v1/c1/_fleet", encode_json(old))  # retained, delivered late
    assert [n.node for n in w.fleets["c1"].nodes] == ["n1", "n2"]
    assert w.nodes[("c1", "n2")].fleet is not None
    w.ingest(pending_part_topic("c1", 0), encode_json(PendingAlerts(time_ns=1,
             alerts=[alert("a", "warning", 1)])))  # fmt: skip
    w.ingest(pending_part_topic("c1", 1), encode_json(PendingAlerts(time_ns=2,
             alerts=[alert("b", "warning", 2)])))  # fmt: skip
    assert [a.fingerprint for a in w.pending["c1"].alerts] == ["a", "b"]
    w.ingest(pending_part_topic("c1", 1), b"")  # a member's part cleared
    assert [a.fingerprint for a in w.pending["c1"].alerts] == ["a"]
    w.ingest(fleet_part_topic("c1", 1), b"")
    assert [n.node for n in w.fleets["c1"].nodes] == ["n1"]


def test_a_member_publishes_its_pending_part_not_the_plain_list() -> None:
    from telemetryd.alerting.panel import Panel

    eng, fleet = engine(HOT)
    feed(eng, fleet, report(0, node="n1", temp_c=90.0))  # pending: for 20s
    panel = Panel(eng, None)
    assert "telemetry/v1/c1/_pending" in {t for t, _p, _s in panel.changes(1, 0.0)}
    panel = Panel(eng, None)
    panel.part = 1
    topics = {t for t, _p, _s in panel.changes(1, 0.0)}
    assert pending_part_topic("c1", 1) in topics
    assert "telemetry/v1/c1/_pending" not in topics


def test_a_member_replays_and_keeps_only_the_nodes_it_owns(tmp_path: Path) -> None:
    """WAL replay feeds no foreign report; a snapshot's foreign nodes are dropped."""
    import asyncio

    from telemetryd.aggregator import Aggregator
    from telemetryd.connect import mqtt_settings
    from telemetryd.model import encode_report
    from telemetryd.wal import Wal
    from tests.unit.test_jobs_recovery import report as job_report

    def open_aggregator(cfg: AggregatorConfig) -> Aggregator:
        wal = Wal(tmp_path / "wal", max_bytes=cfg.wal_max_bytes)
        wal.open()
        return Aggregator(
            cfg, wal=wal, fleet=Fleet(silent_after=3.0),
            deadletters=DeadLetters(tmp_path / "deadletter.jsonl", max_bytes=1 << 20),
            sinks=[], settings=mqtt_settings(cfg, client_id="test", env={}), directory=tmp_path,
        )  # fmt: skip

    mine, theirs = nodes_of(0)[0], nodes_of(1)[0]
    now = time.time_ns() - 60 * 1_000_000_000
    alone = open_aggregator(AggregatorConfig())
    first = [job_report(mine, 0, "running", now), job_report(theirs, 0, "running", now)]
    later = [job_report(mine, 1, "running", now), job_report(theirs, 1, "running", now)]
    for batch in (first, later):
        done = asyncio.run(alone._make_durable([encode_report(r) for r in batch], batch, [],
                                               now, asyncio.Event()))  # fmt: skip
        assert done is not None
        if batch is first:
            asyncio.run(alone._save_snapshot())  # `later` only in the WAL
    alone.wal.close()

    member = open_aggregator(AggregatorConfig(shared_group="g1", members=2, member=0))
    member.recover()
    assert set(member.fleet.nodes) == {("c1", mine)}
    assert member.fleet.nodes[("c1", mine)].reports == 2
    assert set(member.jobs.by_node) == {("c1", mine)}
    member.wal.close()
