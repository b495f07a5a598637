"""Agents -> real Mosquitto -> aggregator -> SQLite, through the faults an operator meets.

Every test counts loss exactly by sequence number (see pipeline.py): what the broker
delivered to an independent witness must be stored, every boot contiguous, every spool
empty. Intervals are short (0.2 s) so a few seconds make dozens of reports.
"""

from __future__ import annotations

import json
import time

import paho.mqtt.client as mqtt
import pytest

from tests.integration.pipeline import (
    Witness,
    agent,
    aggregator,
    by_boot,
    holes,
    spool_files,
    stored,
    wait_until,
)

pytestmark = pytest.mark.integration


def settle(tmp, agents, witness, timeout=60.0):
    """Let the spools drain, stop the agents, wait until the store holds what was delivered."""
    nodes = [a.args[a.args.index("--node") + 1] for a in agents]
    # While running, only the report in flight may be in a spool: the backlog is sent.
    wait_until(lambda: all(len(spool_files(tmp, n)) <= 1 for n in nodes), 30, "backlogs sent")
    for a in agents:
        assert a.stop() == 0, a.tail()
    # A clean stop sends what was sampled before it, within its 2 s shutdown budget; a
    # report whose PUBACK came too late stays spooled for the next start: never a hole,
    # only the newest report of its boot.
    leftover = {
        (n, p.stem.split("-")[1], int(p.stem.split("-")[2]))
        for n in nodes
        for p in spool_files(tmp, n)
    }
    time.sleep(0.5)  # the last PUBACKs reach the witness too
    expected = {key for key in witness.seen() if key[0] in nodes}
    try:
        wait_until(lambda: expected <= stored(tmp), timeout, "every delivered report in the store")
    except AssertionError as exc:
        have = stored(tmp)
        missing = sorted(expected - have)
        raise AssertionError(
            f"{exc}: {len(missing)} of {len(expected)} missing, e.g. {missing[:3]}"
            f"; store has {len(have)}"
        ) from None
    keys = stored(tmp)
    mine = {k for k in keys if k[0] in nodes}
    for node, boot, seq in leftover:
        newest = max((s for n, b, s in mine if (n, b) == (node, boot)), default=-1)
        # Either delivered (its PUBACK came after the stop) or the newest, not yet sent.
        assert (node, boot, seq) in mine or seq > newest, f"{node}/{boot}/{seq} is a hole"
    # Shown with pytest -s: the loss figure of each fault test, for the record.
    print(
        f"\n[loss] {len(expected)} delivered by the broker, {len(mine & expected)} stored, "
        f"lost {len(expected - keys)}, holes {sum(holes(s) for s in by_boot(mine).values())}"
    )
    return keys


def assert_no_loss(keys, nodes):
    boots = by_boot(keys)
    assert {node for node, _ in boots} == set(nodes)
    for (node, boot), seqs in boots.items():
        assert seqs[0] == 0, f"{node}/{boot} starts at {seqs[0]}"
        assert holes(seqs) == 0, f"{node}/{boot} misses {holes(seqs)} report(s)"


@pytest.fixture
def witness(mosquitto):
    w = Witness(mosquitto.port)
    time.sleep(0.3)
    yield w
    w.close()


def test_three_agents_every_report_stored(tmp_path, mosquitto, witness):
    agg = aggregator(tmp_path, mosquitto.url).start().wait_log("consuming")
    agents = [agent(tmp_path, mosquitto.url, f"n{i}").start() for i in range(3)]
    time.sleep(4)
    keys = settle(tmp_path, agents, witness)
    assert agg.stop() == 0, agg.tail()
    assert_no_loss(keys, ["n0", "n1", "n2"])
    assert all(len(s) >= 10 for s in by_boot(keys).values())
    assert keys == witness.seen()


def test_broker_restarted_mid_run(tmp_path, mosquitto, witness):
    agg = aggregator(tmp_path, mosquitto.url).start().wait_log("consuming")
    agents = [agent(tmp_path, mosquitto.url, f"n{i}").start() for i in range(2)]
    time.sleep(2)
    mosquitto.restart()
    time.sleep(3)
    keys = settle(tmp_path, agents, witness)
    assert agg.stop() == 0, agg.tail()
    assert_no_loss(keys, ["n0", "n1"])


def test_broker_down_for_30_seconds(tmp_path, mosquitto, witness):
    agg = aggregator(tmp_path, mosquitto.url).start().wait_log("consuming")
    agents = [agent(tmp_path, mosquitto.url, f"n{i}", interval=0.5).start() for i in range(2)]
    time.sleep(2)
    mosquitto.stop()
    time.sleep(30)
    assert all(len(spool_files(tmp_path, f"n{i}")) >= 40 for i in range(2))  # spooled meanwhile
    mosquitto.start()
    time.sleep(3)
    keys = settle(tmp_path, agents, witness)
    assert agg.stop() == 0, agg.tail()
    assert_no_loss(keys, ["n0", "n1"])
    assert all(len(s) >= 60 for s in by_boot(keys).values())


def test_aggregator_killed_and_restarted(tmp_path, mosquitto, witness):
    agg = aggregator(tmp_path, mosquitto.url).start().wait_log("consuming")
    agents = [agent(tmp_path, mosquitto.url, f"n{i}").start() for i in range(2)]
    time.sleep(2)
    agg.kill()
    time.sleep(2)  # reports published meanwhile wait in the aggregator's session
    agg = aggregator(tmp_path, mosquitto.url).start()
    time.sleep(2)
    keys = settle(tmp_path, agents, witness)
    assert agg.stop() == 0, agg.tail()
    assert_no_loss(keys, ["n0", "n1"])


def test_agent_killed_and_restarted(tmp_path, mosquitto, witness):
    agg = aggregator(tmp_path, mosquitto.url).start().wait_log("consuming")
    first = agent(tmp_path, mosquitto.url, "n0").start()
    time.sleep(2)
    mosquitto.stop()  # so the kill leaves reports in the spool
    time.sleep(1.5)
    first.kill()
    assert spool_files(tmp_path, "n0")
    mosquitto.start()
    second = agent(tmp_path, mosquitto.url, "n0").start()
    time.sleep(3)
    keys = settle(tmp_path, [second], witness)
    assert agg.stop() == 0, agg.tail()
    boots = by_boot(keys)
    assert len(boots) == 2  # the killed boot's spooled reports kept their boot id and numbers
    assert_no_loss(keys, ["n0"])


def test_spool_overflow_drops_exactly_what_it_counts(tmp_path, mosquitto, witness):
    agg = aggregator(tmp_path, mosquitto.url).start().wait_log("consuming")
    a = agent(tmp_path, mosquitto.url, "n0", interval=0.1, spool_max_bytes="65536").start()
    time.sleep(1.5)
    mosquitto.stop()
    time.sleep(5)  # 50 reports of ~3.5 KB: more than 64 KiB, so the oldest are dropped
    mosquitto.start()
    time.sleep(3)
    keys = settle(tmp_path, [a], witness)
    assert agg.stop() == 0, agg.tail()
    (seqs,) = by_boot(keys).values()
    import sqlite3

    db = sqlite3.connect(tmp_path / "aggregator" / "telemetry.db")
    (dropped,) = db.execute(
        "SELECT dropped FROM agent WHERE node='n0' ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    db.close()
    assert dropped > 0
    assert holes(seqs) == dropped  # every missing report was counted, no more, no less


def test_bad_messages_are_dead_lettered_while_good_ones_flow(tmp_path, mosquitto, witness):
    agg = (
        aggregator(tmp_path, mosquitto.url, max_payload_bytes="1000000")
        .start()
        .wait_log("consuming")
    )
    a = agent(tmp_path, mosquitto.url, "n0").start()
    time.sleep(1.5)
    good = json.loads(next(iter(_one_report(mosquitto.port))))
    bad = {
        "json": ("telemetry/v1/c1/n9/report", b"{not json"),
        "schema": ("telemetry/v1/c1/n9/report", json.dumps({**good, "node": "n9", "seq": "x"})),
        "node_mismatch": ("telemetry/v1/c1/n9/report", json.dumps(good)),
        "oversized": ("telemetry/v1/c1/n9/report", b"x" * 1_100_000),
        "clock_skew": (
            "telemetry/v1/c1/n9/report",
            json.dumps({**good, "node": "n9", "time_ns": good["time_ns"] + 3600 * 10**9}),
        ),
        "topic": ("telemetry/v1/c1/bad$node/report", json.dumps(good)),
    }
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="vandal")
    publisher.connect("127.0.0.1", mosquitto.port)
    publisher.loop_start()
    for topic, payload in bad.values():
        publisher.publish(topic, payload, qos=1).wait_for_publish(5)
    publisher.loop_stop()
    publisher.disconnect()
    time.sleep(1.5)
    keys = settle(tmp_path, [a], witness)
    assert_no_loss({k for k in keys if k[0] == "n0"}, ["n0"])
    deadletters = [
        json.loads(line)
        for line in (tmp_path / "aggregator" / "deadletter.jsonl").read_text().splitlines()
    ]
    reasons = {d["reason"]: d for d in deadletters}
    assert set(reasons) == set(bad)
    assert "seq: expected int" in reasons["schema"]["detail"]
    assert "'n0'" in reasons["node_mismatch"]["detail"]
    assert reasons["oversized"]["truncated_from"] == 1_100_000
    summary = _retained_summary(mosquitto.port)
    assert summary["rejected"] == {reason: 1 for reason in bad}
    assert agg.alive()
    assert agg.stop() == 0, agg.tail()


def test_killed_agent_is_offline_within_one_and_a_half_keepalives(tmp_path, mosquitto, witness):
    a = agent(tmp_path, mosquitto.url, "n0", keepalive="2").start()
    wait_until(lambda: any(s["state"] == "online" for _, s in witness.statuses), 10, "online")
    killed = time.monotonic()
    a.kill()
    wait_until(lambda: any(s["state"] == "offline" for _, s in witness.statuses), 10, "offline")
    when, status = next((t, s) for t, s in witness.statuses if s["state"] == "offline")
    assert status["reason"] == "lost"
    print(f"\n[offline] {when - killed:.2f} s after SIGKILL (keepalive 2 s)")
    assert when - killed <= 1.5 * 2 + 0.5


def _one_report(port):
    """A real report from the broker (the agent's retained... no: wait for a live one)."""
    got: list[bytes] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="peek")
    client.on_message = lambda _c, _u, m: got.append(m.payload)
    client.on_connect = lambda c, *_: c.subscribe("telemetry/v1/c1/n0/report", 1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    wait_until(lambda: bool(got), 10, "a live report")
    client.loop_stop()
    client.disconnect()
    return got


def _retained_summary(port):
    got: list[dict] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="summary-reader")
    client.on_message = lambda _c, _u, m: got.append(json.loads(m.payload))
    client.on_connect = lambda c, *_: c.subscribe("telemetry/v1/c1/_fleet", 1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    wait_until(lambda: bool(got) and len(got[-1].get("rejected", {})) >= 6, 15, "the summary")
    client.loop_stop()
    client.disconnect()
    return got[-1]
