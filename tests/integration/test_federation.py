"""Federation: a site broker bridged to a national broker with examples/federation, for real.

Two Debian Mosquitto 2.0 brokers: the national one runs ``examples/federation/national.conf``
with ``national.acl`` (only paths and the port rewritten), the site one is the test broker
plus ``examples/federation/site-a.conf`` (only the bridge's address and password
rewritten), so what is tested is what operators install. A real aggregator (rollups every
second) and real sim agents run on the site; one agent's GPU falls off the bus.

On the national broker a witness subscribed to ``#`` must see the site's fleet summary,
rollups and the alert under ``sites/site-a/``, and never a report, event, presence or a
process's command line. The site's bridge account cannot write outside its prefix, and
``telemetryd status --federation`` lists the site.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from telemetryd.model import GpuOwner, decode_report, encode_report
from telemetryd.rollupmodel import decode_rollup
from tests.integration.conftest import MosquittoFactory
from tests.integration.mosquitto import Mosquitto, SyncClient, free_port, make_password_file
from tests.integration.pipeline import agent, aggregator, wait_until
from tests.reports import sampled

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "federation"
XID79 = "[[fault]]\nat = 1\ngpu = 1\nkind = 'xid'\ncode = 79\n"  # lost for good from 1 s on
SITE_PASSWORD = "site-a-test-password"  # throwaway accounts in a temporary password file
OTHER_PASSWORD = "site-b-test-password"
VIEWER_PASSWORD = "viewer-test-password"
SECRET = "python train.py --token=s3cr3t-federation"  # a command line that must stay on site
SUMMARIES = re.compile(
    r"^sites/site-a/(telemetry/v1/c1/(_fleet|_rollup/[^/]+|_alerts/[^/]+|_pending|_silences)"
    r"|_bridge/state)$"
)


def national_config(broker: Mosquitto, tmp: Path) -> str:
    """national.conf with this test's password file, ACL, port and directories."""
    users = {"site-a": SITE_PASSWORD, "site-b": OTHER_PASSWORD,
             "national-viewer": VIEWER_PASSWORD}  # fmt: skip
    passwd = make_password_file(tmp / "national.passwd", users)
    acl = tmp / "national.acl"
    acl.write_text((EXAMPLE / "national.acl").read_text())
    text = (EXAMPLE / "national.conf").read_text()
    text = text.replace("/etc/mosquitto/national.passwd", str(passwd))
    text = text.replace("/etc/mosquitto/national.acl", str(acl))
    text, n = re.subn(r"^listener 1883$", f"listener {broker.port} 127.0.0.1", text, flags=re.M)
    assert n == 1, "national.conf's plain listener line changed"
    return "\n".join([*broker.common_lines(), text])


def site_bridge(national_port: int) -> list[str]:
    """site-a.conf's lines, pointed at the test's national broker."""
    text = (EXAMPLE / "site-a.conf").read_text()
    text = text.replace("address national.example.org:8883", f"address 127.0.0.1:{national_port}")
    text = text.replace("remote_password CHANGE-ME-site-a-bridge-password",
                        f"remote_password {SITE_PASSWORD}")  # fmt: skip
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert not any("telemetry/v1/#" in line or "telemetry/#" in line for line in lines)
    return lines


def secret_report() -> bytes:
    """An 8-GPU report of node n9 whose first process has a command line and a user."""
    report = decode_report(sampled())
    report.node, report.boot_id, report.time_ns = "n9", uuid.uuid4().hex, time.time_ns()
    processes = report.gpus[0].processes
    assert processes
    processes[0].command, processes[0].user = SECRET, "alice"
    report.gpus[0].owners = [GpuOwner(source="jobmap", job="4242")]
    return encode_report(report)


def national_status(port: int, tmp: Path) -> subprocess.CompletedProcess[str]:
    password = tmp / "viewer-password"
    password.write_text(VIEWER_PASSWORD)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRYD_")}
    env["TELEMETRYD_TOP_PASSWORD_FILE"] = str(password)
    return subprocess.run(
        [sys.executable, "-m", "telemetryd", "status", "--federation", "--json", "--wait", "5",
         "--broker", f"mqtt://national-viewer@127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


def test_a_site_bridges_only_its_summaries(
    tmp_path: Path, mosquitto_factory: MosquittoFactory
) -> None:
    national = mosquitto_factory(config=lambda b: national_config(b, tmp_path))
    site = mosquitto_factory(extra_config=site_bridge(national.port))

    witness = SyncClient(national.port, username="national-viewer", password=VIEWER_PASSWORD,
                         client_id="witness")  # fmt: skip
    assert witness.connect() == 0
    assert witness.subscribe("#", qos=1) == [1]

    url = site.url
    aggregator(tmp_path, url, fleet_interval="1", rollup_interval="1").start().wait_log("consuming")
    scenario = tmp_path / "xid.toml"
    scenario.write_text(XID79)
    for node in ("n1", "n2"):
        agent(tmp_path, url, node, interval=0.5, gpus=2).start()
    agent(tmp_path, url, "n3", interval=0.5, gpus=2, sim_scenario=str(scenario)).start()

    with SyncClient(site.port, client_id="n9") as n9:  # raw data with a command line, on site
        assert n9.connect() == 0
        assert n9.publish("telemetry/v1/c1/n9/report", secret_report()) == 0

    seen: dict[str, bytes] = {}  # the newest payload of each topic
    history: list[tuple[str, bytes]] = []  # everything, in order

    def national_has(predicate: Callable[[str, bytes], bool]) -> bool:
        for message in witness.drain(quiet=0.2):
            seen[message.topic] = message.payload
            history.append((message.topic, message.payload))
        return any(predicate(t, p) for t, p in history)

    def rollup_of(node: str) -> Callable[[str, bytes], bool]:
        def ok(topic: str, payload: bytes) -> bool:
            return (
                topic == f"sites/site-a/telemetry/v1/c1/_rollup/{node}"
                and bool(payload)
                and decode_rollup(payload).reports > 0
            )

        return ok

    for node in ("n1", "n2", "n3", "n9"):
        wait_until(lambda n=node: national_has(rollup_of(n)), 30, f"{node}'s rollup nationally")  # type: ignore[misc]
    wait_until(lambda: national_has(lambda t, p: "/_alerts/" in t and b"GpuFellOffBus" in p),
               30, "the XID 79 alert nationally")  # fmt: skip
    wait_until(lambda: national_has(lambda t, p: t.endswith("/c1/_fleet") and b'"n3"' in p),
               15, "the fleet summary nationally")  # fmt: skip

    # What crossed: summaries only, all under sites/site-a/, no raw data, no command line.
    national_has(lambda t, p: False)
    assert seen, "nothing reached the national broker"
    for topic, payload in history:
        assert SUMMARIES.match(topic), f"{topic} crossed the bridge"
        for raw in (b'"processes"', b'"command"', b'"pid"', b'"host"', b'"boot_id":"',
                    SECRET.encode(), b"s3cr3t", b"alice"):  # fmt: skip
            if raw == b'"boot_id":"' and topic.endswith("/_fleet"):
                continue  # the fleet summary names each node's boot, not its data
            assert raw not in payload, f"{raw!r} in {topic}"
    n3 = decode_rollup(seen["sites/site-a/telemetry/v1/c1/_rollup/n3"])
    assert [g.health for g in n3.gpus] == ["ok", "gpu_lost"] and n3.state == "online"
    assert n3.gpus[0].power_mean_w is not None and n3.gpus[0].util_mean_pct is not None
    secret = next(
        r for t, p in history if t.endswith("/_rollup/n9") and (r := decode_rollup(p)).reports
    )
    assert len(secret.gpus) == 8 and secret.jobs == ["4242"]  # the job id crosses, not its command

    # The site's bridge account may write under its own prefix only (MQTT 5: PUBACK 0x87).
    with SyncClient(national.port, username="site-a", password=SITE_PASSWORD,
                    client_id="forger") as forger:  # fmt: skip
        assert forger.connect() == 0
        assert forger.publish("sites/site-a/probe", b"ok") == 0
        for topic in ("sites/site-b/telemetry/v1/c1/_fleet", "telemetry/v1/c1/n1/report",
                      "sites/site-a-evil/x"):  # fmt: skip
            assert forger.publish(topic, b"forged") == 0x87, topic
    got = {m.topic for m in witness.drain(quiet=0.5)}
    assert "sites/site-a/probe" in got
    assert not got & {"sites/site-b/telemetry/v1/c1/_fleet", "telemetry/v1/c1/n1/report",
                      "sites/site-a-evil/x"}  # fmt: skip
    witness.disconnect()

    # The national status lists the site: 4 nodes, the alert, a fresh summary; exit 1 (firing).
    done = national_status(national.port, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    (line,) = doc["sites"]
    assert (line["site"], line["clusters"], line["nodes"], line["gpus"]) == (
        "site-a",
        ["c1"],
        4,
        14,
    )
    assert line["online"] >= 3 and line["gpus_failed"] == 1 and line["rollups"] == 4
    assert line["firing"] >= 1 and not line["stale"] and line["bridge"] == "up"
    assert any(a["name"] == "GpuFellOffBus" and a["node"] == "n3" for a in doc["firing"])


def test_national_status_of_no_site_is_stale(mosquitto: Mosquitto) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRYD_")}
    done = subprocess.run(
        [sys.executable, "-m", "telemetryd", "status", "--federation", "--wait", "1",
         "--broker", mosquitto.url],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr
    assert "no site under sites/" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "telemetryd", "status", "--federation", "--prefix", "a/+",
         "--broker", f"mqtt://127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
