"""1-minute rollups of the SQLite store, against real SQLite files and an injected clock.

Exact values for known raw rows, merging of late rows, idempotence (also when a batch is
written again after it was rolled up), retention over the rollups, bounded chunks, the
URL options, and the migration of a schema-version-1 file made by the version-1 code.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from exporters import sqlite_upkeep
from exporters.base import SinkError
from exporters.sqlite import SqliteReader, SqliteSink, create
from exporters.sqlite_rollup import GPU_1M, HOST_1M, MINUTE_NS
from telemetryd.config import AggregatorConfig
from telemetryd.model import Event, Report, decode_report
from telemetryd.urls import UrlError, parse_sink_url
from tests.unit.sqlite_cases import DAY_NS, Clock, copy, full_report, run, write_all

FIXTURES = Path(__file__).parent.parent / "fixtures" / "sqlite"
NOW_S = 1_780_000_000.0  # the injected wall clock; reports are placed relative to it
OLD_MINUTE = (int(NOW_S * 1e9) - 3 * DAY_NS) // MINUTE_NS * MINUTE_NS  # rolled up at once


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "telemetry.db"


def sample(t_ns: int, seq: int, *, power: float | None, temp: float, driver: str) -> Report:
    """full_report with the values the rollups are checked against set."""
    r = full_report(t_ns, seq=seq)
    a100, _lost, idle = r.gpus
    a100.power_w, a100.temp_c, a100.driver = power, temp, driver
    a100.energy_mj = 1000 * seq
    a100.mig_mode = seq % 2 == 0
    a100.clock_event_reasons = [f"reason{seq}"]
    idle.fan_pct = 10 * seq
    r.host.cpu_pct = float(seq)
    return r


def samples_of_old_minute() -> list[Report]:
    """Three samples in one minute, two in the next; gpu 1 is lost in all of them."""
    m0, m1 = OLD_MINUTE, OLD_MINUTE + MINUTE_NS
    return [
        sample(m0 + 5 * 10**9, 1, power=100.0, temp=40.0, driver="550"),
        sample(m0 + 25 * 10**9, 2, power=None, temp=50.0, driver="550"),
        sample(m0 + 45 * 10**9, 3, power=200.0, temp=60.0, driver="555"),
        sample(m1, 4, power=300.0, temp=30.0, driver="555"),
        sample(m1 + 59 * 10**9, 5, power=500.0, temp=31.0, driver="560"),
    ]


def sink(db: Path, clock: Clock, **kwargs) -> SqliteSink:
    return SqliteSink(db, clock=clock, **kwargs)


def rollup_rows(db: Path, table: str = "gpu_1m") -> list[dict]:
    with SqliteReader(db) as r:
        return list(r.rollups(table))


def by_key(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["minute_ns"], r["node"], r.get("gpu_index")): r for r in rows}


# --- values ---------------------------------------------------------------------------


def test_rollup_values_are_exact(db):
    clock = Clock(NOW_S)
    reports = samples_of_old_minute()
    s = run(write_all(db, reports, clock=clock))  # the first write starts a pass

    rows = by_key(rollup_rows(db))
    assert len(rows) == 6  # 2 minutes x 3 GPUs
    a = rows[(OLD_MINUTE, "node-a", 0)]
    assert (a["samples"], a["last_ns"]) == (3, reports[2].time_ns)
    # power absent in one sample: min, mean, max over the values there are.
    assert (a["min_power_w"], a["mean_power_w"], a["max_power_w"]) == (100.0, 150.0, 200.0)
    assert (a["min_temp_c"], a["mean_temp_c"], a["max_temp_c"]) == (40.0, 50.0, 60.0)
    assert (a["min_energy_mj"], a["max_energy_mj"]) == (1000, 3000)
    assert isinstance(a["min_energy_mj"], int) and a["mean_energy_mj"] == 2000.0
    # Text and bools: the minute's last sample.
    assert a["driver"] == "555" and a["mig_mode"] == 0 and a["clock_event_reasons"] == "reason3"
    assert a["uuid"] == reports[0].gpus[0].uuid and a["cluster"] == "c-1"
    # Processes are not rolled up (a pid has no mean), only how many there were.
    assert "processes" not in json.loads(a["details"]) and a["max_process_count"] == 2
    assert a["mean_util_gpu_pct"] is None  # absent in every sample stays absent

    b = rows[(OLD_MINUTE + MINUTE_NS, "node-a", 0)]
    assert (b["samples"], b["min_power_w"], b["mean_power_w"], b["max_power_w"]) == (
        2,
        300.0,
        400.0,
        500.0,
    )
    assert b["driver"] == "560" and b["mig_mode"] == 0

    lost = rows[(OLD_MINUTE, "node-a", 1)]
    assert lost["samples"] == 3 and lost["error_code"] == "gpu_lost"
    assert lost["min_power_w"] is lost["mean_power_w"] is lost["max_power_w"] is None
    idle = rows[(OLD_MINUTE, "node-a", 2)]
    assert (idle["min_fan_pct"], idle["mean_fan_pct"], idle["max_fan_pct"]) == (10, 20.0, 30)

    hosts = by_key(rollup_rows(db, "host_1m"))
    h = hosts[(OLD_MINUTE, "node-a", None)]
    assert (h["samples"], h["min_cpu_pct"], h["mean_cpu_pct"], h["max_cpu_pct"]) == (3, 1, 2, 3)
    assert json.loads(h["details"])["disks"][0]["mount"] == "/"

    # The raw gpu and host rows went; agent rows and events stay raw.
    with SqliteReader(db) as r:
        counts = r.counts()
    assert counts == {"gpu": 0, "gpu_process": 0, "host": 0, "event": 15, "agent": 5, "job": 0,
                      "gpu_1m": 6, "host_1m": 2}  # fmt: skip
    assert s.stats()["rollup_rows"] == 5 * 3 + 5
    assert s.stats()["retention_passes"] == 1


def test_rollup_columns_are_derived_from_the_raw_tables():
    for rollup in (GPU_1M, HOST_1M):
        names = {n for n, _ in rollup.table.columns}
        for col, kind in rollup.source.columns:
            if col in rollup.source.booleans or kind == "TEXT":
                assert col in names and col in rollup.kept
            else:
                assert {f"min_{col}", f"mean_{col}", f"max_{col}"} <= names
                assert col not in names
    assert {"mig_mode", "ecc_enabled", "remap_pending"} <= set(GPU_1M.kept)
    assert "power_w" in GPU_1M.numeric and "fan_pct" in GPU_1M.numeric
    # The highest PCIe generation seen in a minute is not the raw field pcie_gen_max.
    gpu_1m = {n for n, _ in GPU_1M.table.columns}
    assert {"max_pcie_gen", "max_pcie_gen_max"} <= gpu_1m and "pcie_gen_max" not in gpu_1m
    assert [n for n, _ in GPU_1M.table.key] == ["minute_ns", "node", "gpu_index"]
    assert [n for n, _ in HOST_1M.table.key] == ["minute_ns", "node"]


def test_recent_rows_stay_raw(db):
    clock = Clock(NOW_S)
    fresh = sample(int(NOW_S * 1e9) - DAY_NS, 1, power=1.0, temp=1.0, driver="x")
    run(write_all(db, [fresh], clock=clock))
    with SqliteReader(db) as r:
        assert r.counts()["gpu"] == 3 and r.counts()["gpu_1m"] == 0


# --- late rows, idempotence -----------------------------------------------------------


def test_late_rows_merge_into_the_rolled_up_minute(db):
    clock = Clock(NOW_S)
    m0 = OLD_MINUTE
    first = [
        sample(m0 + 10 * 10**9, 1, power=100.0, temp=40.0, driver="550"),
        sample(m0 + 30 * 10**9, 2, power=200.0, temp=50.0, driver="555"),
    ]
    late_after = sample(m0 + 50 * 10**9, 3, power=600.0, temp=20.0, driver="560")
    late_before = sample(m0 + 1 * 10**9, 4, power=50.0, temp=90.0, driver="549")
    # Absent in the rolled-up minute, present in one late row: the merge takes that one.
    for r in (*first, late_before):
        r.gpus[2].fan_pct = None

    async def scenario() -> SqliteSink:
        s = sink(db, clock)
        await s.open()
        try:
            await s.write(first)  # rolled up by this write's pass
            assert by_key(rollup_rows(db))[(m0, "node-a", 0)]["samples"] == 2
            await s.write([late_after])  # a drained spool, days late
            assert await s.prune() == 0
            await s.write([late_before])
            await s.prune()
            return s
        finally:
            await s.close()

    s = run(scenario())
    rows = by_key(rollup_rows(db))
    a = rows[(m0, "node-a", 0)]
    assert a["samples"] == 4 and a["last_ns"] == late_after.time_ns
    assert (a["min_power_w"], a["max_power_w"]) == (50.0, 600.0)
    assert a["mean_power_w"] == (100.0 + 200.0 + 600.0 + 50.0) / 4
    assert (a["min_temp_c"], a["max_temp_c"]) == (20.0, 90.0)
    # The kept values are the latest sample's, even though an earlier one arrived last.
    assert a["driver"] == "560" and a["clock_event_reasons"] == "reason3"
    idle = rows[(m0, "node-a", 2)]
    assert (idle["min_fan_pct"], idle["mean_fan_pct"], idle["max_fan_pct"]) == (30, 30.0, 30)
    with SqliteReader(db) as r:
        assert r.counts()["gpu"] == 0 and r.counts()["agent"] == 4
    assert s.stats()["rollup_rows"] == 4 * 4


def test_the_same_batch_twice_before_rollup_gives_the_same_rollup(tmp_path):
    batch = samples_of_old_minute()
    once, twice = tmp_path / "once.db", tmp_path / "twice.db"
    keep_raw = {"retention_days": 0, "raw_days": 0}
    run(write_all(once, batch, **keep_raw))
    run(write_all(twice, [copy(r) for r in batch], [copy(r) for r in batch], **keep_raw))

    async def roll_up(path: Path) -> None:
        s = sink(path, Clock(NOW_S))
        await s.open()
        try:
            await s.prune()
        finally:
            await s.close()

    run(roll_up(once))
    run(roll_up(twice))
    assert rollup_rows(once)[0]["samples"] == 3
    assert rollup_rows(twice) == rollup_rows(once)
    assert rollup_rows(twice, "host_1m") == rollup_rows(once, "host_1m")


def test_a_batch_written_again_after_its_rollup_is_not_counted_twice(db):
    """After a crash the aggregator writes again from its cursor: maybe a rolled batch."""
    clock = Clock(NOW_S)
    batch = samples_of_old_minute()

    async def scenario() -> SqliteSink:
        s = sink(db, clock)
        await s.open()
        try:
            await s.write(batch)
            await s.write([copy(r) for r in batch])
            await s.prune()
            return s
        finally:
            await s.close()

    run(scenario())
    before = rollup_rows(db)
    assert before[0]["samples"] == 3
    # A new process (nothing remembered) on the same file, and one more replay.
    s2 = run(write_all(db, [copy(r) for r in batch], clock=clock))
    assert rollup_rows(db) == before
    assert s2.stats()["rows_gpu"] == 0 and s2.stats()["rows_agent"] == 5
    assert s2.stats()["rows_gpu_process"] == 0  # processes went with their GPUs' rows
    with SqliteReader(db) as r:
        assert r.counts()["gpu"] == 0 and r.counts()["agent"] == 5
        assert r.counts()["gpu_process"] == 0


# --- retention, chunks ----------------------------------------------------------------


def test_a_failing_rollup_keeps_the_raw_rows_and_is_retried(db):
    """Rolling up and deleting the raw rows is one transaction: never half done."""
    clock = Clock(NOW_S)

    async def scenario() -> SqliteSink:
        s = sink(db, clock)
        await s.open()
        try:
            con = sqlite3.connect(db)
            con.execute(
                "CREATE TRIGGER boom BEFORE DELETE ON gpu BEGIN SELECT RAISE(ABORT, 'boom'); END"
            )
            con.commit()
            await s.write(samples_of_old_minute())  # the write itself succeeds
            with SqliteReader(db) as r:
                assert r.counts()["gpu"] == 15 and r.counts()["gpu_1m"] == 0
            assert s.stats()["retention_errors"] == 1
            con.execute("DROP TRIGGER boom")
            con.commit()
            con.close()
            fresh = int(NOW_S * 1e9)
            await s.write([sample(fresh, 9, power=1.0, temp=1.0, driver="x")])
            return s
        finally:
            await s.close()

    s = run(scenario())
    with SqliteReader(db) as r:
        assert r.counts()["gpu"] == 3 and r.counts()["gpu_1m"] == 6
    assert rollup_rows(db)[0]["samples"] == 3
    assert s.stats()["retention_passes"] == 1 and s.stats()["batches"] == 2


def test_retention_deletes_rollup_rows_too(db):
    clock = Clock(NOW_S)

    async def scenario() -> None:
        s = sink(db, clock, retention_days=30, raw_days=2)
        await s.open()
        try:
            await s.write(samples_of_old_minute())
            with SqliteReader(db) as r:
                assert r.counts()["gpu_1m"] == 6
            clock.now += 28 * 86400  # the rollups are now 31 days old
            await s.write([sample(int(clock.now * 1e9), 9, power=1.0, temp=1.0, driver="x")])
        finally:
            await s.close()

    run(scenario())
    with SqliteReader(db) as r:
        assert r.counts() == {
            "gpu": 3,
            "gpu_process": 2,
            "host": 1,
            "event": 3,
            "agent": 1,
            "job": 0,
            "gpu_1m": 0,
            "host_1m": 0,
        }


def test_a_rollup_backlog_is_spread_over_writes_in_whole_minutes(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_upkeep, "CHUNK_ROWS", 10)
    # 40 reports 15 s apart: 10 minutes of 12 gpu rows (4 per GPU) and 4 host rows.
    backlog = [
        sample(OLD_MINUTE + i * 15 * 10**9, i, power=float(i), temp=1.0, driver=f"d{i}")
        for i in range(40)
    ]
    chunked, whole = tmp_path / "chunked.db", tmp_path / "whole.db"
    run(write_all(chunked, backlog, retention_days=0, raw_days=0))
    shutil.copy(chunked, whole)

    async def drain(path: Path) -> list[int]:
        """Fresh writes until the backlog is rolled up; raw backlog rows after each."""
        s = sink(path, Clock(NOW_S))
        await s.open()
        left: list[int] = []
        try:
            for i in range(1, 50):
                fresh = int(NOW_S * 1e9) + i
                await s.write([sample(fresh, 100 + i, power=1.0, temp=1.0, driver="x")])
                with SqliteReader(path) as r:
                    left.append(r.counts()["gpu"] - 3 * i)  # the fresh rows stay raw
                    rolled = [*r.rollups("gpu_1m"), *r.rollups("host_1m")]
                # A minute is never split between chunks, though 12 rows exceed a chunk.
                assert all(row["samples"] == 4 for row in rolled)
                if left[-1] == 0:
                    return left
        finally:
            await s.close()
        raise AssertionError(f"backlog not rolled up after 49 writes: {left}")

    left = run(drain(chunked))
    assert left == [120 - 12 * n for n in range(1, 11)]  # one minute per write
    monkeypatch.setattr(sqlite_upkeep, "CHUNK_ROWS", 10_000)
    assert run(drain(whole)) == [0]
    assert rollup_rows(chunked) == rollup_rows(whole)
    assert rollup_rows(chunked, "host_1m") == rollup_rows(whole, "host_1m")
    assert len(rollup_rows(whole)) == 10 * 3


def test_rollups_are_read_in_pages_with_filters(db, monkeypatch):
    from exporters import sqlite_reader

    monkeypatch.setattr(sqlite_reader, "ROLLUP_PAGE", 4)
    other = [copy(r, node="node-b") for r in samples_of_old_minute()]
    run(write_all(db, samples_of_old_minute() + other, clock=Clock(NOW_S)))
    with SqliteReader(db) as r:
        rows = list(r.rollups("gpu_1m"))
        keys = [(x["minute_ns"], x["node"], x["gpu_index"]) for x in rows]
        assert keys == sorted(keys) and len(set(keys)) == 12
        assert [x["node"] for x in r.rollups("gpu_1m", node="node-b")] == ["node-b"] * 6
        second = OLD_MINUTE + MINUTE_NS
        assert {x["minute_ns"] for x in r.rollups("gpu_1m", since_ns=second)} == {second}
        assert {x["minute_ns"] for x in r.rollups("host_1m", until_ns=second)} == {OLD_MINUTE}
        with pytest.raises(ValueError, match="table='gpu'; expected one of gpu_1m, host_1m"):
            list(r.rollups("gpu"))


# --- options --------------------------------------------------------------------------


def make(url: str) -> SqliteSink:
    return create(parse_sink_url(url), AggregatorConfig())


def test_url_options_and_defaults(tmp_path):
    base = f"sqlite://{tmp_path}/t.db"
    plan = make(base).retention
    assert (plan.keep_ns, plan.raw_ns, plan.rollups) == (30 * DAY_NS, 2 * DAY_NS, True)
    plan = make(f"{base}?raw_days=0.5&retention_days=10").retention
    assert (plan.keep_ns, plan.raw_ns, plan.rollups) == (10 * DAY_NS, DAY_NS // 2, True)
    assert not make(f"{base}?raw_days=0").retention.rollups
    assert not make(f"{base}?raw_days=7&retention_days=7").retention.rollups
    assert make(f"{base}?raw_days=7&retention_days=0").retention.rollups  # 0: forever


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("raw_days=abc", "raw_days='abc'; expected a number of days >= 0 (0 keeps every row raw)"),
        ("raw_days=-1", "raw_days='-1'; expected a number of days >= 0"),
        ("raw_days=nan", "raw_days='nan'; expected a number of days >= 0"),
        ("raw_days=", "raw_days=''; expected a number of days >= 0"),
        ("retention_days=inf", "retention_days='inf'; expected a number of days >= 0 (0 keeps"),
        ("raw_day=3", "unknown option(s) raw_day; known: raw_days, retention_days"),
    ],
)
def test_url_option_errors_name_the_option(tmp_path, query, message):
    with pytest.raises(UrlError) as err:
        make(f"sqlite://{tmp_path}/t.db?{query}")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(f"sqlite://{tmp_path}/t.db: ")


# --- migration ------------------------------------------------------------------------


def v1_file(path: Path) -> list[Report]:
    """A version-1 store made by the version-1 code (see the fixture's header)."""
    con = sqlite3.connect(path)
    con.executescript((FIXTURES / "v1.sql").read_text())
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()
    return [
        decode_report(line) for line in (FIXTURES / "v1-reports.jsonl").read_bytes().splitlines()
    ]


def key_order(report: Report) -> Report:
    """Version 1 kept no event order: its reports come back with events in key order."""
    absent = -1  # how the event key stores an absent gpu_index or code

    def key(e: Event) -> tuple:
        gpu = absent if e.gpu_index is None else e.gpu_index
        return (e.time_ns, e.kind, gpu, absent if e.code is None else e.code)

    report.events.sort(key=key)
    return report


def test_a_version_1_file_is_migrated_and_keeps_its_data(db):
    originals = v1_file(db)
    with pytest.raises(
        SinkError, match="schema version 1, this telemetryd reads 3; the aggregator"
    ):
        SqliteReader(db)
    clock = Clock(originals[0].time_ns / 1e9 + 60)
    new = full_report(originals[-1].time_ns + 10**9, seq=43)
    run(write_all(db, [new], clock=clock))

    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone() == (3,)
    tables = {
        r[0]
        for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if not r[0].startswith("sqlite_")  # sqlite_stat1, made by PRAGMA optimize
    }
    assert tables == {"gpu", "gpu_process", "host", "event", "agent", "job", "gpu_1m", "host_1m"}
    assert ("event_boot_id_seq",) in con.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index'"
    )
    assert {"position", "details"} <= {r[1] for r in con.execute("PRAGMA table_info(event)")}
    # Through version 2 to 3: the processes of version 1's gpu rows moved to gpu_process.
    assert con.execute("SELECT count(*) FROM gpu WHERE details LIKE '%processes%'").fetchone() == (
        0,
    )
    moved = con.execute(
        "SELECT time_ns, gpu_index, slot, pid FROM gpu_process WHERE node = 'node-a'"
        " AND time_ns < ?",
        (new.time_ns,),
    )
    assert sorted(moved) == [(x.time_ns, 0, slot, pid) for x in originals if x.node == "node-a"
                             for slot, pid in enumerate((4242, 7))]  # fmt: skip
    con.close()

    with SqliteReader(db) as r:
        got = [x for page in r.reports() for x in page]
    assert got[:-1] == [key_order(x) for x in originals]
    assert got[-1] == new  # written by version 2: events in their own order
    # Opening again is a no-op, and the migrated file rolls up like a new one.
    clock.now += 3 * 86400
    run(write_all(db, [full_report(int(clock.now * 1e9), seq=44)], clock=clock))
    with SqliteReader(db) as r:
        # All in one minute: node-a's 3 GPUs (3 reports) and n1's 8 (1 report).
        assert r.counts()["gpu_1m"] == 3 + 8 and r.counts()["host_1m"] == 1
        assert r.counts()["agent"] == 5


def test_a_failed_migration_leaves_the_file_at_version_1(db, monkeypatch):
    v1_file(db)
    from exporters import sqlite_migrate

    def boom(con) -> None:
        con.execute("CREATE TABLE gpu_1m (x)")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setitem(sqlite_migrate.MIGRATIONS, 1, boom)
    s = SqliteSink(db)
    with pytest.raises(SinkError, match="cannot open: disk I/O error"):
        run(s.open())
    run(s.close())
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone() == (1,)
    assert con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'gpu_1m'").fetchone() == (
        0,
    )
    assert con.execute("SELECT count(*) FROM agent").fetchone() == (3,)
    con.close()
