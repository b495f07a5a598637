"""The pipeline at its edges: a full disk, mutual TLS with the example ACL, the embedded broker."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest

from tests.integration.mosquitto import free_port, make_password_file
from tests.integration.pipeline import (
    Service,
    Witness,
    _env,
    agent,
    aggregator,
    by_boot,
    holes,
    spool_files,
    stored,
    wait_until,
)
from tests.integration.test_broker_security import OPERATOR_PASSWORD, example_config

pytestmark = pytest.mark.integration


def _agent_row(tmp, column):
    import sqlite3

    db = sqlite3.connect(tmp / "aggregator" / "telemetry.db")
    try:
        return db.execute(
            f"SELECT {column} FROM agent WHERE node='n0' ORDER BY time_ns DESC LIMIT 1"
        ).fetchone()[0]
    finally:
        db.close()


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 96 KiB filesystem for the agent's state directory (needs root to mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    target = tmp_path / "agent-n0"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(target)], check=True)
    yield target
    subprocess.run(["umount", "-l", str(target)], check=False)


def test_full_disk_is_counted_not_a_crash(tmp_path, mosquitto, tiny_disk):
    agg = aggregator(tmp_path, mosquitto.url).start().wait_log("consuming")
    a = agent(tmp_path, mosquitto.url, "n0", interval=0.1).start()
    time.sleep(1)
    mosquitto.stop()
    time.sleep(10)  # ~100 reports of ~3.5 KB: the disk holds ~25, memory 64, the rest dropped
    assert a.alive(), a.tail()
    mosquitto.start()
    wait_until(lambda: len(spool_files(tmp_path, "n0")) <= 1, 30, "the backlog to drain")
    time.sleep(1)
    assert a.stop() == 0, a.tail()
    wait_until(lambda: _agent_row(tmp_path, "spool_errors") or False, 20, "the last report")
    (seqs,) = by_boot(stored(tmp_path)).values()
    dropped = _agent_row(tmp_path, "dropped")
    assert _agent_row(tmp_path, "spool_errors") > 0
    assert dropped > 0
    assert holes(seqs) == dropped  # even when the disk fails, every loss is counted
    assert "No space left on device" in a.tail(200)
    assert agg.stop() == 0


@pytest.fixture
def site(mosquitto_factory, certs, tmp_path):
    password_file = make_password_file(tmp_path / "passwd", {"operator": OPERATOR_PASSWORD})
    port, operator_port = free_port(), free_port()
    broker = mosquitto_factory(
        port=port,
        config=lambda b: example_config(b, certs, password_file, port, operator_port),
    )
    return broker, certs, port, operator_port


def _tls(certs, name):
    files = certs.client(name)
    return {"tls_ca_file": str(files.ca), "tls_cert_file": str(files.cert),
            "tls_key_file": str(files.key)}  # fmt: skip


def test_mutual_tls_with_the_example_acl(tmp_path, site):
    _broker, certs, port, operator_port = site
    url = f"mqtts://localhost:{port}"
    agg = aggregator(tmp_path, url, **_tls(certs, "aggregator")).start().wait_log("consuming")
    good = agent(tmp_path, url, "n0", **_tls(certs, "n0")).start()
    # A node whose certificate says n1 but which claims to be n0: the ACL refuses its
    # reports, MQTT 5 says so in the PUBACK, and the agent keeps them instead of losing them.
    liar = agent(tmp_path, url, "n0-liar", **_tls(certs, "n1"))
    liar.args[liar.args.index("--node") + 1] = "n0"
    liar.args[liar.args.index("--state-dir") + 1] = str(tmp_path / "liar")
    liar.start()
    time.sleep(4)
    wait_until(lambda: "not authorized" in liar.tail(50), 10, "the liar to be refused")
    assert list((tmp_path / "liar" / "spool").glob("*.json"))  # refused, so still spooled
    assert good.stop() == 0 and liar.stop() == 0
    keys = stored(tmp_path)
    boots = by_boot(keys)
    assert len(boots) == 1  # only the honest n0's boot
    (((node, _), seqs),) = boots.items()
    assert node == "n0" and seqs[0] == 0 and holes(seqs) == 0
    # The aggregator's identity may publish the summary; an operator (password, TLS) reads it.
    got = []
    operator = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tui")
    operator.username_pw_set("operator", OPERATOR_PASSWORD)
    operator.tls_set(ca_certs=str(certs.ca_file))
    operator.on_message = lambda _c, _u, m: got.append(json.loads(m.payload))
    operator.on_connect = lambda c, *_: c.subscribe("telemetry/v1/c1/_fleet", 1)
    operator.connect("localhost", operator_port)
    operator.loop_start()
    wait_until(lambda: bool(got), 15, "the fleet summary over TLS")
    operator.loop_stop()
    operator.disconnect()
    assert [n["node"] for n in got[-1]["nodes"]] == ["n0"]
    assert agg.stop() == 0, agg.tail()
    assert "not published" not in agg.tail(200)


def _summary(port, cluster="c1", until=lambda summary: True):
    """The newest retained fleet summary once ``until`` holds for it."""
    got = []
    topic = f"telemetry/v1/{cluster}/_fleet"

    def on_message(_c, _u, m):
        # amqtt 0.12.1 was seen handing a new subscriber retained messages of other topics
        # (the nodes' status): keep what was asked for.
        if m.topic == topic:
            got.append(json.loads(m.payload))

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="reader")
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(topic, 1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    wait_until(lambda: bool(got) and until(got[-1]), 15, "the expected fleet summary")
    client.loop_stop()
    client.disconnect()
    return got[-1]


def test_whole_pipeline_through_the_embedded_broker(tmp_path):
    port = free_port()
    broker = Service(
        ["broker", "--listen", f"127.0.0.1:{port}"], _env({}), tmp_path / "broker.log"
    ).start()
    wait_until(lambda: _accepts(port), 15, "the embedded broker")
    url = f"mqtt://127.0.0.1:{port}"
    agg = aggregator(tmp_path, url, fleet_interval="1").start().wait_log("consuming")
    agents = [agent(tmp_path, url, f"n{i}").start() for i in range(2)]
    time.sleep(4)
    for a in agents:
        assert a.stop() == 0, a.tail()
    wait_until(lambda: len(stored(tmp_path)) >= 30, 20, "reports stored")
    boots = by_boot(stored(tmp_path))
    assert {node for node, _ in boots} == {"n0", "n1"}
    assert all(seqs[0] == 0 and holes(seqs) == 0 for seqs in boots.values())

    def states(summary):
        return {n["node"]: n["state"] for n in summary["nodes"]}

    summary = _summary(port, until=lambda s: set(states(s).values()) == {"offline"})
    assert states(summary) == {"n0": "offline", "n1": "offline"}
    assert "MQTT 3.1.1" in agents[0].tail(100)  # amqtt speaks 3.1.1: the agent fell back
    assert agg.stop() == 0, agg.tail()
    assert broker.stop() == 0, broker.tail()


def _accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_python_m_telemetryd_broker_help():
    out = subprocess.run(
        [sys.executable, "-m", "telemetryd", "broker", "--help"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "embedded MQTT broker" in out.stdout


def test_broker_drops_are_counted_in_the_fleet_summary(tmp_path, mosquitto_factory):
    # A broker with a tiny queue for offline sessions: it will drop, and must be seen to.
    broker = mosquitto_factory(extra_config=["max_queued_messages 5"])
    url = broker.url
    agg = aggregator(tmp_path, url, fleet_interval="1").start().wait_log("consuming")
    assert agg.stop() == 0  # its session stays, queueing at most 5 for it
    witness = Witness(broker.port)
    a = agent(tmp_path, url, "n0", interval=0.1).start()
    # At least 30 reports for an offline aggregator that may queue 5 (counted, not timed:
    # a loaded machine publishes fewer per second).
    wait_until(lambda: len(witness.seen()) >= 30, 30, "30 reports published")
    assert a.stop() == 0
    agg = aggregator(tmp_path, url, fleet_interval="1").start().wait_log("consuming")
    # The broker's $SYS counter is republished every second: wait for it to reach what
    # the drops add up to, rather than take the first value that is not 0.
    summary = _summary(broker.port, until=lambda s: (s.get("broker_dropped") or 0) >= 20)
    assert summary["broker_dropped"] >= 20
    # The broker kept the first few and dropped the rest: a loss at the tail, which no
    # sequence hole can show; the broker's own counter is what makes it visible.
    (seqs,) = by_boot(stored(tmp_path)).values()
    assert len(seqs) <= 5 < summary["broker_dropped"]
    assert agg.stop() == 0
    witness.close()  # connected throughout, so its own session never dropped anything


def test_gpu_events_travel_on_their_topic_and_into_the_store(tmp_path, mosquitto):
    scenario = tmp_path / "scenario.toml"
    scenario.write_text('[[fault]]\nat = 1\ngpu = 1\nkind = "xid"\ncode = 79\nduration = 2\n')
    events = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="events")
    client.on_message = lambda _c, _u, m: events.append(json.loads(m.payload))
    client.on_connect = lambda c, *_: c.subscribe("telemetry/v1/c1/+/event", 1)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    agg = aggregator(tmp_path, mosquitto.url).start().wait_log("consuming")
    a = agent(tmp_path, mosquitto.url, "n0", sim_scenario=str(scenario)).start()
    wait_until(lambda: any(e["event"]["kind"] == "gpu_recovered" for e in events), 20,
               "the XID, the GPU lost and its recovery")  # fmt: skip
    client.loop_stop()
    client.disconnect()
    assert a.stop() == 0
    kinds = [(e["event"]["kind"], e["event"].get("code")) for e in events]
    assert kinds.count(("xid", 79)) == 1  # once, not a sticky gauge
    assert ("gpu_lost", None) in kinds and ("gpu_recovered", None) in kinds
    xid = next(e for e in events if e["event"]["kind"] == "xid")
    assert xid["node"] == "n0" and xid["event"]["gpu_index"] == 1
    assert "fallen off the bus" in xid["event"]["message"]

    import sqlite3

    def stored_events():
        db = sqlite3.connect(tmp_path / "aggregator" / "telemetry.db")
        try:
            return db.execute("SELECT kind, code, gpu_index FROM event ORDER BY time_ns").fetchall()
        finally:
            db.close()

    wait_until(lambda: ("xid", 79, 1) in stored_events(), 10, "the XID in the store")
    assert stored_events().count(("xid", 79, 1)) == 1
    assert agg.stop() == 0
