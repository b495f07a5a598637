"""SIGHUP reload of real agent and aggregator processes while reports flow through Mosquitto.

A valid change must be applied (the agent's interval, an alert rule, a sink), an invalid
file refused with its file:line reason while the old configuration keeps running, and
nothing lost meanwhile: counted end to end by seq, as in test_pipeline.py, and within
one boot (a reload is not a restart: the boot id and seq numbering go on).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from exporters.sqlite_reader import SqliteReader
from tests.integration.mosquitto import free_port
from tests.integration.pipeline import (
    Service,
    Witness,
    _env,
    by_boot,
    retained,
    spool_files,
    stored,
    wait_until,
)
from tests.integration.receiver import Receiver
from tests.integration.test_pipeline import assert_no_loss, settle, witness  # noqa: F401

pytestmark = pytest.mark.integration

RULE = """
[[rule]]
name = "{name}"
scope = "aggregator"
expr = "mqtt_connected"
severity = "info"
[rule.annotations]
summary = "reload test rule"
"""


def agent_toml(path: Path, broker: str, state: Path, interval: float, extra: str = "") -> None:
    path.write_text(f"""\
[agent]
broker = "{broker}"
node = "n1"
cluster = "c1"
interval = {interval}
gpu_backend = "sim"
collectors = ["host"]
state_dir = "{state}"
backlog_rate = 200
reconnect_max = 1
{extra}
[agent.sim]
gpus = 2
""")


def aggregator_toml(path: Path, broker: str, tmp: Path, sinks: list[str] | None = None) -> None:
    sink_line = f"sinks = {sinks!r}".replace("'", '"') if sinks else ""
    path.write_text(f"""\
[aggregator]
broker = "{broker}"
state_dir = "{tmp / "aggregator"}"
reconnect_max = 1
{sink_line}

[aggregator.alerts]
default_rules = false
rules_dir = "{tmp / "rules"}"
evaluation_interval = 0.2
""")


def hup(service: Service) -> None:
    assert service.proc is not None
    service.proc.send_signal(signal.SIGHUP)


def count_in_log(service: Service, text: str) -> int:
    return service.log.read_text(errors="replace").count(text)


def rate(witness_, seconds: float) -> float:
    """Reports per second the broker delivered over the next ``seconds``."""
    before = len(witness_.seen())
    time.sleep(seconds)
    return (len(witness_.seen()) - before) / seconds


def test_reload_applies_valid_refuses_invalid_loses_nothing(tmp_path, mosquitto, witness):  # noqa: F811
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "a.toml").write_text(RULE.format(name="BeforeReload"))
    agg_cfg, agent_cfg = tmp_path / "aggregator.toml", tmp_path / "agent.toml"
    aggregator_toml(agg_cfg, mosquitto.url, tmp_path)
    agent_toml(agent_cfg, mosquitto.url, tmp_path / "agent-n1", interval=0.5)
    agg = Service(["aggregator", "-c", str(agg_cfg)], _env({}), tmp_path / "aggregator.log")
    agg.start().wait_log("consuming").wait_log("alert firing BeforeReload")
    agent = Service(
        ["agent", "-c", str(agent_cfg), "--node", "n1"], _env({}), tmp_path / "agent-n1.log"
    )
    agent.start().wait_log("agent c1/n1")
    time.sleep(2)
    slow = rate(witness, 2.0)

    # Valid: a shorter interval (and a rotated rule file) is applied to the running process.
    agent_toml(agent_cfg, mosquitto.url, tmp_path / "agent-n1", interval=0.1)
    hup(agent)
    agent.wait_log("agent: every 0.1s")
    time.sleep(0.5)
    fast = rate(witness, 2.0)
    assert fast > 2.5 * slow, (slow, fast)
    (tmp_path / "rules" / "a.toml").write_text(RULE.format(name="AfterReload"))
    hup(agg)
    agg.wait_log("alert firing AfterReload").wait_log("alert resolved BeforeReload")
    hup(agg)  # the same rules again: what fires keeps its state, nothing fires twice
    wait_until(lambda: count_in_log(agg, "reloaded the aggregator") == 2, 10, "second reload")

    # Invalid: refused with file:line and reason; the old configuration keeps running.
    agent_cfg.write_text(agent_cfg.read_text().replace("interval = 0.1", "interval = 0.001"))
    hup(agent)
    agent.wait_log("reload refused")
    refused = [line for line in agent.tail(50).splitlines() if "reload refused" in line]
    assert f"{agent_cfg}:5" in refused[0] and "agent.interval" in refused[0], refused
    (tmp_path / "rules" / "b.toml").write_text("[[rule]]\nname = 'Broken'\nexpr = 'nonsense ==\n")
    hup(agg)
    agg.wait_log("reload refused")
    assert "b.toml" in agg.tail(50)
    (tmp_path / "rules" / "b.toml").unlink()
    assert agent.alive() and agg.alive()
    assert rate(witness, 1.0) > 5, "the old interval (0.1 s) keeps running"
    assert count_in_log(agg, "alert resolved AfterReload") == 0
    assert count_in_log(agg, "alert firing AfterReload") == 1

    # A fixed key (the node's cluster) is a restart, not a reload.
    agent_toml(agent_cfg, mosquitto.url, tmp_path / "agent-n1", interval=0.1)
    agent_cfg.write_text(agent_cfg.read_text().replace('cluster = "c1"', 'cluster = "c2"'))
    hup(agent)
    wait_until(lambda: count_in_log(agent, "reload refused") == 2, 10, "second refusal")
    assert "agent.cluster: changing it needs a restart" in agent.tail(5)

    keys = settle(tmp_path, [agent], witness)
    assert agg.stop() == 0, agg.tail()
    assert_no_loss(keys, ["n1"])
    assert len(by_boot(keys)) == 1, "a reload keeps the boot id: one contiguous seq run"


def test_aggregator_reload_adds_and_removes_sinks(tmp_path, mosquitto, witness):  # noqa: F811
    (tmp_path / "rules").mkdir()
    first = f"sqlite://{tmp_path / 'aggregator' / 'telemetry.db'}"
    second = f"sqlite://{tmp_path / 'second.db'}"
    agg_cfg, agent_cfg = tmp_path / "aggregator.toml", tmp_path / "agent.toml"
    aggregator_toml(agg_cfg, mosquitto.url, tmp_path, sinks=[first])
    agent_toml(agent_cfg, mosquitto.url, tmp_path / "agent-n1", interval=0.2)
    agg = Service(["aggregator", "-c", str(agg_cfg)], _env({}), tmp_path / "aggregator.log")
    agg.start().wait_log("consuming")
    agent = Service(
        ["agent", "-c", str(agent_cfg), "--node", "n1"], _env({}), tmp_path / "agent-n1.log"
    )
    agent.start().wait_log("agent c1/n1")
    time.sleep(1.5)

    aggregator_toml(agg_cfg, mosquitto.url, tmp_path, sinks=[first, second])
    hup(agg)
    agg.wait_log("reloaded the aggregator configuration")
    assert count_in_log(agg, "started at record") == 1 and count_in_log(agg, "stopped") == 0
    time.sleep(1.5)
    aggregator_toml(agg_cfg, mosquitto.url, tmp_path, sinks=[second])
    hup(agg)
    wait_until(lambda: count_in_log(agg, "reloaded the aggregator") == 2, 10, "second reload")
    assert count_in_log(agg, "sink ") and "stopped" in agg.tail(10)
    time.sleep(1.0)

    assert agent.stop() == 0, agent.tail()
    time.sleep(0.5)
    expected = witness.seen()
    wait_until(lambda: expected <= stored(tmp_path) | in_db(second), 30, "every report stored")
    assert agg.stop() == 0, agg.tail()
    assert_no_loss(stored(tmp_path) | in_db(second), ["n1"])
    # The first sink stopped when it was removed; the second one holds everything after the
    # oldest record the WAL still had when it was added, to the end, without a hole.
    first_keys, second_keys = stored(tmp_path), in_db(second)
    assert first_keys and second_keys and first_keys != second_keys
    assert max(s for *_, s in second_keys) > max(s for *_, s in first_keys)
    seqs = sorted(s for *_, s in second_keys)
    assert seqs == list(range(seqs[0], seqs[-1] + 1))


def in_db(url: str) -> set[tuple[str, str, int]]:
    reader = SqliteReader(url.removeprefix("sqlite://"))
    try:
        return set(reader.report_keys())
    finally:
        reader.close()


ROUTING = """
[route]
receiver = "{name}"
group_by = ["..."]
group_wait = "0s"
group_interval = "1s"
repeat_interval = "1h"

[[receiver]]
name = "{name}"
type = "webhook"
url = "{url}/{name}"
"""


def test_aggregator_reload_swaps_routing_keeping_what_was_told(tmp_path, mosquitto):
    """A new route is told about what fires; the old receiver is not paged again."""
    receiver = Receiver().start()
    try:
        (tmp_path / "rules").mkdir()
        (tmp_path / "rules" / "a.toml").write_text(RULE.format(name="Firing"))
        routing = tmp_path / "routing.toml"
        routing.write_text(ROUTING.format(name="first", url=receiver.url))
        agg_cfg = tmp_path / "aggregator.toml"
        aggregator_toml(agg_cfg, mosquitto.url, tmp_path)
        agg_cfg.write_text(agg_cfg.read_text() + f'routing_file = "{routing}"\n')
        agg = Service(["aggregator", "-c", str(agg_cfg)], _env({}), tmp_path / "aggregator.log")
        agg.start().wait_log("consuming")
        wait_until(lambda: receiver.bodies("/first"), 15, "the first receiver paged")

        routing.write_text(ROUTING.format(name="second", url=receiver.url))
        hup(agg)
        wait_until(lambda: receiver.bodies("/second"), 15, "the new receiver paged")
        routing.write_text(ROUTING.format(name="third", url=receiver.url) + 'receiver = "x"\n')
        hup(agg)
        agg.wait_log("reload refused")
        assert "routing.toml" in agg.tail(5)
        time.sleep(2.5)  # more than group_interval: a repeat would have been sent by now
        assert agg.alive()
        assert len(receiver.bodies("/first")) == 1, "told once, before the reload"
        assert len(receiver.bodies("/second")) == 1
        assert [a["status"] for a in receiver.bodies("/second")[0]["alerts"]] == ["firing"]
        assert count_in_log(agg, "alert firing Firing") == 1, "its state survived both"
        assert agg.stop() == 0, agg.tail()
    finally:
        receiver.close()


def test_agent_reload_moves_to_another_broker_without_loss(tmp_path, mosquitto_factory):
    """Changed broker settings: reconnect there, say offline on the old one, keep seq."""
    old, new = mosquitto_factory(), mosquitto_factory()
    seen_old, seen_new = Witness(old.port), Witness(new.port)
    try:
        time.sleep(0.3)
        agent_cfg = tmp_path / "agent.toml"
        agent_toml(agent_cfg, old.url, tmp_path / "agent-n1", interval=0.2)
        agent = Service(["agent", "-c", str(agent_cfg)], _env({}), tmp_path / "agent-n1.log")
        agent.start().wait_log("agent c1/n1")
        wait_until(lambda: len(seen_old.seen()) >= 5, 15, "reports on the first broker")
        agent_toml(agent_cfg, new.url, tmp_path / "agent-n1", interval=0.2)
        hup(agent)
        agent.wait_log("reconnecting")
        wait_until(lambda: len(seen_new.seen()) >= 5, 15, "reports on the second broker")
        before = len(seen_old.seen())
        time.sleep(1.0)
        assert len(seen_old.seen()) == before, "nothing goes to the old broker any more"
        assert json.loads(retained(old.port, "telemetry/v1/c1/n1/status")[
            "telemetry/v1/c1/n1/status"])["state"] == "offline"  # fmt: skip
        assert agent.stop() == 0, agent.tail()
        time.sleep(0.5)
        keys = seen_old.seen() | seen_new.seen()
        assert len(by_boot(keys)) == 1
        assert_no_loss(keys | spooled(tmp_path), ["n1"])
    finally:
        seen_old.close()
        seen_new.close()


def spooled(tmp: Path) -> set[tuple[str, str, int]]:
    """The (node, boot, seq) left in n1's spool: sent at the next start, not lost."""
    return {("n1", p.stem.split("-")[1], int(p.stem.split("-")[2]))
            for p in spool_files(tmp, "n1")}  # fmt: skip


def test_embedded_broker_says_it_does_not_reload_and_keeps_running(tmp_path):
    port = free_port()
    broker = Service(["broker", "--listen", f"127.0.0.1:{port}"], _env({}), tmp_path / "b.log")
    broker.start().wait_log("MQTT broker (amqtt) on")
    hup(broker)
    broker.wait_log("SIGHUP: this service does not reload; restart it to apply changes")
    time.sleep(0.3)
    assert broker.alive()
    assert broker.stop() == 0, broker.tail()
