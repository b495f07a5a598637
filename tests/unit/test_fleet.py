"""Fleet state: sequence accounting, presence, inventory, summary and snapshots."""

from __future__ import annotations

import itertools
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from telemetryd.codec import encode_json
from telemetryd.fleet import Fleet, NodeState, Seqs, dumps
from telemetryd.model import (
    GpuError,
    GpuInventory,
    Report,
    SinkState,
    Status,
    decode_event_message,
    decode_fleet_summary,
    decode_report,
)
from tests.reports import sampled

S = 1_000_000_000
T = 1_800_000_000 * S
BOOT_A = "a" * 32
BOOT_B = "b" * 32


def report(
    seq: int = 0,
    *,
    boot: str = BOOT_A,
    time_ns: int | None = None,
    node: str = "n1",
    cluster: str = "c1",
    without: tuple[int, ...] = (),
) -> Report:
    r = decode_report(sampled())
    r.seq = seq
    r.boot_id = boot
    r.node = node
    r.cluster = cluster
    r.time_ns = T + seq * 10 * S if time_ns is None else time_ns
    r.gpus = [g for g in r.gpus if g.index not in without]
    return r


def status(
    state: str, *, boot: str = BOOT_A, node: str = "n1", gpus: list[GpuInventory] | None = None
) -> Status:
    return Status(
        schema=1, state=state, cluster="c1", node=node, boot_id=boot, time_ns=T,  # type: ignore[arg-type]
        version="9.9.9", interval_s=15.0,
        reason="connected" if state == "online" else "lost",
        gpus=gpus or [],
    )  # fmt: skip


def accept(fleet: Fleet, r: Report, received_ns: int | None = None) -> list:
    assert fleet.claim(r)
    return fleet.on_report(r, r.time_ns + S if received_ns is None else received_ns)


# -- Seqs -----------------------------------------------------------------------------------
def test_seqs_merge_runs_and_count_holes() -> None:
    seqs = Seqs()
    assert seqs.last is None
    assert seqs.missing() == 0
    assert 0 not in seqs
    assert seqs.add(5)
    assert seqs.add(7)
    assert seqs.runs == [[5, 5], [7, 7]]
    assert seqs.missing() == 1
    assert seqs.add(6)
    assert seqs.runs == [[5, 7]]
    assert not seqs.add(6)
    assert not seqs.add(5)
    assert seqs.add(3)
    assert seqs.runs == [[3, 3], [5, 7]]
    assert seqs.add(4)
    assert seqs.runs == [[3, 7]]
    assert seqs.add(100)
    assert seqs.missing() == 92
    assert seqs.last == 100
    assert 4 in seqs and 100 in seqs and 8 not in seqs and 2 not in seqs and 101 not in seqs


def test_seqs_start_at_zero_and_grow_in_order() -> None:
    seqs = Seqs()
    for n in range(1000):
        assert seqs.add(n)
    assert seqs.runs == [[0, 999]]
    assert seqs.missing() == 0


@settings(max_examples=200)
@given(
    st.lists(
        st.one_of(
            st.integers(min_value=0, max_value=40), st.integers(min_value=0, max_value=10**12)
        ),
        max_size=80,
    )
)
def test_seqs_match_a_set(numbers: list[int]) -> None:
    seqs = Seqs()
    model: set[int] = set()
    for n in numbers:
        assert seqs.add(n) == (n not in model)
        model.add(n)
        runs = seqs.runs
        assert all(lo <= hi for lo, hi in runs)
        assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(runs))  # disjoint, apart
        assert sum(hi - lo + 1 for lo, hi in runs) == len(model)
        assert seqs.missing() == max(model) - min(model) + 1 - len(model)
        assert seqs.last == max(model)
    for probe in {*model, *(n + 1 for n in model), *(n - 1 for n in model), 0, 41}:
        assert (probe in seqs) == (probe in model)


# -- sequence accounting --------------------------------------------------------------------
def test_seen_claim_and_duplicates() -> None:
    fleet = Fleet(silent_after=3)
    r = report(7)
    assert not fleet.seen(r)
    assert not fleet.nodes  # seen() changes nothing
    assert fleet.claim(r)
    assert fleet.seen(r)
    assert not fleet.claim(report(7))
    fleet.count_duplicate(r)
    fleet.count_duplicate(r)
    assert fleet.duplicates == 2
    assert fleet.nodes[("c1", "n1")].duplicates == 2
    assert not fleet.seen(report(7, boot=BOOT_B))  # another boot counts from scratch
    assert not fleet.seen(report(7, node="n2"))
    assert not fleet.seen(report(7, cluster="c2"))
    assert fleet.claim(report(7, boot=BOOT_B))


def test_boots_per_node_are_bounded_oldest_first() -> None:
    fleet = Fleet(silent_after=3)
    boots = [f"{i:032x}" for i in range(20)]
    for boot in boots:
        fleet.claim(report(1, boot=boot))
    kept = fleet.nodes[("c1", "n1")].boots
    assert list(kept) == boots[4:]
    assert not fleet.seen(report(1, boot=boots[0]))
    assert fleet.seen(report(1, boot=boots[-1]))


# -- reports --------------------------------------------------------------------------------
def test_on_report_takes_the_present_from_the_newest_report() -> None:
    fleet = Fleet(silent_after=3)
    r = report(3)
    r.agent.dropped = 4
    r.gpus[2].error = GpuError(code="gpu_lost", message="fell off the bus")
    assert accept(fleet, r, received_ns=r.time_ns + 1_500_000_000) == []
    state = fleet.nodes[("c1", "n1")]
    assert state.last_seen_ns == r.time_ns + 1_500_000_000
    assert state.last_report_ns == r.time_ns
    assert state.boot_id == BOOT_A
    assert state.interval_s == r.interval_s
    assert state.version == r.agent.version
    assert state.dropped == 4
    assert state.skew_s == 1.5
    assert state.gpus_failed == 1
    assert state.gpus == {g.uuid: g.index for g in r.gpus}
    assert (state.reports, fleet.accepted) == (1, 1)


def test_a_late_report_is_history_not_the_present() -> None:
    fleet = Fleet(silent_after=3)
    now = report(10)
    accept(fleet, now, received_ns=now.time_ns)
    late = report(2, without=(0, 1, 2))  # drained from a spool: older, and fewer GPUs
    late.agent.version = "0.0.1"
    assert accept(fleet, late, received_ns=now.time_ns + 5 * S) == []
    state = fleet.nodes[("c1", "n1")]
    assert state.last_report_ns == now.time_ns
    assert state.last_seen_ns == now.time_ns
    assert state.version == now.agent.version
    assert len(state.gpus) == 8  # no GPU "vanished" because of an old report
    assert state.reports == 2  # but it is counted
    assert fleet.accepted == 2
    assert fleet.seen(late)


def test_a_gpu_that_vanishes_raises_one_gpu_missing_event() -> None:
    fleet = Fleet(silent_after=3)
    first = report(0)
    accept(fleet, first)
    gone = {g.index: g.uuid for g in first.gpus}[5]
    r = report(1, without=(5,))
    events = accept(fleet, r, received_ns=r.time_ns + 2 * S)
    assert len(events) == 1
    message = events[0]
    assert (message.cluster, message.node, message.boot_id, message.seq) == ("c1", "n1", BOOT_A, 1)
    event = message.event
    assert event.kind == "gpu_missing"
    assert event.severity == "critical"
    assert event.gpu_index == 5
    assert event.uuid == gone
    assert event.time_ns == r.time_ns + 2 * S
    assert gone in event.message and "5" in event.message
    assert event.action
    # The event message itself is valid wire data.
    assert decode_event_message(encode_json(message)) == message
    # Still missing next time: not raised again.
    assert accept(fleet, report(2, without=(5,))) == []
    # Back again, then gone again: raised again.
    assert accept(fleet, report(3)) == []
    assert [e.event.gpu_index for e in accept(fleet, report(4, without=(5, 6)))] == [5, 6]


def test_the_first_report_raises_nothing() -> None:
    fleet = Fleet(silent_after=3)
    assert accept(fleet, report(0, without=(1, 2, 3))) == []


def test_a_gpu_announced_in_the_status_but_absent_from_the_report_is_missing() -> None:
    fleet = Fleet(silent_after=3)
    inventory = [
        GpuInventory(index=g.index, uuid=g.uuid, name=g.name, pci_bus_id=g.pci_bus_id)
        for g in report(0).gpus
    ]
    fleet.on_status(status("online", gpus=inventory), T)
    assert len(fleet.nodes[("c1", "n1")].gpus) == 8
    events = accept(fleet, report(0, without=(7,)))
    assert [e.event.gpu_index for e in events] == [7]


# -- presence -------------------------------------------------------------------------------
def test_online_status_makes_a_node_online() -> None:
    fleet = Fleet(silent_after=3)
    fleet.on_status(status("online"), T)
    state = fleet.nodes[("c1", "n1")]
    assert fleet.node_state(state, T + S) == "online"
    assert (state.status, state.status_boot) == ("online", BOOT_A)
    assert state.last_seen_ns == T
    assert state.interval_s == 15.0
    assert state.version == "9.9.9"


def test_an_online_status_does_not_move_last_seen_back() -> None:
    fleet = Fleet(silent_after=3)
    accept(fleet, report(0), received_ns=T + 100 * S)
    fleet.on_status(status("online"), T)
    assert fleet.nodes[("c1", "n1")].last_seen_ns == T + 100 * S


def test_offline_of_the_current_boot_makes_a_node_offline() -> None:
    fleet = Fleet(silent_after=3)
    fleet.on_status(status("online"), T)
    accept(fleet, report(0))
    fleet.on_status(status("offline"), T + 20 * S)
    state = fleet.nodes[("c1", "n1")]
    assert fleet.node_state(state, T + 21 * S) == "offline"


def test_the_will_of_an_older_boot_is_ignored() -> None:
    fleet = Fleet(silent_after=3)
    accept(fleet, report(0, boot=BOOT_A))
    fleet.on_status(status("online", boot=BOOT_B), T + 30 * S)
    accept(fleet, report(0, boot=BOOT_B, time_ns=T + 31 * S))
    fleet.on_status(status("offline", boot=BOOT_A), T + 32 * S)  # A's will, delivered late
    state = fleet.nodes[("c1", "n1")]
    assert state.status == "online"
    assert fleet.node_state(state, T + 33 * S) == "online"


def test_node_state_goes_silent_after_silent_after_intervals() -> None:
    fleet = Fleet(silent_after=3)
    r = report(0)
    accept(fleet, r, received_ns=T)
    state = fleet.nodes[("c1", "n1")]
    limit = 3 * r.interval_s
    assert fleet.node_state(state, T + int(limit * S)) == "online"
    assert fleet.node_state(state, T + int(limit * S) + 1_000_000) == "silent"


def test_node_state_unknown_until_seen_and_default_interval() -> None:
    fleet = Fleet(silent_after=2)
    assert fleet.node_state(NodeState("c1", "n1"), T) == "unknown"
    quiet = NodeState("c1", "n1", last_seen_ns=T)  # interval unknown: 10 s is assumed
    assert fleet.node_state(quiet, T + 20 * S) == "online"
    assert fleet.node_state(quiet, T + 21 * S) == "silent"
    assert fleet.node_state(NodeState("c1", "n1", status="offline", last_seen_ns=T), T) == "offline"


# -- summary --------------------------------------------------------------------------------
def test_summary_of_one_cluster() -> None:
    fleet = Fleet(silent_after=3, name="agg-1")
    for seq in (0, 1, 2, 5):  # 3 and 4 never arrived
        accept(fleet, report(seq, node="b-node"))
    fleet.count_duplicate(report(1, node="b-node"))
    accept(fleet, report(0, boot=BOOT_B, node="b-node", time_ns=T + 100 * S))
    accept(fleet, report(1, boot=BOOT_B, node="b-node", time_ns=T + 110 * S))
    accept(fleet, report(9, node="a-node", without=(0,)))
    accept(fleet, report(0, node="other", cluster="c2"))
    fleet.received = 9
    sinks = [SinkState(name="sqlite:///x", state="ok", written=8)]
    rejected = {"json": 2}
    summary = fleet.summary("c1", rejected=rejected, wal_bytes=1234, sinks=sinks)

    assert summary.cluster == "c1"
    assert summary.aggregator == "agg-1"
    assert [n.node for n in summary.nodes] == ["a-node", "b-node"]
    a, b = summary.nodes
    assert a.gpus == 7
    assert a.seq == 9
    assert b.boot_id == BOOT_B
    assert b.seq == 1
    assert b.missing == 2
    assert b.duplicates == 1
    assert b.reports == 6
    assert (summary.received, summary.accepted, summary.duplicates) == (9, 8, 1)
    assert summary.rejected == {"json": 2}
    assert summary.rejected is not rejected
    assert summary.wal_bytes == 1234
    assert summary.sinks == sinks
    assert decode_fleet_summary(encode_json(summary)) == summary  # valid on the wire
    assert fleet.clusters() == ["c1", "c2"]
    assert [n.node for n in fleet.summary("c2", rejected={}, wal_bytes=0, sinks=[]).nodes] == [
        "other"
    ]


# -- snapshots ------------------------------------------------------------------------------
def test_snapshot_restore_round_trip_through_json() -> None:
    fleet = Fleet(silent_after=3)
    for seq in (0, 1, 2, 7, 8, 20):
        accept(fleet, report(seq))
    for seq in (3, 4):
        accept(fleet, report(seq, boot=BOOT_B, time_ns=T + 1000 * S + seq))
    accept(fleet, report(0, node="n2"))
    fleet.count_duplicate(report(1))
    fleet.received = 12
    data = json.loads(dumps(fleet.snapshot()))

    restored = Fleet(silent_after=3)
    restored.restore(data)
    assert (restored.received, restored.accepted, restored.duplicates) == (12, 9, 1)
    for seq in (0, 1, 2, 7, 8, 20):
        assert restored.seen(report(seq))
    for seq in (3, 4, 5, 6, 9, 19, 21):
        assert not restored.seen(report(seq))
    assert restored.seen(report(3, boot=BOOT_B))
    assert not restored.seen(report(0, boot=BOOT_B))
    assert restored.seen(report(0, node="n2"))
    state = restored.nodes[("c1", "n1")]
    assert (state.reports, state.duplicates) == (8, 1)
    assert sum(q.missing() for q in state.boots.values()) == 4 + 11
    assert not restored.claim(report(8))  # a redelivery after the restart is a duplicate
    assert restored.claim(report(9))
    assert fleet.node_state(state, T) == "unknown"  # presence is re-learnt live
    assert json.loads(dumps(restored.snapshot()))["nodes"][1] == data["nodes"][1]


def test_restore_of_an_empty_snapshot() -> None:
    fleet = Fleet(silent_after=3)
    fleet.restore({})
    assert (fleet.received, fleet.accepted, fleet.duplicates, fleet.nodes) == (0, 0, 0, {})


# -- found problems -------------------------------------------------------------------------
def test_the_will_of_a_newer_boot_than_the_last_report_is_not_ignored() -> None:
    fleet = Fleet(silent_after=3)
    accept(fleet, report(0, boot=BOOT_A))
    fleet.on_status(status("online", boot=BOOT_B), T + 30 * S)
    fleet.on_status(status("offline", boot=BOOT_B), T + 35 * S)  # B died before reporting
    state = fleet.nodes[("c1", "n1")]
    assert fleet.node_state(state, T + 36 * S) == "offline"


def test_a_late_will_of_the_previous_boot_after_the_new_boot_announced_itself() -> None:
    fleet = Fleet(silent_after=3)
    accept(fleet, report(0, boot=BOOT_A))
    fleet.on_status(status("online", boot=BOOT_B), T + 30 * S)
    fleet.on_status(status("offline", boot=BOOT_A), T + 31 * S)
    state = fleet.nodes[("c1", "n1")]
    assert fleet.node_state(state, T + 32 * S) == "online"
