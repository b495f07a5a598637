"""``telemetryd status`` against a real Mosquitto, real sim agents and a real aggregator.

The command runs as an operator runs it, as a process (``python -m telemetryd status
--json``); its JSON and exit code are the contract checked here. Nothing is timed: each
step waits, by re-running the command, until the fleet has reached the state it needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.mosquitto import Mosquitto, free_port
from tests.integration.pipeline import agent, aggregator

pytestmark = pytest.mark.integration

XID79 = "[[fault]]\nat = 1\ngpu = 1\nkind = 'xid'\ncode = 79\n"  # lost for good from 1 s on


def status(broker: str, *args: str, wait: float = 10.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRYD_")}
    return subprocess.run(
        [sys.executable, "-m", "telemetryd", "status", "--broker", broker, "--wait", str(wait),
         *args],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


def status_json(broker: str, *args: str, wait: float = 10.0) -> tuple[int, dict[str, Any]]:
    done = status(broker, "--json", *args, wait=wait)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def until(
    broker: str, ready: Any, what: str, *, wait: float = 10.0, timeout: float = 60.0
) -> tuple[int, dict[str, Any]]:
    """Re-run status until ``ready(doc)``; the last answer is in the failure message."""
    deadline = time.monotonic() + timeout
    while True:
        code, doc = status_json(broker, wait=wait)
        if ready(doc):
            return code, doc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last answer: {doc}")
        time.sleep(0.5)


def names(refs: list[dict[str, Any]]) -> list[str]:
    return [r["node"] for r in refs]


def test_status_of_a_live_fleet(tmp_path: Path, mosquitto: Mosquitto) -> None:
    url = mosquitto.url
    agg = aggregator(tmp_path, url, fleet_interval="1").start().wait_log("consuming")
    nodes = {n: agent(tmp_path, url, n, interval=1.0, gpus=2).start() for n in ("n1", "n2")}

    # All is well: every node online, every GPU readable, no alert.
    def settled(d: dict[str, Any]) -> bool:
        fleets = (d["aggregator"] or {}).get("fleets") or [{}]
        sinks = [s["state"] for s in fleets[0].get("sinks", [])]
        return d["nodes"]["online"] == 2 and fleets[0].get("accepted", 0) > 0 and sinks == ["ok"]

    code, doc = until(url, settled, "both nodes online, reports accepted by the aggregator")
    assert code == 0 and doc["exit_code"] == 0
    assert doc["schema"] == 1 and doc["broker"] == url and doc["cluster"] == "+"
    assert doc["clusters"] == ["c1"]
    assert doc["complete"] and doc["waiting_for_reports"] == []
    assert {k: doc["nodes"][k] for k in ("total", "online", "offline", "silent", "unknown")} == {
        "total": 2, "online": 2, "offline": 0, "silent": 0, "unknown": 0}  # fmt: skip
    gpus = doc["gpus"]
    assert (gpus["total"], gpus["ok"], gpus["failed"]) == (4, 4, 0)
    assert gpus["busy"] + gpus["light"] + gpus["idle"] + gpus["util_unknown"] == 4
    assert gpus["power_w"] > 0
    assert doc["alerts"]["known"] and doc["alerts"]["firing"] == []
    top = doc["top"]
    assert sorted(names(top["nodes_by_power"])) == ["n1", "n2"]
    assert len(top["gpus_by_power"]) == 4
    powers = [g["power_w"] for g in top["gpus_by_power"]]
    assert powers == sorted(powers, reverse=True)
    (fleet,) = doc["aggregator"]["fleets"]
    assert fleet["cluster"] == "c1" and fleet["accepted"] > 0 and not fleet["stale"]
    assert [s["state"] for s in fleet["sinks"]] == ["ok"]

    # A GPU falls off the bus: the alert fires, status says so and exits 1.
    scenario = tmp_path / "xid.toml"
    scenario.write_text(XID79)
    nodes["n3"] = agent(tmp_path, url, "n3", interval=1.0, gpus=2,
                        sim_scenario=str(scenario)).start()  # fmt: skip
    code, doc = until(url, lambda d: any(a["name"] == "GpuFellOffBus" for a in
                                         d["alerts"]["firing"]), "the XID 79 alert")  # fmt: skip
    assert code == 1 and doc["exit_code"] == 1
    fell = next(a for a in doc["alerts"]["firing"] if a["name"] == "GpuFellOffBus")
    assert (fell["severity"], fell["cluster"], fell["node"], fell["gpu"]) == (
        "critical", "c1", "n3", 1)  # fmt: skip
    assert "fallen off the bus" in fell["summary"] and fell["since_ns"] > 0
    assert doc["alerts"]["firing_by_severity"]["critical"] >= 1
    assert (doc["gpus"]["total"], doc["gpus"]["failed"]) == (6, 1)
    assert [(g["node"], g["gpu"], g["error"]) for g in doc["gpus"]["failed_gpus"]] == [
        ("n3", 1, "gpu_lost")]  # fmt: skip

    # The same for a person: the verdict first, the alert in the table.
    text = status(url)
    assert text.returncode == 1, text.stderr
    assert text.stdout.startswith("FIRING ")
    assert "GpuFellOffBus" in text.stdout and "n3" in text.stdout

    # A node shuts down: it is listed offline, with why.
    assert nodes["n2"].stop() == 0
    code, doc = until(url, lambda d: d["nodes"]["offline"] == 1, "n2 offline")
    assert code == 1  # the alert still fires
    assert [(r["node"], r["reason"]) for r in doc["nodes"]["offline_nodes"]] == [
        ("n2", "shutdown")]  # fmt: skip
    assert doc["nodes"]["online"] == 2 and doc["gpus"]["total"] == 4
    for node in nodes.values():
        node.stop()
    agg.stop()


def test_without_an_aggregator_and_with_a_slow_node(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """Alerts are unknown without an aggregator; a node on a long interval is named, not guessed."""
    url = mosquitto.url
    fast = agent(tmp_path, url, "fast", interval=1.0).start()
    slow = agent(tmp_path, url, "slow", interval=60.0, cluster="c2").start()
    # Once past the slow node's first report, the next one is a minute away.
    code, doc = until(url, lambda d: d["nodes"]["total"] == 2 and d["waiting_for_reports"],
                      "both nodes, between two reports of the slow one", wait=2)  # fmt: skip
    assert code == 0
    assert doc["aggregator"] is None and not doc["alerts"]["known"]
    assert any("no fleet summary from an aggregator" in w for w in doc["warnings"])
    assert not doc["complete"]
    assert [(r["cluster"], r["node"]) for r in doc["waiting_for_reports"]] == [("c2", "slow")]
    assert names(doc["nodes"]["unknown_nodes"]) == ["slow"]
    assert doc["nodes"]["online"] == 1 and doc["gpus"]["total"] == 2
    # One cluster only.
    code, doc = status_json(url, "--cluster", "c1", wait=2)
    assert (code, doc["cluster"], doc["clusters"]) == (0, "c1", ["c1"])
    assert doc["complete"] and doc["nodes"]["total"] == 1
    text = status(url, wait=1)
    assert text.returncode == 0
    assert text.stdout.startswith("ALERTS UNKNOWN")
    assert "warning: no fleet summary from an aggregator" in text.stdout
    fast.stop()
    slow.stop()


def test_a_broker_that_is_not_there() -> None:
    port = free_port()
    done = status(f"mqtt://127.0.0.1:{port}", "--json")
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"telemetryd status: cannot connect to mqtt://127.0.0.1:{port}")
    assert "refused" in lines[0].lower()
