"""The SQLite sink against real SQLite files: exact values, idempotence, atomicity, retention."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import types
import typing
from pathlib import Path
from typing import Literal

import pytest

from exporters import sqlite as sq
from exporters import sqlite_upkeep
from exporters.base import SinkError
from telemetryd import registry
from telemetryd.config import AgentConfig, AggregatorConfig
from telemetryd.model import (
    AgentStats,
    Event,
    Gpu,
    GpuError,
    GpuProcess,
    Host,
    JobRecord,
    Report,
)
from telemetryd.sampler import open_sampler
from telemetryd.urls import UrlError, parse_sink_url
from tests.unit.sqlite_cases import DAY_NS, copy, raw, run, write_all


@pytest.fixture(scope="module")
def sampled() -> list[Report]:
    """Six consecutive reports of a simulated 8-GPU H100 node."""
    sampler = open_sampler(AgentConfig(node="sim-01", gpu_backend="sim", collectors=["host"]))

    async def run() -> list[Report]:
        return [await sampler.sample(seq=n) for n in range(6)]

    try:
        return asyncio.run(run())
    finally:
        sampler.close()


@pytest.fixture
def reports(sampled) -> list[Report]:
    return [copy(r) for r in sampled]


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "deep" / "dir" / "telemetry.db"


def read(path: Path) -> sq.SqliteReader:
    return sq.SqliteReader(path)


def raw_counts(reader: sq.SqliteReader) -> dict[str, int]:
    """Rows per raw table (the rollup tables left out)."""
    return {k: v for k, v in reader.counts().items() if not k.endswith("_1m")}


ONE_REPORT = {"gpu": 8, "gpu_process": 6, "host": 1, "event": 0, "agent": 1, "job": 0}
"""The raw rows of one simulated report: 8 GPUs running 6 processes, no event, no job."""


# --- values ---------------------------------------------------------------------------


def test_values_read_back_exactly(db, reports):
    report = reports[0]
    report.gpus[1].clock_event_reasons = ["sw_power_cap", "hw_slowdown"]
    report.gpus[2].clock_event_reasons = None
    report.gpus[3] = Gpu(
        index=3,
        uuid=report.gpus[3].uuid,
        pci_bus_id=report.gpus[3].pci_bus_id,
        name=report.gpus[3].name,
        driver=report.gpus[3].driver,
        error=GpuError(code="gpu_lost", message="GPU has fallen off the bus"),
    )
    run(write_all(db, [report]))

    with read(db) as r:
        rows = {row["gpu_index"]: row for row in r.gpu_rows()}
    assert sorted(rows) == list(range(8))
    for g in report.gpus:
        if g.index == 3:
            continue
        row = rows[g.index]
        assert row["node"] == "sim-01" and row["cluster"] == "default"
        assert row["time_ns"] == report.time_ns
        assert row["uuid"] == g.uuid and row["name"] == g.name and row["driver"] == g.driver
        assert row["power_w"] == g.power_w and isinstance(row["power_w"], float)
        assert row["energy_mj"] == g.energy_mj and isinstance(row["energy_mj"], int)
        assert row["temp_c"] == g.temp_c
        assert row["fb_used_bytes"] == g.fb_used_bytes
        assert row["ecc_enabled"] == 1 and row["mig_mode"] == 0 and row["remap_pending"] == 0
        assert row["fan_pct"] is None  # an SXM board has no fan: absent, not 0
        assert row["error_code"] is None and row["error_message"] is None
        # Processes have their own table; the gpu row says how many (None: unknown).
        assert "processes" not in json.loads(row["details"] or "{}")
        assert row["process_count"] == (None if g.processes is None else len(g.processes))
        stored = raw(
            db,
            "SELECT slot, pid, type, used_memory_bytes, cluster FROM gpu_process"
            " WHERE time_ns = ? AND node = ? AND gpu_index = ? ORDER BY slot",
            (report.time_ns, "sim-01", g.index),
        )
        assert stored == [
            (slot, p.pid, p.type, p.used_memory_bytes, "default")
            for slot, p in enumerate(g.processes or ())
        ]
    assert any(g.processes for g in report.gpus)  # the simulator runs jobs
    assert rows[0]["clock_event_reasons"] == ""  # answered "none", not unknown
    assert rows[1]["clock_event_reasons"] == "sw_power_cap,hw_slowdown"
    assert rows[2]["clock_event_reasons"] is None

    lost = rows[3]
    assert lost["error_code"] == "gpu_lost"
    assert lost["error_message"] == "GPU has fallen off the bus"
    metrics = [
        name
        for name in Gpu.__struct_fields__
        if name not in ("index", "uuid", "pci_bus_id", "name", "driver", "error", "mig")
    ]
    assert {name: lost.get(name) for name in metrics} == dict.fromkeys(metrics)
    assert lost["details"] is None


def test_host_and_agent_rows(db, reports):
    report = reports[0]
    report.errors = []
    report.absent = {"rapl": "no RAPL here"}
    report.host.cpu_core_pct = [12.5, 0.0, 100.0]  # the first sample may have none yet
    run(write_all(db, [report]))

    [(cpu_pct, mem_total, host_details)] = raw(
        db, "SELECT cpu_pct, mem_total_bytes, details FROM host"
    )
    assert cpu_pct == report.host.cpu_pct
    assert mem_total == report.host.mem_total_bytes
    details = json.loads(host_details)
    assert details["disks"][0]["mount"] == report.host.disks[0].mount
    assert details["cpu_core_pct"] == [12.5, 0.0, 100.0]

    [(boot, seq, interval, version, duration, agent_details)] = raw(
        db, "SELECT boot_id, seq, interval_s, version, sample_duration_s, details FROM agent"
    )
    assert (boot, seq, interval) == (report.boot_id, report.seq, report.interval_s)
    assert version == report.agent.version and duration == report.agent.sample_duration_s
    assert json.loads(agent_details) == {"absent": {"rapl": "no RAPL here"}}


def test_a_counter_past_int64_is_stored_not_refused(db, reports):
    reports[0].gpus[0].nvlink_tx_bytes = 2**64 - 1
    run(write_all(db, reports[:2]))
    with read(db) as r:
        row = r.gpu_rows(node="sim-01", since_ns=reports[0].time_ns)[0]
        assert r.counts()["gpu"] == 16
    assert row["nvlink_tx_bytes"] == pytest.approx(2.0**64)


# --- idempotence ----------------------------------------------------------------------


def test_the_same_batch_twice_gives_the_same_rows(db, reports):
    run(write_all(db, reports[:3], reports[:3]))
    with read(db) as r:
        assert raw_counts(r) == {
            "gpu": 24,
            "gpu_process": 18,
            "host": 3,
            "event": 0,
            "agent": 3,
            "job": 0,
        }


def test_overlapping_batches_leave_no_duplicates(db, reports):
    run(write_all(db, reports[:4], reports[2:6]))
    with read(db) as r:
        assert raw_counts(r) == {
            "gpu": 48,
            "gpu_process": 36,
            "host": 6,
            "event": 0,
            "agent": 6,
            "job": 0,
        }
        assert len({(row["node"], row["gpu_index"], row["time_ns"]) for row in r.gpu_rows()}) == 48


def test_report_keys_are_exactly_what_was_written(db, reports):
    other = [copy(r, node="sim-02", boot_id="0" * 32) for r in reports[:2]]
    run(write_all(db, reports[:3], other))
    with read(db) as r:
        assert r.report_keys() == {(x.node, x.boot_id, x.seq) for x in reports[:3] + other}


def test_events_are_stored_once_with_or_without_gpu_and_code(db, reports):
    t = reports[0].time_ns
    reports[0].events = [
        Event(time_ns=t, kind="xid", message="XID 79", gpu_index=2, code=79, severity="critical"),
        Event(time_ns=t, kind="xid", message="XID 13", gpu_index=2, code=13),
        Event(time_ns=t, kind="gpu_lost", message="GPU 4 lost", gpu_index=4),
        Event(time_ns=t + 1, kind="recovery_action", message="reboot needed", action="reboot"),
    ]
    run(write_all(db, reports[:1], reports[:1], [copy(reports[0])]))
    with read(db) as r:
        events = r.events(node="sim-01")
    assert len(events) == 4
    by_msg = {e["message"]: e for e in events}
    assert (by_msg["XID 79"]["gpu_index"], by_msg["XID 79"]["code"]) == (2, 79)
    assert by_msg["XID 79"]["severity"] == "critical"
    assert by_msg["XID 79"]["boot_id"] == reports[0].boot_id
    assert (by_msg["GPU 4 lost"]["gpu_index"], by_msg["GPU 4 lost"]["code"]) == (4, None)
    assert by_msg["reboot needed"]["gpu_index"] is None
    assert by_msg["reboot needed"]["action"] == "reboot"


# --- all or nothing -------------------------------------------------------------------


def test_a_batch_failing_part_way_leaves_nothing_and_the_next_write_succeeds(db, reports):
    reports[2].events = [Event(time_ns=reports[2].time_ns, kind="xid", message="x", code=31)]

    async def scenario() -> None:
        sink = sq.SqliteSink(db)
        await sink.open()
        try:
            await sink.write(reports[:1])
            # Events are written after the gpu, host rows: make the event insert fail.
            con = sqlite3.connect(db)
            con.execute(
                "CREATE TRIGGER boom BEFORE INSERT ON event BEGIN SELECT RAISE(ABORT, 'boom'); END"
            )
            con.commit()
            with pytest.raises(SinkError, match=rf"{db}.*boom"):
                await sink.write(reports[1:4])
            with read(db) as r:
                assert raw_counts(r) == ONE_REPORT
            con.execute("DROP TRIGGER boom")
            con.commit()
            con.close()
            await sink.write(reports[1:4])
            assert sink.stats()["write_errors"] == 1 and sink.stats()["batches"] == 2
        finally:
            await sink.close()

    run(scenario())
    with read(db) as r:
        assert raw_counts(r) == {
            "gpu": 32,
            "gpu_process": 24,
            "host": 4,
            "event": 1,
            "agent": 4,
            "job": 0,
        }


def test_a_locked_database_is_a_retryable_error_naming_the_file(db, reports):
    async def scenario() -> None:
        sink = sq.SqliteSink(db, busy_timeout_s=0.05)
        await sink.open()
        try:
            other = sqlite3.connect(db, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(SinkError, match=rf"sqlite {db}: .*database is locked"):
                await sink.write(reports[:2])
            other.execute("ROLLBACK")
            other.close()
            await sink.write(reports[:2])
        finally:
            await sink.close()

    run(scenario())
    with read(db) as r:
        assert r.counts()["agent"] == 2


def test_a_write_that_overruns_raises_instead_of_hanging(db, reports):
    async def scenario() -> None:
        sink = sq.SqliteSink(db, busy_timeout_s=10, timeout_s=0.2)
        await sink.open()
        other = sqlite3.connect(db, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(SinkError, match="did not return within"):
                await sink.write(reports[:1])
            with pytest.raises(SinkError, match="has not returned"):
                await sink.write(reports[1:2])
            other.execute("ROLLBACK")
            deadline = time.monotonic() + 5
            while True:  # the stuck write finishes once the lock is gone
                try:
                    await sink.write(reports[1:2])
                    break
                except SinkError:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
        finally:
            other.close()
            await sink.close()

    run(scenario())
    with read(db) as r:
        assert r.report_keys() == {(x.node, x.boot_id, x.seq) for x in reports[:2]}


# --- retention ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def aged(report: Report, days: float) -> Report:
    return copy(report, time_ns=report.time_ns - int(days * DAY_NS))


def test_retention_deletes_old_rows_only_and_at_most_once_per_period(db, reports):
    clock = Clock()
    old, old2 = aged(reports[0], 3), aged(reports[1], 2)
    old.events = [Event(time_ns=old.time_ns, kind="xid", message="old", code=48)]

    async def scenario() -> dict[str, int]:
        sink = sq.SqliteSink(db, retention_days=1, retention_every_s=3600, clock=clock)
        await sink.open()
        try:
            await sink.write([old, reports[2]])  # the first write starts a pass
            with read(db) as r:
                assert r.report_keys() == {("sim-01", reports[2].boot_id, 2)}
                assert raw_counts(r) == ONE_REPORT
            await sink.write([old2])  # within the hour: kept for now
            with read(db) as r:
                assert r.counts()["agent"] == 2
            clock.now += 3601
            await sink.write([reports[3]])
            with read(db) as r:
                assert {k[2] for k in r.report_keys()} == {2, 3}
            return sink.stats()
        finally:
            await sink.close()

    stats = run(scenario())
    # 8 GPUs, 6 processes, host, event, agent; old2 had no event
    assert stats["retention_deleted"] == (8 + 6 + 1 + 1 + 1) * 2 - 1
    assert stats["retention_passes"] == 2


def test_a_large_expiry_is_spread_over_writes_in_chunks(db, reports, monkeypatch):
    monkeypatch.setattr(sqlite_upkeep, "CHUNK_ROWS", 40)
    old = [aged(reports[i % 4], 10 + i / 1000) for i in range(60)]
    run(write_all(db, old, retention_days=0, raw_days=0))
    [(pages_before,)] = raw(db, "PRAGMA page_count")

    async def scenario() -> None:
        sink = sq.SqliteSink(db, retention_days=7, raw_days=0)
        await sink.open()
        try:
            await sink.write(reports[4:5])
            with read(db) as r:
                assert 0 < r.counts()["gpu"] < 480  # a chunk went, not all
            assert await sink.prune() > 0
            with read(db) as r:
                assert raw_counts(r) == ONE_REPORT
            # Most of the file was freed: the pages went back to the filesystem.
            [(free, pages)] = raw(db, "SELECT * FROM pragma_freelist_count, pragma_page_count")
            assert free <= pages // 4 and pages < pages_before
        finally:
            await sink.close()

    run(scenario())


def test_retention_zero_keeps_everything(db, reports):
    run(write_all(db, [aged(reports[0], 400)], retention_days=0, raw_days=0))
    with read(db) as r:
        assert raw_counts(r) == ONE_REPORT


# --- schema ---------------------------------------------------------------------------


def test_reopen_keeps_data_and_restores_a_missing_column(db, reports):
    run(write_all(db, reports[:2]))
    # As if the file were made before the model had fan_pct.
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE gpu DROP COLUMN fan_pct")
    con.commit()
    con.close()
    run(write_all(db, reports[2:3]))
    with read(db) as r:
        assert r.counts()["gpu"] == 24
        assert all("fan_pct" in row for row in r.gpu_rows())


def test_a_newer_schema_is_refused_with_a_clear_message(db, reports):
    run(write_all(db, reports[:1]))
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version = 99")
    con.commit()
    con.close()
    sink = sq.SqliteSink(db)
    with pytest.raises(SinkError, match=r"schema version 99 is newer than this telemetryd"):
        run(sink.open())
    run(sink.close())
    with pytest.raises(SinkError, match="schema version 99"):
        sq.SqliteReader(db)


def test_a_foreign_database_is_refused(tmp_path):
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE mine (x)")
    con.commit()
    con.close()
    sink = sq.SqliteSink(path)
    with pytest.raises(SinkError, match="not a telemetryd database"):
        run(sink.open())
    run(sink.close())
    assert raw(path, "SELECT name FROM sqlite_master") == [("mine",)]


def test_the_file_is_durable_and_sized_as_designed(db, reports):
    run(write_all(db, reports[:1]))
    assert raw(db, "PRAGMA journal_mode") == [("wal",)]
    assert raw(db, "PRAGMA page_size") == [(sq.PAGE_SIZE,)]
    assert raw(db, "PRAGMA auto_vacuum") == [(2,)]  # incremental


def _scalar(hint) -> bool:
    """Independent of the sink's own classifier: numbers, bools, text, optional or not."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return len(args) == 1 and _scalar(args[0])
    if origin is typing.Annotated:
        return _scalar(typing.get_args(hint)[0])
    if origin is Literal:
        return True
    return hint in (int, float, bool, str)


def test_every_model_field_has_a_place(db, reports):
    """A field added to the model must show up as a column or in details, never vanish."""
    run(write_all(db, reports[:1]))
    places = [  # struct, its table, the fields stored some other way (checked below)
        (Gpu, "gpu", {"index", "error", "clock_event_reasons", "processes"}),
        (GpuProcess, "gpu_process", set()),
        (JobRecord, "job", set()),
        (Host, "host", set()),
        (Event, "event", set()),
        (AgentStats, "agent", set()),
        (Report, "agent", {"node", "time_ns", "gpus", "host", "events", "agent"}),
    ]
    tables = {
        t: {row[1] for row in raw(db, f"PRAGMA table_info({t})")}
        for t in ("gpu", "gpu_process", "host", "event", "agent", "job")
    }
    for struct, table, elsewhere in places:
        hints = typing.get_type_hints(struct)
        for name in struct.__struct_fields__:
            if name in elsewhere:
                continue
            expected = name if _scalar(hints[name]) else "details"
            assert expected in tables[table], f"{struct.__name__}.{name} has no place in {table}"
    assert {"node", "gpu_index", "time_ns", "error_message", "clock_event_reasons"} <= tables["gpu"]


# --- wiring ---------------------------------------------------------------------------


def test_the_url_options_and_the_registry(tmp_path):
    url = parse_sink_url(f"sqlite://{tmp_path}/t.db?retention_days=0.5")
    sink = registry.sink_factory("sqlite")(url, AggregatorConfig())
    assert isinstance(sink, sq.SqliteSink)
    assert sink.name == f"sqlite://{tmp_path}/t.db"
    assert sink.retention.keep_ns == DAY_NS // 2
    assert sq.create(
        parse_sink_url(f"sqlite://{tmp_path}/t.db"), AggregatorConfig()
    ).retention.keep_ns
    with pytest.raises(UrlError, match="retention_day"):
        sq.create(parse_sink_url(f"sqlite://{tmp_path}/t.db?retention_day=3"), AggregatorConfig())
    with pytest.raises(UrlError, match="expected a number of days >= 0"):
        sq.create(parse_sink_url(f"sqlite://{tmp_path}/t.db?retention_days=-1"), AggregatorConfig())


def test_counters_and_close_without_open(db, reports):
    run(sq.SqliteSink(db).close())
    sink = run(write_all(db, reports[:2], [], reports[2:3]))
    assert sink.stats() == {
        "rows_gpu": 24,
        "rows_gpu_process": 18,
        "rows_host": 3,
        "rows_event": 0,
        "rows_agent": 3,
        "rows_job": 0,
        "batches": 2,
        "write_errors": 0,
        "retention_deleted": 0,
        "rollup_rows": 0,
        "retention_passes": 1,
        "retention_errors": 0,
    }


def test_the_reader_refuses_a_missing_file(tmp_path):
    with pytest.raises(SinkError, match="cannot open for reading"):
        sq.SqliteReader(tmp_path / "nope.db")
