"""Load generator: N simulated nodes of G GPUs, each publishing one report per interval.

What goes on the wire is what agents send: a retained online ``Status`` per node at the
start, then per node one ``Report`` per interval on telemetry/v1/<cluster>/<node>/report
(QoS 0 or 1), its ``seq`` counting up, and now and then an XID event (in the report and
as an ``EventMessage`` on .../event, as the agent does). The nodes' publishes are spread
evenly over the interval (node k of N at k/N of it), not sent in bursts.

The generator must stay cheap: on a small machine it shares the cores with the broker and
the process being measured. So every node's report is encoded once, from one real report of
the simulator (8 simulated H100s by default, plus this machine's host section); each node
gets its own name, boot id and GPU UUIDs, and the numbers that move (seq, time, and per
GPU the utilisation, temperature and power) become holes in a ``bytes`` format string.
Their values come from precomputed tables (busy and idle phases, temperature lagging the
load, power following it), so a message costs one ``%`` and one publish. Rare XID reports
are decoded, given their event and re-encoded (at the default rate, a few per minute).

Publishing goes through telemetryd's own ``MqttSession`` (exporters/mqtt.py), one
connection for the whole fleet (the broker's fan-out to a viewer is the same as from 1,000
connections; the connections themselves are not what is measured here).

Usage: python bench/loadgen.py --broker mqtt://127.0.0.1:1883 [--nodes 1000] [--gpus 8]
       [--interval 1] [--qos 0] [--seconds 0 (until Ctrl-C)] [--stats FILE]
Prints what it published and its own CPU use. Retained statuses are cleared on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from exporters.mqtt import MqttSession, MqttSettings, MqttUnavailable
from telemetryd.codec import encode_json
from telemetryd.config import AgentConfig, SimConfig
from telemetryd.model import (
    Event,
    EventMessage,
    GpuInventory,
    GpuOwner,
    GpuProcess,
    JobGpu,
    JobRecord,
    Report,
    Status,
    decode_report,
    encode_report,
)
from telemetryd.sampler import open_sampler
from telemetryd.topics import node_topic
from telemetryd.urls import parse_broker_url
from telemetryd.xid import describe

TABLES = 16  # distinct value tables; node n uses table n % TABLES
STEPS = 300  # intervals per table before it repeats
XIDS = (13, 31, 43, 45, 63, 94)  # application faults and contained errors: GPUs stay up
MAX_INFLIGHT = 2000  # QoS 1 publishes awaiting their PUBACK

# Stand-ins written into the template, then replaced by format holes. Large and distinct,
# so each occurs exactly once in the encoded report.
_SEQ, _TIME = 9_000_000_001, 9_000_000_002
_TEMP, _POWER, _UTIL = 9_100_000_000, 9_200_000_000, 9_300_000_000


@dataclass
class Fleet:
    """Everything pre-encoded: per node its topic, report format and status; value tables."""

    cluster: str
    interval: float
    names: list[str]
    topics: list[str]
    formats: list[bytes]  # % (seq, time_ns, *row): row = per GPU temp, power, util (bytes)
    offsets: list[int]  # where in its table each node starts
    statuses: list[bytes]
    tables: list[list[tuple[bytes, ...]]]
    report_bytes: int


def build_fleet(
    cluster: str, nodes: int, gpus: int, interval: float, seed: int = 0, *, jobs: bool = False
) -> Fleet:
    """Encode every node's report template from one sampled simulator report.

    ``jobs``: reports as an agent with a job map sends them (issue 7): each half of a
    node's GPUs held by a Slurm job (``owners``), every GPU process attributed (user,
    command, job, step, cgroup unit) and the two running job records.
    """
    rng = random.Random(seed)
    cfg = AgentConfig(node="bench-0", cluster=cluster, gpu_backend="sim",
                      sim=SimConfig(gpus=gpus, seed=seed), collectors=["host"])  # fmt: skip
    sampler = open_sampler(cfg)
    try:
        sampled = encode_report(asyncio.run(sampler.sample(seq=0)))
    finally:
        sampler.close()
    width = len(str(nodes - 1))
    fleet = Fleet(cluster, interval, [], [], [], [], [], make_tables(rng, gpus), 0)
    for n in range(nodes):
        report = decode_report(sampled)
        report.node, report.boot_id = f"node-{n:0{width}d}", uuid.UUID(int=rng.getrandbits(128)).hex
        report.interval_s, report.events = interval, []
        report.seq, report.time_ns = _SEQ, _TIME
        for gpu in report.gpus:
            gpu.uuid = f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{report.node}/{gpu.index}')}"
            gpu.temp_c = _TEMP + gpu.index  # type: ignore[assignment]
            gpu.power_w = _POWER + gpu.index  # type: ignore[assignment]
            gpu.util_gpu_pct = _UTIL + gpu.index
        if jobs:
            _add_jobs(report, n)
        fleet.formats.append(_format(encode_report(report), gpus))
        fleet.names.append(report.node)
        fleet.topics.append(node_topic(cluster, report.node, "report"))
        fleet.offsets.append(rng.randrange(STEPS))
        inventory = [GpuInventory(index=g.index, uuid=g.uuid, name=g.name,
                                  pci_bus_id=g.pci_bus_id) for g in report.gpus]  # fmt: skip
        fleet.statuses.append(encode_json(Status(
            schema=1, state="online", cluster=cluster, node=report.node,
            boot_id=report.boot_id, time_ns=time.time_ns(), version=report.agent.version,
            interval_s=interval, reason="connected", gpus=inventory)))  # fmt: skip
    fleet.report_bytes = len(fleet.formats[0] % ((1, time.time_ns(), *fleet.tables[0][0])))
    return fleet


def _add_jobs(report: Report, n: int) -> None:
    """Two Slurm jobs per node, each on half its GPUs, as the agent would report them."""
    half = max(1, len(report.gpus) // 2)
    ids = [str(1_000_000 + 2 * n), str(1_000_000 + 2 * n + 1)]
    start = 1_790_000_000_000_000_000  # fixed: the template holds the report time only once
    for gpu in report.gpus:
        job = ids[min(1, gpu.index // half)]
        gpu.owners = [GpuOwner(source="jobmap", job=job)]
        gpu.processes = [
            GpuProcess(pid=100_000 + 10 * gpu.index, type="compute", used_memory_bytes=40 << 30,
                       sm_util_pct=90, mem_util_pct=40, user="alice",
                       command="python train.py --config llama-70b.yaml --nodes 64",
                       cpu_pct=99.5, rss_bytes=12 << 30, job=job, step="0",
                       unit="slurmstepd.scope")
        ]  # fmt: skip
    report.jobs = [
        JobRecord(job=job, kind="hpc", state="running", start_ns=start,
                  end_ns=start + 3_600_000_000_000, samples=3600, user="alice",
                  energy_mj=4 * 2_500_000_000, mean_power_w=2800.0, util_mean_pct=88.5,
                  util_peak_pct=100, mem_peak_bytes=60 << 30,
                  gpus=[JobGpu(index=g.index, uuid=g.uuid, start_ns=start,
                               energy_mj=2_500_000_000)
                        for g in report.gpus if ids[min(1, g.index // half)] == job])
        for job in ids
    ]  # fmt: skip


def _format(encoded: bytes, gpus: int) -> bytes:
    """The encoded report as a ``bytes`` format: %d seq, %d time, then %b per GPU value."""
    text = encoded.replace(b"%", b"%%")
    holes = [(_SEQ, b"%d"), (_TIME, b"%d")]
    for i in range(gpus):
        holes += [(_TEMP + i, b"%b"), (_POWER + i, b"%b"), (_UTIL + i, b"%b")]
    last = -1
    for value, hole in holes:
        stand_in = b":%d" % value
        where = text.find(stand_in)
        if where < 0 or text.count(stand_in) != 1 or where < last:
            raise SystemExit(f"report template: {value} is missing, repeated or out of order")
        last = where
        text = text.replace(stand_in, b":" + hole)
    return text


def make_tables(rng: random.Random, gpus: int) -> list[list[tuple[bytes, ...]]]:
    """Per table, STEPS rows of (temp, power, util) per GPU, pre-formatted as JSON numbers.

    Each GPU alternates busy phases (util 80-100) and idle ones (0-10) of random length,
    with short ramps; temperature follows the load with a lag, power follows it directly.
    """
    tables = []
    for _ in range(TABLES):
        columns = []
        for _gpu in range(gpus):
            busy, left, temp = rng.random() < 0.7, rng.randint(5, 60), rng.uniform(35, 70)
            column = []
            for _step in range(STEPS):
                left -= 1
                if left <= 0:
                    busy, left = not busy, rng.randint(10, 90) if busy else rng.randint(3, 30)
                util = rng.randint(80, 100) if busy else rng.randint(0, 10)
                temp += (30 + 0.4 * util - temp) * 0.15 + rng.uniform(-0.5, 0.5)
                power = min(700.0, 70 + 6.2 * util + rng.uniform(-15, 15))
                column.append((b"%.1f" % temp, b"%.3f" % power, b"%d" % util))
            columns.append(column)
        tables.append([tuple(v for col in columns for v in col[s]) for s in range(STEPS)])
    return tables


def xid_report(payload: bytes, rng: random.Random) -> tuple[bytes, bytes]:
    """The same report with one XID event on a random GPU, and that event's EventMessage."""
    report = decode_report(payload)
    gpu = rng.choice(report.gpus)
    xid = describe(rng.choice(XIDS))
    event = Event(time_ns=report.time_ns, kind="xid", code=xid.code, name=xid.mnemonic,
                  message=xid.meaning, action=xid.action, severity=xid.severity,
                  gpu_index=gpu.index, uuid=gpu.uuid)  # fmt: skip
    report.events = [event]
    message = EventMessage(schema=1, cluster=report.cluster, node=report.node,
                           boot_id=report.boot_id, seq=report.seq, event=event)  # fmt: skip
    return encode_report(report), encode_json(message)


@dataclass
class Stats:
    """What the generator did so far; written to ``--stats`` every second."""

    started: float = 0.0
    started_cpu_s: float = 0.0
    ended: float = 0.0  # when publishing stopped (0: still publishing)
    ended_cpu_s: float = 0.0
    reports: int = 0
    events: int = 0
    behind_max_s: float = 0.0  # how late the latest publish left, at worst

    def snapshot(self) -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"time": time.monotonic(), "reports": self.reports, "events": self.events,
                "cpu_s": usage.ru_utime + usage.ru_stime, "behind_max_s": self.behind_max_s,
                "rss_mib": usage.ru_maxrss / 1024}  # fmt: skip

    def mark(self, end: bool = False) -> None:
        """Note the time and CPU at the start or end of publishing (imports, the build
        and the statuses are not the steady load)."""
        now, cpu = time.monotonic(), time.process_time()
        if end:
            self.ended, self.ended_cpu_s = now, cpu
        else:
            self.started, self.started_cpu_s = now, cpu


async def publish_fleet(
    session: MqttSession, fleet: Fleet, *, qos: int, seconds: float, xid_per_s: float,
    stop: asyncio.Event, stats: Stats, seed: int = 0, tick: float = 0.0,
) -> None:  # fmt: skip
    """Publish every node once per interval, node k at k/N of it, until stop or seconds."""
    rng = random.Random(seed + 1)
    nodes = len(fleet.formats)
    step = fleet.interval / nodes
    xid_chance = xid_per_s * step  # per report
    inflight: set[asyncio.Task[None]] = set()
    room = asyncio.Semaphore(MAX_INFLIGHT)
    failed: list[BaseException] = []

    def done(task: asyncio.Task[None]) -> None:
        inflight.discard(task)
        room.release()
        if not task.cancelled() and task.exception() is not None:
            failed.append(task.exception())  # type: ignore[arg-type]
            stop.set()

    stats.mark()
    start = stats.started
    end = start + seconds if seconds > 0 else float("inf")
    k = 0
    while not stop.is_set():
        due = start + k * step
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(max(tick, due - now))
            continue
        if due >= end:
            break
        stats.behind_max_s = max(stats.behind_max_s, now - due)
        n, seq = k % nodes, k // nodes
        k += 1
        table = fleet.tables[n % TABLES]
        row = table[(seq + fleet.offsets[n]) % STEPS]
        payload = fleet.formats[n] % (seq, time.time_ns(), *row)
        if rng.random() < xid_chance:
            payload, event = xid_report(payload, rng)
            await session.publish(node_topic(fleet.cluster, fleet.names[n], "event"), event,
                                  qos=1)  # fmt: skip
            stats.events += 1
        if qos == 0:
            await session.publish(fleet.topics[n], payload, qos=0)
        else:
            await room.acquire()
            task = asyncio.create_task(session.publish(fleet.topics[n], payload, qos=qos))
            inflight.add(task)
            task.add_done_callback(done)
        stats.reports += 1
    if inflight:
        await asyncio.wait(inflight, timeout=10)
    stats.mark(end=True)
    if failed:
        raise failed[0]


def save(path: Path, stats: Stats) -> None:
    """Replace ``path`` with the stats at once: a reader never sees half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(stats.snapshot()))
    tmp.replace(path)


async def write_stats(path: Path, stats: Stats) -> None:
    """Every second, what was published and the CPU spent (a harness reads this)."""
    while True:
        save(path, stats)
        await asyncio.sleep(1.0)


async def run(args: argparse.Namespace, fleet: Fleet) -> Stats:
    """Connect, announce the nodes, publish until told to stop, then clear the statuses."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # MQTT 3.1.1: paho builds no Properties object per publish (a third of its cost in 5).
    settings = MqttSettings(broker=parse_broker_url(args.broker), version=args.mqtt_version,
                            client_id=f"bench-loadgen-{os.getpid()}")  # fmt: skip
    stats = Stats()
    writer = asyncio.create_task(write_stats(Path(args.stats), stats)) if args.stats else None
    async with MqttSession(settings) as session:
        statuses = [node_topic(fleet.cluster, name, "status") for name in fleet.names]
        for topic, status in zip(statuses, fleet.statuses, strict=True):
            await session.publish(topic, status, qos=1, retain=True)
        try:
            await publish_fleet(session, fleet, qos=args.qos, seconds=args.seconds,
                                xid_per_s=args.xid_per_s, stop=stop, stats=stats,
                                seed=args.seed, tick=args.tick)  # fmt: skip
        finally:
            if writer is not None:
                writer.cancel()
                save(Path(args.stats), stats)
            if not args.keep_status:
                for topic in statuses:  # an empty retained payload deletes the retained one
                    await session.publish(topic, b"", qos=1, retain=True)
    return stats


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--cluster", default="bench")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between reports")
    parser.add_argument("--qos", type=int, choices=[0, 1], default=0)
    parser.add_argument("--seconds", type=float, default=0, help="run time (0: until SIGINT)")
    parser.add_argument("--xid-per-s", type=float, default=0.05, help="XID events, fleet-wide")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--jobs",
        action="store_true",
        help="reports with owners, attributed processes and job records",
    )
    parser.add_argument("--tick", type=float, default=0.005,
                        help="shortest sleep (s) between publishes; then all due go")  # fmt: skip
    parser.add_argument("--mqtt-version", choices=["5", "3.1.1"], default="3.1.1")
    parser.add_argument("--stats", default="", help="JSON file rewritten every second")
    parser.add_argument("--keep-status", action="store_true",
                        help="leave the retained online statuses on exit")  # fmt: skip
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.gpus < 1 or args.interval <= 0:
        parser.error("--nodes and --gpus must be at least 1 and --interval above 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.process_time()
    fleet = build_fleet(args.cluster, args.nodes, args.gpus, args.interval, args.seed,
                        jobs=args.jobs)  # fmt: skip
    build_s = time.process_time() - t0
    print(f"loadgen: {args.nodes} nodes x {args.gpus} GPUs every {args.interval:g} s "
          f"({args.nodes / args.interval:.0f} reports/s of {fleet.report_bytes} bytes, QoS "
          f"{args.qos}) to {args.broker}; templates built in {build_s:.1f} s CPU",
          flush=True)  # fmt: skip
    try:
        stats = asyncio.run(run(args, fleet))
    except MqttUnavailable as exc:
        raise SystemExit(f"loadgen: {exc}") from None
    elapsed = max(1e-9, stats.ended - stats.started)
    cpu = stats.ended_cpu_s - stats.started_cpu_s
    print(f"loadgen: {stats.reports} reports ({stats.reports / elapsed:.0f}/s) and "
          f"{stats.events} XID events in {elapsed:.1f} s; CPU {cpu:.1f} s "
          f"({100 * cpu / elapsed:.1f}% of one core, {1e6 * cpu / max(1, stats.reports):.0f} "
          f"us a report), at worst {1000 * stats.behind_max_s:.1f} ms behind schedule")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
