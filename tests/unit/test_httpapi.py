"""The aggregator's HTTP endpoints over a real aggregator object (WAL, SQLite sink) and HTTP.

No broker here: connection state is set by hand, as the MQTT loop sets it; the end-to-end
test with Mosquitto and Prometheus is tests/integration/test_prometheus.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporters.http import HttpClient
from exporters.prometheus import CONTENT_TYPE
from telemetryd import __version__
from telemetryd.aggregator import Aggregator, make_sink
from telemetryd.config import AggregatorConfig
from telemetryd.connect import mqtt_settings
from telemetryd.deadletter import DeadLetters
from telemetryd.errors import TelemetrydError
from telemetryd.fleet import Fleet
from telemetryd.httpapi import HttpApi
from telemetryd.model import decode_report
from telemetryd.wal import Wal
from tests.integration.mosquitto import free_port
from tests.reports import sampled


@pytest.fixture
def aggregator(tmp_path: Path) -> Iterator[Aggregator]:
    cfg = AggregatorConfig(broker="mqtt://127.0.0.1:1883", listen="127.0.0.1:9400")
    wal = Wal(tmp_path / "wal", max_bytes=cfg.wal_max_bytes)
    wal.open()
    url = f"sqlite://{tmp_path / 'telemetry.db'}"
    agg = Aggregator(
        cfg, wal=wal, fleet=Fleet(silent_after=3.0),
        deadletters=DeadLetters(tmp_path / "deadletter.jsonl", max_bytes=1 << 20),
        sinks=[(url, make_sink(url, cfg))],
        settings=mqtt_settings(cfg, client_id="test", env={}), directory=tmp_path,
    )  # fmt: skip
    yield agg
    wal.close()


def body(reply_body: bytes) -> dict[str, object]:
    data = json.loads(reply_body)
    assert isinstance(data, dict)
    return data


def test_healthz_says_alive_with_uptime_and_version(aggregator: Aggregator) -> None:
    api = HttpApi(aggregator, "127.0.0.1:9400")
    reply = asyncio.run(api.healthz())
    assert reply.status == 200
    assert reply.content_type == "application/json"
    data = body(reply.body)
    assert data["status"] == "alive"
    assert data["version"] == __version__
    assert isinstance(data["uptime_s"], float) and data["uptime_s"] >= 0


def test_readyz_names_every_check_and_why(aggregator: Aggregator) -> None:
    api = HttpApi(aggregator, "127.0.0.1:9400")
    runner = aggregator.runners[0]
    sink = f"sink {runner.state.name}"

    reply = asyncio.run(api.readyz())  # still replaying the WAL
    assert reply.status == 503
    assert body(reply.body) == {"status": "not ready", "checks": [
        {"check": "recovery", "ok": False, "reason": "replaying the write-ahead log"},
        {"check": "broker", "ok": False, "reason": "mqtt://127.0.0.1:1883: not connected yet"},
        {"check": sink, "ok": False, "reason": "not opened yet"},
    ]}  # fmt: skip

    api.ready()
    aggregator.mqtt_error = "cannot connect to 127.0.0.1:1883: Connection refused"
    runner.state.state = "retrying"
    runner.state.last_error = "database is locked"
    reply = asyncio.run(api.readyz())
    assert reply.status == 503
    assert body(reply.body)["checks"] == [
        {"check": "broker", "ok": False,
         "reason": "mqtt://127.0.0.1:1883: cannot connect to 127.0.0.1:1883: Connection refused"},
        {"check": sink, "ok": False, "reason": "database is locked"},
    ]  # fmt: skip

    aggregator.connected.set()
    runner.state.state = "ok"
    reply = asyncio.run(api.readyz())
    assert reply.status == 200
    assert body(reply.body) == {"status": "ready", "checks": [
        {"check": "broker", "ok": True, "reason": "connected to mqtt://127.0.0.1:1883"},
        {"check": sink, "ok": True, "reason": "writing"},
    ]}  # fmt: skip

    runner.state.state = "retrying"  # one sink down is enough to be not ready
    assert asyncio.run(api.readyz()).status == 503


def test_metrics_over_http(aggregator: Aggregator) -> None:
    port = free_port()
    report = decode_report(sampled())

    async def main() -> list[tuple[int, str, str]]:
        api = HttpApi(aggregator, f"127.0.0.1:{port}")
        await api.start()
        client = HttpClient(timeout_s=10)
        try:
            url = f"http://127.0.0.1:{port}"
            answers = []
            reply = await client.request("GET", url + "/metrics")  # during the WAL replay
            answers.append((reply.status, reply.content_type, reply.body.decode()))
            aggregator.metrics = api.ready()
            aggregator.fleet.claim(report)
            aggregator.fleet.on_report(report, time.time_ns())
            aggregator.metrics.observe(report, time.time_ns())
            for path in ("/metrics", "/healthz", "/readyz", "/nothing"):
                reply = await client.request("GET", url + path)
                answers.append((reply.status, reply.content_type, reply.body.decode()))
            return answers
        finally:
            await client.close()
            await api.stop()

    recovering, metrics, healthz, readyz, missing = asyncio.run(main())
    assert recovering[0] == 503 and "recovering" in recovering[2]
    assert metrics[:2] == (200, CONTENT_TYPE)
    assert 'DCGM_FI_DEV_GPU_UTIL{Hostname="n1"' in metrics[2]
    assert "telemetryd_aggregator_reports_accepted_total 1.0" in metrics[2]
    assert 'telemetryd_nodes{cluster="c1",state="online"} 1.0' in metrics[2]
    assert 'telemetryd_gpus{cluster="c1",state="ok"} 8.0' in metrics[2]
    assert healthz[:2] == (200, "application/json")
    assert readyz[0] == 503  # no broker in this test
    assert missing[0] == 404 and "/metrics" in missing[2]


def test_busy_address_is_one_line(aggregator: Aggregator) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        api = HttpApi(aggregator, f"127.0.0.1:{port}")
        with pytest.raises(TelemetrydError) as info:
            asyncio.run(api.start())
    assert str(info.value) == (
        f"aggregator.listen: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
