"""The whole system at fleet scale for minutes or hours: loss, memory, open files, CPU.

One harness for two of the issue's runs:
  fleet scale: ``--nodes 10000 --interval 10 --seconds 600 --top`` (10,000 nodes x 8 GPUs,
      1,000 reports/s of ~13 KB for 10 minutes);
  soak: ``--nodes 200 --interval 1 --seconds 3600 --agent`` (an hour at a steady rate, with a
      real agent process beside the generator), where what matters is that memory and open
      files stay flat.

Parts, all real: Debian's Mosquitto on a free loopback port (the integration tests' fixture,
persistence off, QoS 1 queues unbounded so a slow consumer is queued for, never dropped);
``telemetryd aggregator`` (its own process: WAL, SQLite store, the shipped alert rules);
bench/loadgen.py publishing the fleet at QoS 1 (its own process); optionally ``telemetryd top``
in a detached tmux terminal of 200x60, and one ``telemetryd agent`` with 8 simulated GPUs.

Every ``--sample`` seconds each process's CPU, RSS, open files and threads are read from
/proc (psutil). At the end the generator stops, the aggregator is given time to store its
backlog, and loss is counted exactly: every (node, seq) the generator published is looked up
in the SQLite ``agent`` table (one row per stored report).

Baseline in the same run: bench/mqtt_count.py, a bare subscriber of the same stream that only
counts (the floor any Python consumer pays); the aggregator's CPU is given as a ratio to it.

Usage: python bench/fleet_run.py [--nodes 10000] [--interval 10] [--seconds 600] [--top]
       [--agent] [--sample 10] [--json FILE]
Prints the machine, a table of samples, and the summary. Loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from top_cpu import BENCH, ROOT, Tmux, env, machine, read_json, start_broker


@dataclass
class Proc:
    """A process we measure: CPU between samples, RSS, open files, threads."""

    name: str
    pid: int
    samples: list[dict[str, float]] = field(default_factory=list)
    _last: tuple[float, float] | None = None

    def sample(self, now: float) -> dict[str, float] | None:
        try:
            p = psutil.Process(self.pid)
            with p.oneshot():
                times = p.cpu_times()
                cpu = times.user + times.system
                row = {"t": now, "rss_mib": p.memory_info().rss / 2**20,
                       "fds": float(p.num_fds()), "threads": float(p.num_threads())}  # fmt: skip
        except psutil.Error:
            return None
        if self._last is not None:
            row["cpu_pct"] = 100 * (cpu - self._last[1]) / max(now - self._last[0], 1e-6)
        self._last = (now, cpu)
        row["cpu_s"] = cpu
        self.samples.append(row)
        return row

    def summary(self, skip_s: float) -> dict[str, float]:
        """Mean CPU after the warm-up, RSS and open files at the start and end, peak RSS."""
        rows = [r for r in self.samples if "cpu_pct" in r]
        if not rows:
            return {}
        t0 = rows[0]["t"]
        steady = [r for r in rows if r["t"] - t0 >= skip_s] or rows
        cpu = (steady[-1]["cpu_s"] - steady[0]["cpu_s"]) / max(steady[-1]["t"] - steady[0]["t"], 1)
        return {
            "cpu_pct": 100 * cpu,
            "rss_start_mib": steady[0]["rss_mib"],
            "rss_end_mib": steady[-1]["rss_mib"],
            "rss_max_mib": max(r["rss_mib"] for r in rows),
            "fds_start": steady[0]["fds"],
            "fds_end": steady[-1]["fds"],
            "threads_end": steady[-1]["threads"],
        }


def start_aggregator(
    url: str, workdir: Path, wal_max_bytes: int = 0
) -> tuple[subprocess.Popen[bytes], Path]:
    state = workdir / "aggregator"
    logpath = workdir / "aggregator.log"
    run_env = env()
    run_env["TELEMETRYD_AGGREGATOR_CLIENT_ID"] = "bench-fleet-aggregator"
    if wal_max_bytes:
        run_env["TELEMETRYD_AGGREGATOR_WAL_MAX_BYTES"] = str(wal_max_bytes)
    cmd = [sys.executable, "-m", "telemetryd", "--log-level", "info", "aggregator",
           "--broker", url, "--state-dir", str(state)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=run_env, cwd=ROOT, stdout=logpath.open("wb"),
                            stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 60
    while "consuming" not in logpath.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"aggregator did not start:\n{logpath.read_text()}")
        time.sleep(0.1)
    return proc, state / "telemetry.db"


def start(cmd: list[str], workdir: Path, name: str) -> subprocess.Popen[bytes]:
    log = (workdir / f"{name}.log").open("wb")
    return subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def broker_dropped(port: int) -> int | None:
    """Mosquitto's own count of messages it dropped (queue limits), from $SYS."""
    out = subprocess.run(["mosquitto_sub", "-p", str(port), "-C", "1", "-W", "5", "-t",
                          "$SYS/broker/publish/messages/dropped"], capture_output=True,
                         text=True).stdout.strip()  # fmt: skip
    return int(out) if out.isdigit() else None


def stop_all(children: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every child still running, then give each 30 s to exit."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=30)


def stored(db: Path, cluster_nodes: str) -> dict[str, set[int]]:
    """Every stored (node, seq) of the generator's nodes (node names start with the prefix)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        out: dict[str, set[int]] = {}
        rows = con.execute("SELECT node, seq FROM agent WHERE node LIKE ?", (cluster_nodes + "%",))
        for node, seq in rows:
            out.setdefault(node, set()).add(int(seq))
        return out
    finally:
        con.close()


def stored_count(db: Path) -> int:
    with contextlib.suppress(sqlite3.Error):
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(con.execute("SELECT count(*) FROM agent").fetchone()[0])
        finally:
            con.close()
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=10000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=30.0, help="left out of the means")
    parser.add_argument("--top", action="store_true", help="also run telemetryd top in tmux")
    parser.add_argument("--agent", action="store_true", help="also run one sim agent")
    parser.add_argument("--drain", type=float, default=300.0, help="most seconds to drain")
    parser.add_argument("--json", default="", help="write samples and summary here")
    parser.add_argument("--wal-max-bytes", type=int, default=0,
                        help="the aggregator's WAL bound (0: its default, 1 GiB)")  # fmt: skip
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    rate = args.nodes / args.interval
    print(f"machine: {machine()}")
    print(f"load: {args.nodes} nodes x {args.gpus} GPUs every {args.interval:g} s = "
          f"{rate:.0f} reports/s at QoS 1, for {args.seconds:.0f} s")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        # As examples/mosquitto sizes it: the aggregator's backlog is queued, not dropped.
        broker = start_broker(workdir, max_queued=4_000_000)
        url = f"mqtt://127.0.0.1:{broker.port}"
        tmux: Tmux | None = None
        children: list[subprocess.Popen[bytes]] = []
        try:
            aggregator, db = start_aggregator(url, workdir, args.wal_max_bytes)
            children.append(aggregator)
            procs = [Proc("aggregator", aggregator.pid), Proc("mosquitto", broker.pid or 0)]
            count = start([sys.executable, str(BENCH / "mqtt_count.py"), "--broker", url,
                           "--cluster", "bench", "--stats", str(workdir / "count.json")],
                          workdir, "count")  # fmt: skip
            children.append(count)
            procs.append(Proc("baseline subscriber", count.pid))
            if args.top:
                tmux = Tmux(workdir)
                top_pid, _ = tmux.start(f"{sys.executable} -m telemetryd top --broker {url} "
                                        "--cluster bench")  # fmt: skip
                procs.append(Proc("telemetryd top", top_pid))
            if args.agent:
                agent = start([sys.executable, "-m", "telemetryd", "agent", "--broker", url,
                               "--cluster", "soak", "--node", "soak-agent", "--interval", "1",
                               "--gpu-backend", "sim", "--state-dir",
                               str(workdir / "agent")], workdir, "agent")  # fmt: skip
                children.append(agent)
                procs.append(Proc("agent (8 sim GPUs)", agent.pid))
            stats = workdir / "loadgen.json"
            gen = start([sys.executable, str(BENCH / "loadgen.py"), "--broker", url,
                         "--cluster", "bench", "--nodes", str(args.nodes), "--gpus",
                         str(args.gpus), "--interval", str(args.interval), "--qos", "1",
                         "--seconds", str(args.seconds), "--stats", str(stats),
                         "--xid-per-s", "0"], workdir, "loadgen")  # fmt: skip
            children.append(gen)
            procs.append(Proc("loadgen", gen.pid))
            began = time.monotonic()
            header = "  ".join(f"{p.name[:14]:>14}" for p in procs)
            print(
                f"{'t s':>6}  {'published':>9}  {'stored':>9}  {header}   (CPU % / RSS MiB / fds)"
            )
            while gen.poll() is None:
                time.sleep(args.sample)
                now = time.monotonic()
                cells = []
                for p in procs:
                    row = p.sample(now)
                    cells.append(
                        "-"
                        if row is None or "cpu_pct" not in row
                        else f"{row['cpu_pct']:4.0f}/{row['rss_mib']:4.0f}/{row['fds']:3.0f}"
                    )
                published = int(read_json(stats).get("reports", 0))
                print(
                    f"{now - began:6.0f}  {published:9d}  {stored_count(db):9d}  "
                    + "  ".join(f"{c:>14}" for c in cells),
                    flush=True,
                )
            gen_stats = read_json(stats)
            published = int(gen_stats.get("reports", 0))
            drained_at = time.monotonic()
            while stored_count(db) < published and time.monotonic() - drained_at < args.drain:
                time.sleep(1)
            drain_s = time.monotonic() - drained_at
            dropped = broker_dropped(broker.port)
            full = (workdir / "aggregator.log").read_text().count("WAL full")
            aggregator.send_signal(signal.SIGTERM)
            aggregator.wait(timeout=60)
            got = stored(db, "node-")
            have = sum(len(s) for s in got.values())
            baseline = read_json(workdir / "count.json")
            summary: dict[str, Any] = {
                "published": published, "stored_distinct": have, "lost": published - have,
                "nodes_seen": len(got), "drain_after_stop_s": round(drain_s, 1),
                "broker_dropped": dropped, "wal_full_episodes": full,
                "generator_behind_max_s": gen_stats.get("behind_max_s"),
                "baseline_counted": baseline.get("messages"),
                "processes": {p.name: p.summary(args.warmup) for p in procs},
            }  # fmt: skip
        finally:
            if tmux is not None:
                tmux.stop()
            stop_all(children)
            broker.stop()
    report(summary, rate)
    if args.json:
        samples = {p.name: p.samples for p in procs}
        Path(args.json).write_text(json.dumps({"summary": summary, "samples": samples}))


def report(summary: dict[str, Any], rate: float) -> None:
    print(f"\npublished {summary['published']}, stored {summary['stored_distinct']} distinct "
          f"(node, seq), lost {summary['lost']}; backlog stored {summary['drain_after_stop_s']} s "
          f"after the generator stopped; generator at most {summary['generator_behind_max_s']} s "
          f"behind its schedule; the broker dropped {summary['broker_dropped']}; the WAL was "
          f"full {summary['wal_full_episodes']} time(s)")  # fmt: skip
    procs = summary["processes"]
    base = procs.get("baseline subscriber", {}).get("cpu_pct")
    print(f"{'process':<22} {'CPU %':>6} {'x base':>7} {'RSS start':>9} {'RSS end':>8} "
          f"{'RSS max':>8} {'fds':>9} {'threads':>7}")  # fmt: skip
    for name, s in procs.items():
        if not s:
            continue
        ratio = f"{s['cpu_pct'] / base:.2f}" if base else "-"
        print(f"{name:<22} {s['cpu_pct']:6.1f} {ratio:>7} {s['rss_start_mib']:9.1f} "
              f"{s['rss_end_mib']:8.1f} {s['rss_max_mib']:8.1f} "
              f"{s['fds_start']:4.0f}->{s['fds_end']:<4.0f} {s['threads_end']:7.0f}")  # fmt: skip
    agg = procs.get("aggregator", {})
    if agg:
        print(f"aggregator: {agg['cpu_pct'] / 100 / rate * 1000:.2f} ms of CPU per report at "
              f"{rate:.0f} reports/s")  # fmt: skip


if __name__ == "__main__":
    main()
