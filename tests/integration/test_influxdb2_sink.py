"""The InfluxDB 2 sink against a STAND-IN of InfluxDB 2's write API, and beside real 1.x.

InfluxDB 2 has no server packaged for these machines: these tests talk to the strict
stand-in of the documented ``/api/v2/write`` contract in influx2_standin.py (token, org,
bucket, precision, gzip; 204, 400/422 partial, 401, 404, 413, 429 and 503 with
Retry-After), which stores what it accepts in a REAL InfluxDB 1.x. The same batch is
written through the 1.x sink into a second database of that server, and what both stored
is compared. Field type conflicts are real: the 1.x server refuses the points itself.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import time
import urllib.error
import urllib.request
import warnings
from collections import Counter
from pathlib import Path

import pytest

from exporters.base import SinkError, SinkRejected
from exporters.influxdb import InfluxV1Sink
from exporters.influxdb2 import InfluxV2Sink
from exporters.lineprotocol import Encoder
from telemetryd.config import InfluxConfig
from telemetryd.model import (
    DiskUsage,
    Event,
    Host,
    Report,
    SourceError,
    decode_report,
)
from telemetryd.urls import parse_sink_url
from tests.integration.influx2_standin import Influx2StandIn
from tests.integration.influxdb import InfluxDB
from tests.integration.mosquitto import free_port
from tests.integration.pipeline import Witness, agent, aggregator, wait_until
from tests.reports import sampled

pytestmark = pytest.mark.integration

TOKEN = "s3cr3t-t0ken=="
ORG = "fleet"
S = 1_000_000_000
T = 1_800_000_000 * S
BOOT = "0123456789abcdef0123456789abcdef"
ALL = "SELECT * FROM /.*/ GROUP BY *"


# -- fixtures and helpers --------------------------------------------------------------------
@pytest.fixture
def standin(influxdb):
    """The InfluxDB 2 stand-in (bucket "gpus" of org "fleet"), storing into real 1.x."""
    server = Influx2StandIn(influxdb, token=TOKEN, org=ORG, buckets=["gpus"]).start()
    yield server
    server.stop()


@pytest.fixture
def token_file(tmp_path) -> Path:
    path = tmp_path / "influxdb-token"
    path.write_text(TOKEN + "\n")
    return path


def config(token_file: Path, **settings) -> InfluxConfig:
    return InfluxConfig(token_file=str(token_file), auth_retry=17.0, timeout=10.0, **settings)


def v2_sink(standin: Influx2StandIn, cfg: InfluxConfig, bucket: str = "gpus", org: str = ORG):
    return InfluxV2Sink(parse_sink_url(standin.sink_url(bucket, org)), cfg)


def batch(n: int = 3) -> list[Report]:
    """``n`` sampled 8-GPU reports; the last one also carries names that need escaping."""
    out = []
    for seq in range(n):
        r = decode_report(sampled())
        r.seq, r.boot_id, r.time_ns = seq, BOOT, T + seq * 10 * S
        out.append(r)
    last = out[-1]
    last.host = Host(
        cpu_pct=12.5,
        mem_total_bytes=1 << 40,
        disks=[DiskUsage(mount="/mnt/a b,c=d\\e", total_bytes=10, used_bytes=4, free_bytes=6)],
        extra={"my plugin": {"x y=z,w": 1.5, "time": 2.0}},
    )
    last.events = [
        Event(time_ns=last.time_ns + 1, kind="xid", message='GPU "0" fell off the bus: C:\\ ü',
              gpu_index=0, code=79, severity="critical")
    ]  # fmt: skip
    last.errors = [SourceError(source="nvml", message='said "no" \\ twice')]
    return out


def lines_of(reports: list[Report]) -> list[str]:
    return Encoder().encode(reports)


def rows(server: InfluxDB, database: str) -> list[dict]:
    """Every stored point, tags merged in, in a stable order."""
    return sorted(server.points(ALL, database), key=lambda r: json.dumps(r, sort_keys=True))


def run(coro):
    return asyncio.run(coro)


async def write_once(sink, reports) -> None:
    await sink.open()
    try:
        await sink.write(reports)
    finally:
        await sink.close()


def split_unescaped(text: str, sep: str) -> list[str]:
    """``text`` split at each ``sep`` that no backslash escapes."""
    parts, start, escaped = [], 0, False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == sep:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def tag_keys(line: str) -> list[str]:
    """The tag keys of a line, in the order written."""
    series = split_unescaped(line, " ")[0]
    return [part.split("=", 1)[0] for part in split_unescaped(series, ",")[1:]]


# -- the request ---------------------------------------------------------------------------
def test_request_follows_the_documented_contract(standin, influxdb, token_file):
    reports = batch()
    expected = lines_of(reports)
    run(write_once(v2_sink(standin, config(token_file)), reports))

    ping = standin.requests()[0]
    assert (ping.method, ping.path, ping.status) == ("GET", "/ping", 204)
    [write] = standin.writes()
    assert write.status == 204
    assert write.headers["authorization"] == f"Token {TOKEN}"
    assert write.query == {"org": ORG, "bucket": "gpus", "precision": "ns"}
    # influxdb-client's generated WriteService sets "text/plain" whatever the caller asks.
    assert write.headers["content-type"].split(";")[0] == "text/plain"
    assert write.headers["content-encoding"] == "gzip"
    assert write.body[:3] == b"\x1f\x8b\x08"  # gzip, deflate
    assert write.body[8] == 4  # XFL 4: compressed at the fastest level
    assert gzip.decompress(write.body).decode() == "\n".join(expected) + "\n"
    assert write.lines == expected
    for line in expected:
        keys = tag_keys(line)
        assert keys == sorted(keys), line  # InfluxDB's advice: tags sorted by key
        assert len(line.rsplit(" ", 1)[1]) == 19, line  # nanosecond timestamps
    assert len(rows(influxdb, "gpus")) == len(expected)


def test_without_gzip_the_body_is_plain(standin, token_file):
    reports = batch(1)
    run(write_once(v2_sink(standin, config(token_file, gzip=False)), reports))
    [write] = standin.writes()
    assert "content-encoding" not in write.headers
    assert write.body.decode() == "\n".join(lines_of(reports)) + "\n"
    assert write.status == 204


def test_same_points_as_the_1x_sink_writes(standin, influxdb, token_file):
    reports = batch()
    influxdb.create_database("v1")
    cfg = config(token_file)
    run(write_once(v2_sink(standin, cfg), reports))
    run(write_once(InfluxV1Sink(parse_sink_url(influxdb.sink_url("v1")), cfg), reports))
    through_v2, through_v1 = rows(influxdb, "gpus"), rows(influxdb, "v1")
    assert len(through_v2) == len(lines_of(reports))
    assert through_v2 == through_v1
    disk = [r for r in through_v2 if r["_measurement"] == "host_disk"]
    assert [d["mount"] for d in disk] == ["/mnt/a b,c=d\\e"]
    [event] = [r for r in through_v2 if r["_measurement"] == "event"]
    assert event["message"] == 'GPU "0" fell off the bus: C:\\ ü'


# -- refused lines -------------------------------------------------------------------------
def test_field_type_conflict_sets_the_refused_lines_aside_and_stores_the_rest(
    standin, influxdb, token_file
):
    # A real conflict: temp_c of "gpu" already holds a string in this shard.
    influxdb.write("gpus", f'gpu,cluster=other,node=other temp_c="hot" {T}')
    reports = batch()
    sent = lines_of(reports)
    refused = [line for line in sent if line.startswith("gpu,") and "temp_c=" in line]
    assert len(refused) == 24
    sink = v2_sink(standin, config(token_file))
    with pytest.raises(SinkRejected) as caught:
        run(write_once(sink, reports))
    assert sorted(line for line, _ in caught.value.lines) == sorted(s.encode() for s in refused)
    conflict = (
        'field type conflict: input field "temp_c" on measurement "gpu" is type float, '
        "already exists as type string dropped="
    )
    for _, why in caught.value.lines:
        assert why.startswith("422: failure writing points to database: partial write: ")
        assert conflict in why
    assert {r.status for r in standin.writes()} == {204, 422}
    stored = Counter(r["_measurement"] for r in rows(influxdb, "gpus"))
    wanted = Counter(line.split(",", 1)[0] for line in sent if line not in refused)
    wanted["gpu"] += 1  # the conflicting point written above
    assert stored == wanted
    assert sink.line_stats.lines_set_aside == 24
    assert sink.line_stats.lines_written == len(sent) - 24


# -- credentials and bucket ------------------------------------------------------------------
def test_wrong_token_is_retried_slowly_and_a_fixed_token_file_is_used(
    standin, influxdb, token_file
):
    token_file.write_text("not-the-token\n")
    reports = batch()
    sink = v2_sink(standin, config(token_file))

    async def scenario() -> SinkError:
        await sink.open()
        try:
            with pytest.raises(SinkError) as refused:
                await sink.write(reports)
            token_file.write_text(TOKEN + "\n")  # the operator fixes the file
            await sink.write(reports)  # the runner's retry, without a restart
            return refused.value
        finally:
            await sink.close()

    error = run(scenario())
    message = str(error)
    assert "\n" not in message
    assert "401" in message and "token" in message and "unauthorized access" in message
    assert "not-the-token" not in message and TOKEN not in message
    assert error.retry_after == 17.0
    first, second = standin.writes()
    assert (first.status, first.headers["authorization"]) == (401, "Token not-the-token")
    assert (second.status, second.headers["authorization"]) == (204, f"Token {TOKEN}")
    assert len(rows(influxdb, "gpus")) == len(lines_of(reports))


def test_missing_token_file_is_one_clear_line(standin, tmp_path):
    sink = v2_sink(standin, config(tmp_path / "nope"))
    with pytest.raises(SinkError) as caught:
        run(write_once(sink, batch(1)))
    assert "cannot read the token file" in str(caught.value)
    assert str(tmp_path / "nope") in str(caught.value)
    assert caught.value.retry_after == 17.0


@pytest.mark.parametrize(
    ("bucket", "org", "server_says"),
    [
        ("later", ORG, 'bucket "later" not found'),
        ("gpus", "other-org", 'organization name "other-org" not found'),
    ],
)
def test_unknown_bucket_or_org_is_retried_slowly_until_it_exists(
    standin, influxdb, token_file, bucket, org, server_says
):
    reports = batch(1)
    sink = v2_sink(standin, config(token_file), bucket=bucket, org=org)

    async def scenario() -> SinkError:
        await sink.open()
        try:
            with pytest.raises(SinkError) as missing:
                await sink.write(reports)
            if bucket == "later":
                standin.add_bucket("later")  # the operator creates it
            else:
                standin.org = org
            await sink.write(reports)
            return missing.value
        finally:
            await sink.close()

    error = run(scenario())
    assert "\n" not in str(error)
    assert f"404, bucket {bucket!r} of org {org!r} does not exist" in str(error)
    assert server_says in str(error)
    assert error.retry_after == 17.0
    assert [r.status for r in standin.writes()] == [404, 204]
    assert len(rows(influxdb, bucket)) == len(lines_of(reports))


def test_refused_token_then_server_gone_then_back_still_writes(standin, influxdb, token_file):
    # After a 401 the sink opens again before the retry; if that open fails too (server
    # gone), the next retry opens again: the runner itself never reopens a sink.
    token_file.write_text("stale\n")
    reports = batch(1)
    sink = v2_sink(standin, config(token_file))

    async def scenario() -> list[SinkError]:
        errors = []
        await sink.open()
        try:
            for step in ("refused", "gone"):
                with pytest.raises(SinkError) as failed:
                    await sink.write(reports)
                errors.append(failed.value)
                if step == "refused":
                    token_file.write_text(TOKEN + "\n")
                    standin.stop()
            standin.start()
            await sink.write(reports)
            return errors
        finally:
            await sink.close()

    refused, gone = run(scenario())
    assert "401" in str(refused)
    assert f"cannot connect to 127.0.0.1:{standin.port}" in str(gone)
    assert [r.status for r in standin.writes()] == [401, 204]
    assert len(rows(influxdb, "gpus")) == len(lines_of(reports))


def test_1x_sink_takes_a_fixed_password_file_without_a_restart(influxdb_factory, tmp_path):
    # The same fix in the 1.x sink, against a real 1.x with authentication on.
    server = influxdb_factory(auth=True)
    server.create_admin("admin", "right")
    server.create_database("v1")
    password = tmp_path / "password"
    password.write_text("wrong\n")
    cfg = InfluxConfig(password_file=str(password), auth_retry=17.0, timeout=10.0)
    sink = InfluxV1Sink(parse_sink_url(server.sink_url("v1", user="admin")), cfg)
    reports = batch(1)

    async def scenario() -> SinkError:
        await sink.open()
        try:
            with pytest.raises(SinkError) as refused:
                await sink.write(reports)
            password.write_text("right\n")
            await sink.write(reports)
            return refused.value
        finally:
            await sink.close()

    error = run(scenario())
    assert "401" in str(error) and "password" in str(error) and "\n" not in str(error)
    assert "wrong" not in str(error)
    assert error.retry_after == 17.0
    assert len(rows(server, "v1")) == len(lines_of(reports))


@pytest.mark.parametrize("kind", ["influxdb2", "influxdb"])
def test_a_failed_open_leaves_no_connection_pool_behind(token_file, kind):
    # The runner retries open() and may stop without ever calling close().
    port = free_port()
    url = f"{kind}://127.0.0.1:{port}" + (f"?org={ORG}&bucket=b" if kind == "influxdb2" else "/db")
    cls = InfluxV2Sink if kind == "influxdb2" else InfluxV1Sink
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sink = cls(parse_sink_url(url), config(token_file))
        for _ in range(2):
            with pytest.raises(SinkError, match=f"cannot connect to 127.0.0.1:{port}"):
                run(sink.open())
        del sink
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


# -- size, overload, resume ----------------------------------------------------------------
def test_413_splits_the_batch_and_stores_all_of_it(standin, influxdb, token_file):
    standin.max_lines = 10
    reports = batch()
    sent = lines_of(reports)
    sink = v2_sink(standin, config(token_file))
    run(write_once(sink, reports))
    written = [line for r in standin.writes(204) for line in r.lines]
    assert Counter(written) == Counter(sent)  # each line once: a 413 stores nothing
    assert all(len(r.lines) <= 10 for r in standin.writes(204))
    assert standin.writes(413)
    assert len(rows(influxdb, "gpus")) == len(sent)
    assert sink.line_stats.lines_written == len(sent)


@pytest.mark.parametrize(
    ("status", "header", "retry"),
    [(429, "1", 1.0), (503, "7", 7.0), (503, None, None), (503, "in a while", None)],
)
def test_overload_honours_retry_after_then_writes_without_duplicates(
    standin, influxdb, token_file, status, header, retry
):
    reports = batch()
    sink = v2_sink(standin, config(token_file))
    standin.fail(status, retry_after=header)

    async def scenario() -> SinkError:
        await sink.open()
        try:
            with pytest.raises(SinkError) as busy:
                await sink.write(reports)
            await sink.write(reports)
            await sink.write(reports)  # the same batch again (a restart): the same points
            return busy.value
        finally:
            await sink.close()

    error = run(scenario())
    assert error.retry_after == retry
    assert str(error).startswith(f"{sink.name}: {status} ")
    assert [r.status for r in standin.writes()] == [status, 204, 204]
    assert len(rows(influxdb, "gpus")) == len(lines_of(reports))  # one point per line


def test_interrupted_batch_resumes_without_resending_what_was_written(
    standin, influxdb, token_file
):
    reports = batch()
    sent = lines_of(reports)
    chunks = [sent[i : i + 10] for i in range(0, len(sent), 10)]
    assert len(chunks) >= 5
    # One request at a time, so the order below is the order they were sent in (the
    # parallel case is tests/unit/test_influx_write.py's).
    sink = v2_sink(standin, config(token_file, batch_lines=10, parallel=1))
    standin.fail(503, after=2, retry_after="2")

    async def scenario() -> SinkError:
        await sink.open()
        try:
            with pytest.raises(SinkError) as busy:
                await sink.write(reports)
            await sink.write(reports)
            return busy.value
        finally:
            await sink.close()

    error = run(scenario())
    assert error.retry_after == 2.0
    assert standin.planned() == 0
    writes = standin.writes()
    assert [r.status for r in writes] == [204, 204, 503] + [204] * (len(chunks) - 2)
    assert [r.lines for r in standin.writes(204)] == chunks  # each request once, in order
    assert writes[2].lines == chunks[2] == writes[3].lines  # resumed at the failed request
    assert len(rows(influxdb, "gpus")) == len(sent)
    assert sink.line_stats.lines_written == len(sent)
    assert sink.line_stats.requests == len(chunks) + 1


def test_unreachable_server_is_a_sinkerror_naming_the_connection(standin, token_file):
    port = free_port()
    cfg = config(token_file)
    dead = InfluxV2Sink(parse_sink_url(f"influxdb2://127.0.0.1:{port}?org={ORG}&bucket=b"), cfg)
    with pytest.raises(SinkError) as caught:
        run(write_once(dead, batch(1)))
    message = str(caught.value)
    assert f"cannot connect to 127.0.0.1:{port}" in message, message
    assert "\n" not in message and caught.value.retry_after is None

    # Gone between the ping and the write, then back: the batch goes in.
    reports = batch(1)
    sink = v2_sink(standin, cfg)

    async def scenario() -> SinkError:
        await sink.open()
        try:
            standin.stop()
            with pytest.raises(SinkError) as gone:
                await sink.write(reports)
            standin.start()
            await sink.write(reports)
            return gone.value
        finally:
            await sink.close()

    error = run(scenario())
    assert f"127.0.0.1:{standin.port}" in str(error) and "\n" not in str(error)
    assert [r.status for r in standin.writes()] == [204]


# -- through the aggregator process ----------------------------------------------------------
def test_aggregator_writes_through_the_v2_sink_with_a_token_file(
    tmp_path, mosquitto, influxdb, standin
):
    """Real agent, broker and aggregator; the InfluxDB 2 side is the stand-in.

    The token file starts wrong (401, retried every second), is fixed while running, and
    then every report the broker delivered is stored; the gpu points refused for a real
    field type conflict are in the dead-letter file with InfluxDB's reason.
    """
    token = tmp_path / "token"
    token.write_text("wrong\n")
    influxdb.write("gpus", f'gpu,cluster=other,node=other power_w="high" {int(time.time() * S)}')
    witness = Witness(mosquitto.port)
    time.sleep(0.3)  # subscribed before the agent publishes
    try:
        agg = aggregator(
            tmp_path, mosquitto.url, influxdb_token_file=str(token), influxdb_auth_retry="1"
        )
        agg.args += ["--sink", standin.sink_url()]
        agg.start().wait_log("consuming")
        node = agent(tmp_path, mosquitto.url, "n1", gpus=2).start()
        wait_until(lambda: len(standin.writes(401)) >= 2, 30, "the wrong token refused")
        agg.wait_log("401 the credentials were refused; check the token")
        token.write_text(TOKEN + "\n")
        wait_until(lambda: standin.writes(204), 30, "writes with the fixed token")
        time.sleep(1)
        assert node.stop() == 0, node.tail()
        time.sleep(0.5)
        delivered = {seq for n, _, seq in witness.seen() if n == "n1"}

        def stored() -> set[int]:
            return {r["seq"] for r in influxdb.points("SELECT seq FROM agent", "gpus")}

        wait_until(lambda: delivered <= stored(), 30, "every delivered report in InfluxDB")
        assert agg.stop() == 0, agg.tail()
    finally:
        witness.close()
    seqs = sorted(stored())
    assert seqs == list(range(len(seqs))) and len(seqs) >= 5
    assert all(r.headers["authorization"] == f"Token {TOKEN}" for r in standin.writes(204))
    letters_file = tmp_path / "aggregator" / "deadletter.jsonl"
    letters = [json.loads(x) for x in letters_file.read_text().splitlines()]
    gpu = [d for d in letters if d["payload"].startswith("gpu,")]
    assert all(d["reason"] == "store_rejected" for d in gpu)
    assert all("field type conflict" in d["detail"] and "power_w" in d["detail"] for d in gpu)
    times = {int(d["payload"].rsplit(" ", 1)[1]) for d in gpu}
    agent_times = {r["time"] for r in influxdb.points("SELECT seq FROM agent", "gpus")}
    assert times == agent_times  # each report's gpu points set aside, nothing else lost
    assert not influxdb.points("SELECT power_w FROM gpu WHERE node = 'n1'", "gpus")


# -- the stand-in itself is strict -----------------------------------------------------------
UNAUTHORIZED = {"code": "unauthorized", "message": "unauthorized access"}


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(
    ("query", "headers", "status", "answer"),
    [
        ("org=fleet&bucket=gpus", {}, 401, UNAUTHORIZED),
        ("org=fleet&bucket=gpus", {"Authorization": f"Bearer {TOKEN}"}, 401, None),
        ("org=fleet&bucket=gpus&precision=ms", {}, 400, None),
        ("org=fleet", {}, 404, {"code": "not found", "message": "bucket not found"}),
        ("org=fleet&bucket=x", {}, 404, {"code": "not found", "message": 'bucket "x" not found'}),
        ("org=acme&bucket=gpus", {}, 404, None),
        ("bucket=gpus", {}, 400, None),
        ("org=fleet&bucket=gpus", {"Content-Encoding": "gzip"}, 400, None),
        ("org=fleet&bucket=gpus", {"Content-Type": "application/json"}, 400, None),
        ("org=fleet&bucket=gpus&precision=ns", {}, 204, None),
    ],
)  # fmt: skip
def test_the_standin_refuses_what_influxdb2_refuses(standin, query, headers, status, answer):
    sent = {"Authorization": f"Token {TOKEN}", "Content-Type": "text/plain; charset=utf-8"}
    if "Authorization" in headers or (status == 401 and not headers):
        sent.pop("Authorization")
    sent.update(headers)
    got, body = _post(f"{standin.url()}/api/v2/write?{query}", b"m v=1i 1\n", sent)
    assert got == status, body
    if answer is not None:
        assert body == answer
    if status != 204:
        assert set(body) == {"code", "message"}


def test_https_with_the_sites_own_ca(influxdb, certs, token_file):
    """``influxdb2s://`` to a server whose certificate a private CA signed (ca_file)."""
    server = Influx2StandIn(influxdb, token=TOKEN, org=ORG, buckets=["gpus"],
                            tls=certs.server).start()  # fmt: skip
    try:
        assert server.sink_url().startswith("influxdb2s://")
        trusted = v2_sink(server, config(token_file, ca_file=str(certs.ca_file)))
        run(write_once(trusted, batch(1)))
        assert len(rows(influxdb, "gpus")) == len(lines_of(batch(1)))
        untrusted = v2_sink(server, config(token_file))
        with pytest.raises(SinkError) as refused:
            run(write_once(untrusted, batch(1)))
        assert "certificate verify failed" in str(refused.value), refused.value
    finally:
        server.stop()
