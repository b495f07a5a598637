"""How many 8-GPU reports per second the aggregator drains from Mosquitto, per store and setup.

Method: every consumer is measured on the same backlog. The broker (Debian's Mosquitto,
started here on a free loopback port) first holds N reports, published by P
``mosquitto_pub -l`` processes (one per node, QoS 1), for an offline persistent session;
then the consumer connects and we time how long it takes to drain them.
Baselines in the same run, on the same backlog:
  - mosquitto_sub: the broker's and the network's own ceiling;
  - a bare aiomqtt subscriber that only counts (the floor of any Python consumer).
Then ``telemetryd aggregator`` (its own process), one setup after the other:
  SQLite; SQLite with the alert engine (the shipped rule pack on every report); InfluxDB 1.x
  (Debian's influxd on loopback); SQLite and InfluxDB with alerts; and two aggregators in one
  ``$share`` group (members 0 and 1 of 2, SQLite and alerts each), CPU per member.
"accepted" = in the WAL (synced) and acknowledged; "stored" = in every store of the setup.
The backlog is the point past backpressure: the broker holds what the aggregator has not
taken, nothing is dropped (the stored count must reach N), it only arrives later.

Usage: python bench/aggregator_throughput.py [--reports 20000] [--publishers 8]
       [--setups sqlite,sqlite+alerts,influx,both+alerts,shared2]
Prints the machine, the figures and the ratios. Bounded in time; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import psutil

from telemetryd.config import AgentConfig
from telemetryd.model import encode_report
from telemetryd.sampler import open_sampler

TOPIC = "telemetry/v1/bench/{node}/report"
MQTT_VERSION = "5"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}"


def start_mosquitto(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
        "max_inflight_messages 1000\nmax_queued_bytes 0\npersistence false\n"
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit("mosquitto did not start")


def make_reports(count: int, publishers: int, workdir: Path) -> tuple[list[Path], int]:
    """One file per publishing node, one compact JSON report per line."""
    sampler = open_sampler(AgentConfig(node="bench-0", cluster="bench", gpu_backend="sim",
                                       collectors=["host"]))  # fmt: skip
    template = asyncio.run(sampler.sample())
    sampler.close()
    files = []
    size = 0
    per = count // publishers
    now = time.time_ns()
    for p in range(publishers):
        path = workdir / f"reports-{p}.jsonl"
        with open(path, "wb") as out:
            for seq in range(per):
                template.node, template.seq, template.time_ns = f"bench-{p}", seq, now + seq
                line = encode_report(template)
                size = len(line)
                out.write(line + b"\n")
        files.append(path)
    return files, size


def publish(files: list[Path], port: int) -> float:
    started = time.monotonic()
    procs = [
        subprocess.Popen(["mosquitto_pub", "-p", str(port), "-q", "1", "-l",
                          "-t", TOPIC.format(node=f"bench-{p}")], stdin=open(f, "rb"))  # noqa: SIM115
        for p, f in enumerate(files)
    ]  # fmt: skip
    for proc in procs:
        proc.wait()
    return time.monotonic() - started


def prime_session(port: int, client_id: str) -> None:
    """Create a persistent QoS 1 session for ``client_id`` and leave it offline."""
    subprocess.run(["mosquitto_sub", "-p", str(port), "-i", client_id, "-c", "-q", "1",
                    "-t", TOPIC.format(node="+"), "-W", "1"], capture_output=True)  # fmt: skip


def drain_mosquitto_sub(port: int, count: int) -> float:
    started = time.monotonic()
    subprocess.run(["mosquitto_sub", "-p", str(port), "-i", "sub", "-c", "-q", "1", "-C",
                    str(count), "-t", TOPIC.format(node="+")], stdout=subprocess.DEVNULL,
                   check=True)  # fmt: skip
    return time.monotonic() - started


async def _aiomqtt_drain(port: int, count: int) -> float:
    client = aiomqtt.Client("127.0.0.1", port, identifier="bare", clean_session=False)
    async with client:
        await client.subscribe(TOPIC.format(node="+"), qos=1)
        started = time.monotonic()
        seen = 0
        async for _ in client.messages:
            seen += 1
            if seen == count:
                break
        return time.monotonic() - started


def stored_count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return int(con.execute("SELECT count(*) FROM agent").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


@dataclass
class Setup:
    """One aggregator configuration measured on the backlog."""

    name: str
    alerts: bool
    sqlite: bool = True
    influx: bool = False
    members: int = 1  # aggregators in one $share group, each with its own state and store

    def env(self, member: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRYD_")}
        env["TELEMETRYD_AGGREGATOR_CLIENT_ID"] = f"bench-{self.key}-{member}"
        env["TELEMETRYD_AGGREGATOR_MQTT_VERSION"] = MQTT_VERSION
        env["TELEMETRYD_AGGREGATOR_ALERTS_ENABLED"] = "true" if self.alerts else "false"
        return env

    @property
    def key(self) -> str:
        return "".join(c if c.isalnum() else "_" for c in self.name.lower())

    def database(self, member: int) -> str:
        return f"bench_{self.key}_{member}"

    def cmd(self, port: int, state: Path, member: int, influx_port: int) -> list[str]:
        cmd = [sys.executable, "-m", "telemetryd", "--log-level", "info", "aggregator",
               "--broker", f"mqtt://127.0.0.1:{port}", "--state-dir", str(state)]  # fmt: skip
        if self.sqlite:
            cmd += ["--sink", f"sqlite://{state / 'telemetry.db'}"]
        if self.influx:
            cmd += ["--sink", f"influxdb://127.0.0.1:{influx_port}/{self.database(member)}"]
        if self.members > 1:
            cmd += ["--shared-group", "bench", "--members", str(self.members),
                    "--member", str(member)]  # fmt: skip
        return cmd


def start_aggregators(setup: Setup, port: int, workdir: Path, influx_port: int
                      ) -> list[tuple[subprocess.Popen[bytes], Path, Path]]:  # fmt: skip
    out = []
    for member in range(setup.members):
        if setup.influx:
            influx_query(influx_port, f'CREATE DATABASE "{setup.database(member)}"')
        state = workdir / setup.key / f"member{member}"
        state.mkdir(parents=True, exist_ok=True)
        logpath = state.parent / f"aggregator{member}.log"
        offset = logpath.stat().st_size if logpath.exists() else 0
        proc = subprocess.Popen(setup.cmd(port, state, member, influx_port),
                                env=setup.env(member), stdout=logpath.open("ab"),
                                stderr=subprocess.STDOUT)  # fmt: skip
        out.append((proc, state, logpath))
        deadline = time.monotonic() + 60
        while "consuming" not in logpath.read_text()[offset:]:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"aggregator did not start:\n{logpath.read_text()}")
            time.sleep(0.02)
    return out


def prime_aggregators(setup: Setup, port: int, workdir: Path, influx_port: int) -> None:
    """A first run only creates the sessions (and the subscriptions the backlog queues for)."""
    for proc, _, _ in start_aggregators(setup, port, workdir, influx_port):
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def stored(setup: Setup, state: Path, member: int, influx_port: int) -> int:
    counts = []
    if setup.sqlite:
        counts.append(stored_count(state / "telemetry.db"))
    if setup.influx:
        counts.append(agent_points(influx_port, setup.database(member)))
    return min(counts)


def measure(setup: Setup, port: int, workdir: Path, count: int, influx_port: int
            ) -> dict[str, float]:  # fmt: skip
    """Accepted (WAL + ack) and stored rates over the backlog, CPU and RSS of each member."""
    procs = start_aggregators(setup, port, workdir, influx_port)
    ps = [psutil.Process(p.pid) for p, _, _ in procs]
    started = time.monotonic()
    cpu0 = [sum(p.cpu_times()[:2]) for p in ps]
    accepted_at = None
    deadline = started + 900
    while time.monotonic() < deadline:
        if accepted_at is None and sum(_wal_records(st / "wal") for _, st, _ in procs) >= count:
            accepted_at = time.monotonic()
        total = sum(stored(setup, st, m, influx_port) for m, (_, st, _) in enumerate(procs))
        if total >= count:
            break
        time.sleep(0.25)  # polling must not steal the CPU being measured
    stored_at = time.monotonic()
    cpu = [sum(p.cpu_times()[:2]) - c for p, c in zip(ps, cpu0, strict=True)]
    rss = [p.memory_info().rss / 2**20 for p in ps]
    for proc, _, _ in procs:
        proc.send_signal(signal.SIGTERM)
    for proc, _, _ in procs:
        proc.wait(timeout=60)
    result = {"accepted_s": (accepted_at or stored_at) - started,
              "stored_s": stored_at - started, "cpu_s": sum(cpu), "rss_mib": max(rss)}  # fmt: skip
    for m, (c, r) in enumerate(zip(cpu, rss, strict=True)):
        result[f"member{m}_cpu_s"], result[f"member{m}_rss_mib"] = c, r
    return result


def start_influxd(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    """InfluxDB 1.x (Debian's influxd) on loopback, as bench/influx_throughput.py runs it."""
    from influx_throughput import start_influxd as start

    return start(workdir, port)


def influx_query(port: int, q: str, db: str = "") -> Any:
    url = f"http://127.0.0.1:{port}/query?" + urllib.parse.urlencode({"q": q, "db": db})
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=30) as r:
        return json.loads(r.read())


def agent_points(port: int, db: str) -> int:
    try:
        series = influx_query(port, "SELECT count(seq) FROM agent", db)["results"][0].get("series")
    except (OSError, ValueError, KeyError, IndexError):
        return 0
    return int(series[0]["values"][0][1]) if series else 0


def _wal_records(wal: Path) -> int:
    """Records ever appended to the WAL: a segment is named by its first record's index, so
    the last segment's name plus the records in it (read from their headers: cheap enough to
    poll) counts them all, also after older segments were released."""
    total = 0
    for seg in wal.glob("*.wal"):
        try:
            handle = open(seg, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            continue  # released meanwhile; a later segment counts past it
        with handle:
            size = os.fstat(handle.fileno()).st_size
            pos = records = 0
            while pos + 8 <= size:
                handle.seek(pos)
                length = int.from_bytes(handle.read(4), "little")
                pos += 8 + length
                records += 1 if pos <= size else 0
        total = max(total, int(seg.stem) + records)
    return total


SETUPS = {
    "sqlite": Setup("SQLite", alerts=False),
    "sqlite+alerts": Setup("SQLite + alerts", alerts=True),
    "influx": Setup("InfluxDB 1.x", alerts=False, sqlite=False, influx=True),
    "both+alerts": Setup("SQLite + InfluxDB + alerts", alerts=True, influx=True),
    "shared2": Setup("2 in a $share group, SQLite + alerts", alerts=True, members=2),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reports", type=int, default=20000)
    parser.add_argument("--publishers", type=int, default=8)
    parser.add_argument("--mqtt-version", choices=["5", "3.1.1"], default="5")
    parser.add_argument("--setups", default=",".join(SETUPS),
                        help=f"comma-separated, of: {', '.join(SETUPS)}")  # fmt: skip
    args = parser.parse_args()
    global MQTT_VERSION
    MQTT_VERSION = args.mqtt_version
    for tool in ("mosquitto", "mosquitto_sub", "mosquitto_pub", "influxd"):
        if shutil.which(tool) is None:
            raise SystemExit(f"needs {tool} (Debian's mosquitto, mosquitto-clients, influxdb)")
    count = args.reports - args.reports % args.publishers
    setups = [SETUPS[name] for name in args.setups.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        port, influx_port = free_port(), free_port()
        broker = start_mosquitto(workdir, port)
        influxd = start_influxd(workdir, influx_port)
        try:
            files, size = make_reports(count, args.publishers, workdir)
            print(f"machine: {machine()}")
            print(f"workload: {count} reports of {size} bytes (8 simulated H100s each), "
                  f"{args.publishers} publishers (mosquitto_pub -l), QoS 1, MQTT "
                  f"{MQTT_VERSION}, Mosquitto on loopback; each consumer drains the same "
                  "backlog")  # fmt: skip
            rates: dict[str, float] = {}
            prime_session(port, "sub")
            publish(files, port)
            rates["mosquitto_sub"] = count / drain_mosquitto_sub(port, count)
            asyncio.run(_prime_aiomqtt(port))
            publish(files, port)
            base = rates["aiomqtt"] = count / asyncio.run(_aiomqtt_drain(port, count))
            print(f"{'consumer':<40} {'accepted/s':>10} {'stored/s':>9} {'x aiomqtt':>9} "
                  f"{'CPU ms/rep':>10} {'RSS MiB':>8}")  # fmt: skip
            print(f"{'mosquitto_sub':<40} {'':>10} {rates['mosquitto_sub']:9.0f} "
                  f"{rates['mosquitto_sub'] / base:9.2f}")  # fmt: skip
            print(f"{'bare aiomqtt subscriber (baseline)':<40} {'':>10} {base:9.0f} {1:9.2f}")
            results = {}
            for setup in setups:
                prime_aggregators(setup, port, workdir, influx_port)
                publish(files, port)
                r = results[setup.key] = measure(setup, port, workdir, count, influx_port)
                stored_rate = count / r["stored_s"]
                per = ", ".join(f"{r[f'member{m}_cpu_s']:.1f}" for m in range(setup.members))
                print(f"{setup.name:<40} {count / r['accepted_s']:10.0f} {stored_rate:9.0f} "
                      f"{stored_rate / base:9.2f} {1000 * r['cpu_s'] / count:10.2f} "
                      f"{r['rss_mib']:8.0f}" + (f"  (CPU s per member: {per})"
                                                 if setup.members > 1 else ""),
                      flush=True)  # fmt: skip
        finally:
            broker.terminate()
            broker.wait()
            influxd.terminate()
            influxd.wait()
    print("compact encoding: none offered (reports are JSON only), so not measured")
    print(json.dumps({"rates": {k: round(v) for k, v in rates.items()},
                      "setups": {k: {n: round(v, 2) for n, v in r.items()}
                                 for k, r in results.items()}}))  # fmt: skip


async def _prime_aiomqtt(port: int) -> None:
    client = aiomqtt.Client("127.0.0.1", port, identifier="bare", clean_session=False)
    async with client:
        await client.subscribe(TOPIC.format(node="+"), qos=1)


if __name__ == "__main__":
    main()
