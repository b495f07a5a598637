"""How many 8-GPU reports per second one aggregator drains from Mosquitto into SQLite.

Method: every consumer is measured on the same backlog. The broker (Debian's Mosquitto,
started here on a free loopback port) first holds N reports for an offline persistent
session, then the consumer connects and we time how long it takes to drain them.
Baselines in the same run, on the same backlog:
  - mosquitto_sub: the broker's and the network's own ceiling;
  - a bare aiomqtt subscriber that only counts (the floor of any Python consumer);
  - the aggregator: validation, WAL + fsync, acknowledgement (the "accepted" rate), and
    SQLite (the "stored" rate), with the alert engine (the shipped rule pack evaluated on
    every report) and, on the same backlog, without it: the engine's cost is the ratio.

Usage: python bench/aggregator_throughput.py [--reports 20000] [--publishers 8]
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
from pathlib import Path

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


def _env(alerts: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRYD_")}
    env["TELEMETRYD_AGGREGATOR_CLIENT_ID"] = f"bench-aggregator-{'alerts' if alerts else 'plain'}"
    env["TELEMETRYD_AGGREGATOR_MQTT_VERSION"] = MQTT_VERSION
    env["TELEMETRYD_AGGREGATOR_ALERTS_ENABLED"] = "true" if alerts else "false"
    return env


def run_aggregator(port: int, workdir: Path, alerts: bool) -> dict[str, float]:
    workdir = workdir / ("alerts" if alerts else "plain")
    workdir.mkdir(exist_ok=True)
    state = workdir / "aggregator"
    env = _env(alerts)
    log = open(workdir / "aggregator.log", "ab")  # noqa: SIM115
    cmd = [sys.executable, "-m", "telemetryd", "--log-level", "info", "aggregator",
           "--broker", f"mqtt://127.0.0.1:{port}", "--state-dir", str(state)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    # The aggregator's first run only creates its session (the reports are not queued yet).
    while "consuming" not in (workdir / "aggregator.log").read_text():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    return {"pid": float(proc.pid)}


def measure_aggregator(port: int, workdir: Path, count: int, alerts: bool) -> dict[str, float]:
    workdir = workdir / ("alerts" if alerts else "plain")
    state = workdir / "aggregator"
    env = _env(alerts)
    logpath = workdir / "aggregator.log"
    log = open(logpath, "ab")  # noqa: SIM115
    offset = logpath.stat().st_size
    cmd = [sys.executable, "-m", "telemetryd", "--log-level", "info", "aggregator",
           "--broker", f"mqtt://127.0.0.1:{port}", "--state-dir", str(state)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    ps = psutil.Process(proc.pid)
    while "consuming" not in logpath.read_text()[offset:]:
        time.sleep(0.02)
    started = time.monotonic()
    cpu0 = sum(ps.cpu_times()[:2])
    wal = state / "wal"
    accepted_at = None
    deadline = started + 600
    while time.monotonic() < deadline:
        # Accepted = acknowledged after the WAL sync; stored = written to SQLite.
        if accepted_at is None and _wal_records(wal) >= count:
            accepted_at = time.monotonic()
        if stored_count(state / "telemetry.db") >= count:
            break
        time.sleep(0.25)  # polling must not steal the CPU being measured
    stored_at = time.monotonic()
    cpu = sum(ps.cpu_times()[:2]) - cpu0
    rss = ps.memory_info().rss / 2**20
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    return {
        "accepted_s": (accepted_at or stored_at) - started,
        "stored_s": stored_at - started,
        "cpu_s": cpu,
        "rss_mib": rss,
    }


def _wal_records(wal: Path) -> int:
    """Records in the WAL, from their headers only (cheap enough to poll)."""
    total = 0
    for seg in wal.glob("*.wal"):
        with open(seg, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            pos = 0
            while pos + 8 <= size:
                handle.seek(pos)
                length = int.from_bytes(handle.read(4), "little")
                pos += 8 + length
                total += 1 if pos <= size else 0
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reports", type=int, default=20000)
    parser.add_argument("--publishers", type=int, default=8)
    parser.add_argument("--mqtt-version", choices=["5", "3.1.1"], default="5")
    args = parser.parse_args()
    global MQTT_VERSION
    MQTT_VERSION = args.mqtt_version
    if shutil.which("mosquitto") is None or shutil.which("mosquitto_sub") is None:
        raise SystemExit("needs Debian's mosquitto and mosquitto-clients")
    count = args.reports - args.reports % args.publishers
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        port = free_port()
        broker = start_mosquitto(workdir, port)
        try:
            files, size = make_reports(count, args.publishers, workdir)
            print(f"machine: {machine()}")
            print(f"workload: {count} reports of {size} bytes (8 simulated H100s each), "
                  f"{args.publishers} publishers, QoS 1, Mosquitto on loopback")  # fmt: skip
            results: dict[str, float] = {}
            # mosquitto_sub
            prime_session(port, "sub")
            publish(files, port)
            results["mosquitto_sub"] = count / drain_mosquitto_sub(port, count)
            # bare aiomqtt
            asyncio.run(_prime_aiomqtt(port))
            publish(files, port)
            results["aiomqtt"] = count / asyncio.run(_aiomqtt_drain(port, count))
            # the aggregator without, then with, the alert engine
            run_aggregator(port, workdir, alerts=False)
            publish(files, port)
            plain = measure_aggregator(port, workdir, count, alerts=False)
            results["stored_no_alerts"] = count / plain["stored_s"]
            run_aggregator(port, workdir, alerts=True)
            publish(files, port)
            agg = measure_aggregator(port, workdir, count, alerts=True)
            results["accepted"] = count / agg["accepted_s"]
            results["stored"] = count / agg["stored_s"]
        finally:
            broker.terminate()
            broker.wait()
    base = results["aiomqtt"]
    print(f"mosquitto_sub drains          {results['mosquitto_sub']:8.0f} reports/s")
    print(f"bare aiomqtt subscriber       {base:8.0f} reports/s  (baseline, 1.00)")
    print(f"aggregator, accepted (WAL+ack) {results['accepted']:7.0f} reports/s  "
          f"({results['accepted'] / base:.2f} of the baseline)")  # fmt: skip
    print(f"aggregator, stored in SQLite  {results['stored']:8.0f} reports/s  "
          f"({results['stored'] / base:.2f} of the baseline, "
          f"{results['stored'] / results['mosquitto_sub']:.2f} of mosquitto_sub)")  # fmt: skip
    print(f"aggregator CPU {agg['cpu_s']:.1f} s for {count} reports "
          f"({1000 * agg['cpu_s'] / count:.2f} ms each), RSS {agg['rss_mib']:.0f} MiB")  # fmt: skip
    engine_ms = 1000 * (agg["cpu_s"] - plain["cpu_s"]) / count
    print(f"without the alert engine: stored {results['stored_no_alerts']:8.0f} reports/s, "
          f"CPU {1000 * plain['cpu_s'] / count:.2f} ms each; with it: "
          f"{results['stored'] / results['stored_no_alerts']:.2f} of that rate, "
          f"+{engine_ms:.2f} ms of CPU per report")  # fmt: skip
    extra = {f"no_alerts_{k}": v for k, v in plain.items()}
    print(json.dumps({k: round(v, 2) for k, v in {**results, **agg, **extra}.items()}))


async def _prime_aiomqtt(port: int) -> None:
    client = aiomqtt.Client("127.0.0.1", port, identifier="bare", clean_session=False)
    async with client:
        await client.subscribe(TOPIC.format(node="+"), qos=1)


if __name__ == "__main__":
    main()
