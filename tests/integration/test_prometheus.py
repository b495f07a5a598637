"""Agent -> real Mosquitto -> aggregator (--listen) <- a real Prometheus scraping /metrics.

What Prometheus' query API returns must be exactly what the agent published: a witness
subscriber keeps the newest report the broker delivered, and once the agent has stopped
that report is the live value of each GPU. /readyz must follow the broker connection.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.integration.mosquitto import free_port
from tests.integration.pipeline import agent, aggregator, wait_until

pytestmark = pytest.mark.integration

MIB = 1 << 20
# DCGM name -> (report field, our unit -> DCGM's unit)
CHECKED = {
    "DCGM_FI_DEV_GPU_UTIL": ("util_gpu_pct", float),
    "DCGM_FI_DEV_POWER_USAGE": ("power_w", float),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("energy_mj", float),
    "DCGM_FI_DEV_GPU_TEMP": ("temp_c", float),
    "DCGM_FI_DEV_SM_CLOCK": ("sm_clock_mhz", float),
    "DCGM_FI_DEV_FB_USED": ("fb_used_bytes", lambda v: float(v // MIB)),
    "DCGM_FI_DEV_FB_FREE": ("fb_free_bytes", lambda v: float(v // MIB)),
}


class NewestReports:
    """A QoS 1 subscriber keeping, per node, the newest report the broker delivered."""

    def __init__(self, port: int) -> None:
        self.newest: dict[str, dict[str, Any]] = {}
        self.keys: set[tuple[str, str, int]] = set()
        self._lock = threading.Lock()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"witness-{uuid.uuid4().hex[:8]}")  # fmt: skip
        client.on_message = self._on_message
        client.on_connect = lambda c, *_: c.subscribe("telemetry/v1/+/+/report", qos=1)
        client.connect("127.0.0.1", port, keepalive=5)
        client.loop_start()
        self.client = client

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        report = json.loads(message.payload)
        with self._lock:
            self.keys.add((report["node"], report["boot_id"], report["seq"]))
            held = self.newest.get(report["node"])
            if held is None or report["time_ns"] >= held["time_ns"]:
                self.newest[report["node"]] = report

    def report(self, node: str) -> dict[str, Any]:
        with self._lock:
            return self.newest[node]

    def count(self) -> int:
        with self._lock:
            return len(self.keys)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def get(url: str) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of a GET, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_prometheus_scrapes_the_published_values(tmp_path, mosquitto, prometheus_factory):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    witness = NewestReports(mosquitto.port)
    time.sleep(0.3)
    agg = aggregator(tmp_path, mosquitto.url)
    agg.args += ["--listen", f"127.0.0.1:{port}"]
    agg.start().wait_log("consuming")
    prom = prometheus_factory([f"127.0.0.1:{port}"])
    node = agent(tmp_path, mosquitto.url, "n0", interval=0.5, gpus=2).start()
    try:
        wait_until(lambda: len(prom.query('DCGM_FI_DEV_GPU_UTIL{Hostname="n0"}')) == 2, 30,
                   "Prometheus to scrape both GPUs of n0")  # fmt: skip
        status, ready = get(base + "/readyz")
        assert status == 200, ready
        assert ready["status"] == "ready"
        assert [c["check"] for c in ready["checks"]] == [
            "broker",
            f"sink sqlite://{tmp_path / 'aggregator' / 'telemetry.db'}",
        ]
        assert all(c["ok"] for c in ready["checks"])
        status, health = get(base + "/healthz")
        assert status == 200 and health["status"] == "alive"

        assert node.stop() == 0, node.tail()  # from now on the newest report is final
        time.sleep(0.5)
        published = witness.report("n0")
        expected = {
            name: {str(g["index"]): convert(g[field]) for g in published["gpus"]}
            for name, (field, convert) in CHECKED.items()
        }
        assert all(len(values) == 2 for values in expected.values())

        def scraped() -> dict[str, dict[str, float]]:
            return {name: prom.values(f'{name}{{Hostname="n0"}}', "gpu") for name in CHECKED}

        try:
            wait_until(lambda: scraped() == expected, 30, "the published values in Prometheus")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {scraped()} != {expected}") from None
        for series in prom.query('DCGM_FI_DEV_GPU_UTIL{Hostname="n0"}'):
            labels = series["metric"]
            gpu = published["gpus"][int(labels["gpu"])]
            assert labels["UUID"] == gpu["uuid"]
            assert labels["modelName"] == gpu["name"]
            assert labels["pci_bus_id"] == gpu["pci_bus_id"]
            assert labels["device"] == f"nvidia{gpu['index']}"
            assert labels["cluster"] == "c1"
        wait_until(
            lambda: (
                prom.values("telemetryd_aggregator_reports_accepted_total", "")
                == {"": float(witness.count())}
            ),
            30,
            "telemetryd_aggregator_reports_accepted_total == reports published",
        )
        assert prom.values('telemetryd_host_memory_total_bytes{Hostname="n0"}', "Hostname") == {
            "n0": float(published["host"]["mem_total_bytes"])
        }

        mosquitto.stop()
        wait_until(lambda: get(base + "/readyz")[0] == 503, 30, "/readyz to say 503")
        status, ready = get(base + "/readyz")
        broker = next(c for c in ready["checks"] if c["check"] == "broker")
        assert ready["status"] == "not ready"
        assert broker["ok"] is False
        assert broker["reason"].startswith(f"mqtt://127.0.0.1:{mosquitto.port}: "), broker
        assert get(base + "/healthz")[0] == 200  # alive all the same
    finally:
        witness.close()
    assert agg.stop() == 0, agg.tail()
