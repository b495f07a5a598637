"""Two aggregators on one shared subscription, through a real Mosquitto (docs/sharing.md).

Mosquitto hands ``$share`` messages round robin, so every node's reports are split
between the members. Each member stores what it gets, feeds only the nodes it owns and
forwards the rest to their owner: the test proves that the split happened, that nothing
is lost (even with a member SIGKILLed and restarted mid-run), that each alert pages once
and from its node's owner, and that a viewer merging the members' parts sees every node.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from telemetryd.shard import owner
from telemetryd.watch import Watch
from tests.integration.mosquitto import Mosquitto, SyncClient
from tests.integration.pipeline import Service, _env, retained, wait_until
from tests.integration.pipeline import stored as pipeline_stored
from tests.integration.receiver import Receiver
from tests.reports import sampled

pytestmark = pytest.mark.integration

NODES = [f"n{i:02d}" for i in range(20)]
ROUNDS = 20  # reports per node, 0.2 s of sample time apart
BOOT = "0123456789abcdef0123456789abcdef"

RULES = """
[[rule]]
name = "TestHot"
expr = "temp_c >= 95"
for = "1s"
severity = "warning"
annotations = { summary = "GPU {{ gpu }} of {{ node }} at {{ value }}" }
"""

ROUTING = """
[route]
receiver = "oncall"
group_by = ["..."]
group_wait = "0s"
group_interval = "1s"
repeat_interval = "1h"

[[receiver]]
name = "oncall"
type = "webhook"
url = "{url}/oncall"
retries = 20
retry_max = 1
"""


def hot_nodes() -> list[str]:
    """Two nodes owned by each member: both members must page."""
    return [n for n in NODES if owner("c1", n, 2) == 0][:2] + [
        n for n in NODES if owner("c1", n, 2) == 1
    ][:2]


def report(node: str, seq: int, t0: int, hot: bool) -> bytes:
    data: dict[str, Any] = json.loads(sampled())
    gpu = data["gpus"][0]
    gpu["temp_c"] = 99 if hot else 40
    data.update(node=node, seq=seq, boot_id=BOOT, time_ns=t0 + seq * 200_000_000,
                interval_s=0.2, gpus=[gpu])  # fmt: skip
    return json.dumps(data).encode()


def member(tmp: Path, mosquitto: Mosquitto, receiver: Receiver, index: int) -> Service:
    rules = tmp / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "test.toml").write_text(RULES)
    routing = tmp / f"routing{index}.toml"
    routing.write_text(ROUTING.format(url=receiver.url))
    env = _env({
        "TELEMETRYD_AGGREGATOR_RECONNECT_MAX": "1",
        "TELEMETRYD_AGGREGATOR_FLEET_INTERVAL": "0.5",
        "TELEMETRYD_AGGREGATOR_ALERTS_DEFAULT_RULES": "false",
        "TELEMETRYD_AGGREGATOR_ALERTS_RULES_DIR": str(rules),
        "TELEMETRYD_AGGREGATOR_ALERTS_ROUTING_FILE": str(routing),
    })  # fmt: skip
    args = ["aggregator", "--broker", mosquitto.url, "--state-dir", str(tmp / f"agg{index}"),
            "--shared-group", "g1", "--members", "2", "--member", str(index)]  # fmt: skip
    return Service(args, env, tmp / f"agg{index}.log")


def stored(tmp: Path, index: int) -> set[tuple[str, str, int]]:
    return pipeline_stored(tmp, f"agg{index}")


def pages(r: Receiver) -> list[tuple[str, str]]:
    """(status, node) of every TestHot alert in every notification."""
    return [(a["status"], a["labels"]["node"]) for body in r.bodies("/oncall")
            for a in body["alerts"] if a["labels"]["alertname"] == "TestHot"]  # fmt: skip


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    rs = [Receiver().start(), Receiver().start()]
    yield rs
    for r in rs:
        r.close()


def test_two_members_split_the_load_lose_nothing_and_page_once(
    tmp_path: Path, mosquitto: Mosquitto, receivers: list[Receiver]
) -> None:
    aggs = [member(tmp_path, mosquitto, receivers[i], i).start() for i in (0, 1)]
    for agg in aggs:
        agg.wait_log("consuming")
    hot = hot_nodes()
    t0 = time.time_ns()
    publisher = SyncClient(mosquitto.port, client_id="test-publisher")
    publisher.connect()

    def publish(rounds: range) -> None:
        for seq in rounds:
            for node in NODES:
                topic = f"telemetry/v1/c1/{node}/report"
                assert publisher.publish(topic, report(node, seq, t0, node in hot)) == 0
            time.sleep(0.1)

    def paged(index: int | None = None) -> set[str]:
        chosen = receivers if index is None else [receivers[index]]
        return {n for r in chosen for s, n in pages(r) if s == "firing"}

    publish(range(0, 8))  # 1.4 s of samples: past the rule's for: 1s
    # Member 1 pages for its hot nodes (fed by forwards too), then dies mid-run with no
    # goodbye: what it held unacknowledged comes back, and it must not page again.
    mine = {n for n in hot if owner("c1", n, 2) == 1}
    wait_until(lambda: paged(1) >= mine, 20, f"member 1's pages for {sorted(mine)}")
    time.sleep(0.5)  # its notification log on disk
    aggs[1].kill()
    publish(range(8, 14))
    aggs[1] = member(tmp_path, mosquitto, receivers[1], 1).start()
    aggs[1].wait_log("consuming")
    publish(range(14, ROUNDS))
    publisher.close()

    expected = {(n, BOOT, s) for n in NODES for s in range(ROUNDS)}

    def union() -> set[tuple[str, str, int]]:
        return stored(tmp_path, 0) | stored(tmp_path, 1)

    try:
        wait_until(lambda: expected <= union(), 30, "every report in one of the stores")
    except AssertionError as exc:
        missing = sorted(expected - union())
        raise AssertionError(f"{exc}: {len(missing)} missing, e.g. {missing[:5]}\n"
                             f"{aggs[0].tail()}\n{aggs[1].tail()}") from None  # fmt: skip

    # The round robin really split every node's reports: each store holds reports of
    # nodes that its member does not own (stored there, fed to the owner).
    for index in (0, 1):
        foreign = {n for n, _b, _s in stored(tmp_path, index) if owner("c1", n, 2) != index}
        assert len(foreign) >= 5, f"member {index} stored only {sorted(foreign)} of others"

    # Each hot node pages once, from its owner, never from the other member.
    wait_until(lambda: paged() >= set(hot), 30, f"a page for each of {hot}")
    time.sleep(2.0)  # anything more would be a duplicate
    for index, r in enumerate(receivers):
        firing = [n for s, n in pages(r) if s == "firing"]
        assert sorted(firing) == sorted(n for n in hot if owner("c1", n, 2) == index), (
            index, firing)  # fmt: skip

    # A viewer merging the members' parts sees the whole fleet.
    watch = Watch()

    def merged() -> bool:
        for topic, payload in retained(mosquitto.port, "telemetry/v1/c1/_fleet/#", 0.5).items():
            watch.ingest(topic, payload)
        fleet = watch.fleets.get("c1")
        return fleet is not None and {n.node for n in fleet.nodes} == set(NODES)

    wait_until(merged, 15, "the merged fleet summary to list every node")
    fleet = watch.fleets["c1"]
    assert set(watch.fleet_parts["c1"]) == {0, 1}
    assert "+" in fleet.aggregator
    assert fleet.accepted >= len(NODES) * ROUNDS // 2  # summed over the members
    assert len({s.name for s in fleet.sinks}) == 2  # each member's sink under its name
    for agg in aggs:
        assert agg.stop() == 0, agg.tail()
