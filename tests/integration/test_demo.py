"""``telemetryd demo`` end to end: the real command, its own broker, aggregator and agents.

One run follows the whole scenario (60 s, the command CI runs); the others are short: a
Ctrl-C in the middle, and the demo on a real Mosquitto instead of its embedded broker.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.integration.demo_process import Demo, children, listening
from tests.integration.mosquitto import Mosquitto

pytestmark = pytest.mark.integration

EXPECTED = [
    ("GpuThermalThrottling", "sim-02 gpu 3"),
    ("GpuFellOffBus", "sim-01 gpu 5"),
    ("NodeSilent", "sim-03"),
]


def test_the_headless_demo_fires_and_resolves_every_alert_of_its_scenario() -> None:
    demo = Demo("--headless", "--duration", "60")
    try:
        code = demo.finish(timeout=120)
    finally:
        demo.kill()
    out = demo.text()
    assert code == 0, out
    for name, where in EXPECTED:
        fired = [line for line in demo.lines if "FIRING   " in line and f"{name} {where}" in line]
        resolved = [line for line in demo.lines if "RESOLVED" in line and f"{name} {where}" in line]
        assert len(fired) == 1 and len(resolved) == 1, f"{name} {where}:\n{out}"
        assert demo.lines.index(fired[0]) < demo.lines.index(resolved[0])
    assert "verdict: PASS, every expected alert fired and resolved" in out
    # The silent node's held reports arrived after it came back: nothing is missing.
    assert "4 nodes (4 online), 32 GPUs" in out and " 0 missing" in out
    assert "Traceback" not in out and "ERROR" not in out
    assert not Path(demo.header("state")).exists()
    assert not listening(demo.header("broker")) and not listening(demo.header("metrics"))


def test_ctrl_c_stops_everything_cleanly_with_the_summary_so_far() -> None:
    demo = Demo("--headless", "--duration", "600")
    try:
        demo.wait_line(r"FIRING", 20)  # the first alert, or 20 s: either way mid-scenario
        broker, metrics, state = demo.header("broker"), demo.header("metrics"), demo.header("state")
        assert listening(broker) and listening(metrics) and Path(state).is_dir()
        assert children(demo.proc.pid) == []  # one process: nothing else to leave behind
        demo.interrupt()
        code = demo.finish(timeout=10)
    finally:
        demo.kill()
    out = demo.text()
    assert code == 130, out
    assert "summary (interrupted):" in out and "verdict: none, interrupted" in out
    assert "Traceback" not in out
    assert not listening(broker) and not listening(metrics)
    assert not Path(state).exists()


def test_the_demo_runs_on_an_existing_broker(mosquitto: Mosquitto) -> None:
    reports: set[str] = set()
    lock = threading.Lock()

    def on_message(_c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        if message.topic.endswith("/report"):
            with lock:
                reports.add(json.loads(message.payload)["node"])

    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"w-{uuid.uuid4().hex[:8]}")
    watcher.on_message = on_message
    watcher.on_connect = lambda c, *_: c.subscribe("telemetry/v1/demo/+/report", 1)
    watcher.connect("127.0.0.1", mosquitto.port, keepalive=5)
    watcher.loop_start()
    demo = Demo("--headless", "--duration", "12", "--broker", mosquitto.url)
    try:
        code = demo.finish(timeout=60)
    finally:
        demo.kill()
        watcher.loop_stop()
        watcher.disconnect()
    out = demo.text()
    assert f"broker   {mosquitto.url} (existing)" in out
    assert reports == {"sim-00", "sim-01", "sim-02", "sim-03"}, out
    # The XID 79 at +8 s pages through Mosquitto too; 12 s is too short to see it resolve,
    # so the verdict fails (exit 1) and says what is still firing.
    assert any("FIRING" in line and "GpuFellOffBus sim-01 gpu 5" in line for line in demo.lines)
    assert code == 1, out
    assert "STILL FIRING" in out and "verdict: FAIL" in out
    assert not listening(demo.header("metrics"))
    assert listening(mosquitto.url)  # someone else's broker is left running
