"""How many lines per second one aggregator writes into a real InfluxDB 1.x.

Method: N 8-GPU reports are queued at Mosquitto for the aggregator's offline persistent
session (as in aggregator_throughput.py); the aggregator, with only the InfluxDB sink,
then drains them and we time until InfluxDB holds the point of every report. Baselines
in the same run, on the same reports:
  - encoder: our line protocol encoder alone (CPU only, no I/O);
  - bare POST: the same lines, pre-encoded and gzip'd, posted in 5000-line requests by a
    bare aiohttp loop with as many in flight as the sink allows by default: InfluxDB's and
    HTTP's own ceiling here.
The ratio aggregator / bare POST says how much of InfluxDB's ingest rate the whole
pipeline (MQTT, validation, WAL, encoding, retries policy) keeps.

Usage: python bench/influx_throughput.py [--reports 20000] [--publishers 8]
Needs Debian's mosquitto, mosquitto-clients and influxdb. Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import aiohttp
import psutil
from aggregator_throughput import free_port, machine, make_reports, publish, start_mosquitto

from exporters.lineprotocol import Encoder
from telemetryd.config import InfluxConfig
from telemetryd.model import Report, decode_report

DB = "bench"
REQUEST_LINES = 5000


def start_influxd(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    conf = workdir / "influxdb.conf"
    conf.write_text(
        f'reporting-disabled = true\nbind-address = "127.0.0.1:{free_port()}"\n'
        f'[meta]\n  dir = "{workdir}/meta"\n'
        f'[data]\n  dir = "{workdir}/data"\n  wal-dir = "{workdir}/wal"\n'
        "  query-log-enabled = false\n[monitor]\n  store-enabled = false\n"
        f'[http]\n  bind-address = "127.0.0.1:{port}"\n  log-enabled = false\n'
        '[continuous_queries]\n  enabled = false\n[logging]\n  level = "warn"\n'
    )
    proc = subprocess.Popen(["influxd", "run", "-config", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit("influxd did not start")


def influx_query(port: int, q: str) -> dict:
    url = f"http://127.0.0.1:{port}/query?" + urllib.parse.urlencode({"q": q, "db": DB})
    request = urllib.request.Request(url, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def agent_points(port: int) -> int:
    try:
        series = influx_query(port, "SELECT count(seq) FROM agent")["results"][0].get("series")
    except OSError:
        return 0
    return int(series[0]["values"][0][1]) if series else 0


def load_reports(files: list[Path]) -> list[Report]:
    return [decode_report(line) for f in files for line in f.read_bytes().splitlines()]


def bench_encoder(reports: list[Report]) -> tuple[float, int]:
    started = time.process_time()
    lines = Encoder().encode(reports)
    return time.process_time() - started, len(lines)


async def bare_post(port: int, bodies: list[bytes], parallel: int) -> float:
    """Post ``bodies`` with ``parallel`` requests in flight, as the sink does by default."""
    url = f"http://127.0.0.1:{port}/write"
    params = {"db": DB, "precision": "ns"}
    headers = {"Content-Encoding": "gzip", "Content-Type": "text/plain; charset=utf-8"}
    queue = list(reversed(bodies))

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            body = queue.pop()
            async with session.post(url, data=body, params=params, headers=headers) as r:
                if r.status != 204:
                    raise SystemExit(f"bare POST: {r.status} {await r.text()}")

    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        await asyncio.gather(*(worker(session) for _ in range(parallel)))
        return time.monotonic() - started


def aggregator_cmd(
    mqtt_port: int, influx_port: int, state: Path, parallel: int
) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRYD_")}
    env["TELEMETRYD_AGGREGATOR_CLIENT_ID"] = "bench-aggregator"
    env["TELEMETRYD_AGGREGATOR_INFLUXDB_PARALLEL"] = str(parallel)
    cmd = [sys.executable, "-m", "telemetryd", "--log-level", "info", "aggregator",
           "--broker", f"mqtt://127.0.0.1:{mqtt_port}", "--state-dir", str(state),
           "--sink", f"influxdb://127.0.0.1:{influx_port}/{DB}"]  # fmt: skip
    return cmd, env


def run_until_log(
    cmd: list[str], env: dict[str, str], log: Path, text: str
) -> subprocess.Popen[bytes]:
    offset = log.stat().st_size if log.exists() else 0
    handle = open(log, "ab")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT)
    while text not in log.read_text()[offset:]:
        if proc.poll() is not None:
            raise SystemExit(f"aggregator exited: {log.read_text()[-2000:]}")
        time.sleep(0.02)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reports", type=int, default=20000)
    parser.add_argument("--publishers", type=int, default=8)
    parser.add_argument(
        "--parallel",
        type=int,
        default=InfluxConfig().parallel,
        help="write requests in flight (the sink's and the baseline's)",
    )
    args = parser.parse_args()
    count = args.reports - args.reports % args.publishers
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        mqtt_port, influx_port = free_port(), free_port()
        broker = start_mosquitto(workdir, mqtt_port)
        influxd = start_influxd(workdir, influx_port)
        try:
            influx_query(influx_port, f'CREATE DATABASE "{DB}"')
            files, size = make_reports(count, args.publishers, workdir)
            reports = load_reports(files)
            print(f"machine: {machine()}")
            enc_cpu, nlines = bench_encoder(reports)
            print(f"workload: {count} reports of {size} bytes (8 simulated H100s), {nlines} "
                  f"lines ({nlines / count:.1f} per report), InfluxDB 1.x on loopback")  # fmt: skip
            # Baseline: the same lines, bare. Written to other nodes' names so the
            # aggregator's run below writes new points, not the same ones again.
            for r in reports:
                r.node = "bare-" + r.node
            lines = Encoder().encode(reports)
            bodies = [gzip.compress(("\n".join(lines[i : i + REQUEST_LINES]) + "\n").encode(), 1)
                      for i in range(0, len(lines), REQUEST_LINES)]  # fmt: skip
            bare_s = asyncio.run(bare_post(influx_port, bodies, args.parallel))
            bare_points = agent_points(influx_port)
            if bare_points != count:  # every 204 must have stored its points
                raise SystemExit(f"bare POST: {bare_points} of {count} reports stored")
            # The aggregator: create its session, queue the reports, then drain.
            state = workdir / "aggregator"
            log = workdir / "aggregator.log"
            cmd, env = aggregator_cmd(mqtt_port, influx_port, state, args.parallel)
            first = run_until_log(cmd, env, log, "consuming")
            first.send_signal(signal.SIGTERM)
            first.wait(timeout=30)
            publish(files, mqtt_port)
            influx_ps = psutil.Process(influxd.pid)
            influx_cpu0 = sum(influx_ps.cpu_times()[:2])
            proc = run_until_log(cmd, env, log, "consuming")
            ps = psutil.Process(proc.pid)
            started = time.monotonic()
            cpu0 = sum(ps.cpu_times()[:2])
            target = count + count  # the bare run's agent points are there too
            deadline = started + 900
            while agent_points(influx_port) < target and time.monotonic() < deadline:
                time.sleep(0.5)
            agg_s = time.monotonic() - started
            agg_cpu = sum(ps.cpu_times()[:2]) - cpu0
            influx_cpu = sum(influx_ps.cpu_times()[:2]) - influx_cpu0
            rss = ps.memory_info().rss / 2**20
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            if agent_points(influx_port) < target:
                raise SystemExit(f"aggregator did not finish in 900 s: {log.read_text()[-2000:]}")
        finally:
            influxd.terminate()
            broker.terminate()
            influxd.wait()
            broker.wait()
    bare = nlines / bare_s
    agg = nlines / agg_s
    print(f"encoder alone                 {nlines / enc_cpu:10.0f} lines/s of CPU "
          f"({1e6 * enc_cpu / count:.0f} us per report)")  # fmt: skip
    print(f"bare POST to InfluxDB         {bare:10.0f} lines/s  (baseline, 1.00)")
    print(f"aggregator into InfluxDB      {agg:10.0f} lines/s  ({agg / bare:.2f} of the baseline), "
          f"{count / agg_s:.0f} reports/s")  # fmt: skip
    print(f"aggregator CPU {agg_cpu:.1f} s ({1000 * agg_cpu / count:.2f} ms per report), "
          f"RSS {rss:.0f} MiB; influxd CPU {influx_cpu:.1f} s")  # fmt: skip
    print(json.dumps({"lines": nlines, "reports": count, "bare_lines_s": round(bare),
                      "aggregator_lines_s": round(agg), "ratio": round(agg / bare, 2),
                      "aggregator_cpu_s": round(agg_cpu, 1), "rss_mib": round(rss)}))  # fmt: skip


if __name__ == "__main__":
    main()
