"""From a simulated GPU fault to the on-call receiver, through real processes.

Each scenario runs real agents on the simulator with scenario faults, a real Mosquitto,
a real aggregator with the shipped rule pack, and a real HTTP receiver standing in for
the on-call service (webhook format, which every other hook is a translation of). The
routing file is the suggested one (docs/alerts.md): one group per alert, the suggested
inhibitions. Only ``NodeOffline``'s ``for`` is shortened, through the documented way of
replacing a shipped rule, so the test does not wait 30 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.mosquitto import Mosquitto
from tests.integration.pipeline import Service, agent, aggregator, retained, wait_until
from tests.integration.receiver import Receiver

pytestmark = pytest.mark.integration
ALERTS = "telemetry/v1/+/_alerts/#"

ROUTING = """
[route]
receiver = "oncall"
group_by = ["..."]
group_wait = "0s"
group_interval = "1s"
repeat_interval = "1h"
{second_route}
[[route.routes]]
matchers = ['alertname="NodeSilent"']
receiver = "oncall"
group_wait = "{silent_wait}"

[[route.routes]]
matchers = ['scope=~"gpu|event"']
receiver = "oncall"
group_wait = "{gpu_wait}"

[[receiver]]
name = "oncall"
type = "webhook"
url = "{url}/oncall"
retries = 20
retry_max = 1
{second_receiver}
[[inhibit]]
source_matchers = ['alertname=~"NodeOffline|NodeSilent"']
target_matchers = ['scope=~"gpu|event"']
equal = ["cluster", "node"]

[[inhibit]]
source_matchers = ['alertname="GpuFellOffBus"']
target_matchers = ['alertname="GpuLost"']
equal = ["uuid"]
"""

SECOND = """
[[route.routes]]
matchers = ['severity="critical"']
receiver = "chat"
continue = true
"""
SECOND_RECEIVER = """
[[receiver]]
name = "chat"
type = "webhook"
url = "{url}/chat"
retries = 30
retry_max = 1
"""

RULES = """
[[rule]]
name = "NodeOffline"
scope = "node"
expr = 'state == "offline"'
value = "silent_s"
for = "1s"
severity = "critical"
annotations = { summary = "{{ node }} is offline" }
"""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.close()


def setup(
    tmp: Path,
    receiver: Receiver,
    *,
    gpu_wait: str = "0s",
    silent_wait: str = "0s",
    chat: Receiver | None = None,
) -> dict[str, str]:
    """Routing and rules files; the aggregator's settings pointing at them."""
    rules = tmp / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "site.toml").write_text(RULES)
    routing = tmp / "routing.toml"
    routing.write_text(ROUTING.format(
        url=receiver.url, gpu_wait=gpu_wait, silent_wait=silent_wait,
        second_route=SECOND if chat else "",
        second_receiver=SECOND_RECEIVER.format(url=chat.url) if chat else "",
    ))  # fmt: skip
    return {"alerts_routing_file": str(routing), "alerts_rules_dir": str(rules)}


def scenario(tmp: Path, name: str, faults: str) -> dict[str, str]:
    path = tmp / f"{name}.toml"
    path.write_text(faults)
    return {"sim_scenario": str(path)}


def notified(r: Receiver, path: str = "/oncall") -> list[tuple[str, dict[str, str]]]:
    """(status, labels) of every alert in every notification received, in order."""
    return [(a["status"], a["labels"]) for body in r.bodies(path) for a in body["alerts"]]


def named(r: Receiver, name: str, path: str = "/oncall") -> list[tuple[str, dict[str, str]]]:
    return [(s, labels) for s, labels in notified(r, path) if labels["alertname"] == name]


def start(tmp: Path, mosquitto: Mosquitto, settings: dict[str, str]) -> Service:
    return aggregator(tmp, mosquitto.url, **settings).start().wait_log("consuming")


def cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    state = str(tmp / "aggregator")
    return subprocess.run(
        [sys.executable, "-m", "telemetryd", "alerts", *args, "--state-dir", state],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_xid79_pages_once_and_resolves_when_the_gpu_returns(
    tmp_path: Path, mosquitto: Mosquitto, receiver: Receiver
) -> None:
    agg = start(tmp_path, mosquitto, setup(tmp_path, receiver))
    faults = scenario(tmp_path, "xid", "[[fault]]\nat = 2\ngpu = 1\nkind = 'xid'\ncode = 79\n"
                      "duration = 4\n")  # fmt: skip
    node = agent(tmp_path, mosquitto.url, "n1", interval=0.5, **faults).start()
    wait_until(lambda: named(receiver, "GpuFellOffBus"), 20, "the XID 79 page")
    (fingerprint,) = {
        a["fingerprint"]
        for body in receiver.bodies("/oncall")
        for a in body["alerts"]
        if a["labels"]["alertname"] == "GpuFellOffBus"
    }
    topic = f"telemetry/v1/c1/_alerts/{fingerprint}"
    # What fires is retained for clients that connect later (the TUI) ...
    firing: dict[str, bytes] = {}

    def published() -> bool:
        firing.update(retained(mosquitto.port, ALERTS, 0.5))
        return topic in firing

    wait_until(published, 10, "the firing alert retained")
    assert json.loads(firing[topic])["labels"]["alertname"] == "GpuFellOffBus"
    wait_until(lambda: len(named(receiver, "GpuFellOffBus")) >= 2, 20, "its resolve")
    # ... and cleared once it resolved.
    wait_until(lambda: topic not in retained(mosquitto.port, ALERTS, 0.5), 10,
               "the retained alert cleared")  # fmt: skip
    time.sleep(2)  # anything more would be a duplicate
    node.stop()
    agg.stop()
    pages = named(receiver, "GpuFellOffBus")
    assert [s for s, _ in pages] == ["firing", "resolved"]
    labels = pages[0][1]
    assert (labels["node"], labels["gpu"], labels["xid"], labels["severity"]) == (
        "n1", "1", "79", "critical")  # fmt: skip
    # The lost-GPU twin of the same fault is inhibited: one page, not two.
    assert named(receiver, "GpuLost") == []
    assert {lbl["alertname"] for _, lbl in notified(receiver)} == {"GpuFellOffBus"}
    body = receiver.bodies("/oncall")[0]
    assert body["version"] == "4" and body["status"] == "firing"
    assert "fallen off the bus" in body["alerts"][0]["annotations"]["summary"]
    assert body["alerts"][0]["annotations"]["runbook_url"].endswith("#gpufelloffbus")


def test_a_flapping_temperature_is_one_alert_not_many(
    tmp_path: Path, mosquitto: Mosquitto, receiver: Receiver
) -> None:
    """A cooling failure: the card heats to its slowdown limit, throttles, cools, heats...

    The simulator's thermal loop makes the temperature swing across 92 °C every ~10 s.
    The same threshold is watched twice: naively (resolve when below) and with
    hysteresis (resolve below 89 °C). The naive rule pages on every swing; the other once.
    """
    rules = setup(tmp_path, receiver)
    (tmp_path / "rules" / "hot.toml").write_text("""
[[rule]]
name = "TestGpuHotNaive"
expr = "temp_c >= 92"
severity = "warning"
annotations = { summary = "GPU {{ gpu }} at {{ value }}" }

[[rule]]
name = "TestGpuHot"
expr = "temp_c >= 92"
resolve = "temp_c < 89"
severity = "warning"
annotations = { summary = "GPU {{ gpu }} at {{ value }}" }
""")
    agg = start(tmp_path, mosquitto, rules)
    faults = scenario(tmp_path, "hot", "[[fault]]\nat = 0\ngpu = 0\nkind = 'thermal'\n")
    node = agent(tmp_path, mosquitto.url, "n1", interval=0.25, gpus=1, **faults).start()

    def naive_firings() -> int:
        return sum(1 for s, _ in named(receiver, "TestGpuHotNaive") if s == "firing")

    wait_until(lambda: naive_firings() >= 2, 90, "the temperature to swing across 92 C twice")
    node.stop()
    agg.stop()
    naive = [s for s, _ in named(receiver, "TestGpuHotNaive")]
    assert naive[:3] == ["firing", "resolved", "firing"]
    assert [s for s, _ in named(receiver, "TestGpuHot")] == ["firing"]


def test_a_killed_node_is_offline_and_its_gpu_alerts_are_inhibited(
    tmp_path: Path, mosquitto: Mosquitto, receiver: Receiver
) -> None:
    # GPU alerts wait 8 s for their group: long enough for the Last Will to arrive.
    agg = start(tmp_path, mosquitto, setup(tmp_path, receiver, gpu_wait="8s"))
    faults = scenario(tmp_path, "xid", "[[fault]]\nat = 1\ngpu = 0\nkind = 'xid'\ncode = 79\n")
    node = agent(tmp_path, mosquitto.url, "n1", interval=0.5, keepalive="2", **faults).start()
    wait_until(lambda: "GpuFellOffBus" in agg.log.read_text(), 20, "the XID alert fires")
    node.kill()  # no goodbye: the broker publishes the Last Will after 1.5 keepalives
    wait_until(lambda: named(receiver, "NodeOffline"), 20, "the offline page")
    time.sleep(9)  # past the GPU alert's group_wait
    listing = json.loads(cli(tmp_path, "list", "--json").stdout or "{}")
    agg.stop()
    assert [(s, lbl["node"]) for s, lbl in named(receiver, "NodeOffline")] == [("firing", "n1")]
    assert named(receiver, "GpuFellOffBus") == []  # fires, but the node is down: inhibited
    assert any(a["labels"]["alertname"] == "GpuFellOffBus" for a in _alerts(listing))


def _alerts(listing: dict[str, Any]) -> list[dict[str, Any]]:
    return list(listing.get("alerts", []))


def test_a_silence_suppresses(tmp_path: Path, mosquitto: Mosquitto, receiver: Receiver) -> None:
    agg = start(tmp_path, mosquitto, setup(tmp_path, receiver))
    # Set on the running aggregator, which re-reads the silences within a second.
    made = cli(tmp_path, "silence", "alertname=GpuFellOffBus", "node=n2", "--duration", "1h",
               "--author", "test", "--comment", "n2 is in maintenance")  # fmt: skip
    assert made.returncode == 0, made.stderr
    faults = scenario(tmp_path, "xid", "[[fault]]\nat = 2\ngpu = 0\nkind = 'xid'\ncode = 79\n")
    nodes = [
        agent(tmp_path, mosquitto.url, n, interval=0.5, **faults).start() for n in ("n1", "n2")
    ]
    wait_until(lambda: named(receiver, "GpuFellOffBus"), 20, "n1's page")
    time.sleep(3)
    for n in nodes:
        n.stop()
    agg.stop()
    assert [lbl["node"] for _, lbl in named(receiver, "GpuFellOffBus")] == ["n1"]


@pytest.mark.parametrize("when", ["firing", "pending"])
def test_a_restarted_aggregator_neither_repeats_nor_loses(
    tmp_path: Path, mosquitto: Mosquitto, receiver: Receiver, when: str
) -> None:
    settings = setup(tmp_path, receiver)
    # A rule whose 'for' spans the restart when pending; fires at once when firing.
    (tmp_path / "rules" / "err.toml").write_text(f"""
[[rule]]
name = "TestGpuLost"
expr = 'error == "gpu_lost"'
resolve = "error == None"
for = "{"6s" if when == "pending" else "0s"}"
severity = "critical"
annotations = {{ summary = "GPU {{{{ gpu }}}} lost" }}
""")
    faults = scenario(tmp_path, "lost", "[[fault]]\nat = 2\ngpu = 0\nkind = 'gpu_lost'\n"
                      "duration = 14\n")  # fmt: skip
    agg = start(tmp_path, mosquitto, settings)
    node = agent(tmp_path, mosquitto.url, "n1", interval=0.5, **faults).start()
    if when == "firing":
        wait_until(lambda: named(receiver, "TestGpuLost"), 20, "the page")
    else:
        time.sleep(5)  # the GPU is lost 2 s after the agent started; 'for' is 6 s
        assert named(receiver, "TestGpuLost") == []  # still pending
    agg.stop()
    time.sleep(1)
    agg = start(tmp_path, mosquitto, settings)
    wait_until(lambda: len(named(receiver, "TestGpuLost")) >= 2, 40, "the page and its resolve")
    time.sleep(2)
    node.stop()
    agg.stop()
    assert [s for s, _ in named(receiver, "TestGpuLost")] == ["firing", "resolved"]


def test_a_receiver_that_is_down_is_retried_and_the_others_are_told_on_time(
    tmp_path: Path, mosquitto: Mosquitto, receiver: Receiver
) -> None:
    chat = Receiver().start()
    try:
        chat.fail_with(503)
        agg = start(tmp_path, mosquitto, setup(tmp_path, receiver, chat=chat))
        faults = scenario(tmp_path, "xid", "[[fault]]\nat = 2\ngpu = 0\nkind = 'xid'\ncode = 79\n")
        node = agent(tmp_path, mosquitto.url, "n1", interval=0.5, **faults).start()
        wait_until(lambda: named(receiver, "GpuFellOffBus"), 20, "the on-call page")
        paged = time.time()
        wait_until(lambda: chat.refused >= 3, 20, "retries to the failing receiver")
        assert named(chat, "GpuFellOffBus", "/chat") == []
        chat.recover()
        wait_until(lambda: named(chat, "GpuFellOffBus", "/chat"), 20, "delivery after recovery")
        node.stop()
        agg.stop()
        # The failing receiver did not hold up the other one.
        assert receiver.received[0].at <= paged
        assert [s for s, _ in named(chat, "GpuFellOffBus", "/chat")] == ["firing"]
    finally:
        chat.close()
