"""Agents -> real Mosquitto -> aggregator -> real InfluxDB 1.x, with InfluxDB down for 60 s.

Loss is counted point by point: a witness keeps every report the broker delivered, the
test encodes them with the sink's own encoder to know every point (measurement, tag set,
time) that must exist, and compares that set with what InfluxDB holds at the end. Nothing
may be missing and nothing extra may appear (a duplicate point would be the same point).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from exporters.lineprotocol import Encoder
from telemetryd.model import Report, decode_report
from tests.integration.influxdb import InfluxDB
from tests.integration.pipeline import agent, aggregator, spool_files, stored, wait_until
from tests.unit.test_lineprotocol import split_line

pytestmark = pytest.mark.integration

DB = "telemetry"
OUTAGE_S = 60.0


class ReportWitness:
    """A persistent QoS 1 subscriber keeping every report the broker delivered."""

    def __init__(self, port: int) -> None:
        self.reports: dict[tuple[str, str, int], Report] = {}
        self._lock = threading.Lock()
        name = f"witness-{uuid.uuid4().hex[:8]}"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, clean_session=False)
        client.on_message = self._on_message
        client.on_connect = lambda c, *_: c.subscribe("telemetry/v1/+/+/report", 1)
        client.connect("127.0.0.1", port, keepalive=5)
        client.loop_start()
        self.client = client

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        report = decode_report(message.payload)
        with self._lock:
            self.reports[(report.node, report.boot_id, report.seq)] = report

    def seen(self) -> list[Report]:
        with self._lock:
            return list(self.reports.values())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def expected_points(reports: list[Report]) -> set[tuple[str, tuple[tuple[str, str], ...], int]]:
    points = set()
    for line in Encoder().encode(reports):
        measurement, tags, _fields, stamp = split_line(line)
        points.add((measurement, tuple(sorted(tags.items())), stamp))
    return points


def stored_points(
    server: InfluxDB, measurements: set[str]
) -> set[tuple[str, tuple[Any, ...], int]]:
    points = set()
    for measurement in measurements:
        for series in server.query(f'SELECT * FROM "{measurement}" GROUP BY *', DB):
            tags = tuple(sorted((k, v) for k, v in (series.get("tags") or {}).items() if v != ""))
            at = series["columns"].index("time")
            points |= {(measurement, tags, int(row[at])) for row in series["values"]}
    return points


def test_influxdb_down_for_a_minute_loses_nothing(tmp_path, mosquitto, influxdb) -> None:
    influxdb.create_database(DB)
    witness = ReportWitness(mosquitto.port)
    sqlite = f"sqlite://{tmp_path}/aggregator/telemetry.db"
    sinks = f"{sqlite},{influxdb.sink_url(DB)}"
    agg = aggregator(tmp_path, mosquitto.url, sinks=sinks, sink_retry_max="2", fleet_interval="1")
    agg.start().wait_log("consuming")
    agents = [agent(tmp_path, mosquitto.url, f"n{i}", interval=0.5).start() for i in range(2)]

    def agent_points() -> int:
        try:
            series = influxdb.query("SELECT count(seq) FROM agent", DB)
        except Exception:  # the server is down or restarting
            return 0
        return int(series[0]["values"][0][1]) if series else 0

    wait_until(lambda: agent_points() >= 10, 30, "the first points in InfluxDB")
    influxdb.stop()
    down_at = time.monotonic()
    wait_until(lambda: "influxdb" in agg.tail(20) and "retrying" in agg.tail(20), 30,
               "the aggregator noticing the outage")  # fmt: skip
    # A dead InfluxDB stalls neither the other sink nor the acknowledgements: SQLite keeps
    # up while InfluxDB's own queue (the WAL behind its cursor) grows.
    during = len(stored(tmp_path))
    wait_until(lambda: len(stored(tmp_path)) >= during + 20, 30, "SQLite growing meanwhile")
    sinks = {s["name"]: s for s in json.loads(agg_summary(mosquitto.port))["sinks"]}
    influx_name = f"influxdb://127.0.0.1:{influxdb.port}/{DB}"
    assert sinks[influx_name]["state"] == "retrying" and sinks[influx_name]["lag_bytes"] > 0
    assert sinks[f"sqlite://{tmp_path}/aggregator/telemetry.db"]["state"] == "ok"
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
    influxdb.start()
    time.sleep(2)  # reports keep flowing after the restart too
    for a in agents:
        wait_until(lambda a=a: len(spool_files(tmp_path, a.args[a.args.index("--node") + 1])) <= 1,
                   30, "agent backlogs sent")  # fmt: skip
        assert a.stop() == 0, a.tail()
    time.sleep(0.5)
    delivered = witness.seen()
    witness.close()
    expected = expected_points(delivered)
    measurements = {m for m, _, _ in expected}

    def caught_up() -> bool:
        return stored_points(influxdb, measurements) >= expected

    wait_until(caught_up, 60, "every delivered point in InfluxDB")
    points = stored_points(influxdb, measurements)
    print(f"\n[influxdb outage {OUTAGE_S:.0f} s] reports delivered {len(delivered)}, points "
          f"expected {len(expected)}, stored {len(points & expected)}, lost "
          f"{len(expected - points)}, unexpected {len(points - expected)}")  # fmt: skip
    assert points == expected
    summary = json.loads(agg_summary(mosquitto.port))
    sink = next(s for s in summary["sinks"] if s["name"] == influx_name)
    assert sink["lines_written"] >= len(expected)  # a batch re-sent after a crash counts twice
    assert sink["lines_set_aside"] == 0 and sink["retries"] > 0
    assert agg.stop() == 0, agg.tail()


def agg_summary(port: int) -> bytes:
    """The aggregator's retained fleet summary of cluster c1."""
    got: list[bytes] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"r-{uuid.uuid4().hex[:6]}")
    client.on_message = lambda _c, _u, m: got.append(m.payload)
    client.on_connect = lambda c, *_: c.subscribe("telemetry/v1/c1/_fleet", 1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        wait_until(lambda: bool(got), 15, "the fleet summary")
        time.sleep(1.5)  # a fresh one, published after the last write
        return got[-1]
    finally:
        client.loop_stop()
        client.disconnect()
