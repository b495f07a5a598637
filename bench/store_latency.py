"""Time from a sample leaving the node to its row in the store: p50, p99, max.

Method: Debian's Mosquitto (the integration tests' fixture) and ``telemetryd aggregator`` (its
own process: WAL, SQLite sink, the shipped alert rules) on loopback. bench/loadgen.py
publishes N nodes x 8 GPUs at QoS 1, each report stamped with ``time_ns`` just before its
publish. This process polls the SQLite file (read-only, WAL mode, every ``--poll`` seconds)
for rows newer than the last it saw: a report's latency is when its row was first seen,
less its ``time_ns`` (one clock: same machine). The poll interval bounds the resolution; it
is printed with the figures.
Baseline in the same run, on the same messages: a bare subscriber (telemetryd's
``MqttSession``, the client library the aggregator uses) that only takes each report's
``time_ns`` out of the payload on arrival: the transport's own latency, publish to receipt.

Usage: python bench/store_latency.py [--nodes 200] [--interval 1] [--seconds 60] [--poll 0.02]
Prints the machine, p50/p90/p99/max of both and their ratio. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from fleet_run import start, start_aggregator, stop_all
from top_cpu import BENCH, machine, read_json, start_broker

from exporters.mqtt import MqttSession, MqttSettings
from telemetryd.urls import parse_broker_url

STAMP = re.compile(rb'"time_ns":(\d+)')


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"),
                "max": float("nan")}  # fmt: skip

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": ordered[-1]}


def poll_store(db: Path, every: float, stop: threading.Event, out: list[float]) -> None:
    """Latency of each new agent row, in ms, as first seen by polling."""
    while not db.exists() and not stop.is_set():
        time.sleep(every)
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    last = time.time_ns()  # rows of reports sent before we started do not count
    try:
        while not stop.is_set():
            time.sleep(every)
            try:
                rows = con.execute("SELECT time_ns FROM agent WHERE time_ns > ? "
                                   "AND node LIKE 'node-%'", (last,)).fetchall()  # fmt: skip
            except sqlite3.Error:
                continue
            now = time.time_ns()
            for (stamp,) in rows:
                out.append((now - stamp) / 1e6)
                last = max(last, stamp)
    finally:
        con.close()


async def transport(url: str, stop: asyncio.Event, out: list[float]) -> None:
    """The baseline: publish to receipt, same broker, same stream, nothing else done."""
    settings = MqttSettings(broker=parse_broker_url(url), version="5",
                            client_id=f"bench-latency-{os.getpid()}")  # fmt: skip
    async with MqttSession(settings) as session:
        await session.subscribe(["telemetry/v1/bench/+/report"], qos=1)
        async for message in session.messages():
            now = time.time_ns()
            found = STAMP.search(message.payload)
            if found:
                out.append((now - int(found.group(1))) / 1e6)
            session.ack(message)
            if stop.is_set():
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--poll", type=float, default=0.02, help="store polling, seconds")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"load: {args.nodes} nodes x 8 GPUs every {args.interval:g} s "
          f"({args.nodes / args.interval:.0f} reports/s, QoS 1) for {args.seconds:.0f} s; "
          f"the store polled every {1000 * args.poll:.0f} ms")  # fmt: skip
    stored: list[float] = []
    received: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        broker = start_broker(workdir)
        url = f"mqtt://127.0.0.1:{broker.port}"
        children: list[subprocess.Popen[bytes]] = []
        halt = threading.Event()
        try:
            aggregator, db = start_aggregator(url, workdir)
            children.append(aggregator)
            poller = threading.Thread(target=poll_store, args=(db, args.poll, halt, stored))
            poller.start()
            stop = asyncio.Event()

            async def run() -> None:
                task = asyncio.create_task(transport(url, stop, received))
                await asyncio.sleep(1.0)  # subscribed before the first report
                gen = start([sys.executable, str(BENCH / "loadgen.py"), "--broker", url,
                             "--cluster", "bench", "--nodes", str(args.nodes), "--interval",
                             str(args.interval), "--qos", "1", "--seconds", str(args.seconds),
                             "--stats", str(workdir / "gen.json")], workdir, "loadgen")  # fmt: skip
                children.append(gen)
                await asyncio.to_thread(gen.wait)
                await asyncio.sleep(3.0)  # the last reports reach the store
                stop.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(task, 5)

            asyncio.run(run())
            published = int(read_json(workdir / "gen.json").get("reports", 0))
        finally:
            halt.set()
            stop_all(children)
            broker.stop()
    base, store = percentiles(received), percentiles(stored)
    print(f"published {published}; received by the baseline {len(received)}; "
          f"seen stored {len(stored)}")  # fmt: skip
    print(f"{'ms':<34} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}")
    print(f"{'publish -> bare subscriber':<34} " + " ".join(f"{base[k]:7.1f}" for k in base))
    print(f"{'publish -> row in SQLite':<34} " + " ".join(f"{store[k]:7.1f}" for k in store))
    print(f"{'ratio':<34} " + " ".join(f"{store[k] / base[k]:7.1f}" for k in base))


if __name__ == "__main__":
    main()
