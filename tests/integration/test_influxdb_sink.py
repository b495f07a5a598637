"""The InfluxDB 1.x sink against a real InfluxDB 1.x: exact values, idempotence, refusals.

Values are checked against the report objects themselves (not against the encoder's
text), so a wrong escape, type or unit shows up as a wrong value read back by InfluxQL.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from exporters.base import SinkError, SinkRejected
from exporters.influxdb import InfluxV1Sink
from telemetryd.config import AggregatorConfig, InfluxConfig
from telemetryd.fields import split_fields
from telemetryd.model import Report, decode_report
from telemetryd.urls import parse_sink_url
from tests.integration.influxdb import InfluxDB
from tests.reports import sampled
from tests.richreport import T0, rich

pytestmark = pytest.mark.integration

DB = "telemetry"


def sink_for(server: InfluxDB, database: str = DB, *, user: str | None = None,
             **options: Any) -> InfluxV1Sink:  # fmt: skip
    cfg = AggregatorConfig(influxdb=InfluxConfig(**options))
    return InfluxV1Sink(parse_sink_url(server.sink_url(database, user=user)), cfg.influxdb)


async def write(sink: InfluxV1Sink, *batches: list[Report]) -> list[SinkRejected]:
    refused: list[SinkRejected] = []
    await sink.open()
    try:
        for batch in batches:
            try:
                await sink.write(batch)
            except SinkRejected as exc:
                refused.append(exc)
    finally:
        await sink.close()
    return refused


def scalars(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The present scalar values of a model object, as InfluxDB should hold them."""
    fields = split_fields(type(obj), skip=set(skip))
    values = dict(zip(fields.names(), fields.getter()(obj), strict=True))
    too_big = 1 << 63  # not representable in InfluxDB: left out by the encoder
    return {
        k: v for k, v in values.items() if v is not None and not (type(v) is int and v >= too_big)
    }


def one(server: InfluxDB, query: str) -> dict[str, Any]:
    (row,) = server.points(query, DB)
    return row


def test_every_value_reads_back_exactly(influxdb: InfluxDB) -> None:
    influxdb.create_database(DB)
    report = rich()
    sim = decode_report(sampled())
    assert asyncio.run(write(sink_for(influxdb), [report, sim])) == []

    failed, mig_gpu = report.gpus[1], report.gpus[0]
    row = one(influxdb, "SELECT * FROM gpu WHERE node = 'rich-01' AND gpu = '0' GROUP BY *")
    # Spaces, comma, equals, quotes, ñ; a backslash before a space is left out (escape_key).
    assert row["model"] == mig_gpu.name.replace("\\ ", " ")
    assert row["uuid"] == mig_gpu.uuid and row["cluster"] == "site-a"
    assert row["time"] == T0
    for key, value in scalars(mig_gpu, ("index", "uuid", "name")).items():
        assert row[key] == value, key
    assert row.get("ecc_sbe_aggregate") is None  # 2**64-1 cannot be stored: left out, not wrapped
    assert row["clock_event_reasons"] == "sw_power_cap,hw_slowdown"
    assert row["clock_event_mask"] == 12
    assert row.get("fan_pct") is None  # absent stays absent

    row = one(influxdb, "SELECT * FROM gpu WHERE node = 'rich-01' AND gpu = '1' GROUP BY *")
    assert failed.error is not None
    assert (row["error_code"], row["error_message"]) == (failed.error.code, failed.error.message)

    migs = influxdb.points("SELECT * FROM gpu_mig GROUP BY *", DB)
    assert sorted((r["uuid"], r["gi"], r["profile"]) for r in migs) == [
        ("MIG-aaaa-0001", "1", "3g.20gb"), ("MIG-aaaa-0002", "2", "3g.20gb"),
    ]  # fmt: skip
    for r in migs:
        mig = next(m for m in mig_gpu.mig if m.uuid == r["uuid"])
        assert {k: r[k] for k in scalars(mig, ("uuid", "gi_id", "ci_id", "name"))} == scalars(
            mig, ("uuid", "gi_id", "ci_id", "name")
        )
        assert r["gpu_uuid"] == mig_gpu.uuid

    # pids are fields; the slot tag keeps two processes of one GPU apart
    procs = influxdb.points("SELECT * FROM gpu_process WHERE node = 'rich-01' GROUP BY *", DB)
    assert sorted((r["slot"], r["pid"], r["used_memory_bytes"]) for r in procs) == [
        ("0", 77, 1 << 20), ("1", 4242, 5 << 30),
    ]  # fmt: skip

    host = report.host
    assert host is not None
    row = one(influxdb, "SELECT * FROM host WHERE node = 'rich-01' GROUP BY *")
    for key, value in scalars(host).items():
        assert row[key] == value, key
    row = one(influxdb, "SELECT * FROM host_disk WHERE node = 'rich-01' GROUP BY *")
    assert row["mount"] == "/var/lib/my data" and row["used_bytes"] == 40
    row = one(influxdb, "SELECT * FROM host_sensor WHERE node = 'rich-01' GROUP BY *")
    assert (row["label"], row["temp_c"], row["crit_c"]) == ("Package id 0", 55.0, 100.0)
    row = one(influxdb, "SELECT * FROM host_plugin WHERE node = 'rich-01' GROUP BY *")
    assert (row["inlet_temp_c"], row["time_"], row["x_hidden"]) == (24.0, 1.0, 2.0)
    cores = influxdb.points("SELECT cpu_pct FROM host_cpu WHERE node = 'rich-01' GROUP BY *", DB)
    assert sorted((r["cpu"], r["cpu_pct"]) for r in cores) == [("0", 10.0), ("1", 15.0)]

    events = influxdb.points("SELECT * FROM event WHERE node = 'rich-01' GROUP BY *", DB)
    xid = next(e for e in events if e["kind"] == "xid")
    assert (xid["code"], xid["gpu"], xid["severity"]) == ("79", "1", "critical")
    assert xid["time"] == report.events[0].time_ns
    assert xid["action"] == report.events[0].action
    row = one(influxdb, "SELECT * FROM agent WHERE node = 'rich-01' GROUP BY *")
    assert (row["seq"], row["boot_id"], row["errors"]) == (0, report.boot_id, 1)
    assert row["error_message"] == "hwmon: nct6775: read timed out"

    # The simulated node: every GPU, with its values.
    rows = influxdb.points(f"SELECT * FROM gpu WHERE node = '{sim.node}' GROUP BY *", DB)
    assert len(rows) == len(sim.gpus) == 8
    for gpu in sim.gpus:
        row = next(r for r in rows if r["gpu"] == str(gpu.index))
        for key, value in scalars(gpu, ("index", "uuid", "name")).items():
            assert row[key] == value, (gpu.index, key)


def test_owners_processes_and_ended_jobs_read_back(influxdb: InfluxDB) -> None:
    """Issue 7's fields: who holds each GPU, process attribution, one point per ended job."""
    from tests.unit.test_lineprotocol import attributed

    influxdb.create_database(DB)
    report = attributed()
    assert asyncio.run(write(sink_for(influxdb), [report, report])) == []  # twice: same points

    gpus = influxdb.points("SELECT hpc_job, pod, namespace, container FROM gpu GROUP BY gpu", DB)
    assert sorted((r["gpu"], r["hpc_job"], r["pod"], r["namespace"], r["container"])
                  for r in gpus) == [("0", "1200,1234", "train-0", "ml", "main"),
                                     ("1", None, None, None, "c0ffee")]  # fmt: skip
    (proc,) = influxdb.points("SELECT * FROM gpu_process WHERE gpu = '0' GROUP BY *", DB)
    p = (report.gpus[0].processes or [])[0]
    assert {k: proc[k] for k in scalars(p, ("gi_id", "ci_id"))} == scalars(p, ("gi_id", "ci_id"))
    assert proc["command"] == 'python "train.py" --lr=0.1'

    jobs = influxdb.points("SELECT * FROM job GROUP BY *", DB)
    ended = sorted((j for j in report.jobs if j.state == "ended"), key=lambda j: j.job)
    assert [(r["slot"], r["job"], r["time"]) for r in jobs] == [
        (str(i), j.job, j.end_ns) for i, j in enumerate(ended)
    ]
    pod = jobs[1]
    assert (pod["energy_mj"], pod["energy_j"], pod["gpus"], pod["gpu_count"]) == (
        7_250_500, 7250.5, "0,2", 2,
    )  # fmt: skip
    assert (pod["kind"], pod["pod"], pod["namespace"], pod["util_mean_pct"]) == (
        "pod", "train-0", "ml", 40.25,
    )  # fmt: skip


def test_the_same_report_written_twice_is_the_same_points(influxdb: InfluxDB) -> None:
    influxdb.create_database(DB)
    batch = [rich(seq) for seq in range(3)]
    batch = [msgspec.structs.replace(r, time_ns=T0 + r.seq * 10**9) for r in batch]
    asyncio.run(write(sink_for(influxdb), batch))
    before = influxdb.query("SELECT count(*) FROM /.*/", DB)
    asyncio.run(write(sink_for(influxdb), batch, batch[1:]))  # a retry, and a redelivery
    after = influxdb.query("SELECT count(*) FROM /.*/", DB)
    assert before == after
    (series,) = influxdb.query("SELECT count(seq) FROM agent", DB)
    assert series["values"][0][1] == 3


def test_a_field_type_conflict_is_set_aside_with_influxdbs_reason(influxdb: InfluxDB) -> None:
    influxdb.create_database(DB)
    # Someone wrote power_w as text into this shard: InfluxDB now refuses float power_w.
    influxdb.write(DB, f'gpu,node=other,cluster=x,gpu=0 power_w="high" {T0 - 10**9}\n')
    report = rich()
    sink = sink_for(influxdb, batch_lines=5)  # several requests: the refusals are bisected
    (refused,) = asyncio.run(write(sink, [report]))
    assert refused.rejected == []
    (line, why), *more = refused.lines
    assert more == []  # only the GPU line that carries power_w; the failed GPU has none
    assert line.startswith(b"gpu,cluster=site-a,gpu=0,")
    assert "field type conflict" in why and "power_w" in why
    assert sink.line_stats.lines_set_aside == 1
    stored = influxdb.points("SELECT * FROM /.*/ WHERE node = 'rich-01' GROUP BY *", DB)
    kinds = sorted({r["_measurement"] for r in stored})
    assert "gpu" in kinds and "gpu_mig" in kinds and "agent" in kinds and "event" in kinds
    gpus = influxdb.points("SELECT error_code FROM gpu WHERE node = 'rich-01' GROUP BY *", DB)
    assert [(g["gpu"], g["error_code"]) for g in gpus] == [("1", "gpu_lost")]
    total = len(sink.encoder.encode([report]))
    assert sink.line_stats.lines_written == total - 1


def test_a_body_over_the_servers_limit_is_split(influxdb_factory: Any) -> None:
    server = influxdb_factory(max_body_size=8_000)
    server.create_database(DB)
    batch = [msgspec.structs.replace(decode_report(sampled()), seq=i, time_ns=T0 + i * 10**9)
             for i in range(6)]  # fmt: skip
    sink = sink_for(server, gzip=False)
    assert asyncio.run(write(sink, batch)) == []
    (series,) = server.query("SELECT count(temp_c) FROM gpu", DB)
    assert series["values"][0][1] == 6 * 8
    assert sink.line_stats.requests > 2  # 413 answers made it split


def test_wrong_credentials_and_a_missing_database_are_clear_and_retried(
    influxdb_factory: Any, tmp_path: Any
) -> None:
    server = influxdb_factory(auth=True)
    server.create_admin("admin", "s3cret")
    server.create_database(DB)
    secret = tmp_path / "influxdb-password"
    secret.write_text("wrong\n")
    sink = sink_for(server, user="admin", password_file=str(secret), auth_retry=7)

    async def attempt() -> None:
        await sink.open()
        try:
            await sink.write([rich()])
        finally:
            await sink.close()

    with pytest.raises(SinkError) as refused:
        asyncio.run(attempt())
    assert refused.value.retry_after == 7
    assert "401" in str(refused.value) and "credentials" in str(refused.value)
    assert "s3cret" not in str(refused.value) and "wrong" not in str(refused.value)
    secret.write_text("s3cret\n")  # the operator fixes it: the same batch goes in
    asyncio.run(attempt())
    (series,) = server.query("SELECT count(seq) FROM agent", DB)
    assert series["values"][0][1] == 1

    missing = sink_for(server, "nosuchdb", user="admin", password_file=str(secret))
    with pytest.raises(SinkError) as absent:
        asyncio.run(write(missing, [rich()]))
    assert "404" in str(absent.value) and "'nosuchdb' does not exist" in str(absent.value)


def test_an_unreachable_server_is_a_retry_not_a_crash(influxdb: InfluxDB) -> None:
    influxdb.stop()
    with pytest.raises(SinkError) as down:
        asyncio.run(write(sink_for(influxdb), [rich()]))
    assert "cannot connect" in str(down.value)


def test_https_with_the_sites_own_ca(influxdb_factory: Any, certs: Any) -> None:
    """``influxdbs://`` to an InfluxDB whose certificate a private CA signed (ca_file)."""
    server = influxdb_factory(tls=certs.server)
    server.create_database(DB)
    assert server.sink_url(DB).startswith("influxdbs://")
    trusted = sink_for(server, ca_file=str(certs.ca_file))
    assert asyncio.run(write(trusted, [rich()])) == []
    (series,) = server.query("SELECT count(seq) FROM agent", DB)
    assert series["values"][0][1] == 1
    untrusted = sink_for(server)  # the system store does not know this CA
    with pytest.raises(SinkError) as refused:
        asyncio.run(write(untrusted, [rich()]))
    assert "certificate verify failed" in str(refused.value), refused.value
