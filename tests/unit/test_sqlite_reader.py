"""Reading the SQLite store back: reports equal to the ones written, in pages, filtered."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from exporters.sqlite import SqliteReader as FromTheSinkModule
from exporters.sqlite_reader import SqliteReader
from telemetryd.model import Event, Gpu, Report, decode_report
from tests.reports import sampled
from tests.unit.sqlite_cases import DAY_NS, Clock, copy, full_report, run, write_all

T0 = time.time_ns() - 3600 * 10**9  # recent: nothing is rolled up or expired


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "telemetry.db"


def everything(reader: SqliteReader, **kwargs) -> list[Report]:
    return [r for page in reader.reports(**kwargs) for r in page]


def key(r: Report) -> tuple[int, str]:
    return (r.time_ns, r.node)


def edge_cases() -> list[Report]:
    """Reports at the edges of what a column can hold, and of what is optional."""
    bare = full_report(T0 + 3, seq=3)
    bare.host, bare.events, bare.errors, bare.absent = None, [], [], None
    bare.gpus = [Gpu(index=0, uuid="GPU-x", pci_bus_id="0:0", name="n", driver="d")]

    empty = full_report(T0 + 4, seq=4, node="node-b")
    empty.absent = {}  # "nothing absent" is not "not reported"
    empty.host.disks = []
    empty.gpus[0].mig = []

    big = full_report(T0 + 5, seq=5)
    u64 = 2**64 - 1  # the wire allows uint64; SQLite's INTEGER stops at 2**63 - 1
    big.gpus[0].nvlink_rx_bytes = u64
    big.gpus[2].energy_mj = 2**63
    big.agent.published = u64
    big.host.mem_total_bytes = u64
    big.events[0].gi_id = u64
    big.events[2].code = u64  # in the event's key
    big.seq = u64

    odd = full_report(T0 + 6, seq=6)
    odd.gpus[0].clock_event_reasons = ["a,b", "c"]  # commas cannot join these back
    odd.gpus[2].clock_event_reasons = [""]
    odd.gpus[1].clock_event_reasons = ["x"]
    odd.events[0].message = "quote ' \" back\\slash\nnew line, ünïcødé 🚀"
    odd.host.extra = {"a b": {"c,d": -0.5}}
    return [bare, empty, big, odd]


def test_reports_come_back_equal_to_what_was_written(db):
    sim = decode_report(sampled())  # a realistic 8-GPU report, as an agent sends it
    written = [
        full_report(T0, seq=1),
        copy(sim, time_ns=T0 + 1),
        copy(sim, time_ns=T0 + 1, node="n2", seq=7),  # the same time on another node
        full_report(T0 + 2, seq=2, node="node-b"),
        *edge_cases(),
    ]
    run(write_all(db, written[:3], written[3:]))

    with SqliteReader(db) as reader:
        pages = list(reader.reports(batch=3))
    assert [len(p) for p in pages] == [3, 3, 2]
    got = [r for p in pages for r in p]
    expected = sorted(written, key=key)
    for g, e in zip(got, expected, strict=True):
        assert g == e, f"{key(e)} differs"
    # The events came back in their report's order, which is not their key order.
    assert [e.kind for e in got[0].events] == ["xid", "gpu_lost", "recovery_action"]


def test_filters_by_time_and_node(db):
    written = [full_report(T0 + i * 10**9, seq=i, node=f"node-{'ab'[i % 2]}") for i in range(10)]
    run(write_all(db, written))
    with SqliteReader(db) as reader:
        assert everything(reader) == written
        since, until = written[3].time_ns, written[7].time_ns
        assert everything(reader, since_ns=since, until_ns=until) == written[3:7]
        assert everything(reader, node="node-b", batch=2) == written[1::2]
        assert everything(reader, node="node-a", since_ns=since, batch=1) == written[4::2]
        assert everything(reader, node="node-c") == []
        with pytest.raises(ValueError, match="batch=0; expected a number of reports >= 1"):
            next(reader.reports(batch=0))


def test_rolled_up_reports_come_back_without_gpus_and_host(db):
    now = time.time()
    old = full_report(int(now * 1e9) - 3 * DAY_NS, seq=1)
    recent = full_report(int(now * 1e9) - 10**9, seq=2)
    run(write_all(db, [old, recent], clock=Clock(now)))
    with SqliteReader(db) as reader:
        got = everything(reader)
        assert reader.counts()["gpu_1m"] == 3
    assert got[1] == recent
    expected = copy(old)
    expected.gpus, expected.host = [], None  # in gpu_1m and host_1m now
    assert got[0] == expected


def test_pages_are_read_lazily(db):
    run(write_all(db, [full_report(T0 + i, seq=i) for i in range(5)]))
    with SqliteReader(db) as reader:
        pages = reader.reports(batch=2)
        first = next(pages)
        # Written after the first page was read: a later page sees it, nothing was preloaded.
        run(write_all(db, [full_report(T0 + 100, seq=100)]))
        rest = [r for page in pages for r in page]
    assert [r.seq for r in first] == [0, 1]
    assert [r.seq for r in rest] == [2, 3, 4, 100]


def test_the_reader_is_still_importable_from_the_sink_module():
    assert FromTheSinkModule is SqliteReader


def test_events_without_their_report_order_fall_back_to_key_order(db):
    report = full_report(T0, seq=1)
    run(write_all(db, [report]))
    import sqlite3

    con = sqlite3.connect(db)
    con.execute("UPDATE event SET position = NULL")  # as a version-1 file has them
    con.commit()
    con.close()
    with SqliteReader(db) as reader:
        [got] = everything(reader)
    assert [(e.time_ns, e.kind) for e in got.events] == sorted(
        (e.time_ns, e.kind) for e in report.events
    )
    assert isinstance(got.events[0], Event)
