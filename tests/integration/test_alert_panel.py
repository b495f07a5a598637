"""The aggregator's panel for top, through real processes: _pending, _silences, requests.

A real Mosquitto, a real aggregator (shipped rule pack plus test rules) and agents on the
simulator; what the panel publishes is read back as a client connecting later would
(retained messages), and silences are checked in the aggregator's own silences file.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from telemetryd.alerting.silences import SilenceStore
from telemetryd.alerting.wire import request_silence_id
from tests.integration.mosquitto import Mosquitto, SyncClient
from tests.integration.pipeline import agent, aggregator, retained, stored, wait_until
from tests.integration.receiver import Receiver
from tests.integration.test_alert_scenarios import cli, named, scenario, setup, start

pytestmark = pytest.mark.integration
PENDING = "telemetry/v1/c1/_pending"
SILENCES = "telemetry/v1/c1/_silences"
REQUEST = "telemetry/v1/c1/_silences/request"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.close()


def look(mosquitto: Mosquitto, topic: str) -> dict[str, Any] | None:
    """The retained JSON on ``topic`` now (only that topic: amqtt may hand others)."""
    payload = retained(mosquitto.port, topic, 0.5).get(topic)
    return json.loads(payload) if payload else None


def listed_silences(mosquitto: Mosquitto) -> list[dict[str, Any]]:
    return list((look(mosquitto, SILENCES) or {}).get("silences", []))


def silences(tmp: Path) -> SilenceStore:
    return SilenceStore(tmp / "aggregator" / "alerts")


def publisher(mosquitto: Mosquitto) -> SyncClient:
    client = SyncClient(mosquitto.port, client_id=f"top-{uuid.uuid4().hex[:8]}")
    assert client.connect() == 0
    return client


def request(request_id: str, *matchers: str) -> bytes:
    return json.dumps({
        "schema": 1, "request_id": request_id, "matchers": list(matchers), "duration_s": 3600,
        "created_by": "alice@top", "comment": "from top",
    }).encode()  # fmt: skip


def test_a_pending_alert_is_listed_until_it_fires(tmp_path: Path, mosquitto: Mosquitto) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "slow.toml").write_text("""
[[rule]]
name = "TestSlowToFire"
expr = "temp_c > 0"
for = "8s"
severity = "warning"
annotations = { summary = "GPU {{ gpu }} is warm" }
""")
    agg = start(tmp_path, mosquitto, {"alerts_rules_dir": str(rules)})
    node = agent(tmp_path, mosquitto.url, "n1", interval=0.5, gpus=1).start()

    def ours(listing: dict[str, Any] | None) -> list[dict[str, Any]]:
        alerts = (listing or {}).get("alerts", [])
        return [a for a in alerts if a["labels"]["alertname"] == "TestSlowToFire"]

    pending: list[dict[str, Any]] = []

    def is_pending() -> bool:
        pending[:] = ours(look(mosquitto, PENDING))
        return bool(pending)

    wait_until(is_pending, 15, "the pending alert in _pending")
    fingerprint = pending[0]["fingerprint"]
    assert pending[0]["labels"]["node"] == "n1" and "fired_ns" not in pending[0]  # not fired
    # It fires: retained under _alerts/<fingerprint>, and gone from _pending.
    topic = f"telemetry/v1/c1/_alerts/{fingerprint}"
    wait_until(lambda: look(mosquitto, topic) is not None, 20, "the alert firing")
    wait_until(lambda: not ours(look(mosquitto, PENDING)), 5, "the alert gone from _pending")
    node.stop()
    agg.stop()


def test_cli_silences_show_up_and_go(tmp_path: Path, mosquitto: Mosquitto) -> None:
    agg = start(tmp_path, mosquitto, {})
    node = agent(tmp_path, mosquitto.url, "n1", interval=0.5).start()  # the fleet knows c1
    wait_until(lambda: look(mosquitto, SILENCES) is not None, 15, "an empty _silences")
    empty = look(mosquitto, SILENCES) or {}
    assert "silences" not in empty and "accepts_requests" not in empty  # none, read-only
    made = cli(tmp_path, "silence", "alertname=GpuHot", "node=n1", "--duration", "1h",
               "--author", "ops", "--comment", "fan swap")  # fmt: skip
    assert made.returncode == 0, made.stderr
    silence_id = made.stdout.strip()
    wait_until(lambda: [s["id"] for s in listed_silences(mosquitto)] == [silence_id], 5,
               "the silence in _silences")  # fmt: skip
    (listed,) = listed_silences(mosquitto)
    assert listed["matchers"] == ['alertname="GpuHot"', 'node="n1"']
    assert (listed["created_by"], listed["comment"]) == ("ops", "fan swap")
    assert listed.get("state", "active") == "active"
    gone = cli(tmp_path, "unsilence", silence_id[:8])
    assert gone.returncode == 0, gone.stderr
    wait_until(lambda: listed_silences(mosquitto) == [], 5, "the silence gone from _silences")
    node.stop()
    agg.stop()


def test_a_request_over_mqtt_silences_once(
    tmp_path: Path, mosquitto: Mosquitto, receiver: Receiver
) -> None:
    settings = {**setup(tmp_path, receiver), "alerts_mqtt_silences": "true"}
    agg = start(tmp_path, mosquitto, settings)
    assert REQUEST.replace("c1", "+") in agg.log.read_text()  # subscribed
    top = publisher(mosquitto)
    ask = request("req-7f3a9c21", 'alertname="GpuFellOffBus"', 'node="n2"')
    assert top.publish(REQUEST, ask) == 0
    assert top.publish(REQUEST, ask) == 0  # delivered twice (a retry after a lost PUBACK)
    agg.wait_log("already applied")
    (silence,) = silences(tmp_path).list()
    assert silence.id == request_silence_id("req-7f3a9c21")
    assert (silence.created_by, silence.comment) == ("alice@top", "from top")
    # The silence mutes n2's page; n1 is paged.
    faults = scenario(tmp_path, "xid", "[[fault]]\nat = 2\ngpu = 0\nkind = 'xid'\ncode = 79\n")
    nodes = [
        agent(tmp_path, mosquitto.url, n, interval=0.5, **faults).start() for n in ("n1", "n2")
    ]
    wait_until(lambda: named(receiver, "GpuFellOffBus"), 20, "n1's page")
    wait_until(lambda: [s["id"] for s in listed_silences(mosquitto)] == [silence.id], 5,
               "the silence in _silences")  # fmt: skip
    assert (look(mosquitto, SILENCES) or {})["accepts_requests"] is True
    time.sleep(3)
    for n in nodes:
        n.stop()
    agg.stop()
    top.close()
    assert [lbl["node"] for _, lbl in named(receiver, "GpuFellOffBus")] == ["n1"]
    assert len(silences(tmp_path).list()) == 1


def test_requests_change_nothing_when_not_accepted(tmp_path: Path, mosquitto: Mosquitto) -> None:
    # Accepted in an earlier run: the broker keeps that subscription in the persistent
    # session, and the next run, configured not to accept, must drop it.
    start(tmp_path, mosquitto, {"alerts_mqtt_silences": "true"}).stop()
    agg = aggregator(tmp_path, mosquitto.url).start()  # same log file: wait for its own line
    wait_until(lambda: agg.log.read_text().count("consuming") == 2, 15, "the second run")
    node = agent(tmp_path, mosquitto.url, "n1", interval=0.5).start()
    top = publisher(mosquitto)
    # MQTT 5 reason 0x10: "no matching subscribers" - the broker dropped the old one.
    assert top.publish(REQUEST, request("req-00000042", 'node="n1"')) == 0x10
    wait_until(lambda: look(mosquitto, SILENCES) is not None, 15, "_silences")
    time.sleep(2)
    node.stop()
    agg.stop()
    top.close()
    assert silences(tmp_path).list() == []
    assert (look(mosquitto, SILENCES) or {}).get("accepts_requests", False) is False
    text = agg.log.read_text()
    assert "_silences/request" not in text.split("consuming", 2)[-1], text  # not even received
    assert not (tmp_path / "aggregator" / "deadletter.jsonl").exists() or "request" not in (
        tmp_path / "aggregator" / "deadletter.jsonl").read_text()  # fmt: skip


def test_a_malformed_request_is_refused_and_consuming_goes_on(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    agg = start(tmp_path, mosquitto, {"alerts_mqtt_silences": "true"})
    node = agent(tmp_path, mosquitto.url, "n1", interval=0.2).start()
    wait_until(lambda: stored(tmp_path), 15, "the first reports stored")
    top = publisher(mosquitto)
    assert top.publish(REQUEST, b'{"request_id": "req-00000098", "matchers": [') == 0
    assert top.publish(REQUEST, request("req-00000099", 'node=~".*"')) == 0  # mutes everything
    agg.wait_log("refused")
    before = len(stored(tmp_path))
    wait_until(lambda: len(stored(tmp_path)) > before + 3, 15, "reports stored after it")
    node.stop()
    agg.stop()
    top.close()
    assert agg.proc is not None and agg.proc.returncode == 0
    lines = [ln for ln in agg.log.read_text().splitlines() if "refused" in ln]
    assert len(lines) == 2 and all(REQUEST in ln for ln in lines), lines
    assert "empty label" in lines[1]
    letters = [json.loads(x) for x in (tmp_path / "aggregator" / "deadletter.jsonl")
               .read_text().splitlines()]  # fmt: skip
    assert [(d["topic"], d["reason"]) for d in letters] == [(REQUEST, "json"), (REQUEST, "schema")]
    assert silences(tmp_path).list() == []
