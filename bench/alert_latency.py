"""Time from a faulty sample leaving the agent to the on-call hook receiving its alert.

Method: Debian's Mosquitto and a real ``telemetryd aggregator`` (its own process, state in a
temp dir, the default rule pack, SQLite sink) run on loopback. Its routing file sends every
alert, each its own group (``group_by = ["..."]``, ``group_wait = "0s"``), to one
``webhook`` receiver: an aiohttp server in this process. The bench publishes the reports
of N simulated nodes (8 GPUs each, built from a real sampled report, each node with its own
boot, sequence and GPU UUIDs, QoS 1 as the agent does) at a steady rate, and at random
moments one report carries a fault: one GPU with XID 79 and ``gpu_lost`` (the default
pack's GpuFellOffBus), as the agent reports it. The node keeps reporting that GPU lost until
the firing notification arrives, then healthy again, so the alert resolves (a GPU is
faulted again only after its resolve was notified).
Measured per fault: the monotonic time just before the publish of the faulty report, and
the arrival of the webhook's firing notification for GpuFellOffBus with that node and UUID.
Baseline in the same run, on the same messages: a bare aiomqtt subscriber on the same
broker, timing the same faulty reports from publish to receipt (the transport floor).

Usage: python bench/alert_latency.py [--faults 300] [--nodes 50] [--rate 1.0]
Prints the machine, p50/p90/p99/max of both, their ratio, losses (faults without a
notification within 10 s), and the aggregator's CPU and RSS. Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import psutil
from aggregator_throughput import free_port, machine, start_mosquitto
from aiohttp import web

from telemetryd.codec import encode_json
from telemetryd.config import AgentConfig
from telemetryd.model import (
    Event,
    Gpu,
    GpuError,
    GpuInventory,
    Report,
    Status,
    decode_report,
    encode_report,
)
from telemetryd.sampler import open_sampler
from telemetryd.topics import node_topic
from telemetryd.xid import describe

CLUSTER = "bench"
ALERT = "GpuFellOffBus"
LOST_AFTER_S = 10.0  # a fault not notified within this is lost
FAULTS_PER_S = 2.5  # how densely faults are spread over the run
WARMUP_S = 5.0  # background load only: first-report alerts fire and are notified
XID79 = describe(79)


@dataclass(slots=True)
class Fault:
    node: str
    index: int
    uuid: str
    seq: int
    published_ns: int
    received_ns: int = 0  # by the bare subscriber
    notified_ns: int = 0  # by the webhook receiver


@dataclass(slots=True)
class Node:
    name: str
    boot: str
    report: Report  # this node's own copy of the sampled report, healthy
    healthy: list[Gpu]
    lost: dict[int, Fault] = field(default_factory=dict)  # GPU index -> its open fault
    recovered: list[int] = field(default_factory=list)  # to announce in the next report
    seq: int = 0


@dataclass
class State:
    faults: list[Fault] = field(default_factory=list)
    active: dict[tuple[str, str], Fault] = field(default_factory=dict)  # until resolved
    by_seq: dict[tuple[str, int], Fault] = field(default_factory=dict)
    others: Counter[str] = field(default_factory=Counter)  # other notifications
    resolves: int = 0  # GpuFellOffBus resolved, for a fault of ours
    repeats: int = 0  # GpuFellOffBus firing again for a fault already notified
    strays: int = 0  # GpuFellOffBus firing for no fault of ours
    requests: int = 0


# -- the simulated nodes ---------------------------------------------------------------------


def make_nodes(count: int) -> tuple[list[Node], int]:
    """``count`` nodes from one real sampled report; each has its own boot and GPU UUIDs."""
    sampler = open_sampler(AgentConfig(node="bench-0", cluster=CLUSTER, gpu_backend="sim",
                                       collectors=["host"]))  # fmt: skip
    template = encode_report(asyncio.run(sampler.sample()))
    sampler.close()
    nodes = []
    for n in range(count):
        report = decode_report(template)
        report.node, report.boot_id, report.events = f"node-{n:03d}", uuid.uuid4().hex, []
        for gpu in report.gpus:
            gpu.uuid = f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{report.node}/{gpu.index}')}"
        nodes.append(Node(report.node, report.boot_id, report, list(report.gpus)))
    return nodes, len(template)


def lost_gpu(gpu: Gpu) -> Gpu:
    """What the agent reports for a GPU that fell off the bus: its identity and the error."""
    error = GpuError(code="gpu_lost", message="GPU is lost (fell off the bus); treat as XID 79")
    return Gpu(index=gpu.index, uuid=gpu.uuid, pci_bus_id=gpu.pci_bus_id, name=gpu.name,
               driver=gpu.driver, cuda_driver=gpu.cuda_driver, serial=gpu.serial,
               vbios=gpu.vbios, arch=gpu.arch, error=error)  # fmt: skip


def next_report(node: Node, now_ns: int, fault: int | None) -> bytes:
    """The node's next report: lost GPUs as lost, a new fault's events, recoveries."""
    r = node.report
    r.seq, r.time_ns = node.seq, now_ns
    node.seq += 1
    r.gpus = [lost_gpu(g) if g.index in node.lost else g for g in node.healthy]
    r.events = []
    for index in node.recovered:
        gpu = node.healthy[index]
        r.events.append(Event(time_ns=now_ns, kind="gpu_recovered", severity="info",
                              gpu_index=index, uuid=gpu.uuid,
                              message="GPU readable again after gpu_lost"))  # fmt: skip
    node.recovered = []
    if fault is not None:
        gpu = node.healthy[fault]
        r.gpus[fault] = lost_gpu(gpu)
        r.events += [
            Event(time_ns=now_ns, kind="xid", code=79, name=XID79.mnemonic,
                  message=XID79.meaning, action=XID79.action, severity=XID79.severity,
                  gpu_index=fault, uuid=gpu.uuid),
            Event(time_ns=now_ns, kind="gpu_lost", severity="critical", gpu_index=fault,
                  uuid=gpu.uuid, message="GPU is lost (fell off the bus); treat as XID 79"),
        ]  # fmt: skip
    return encode_report(r)


def status(node: Node) -> bytes:
    inventory = [GpuInventory(index=g.index, uuid=g.uuid, name=g.name, pci_bus_id=g.pci_bus_id)
                 for g in node.healthy]  # fmt: skip
    return encode_json(Status(schema=1, state="online", cluster=CLUSTER, node=node.name,
                              boot_id=node.boot, time_ns=time.time_ns(), version="bench",
                              interval_s=node.report.interval_s, reason="connected",
                              gpus=inventory))  # fmt: skip


# -- the receiving ends ----------------------------------------------------------------------


def receiver(state: State, nodes: dict[str, Node]) -> web.Application:
    """The webhook receiver: Alertmanager's JSON, matched to our faults by node and UUID."""

    async def hook(request: web.Request) -> web.Response:
        now = time.monotonic_ns()
        body = await request.json()
        state.requests += 1
        for alert in body["alerts"]:
            labels = alert["labels"]
            if labels.get("alertname") != ALERT:
                state.others[f"{labels.get('alertname')} {alert['status']}"] += 1
                continue
            fault = state.active.get((labels.get("node", ""), labels.get("uuid", "")))
            if fault is None:
                state.strays += 1
            elif alert["status"] == "resolved":
                del state.active[(fault.node, fault.uuid)]  # the GPU may fault again
                state.resolves += 1
            elif fault.notified_ns:
                state.repeats += 1
            else:
                fault.notified_ns = now
                node = nodes[fault.node]
                if node.lost.pop(fault.index, None) is not None:
                    node.recovered.append(fault.index)  # healthy from the next report on
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    return app


async def bare_subscriber(port: int, state: State, ready: asyncio.Event) -> None:
    """The transport floor: the same faulty reports, timed from publish to receipt."""
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-bare") as client:
        await client.subscribe(node_topic(CLUSTER, "+", "report"), qos=1)
        ready.set()
        async for message in client.messages:
            now = time.monotonic_ns()
            payload = message.payload
            if isinstance(payload, bytes | bytearray) and b'"kind":"xid"' in payload:
                report = decode_report(bytes(payload))
                fault = state.by_seq.get((report.node, report.seq))
                if fault is not None:
                    fault.received_ns = now


# -- the load --------------------------------------------------------------------------------


async def load(port: int, nodes: list[Node], state: State, faults: int, rate: float) -> float:
    """Publish every node's reports until every fault is notified or given up; return seconds."""
    period = 1.0 / (rate * len(nodes))
    spread = faults / FAULTS_PER_S
    times = sorted(random.uniform(WARMUP_S, WARMUP_S + spread) for _ in range(faults))
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-agents") as client:
        for node in nodes:
            topic = node_topic(CLUSTER, node.name, "status")
            await client.publish(topic, status(node), qos=1, retain=True)
        start = time.monotonic()
        k = 0
        while True:
            due = start + k * period
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            node = nodes[k % len(nodes)]
            k += 1
            elapsed = time.monotonic() - start
            for index, open_fault in list(node.lost.items()):  # never notified: give it up
                if time.monotonic_ns() - open_fault.published_ns > LOST_AFTER_S * 1e9:
                    del node.lost[index]
                    node.recovered.append(index)
            fault = None
            if len(state.faults) < faults and times[len(state.faults)] <= elapsed:
                free = [g.index for g in node.healthy if (node.name, g.uuid) not in state.active]
                fault = random.choice(free) if free else None  # else: the next node's turn
            payload = next_report(node, time.time_ns(), fault)
            if fault is not None:
                gpu = node.healthy[fault]
                f = Fault(node.name, fault, gpu.uuid, node.seq - 1, published_ns=0)
                state.faults.append(f)
                state.active[(node.name, gpu.uuid)] = state.by_seq[(node.name, f.seq)] = f
                node.lost[fault] = f
                f.published_ns = time.monotonic_ns()  # just before it leaves the "agent"
            await client.publish(node_topic(CLUSTER, node.name, "report"), payload, qos=1)
            if len(state.faults) == faults:
                last = state.faults[-1].published_ns
                settled = all(f.notified_ns and f.received_ns for f in state.faults)
                if settled or time.monotonic_ns() - last > LOST_AFTER_S * 1e9:
                    return time.monotonic() - start


# -- the aggregator --------------------------------------------------------------------------


def routing_file(workdir: Path, hook_port: int) -> Path:
    path = workdir / "routing.toml"
    path.write_text(
        '[route]\nreceiver = "bench"\ngroup_by = ["..."]\ngroup_wait = "0s"\n'
        'group_interval = "30s"\nrepeat_interval = "4h"\n\n'
        '[[receiver]]\nname = "bench"\ntype = "webhook"\n'
        f'url = "http://127.0.0.1:{hook_port}/hook"\n'
    )
    return path


def start_aggregator(port: int, workdir: Path, routing: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRYD_")}
    env["TELEMETRYD_AGGREGATOR_CLIENT_ID"] = "bench-aggregator"
    env["TELEMETRYD_AGGREGATOR_ALERTS_ROUTING_FILE"] = str(routing)
    state = workdir / "aggregator"
    cmd = [sys.executable, "-m", "telemetryd", "--log-level", "info", "aggregator",
           "--broker", f"mqtt://127.0.0.1:{port}", "--state-dir", str(state)]  # fmt: skip
    log = workdir / "aggregator.log"
    out = open(log, "ab")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while "consuming" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"aggregator did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc


async def measure(
    port: int, hook_port: int, nodes: list[Node], faults: int, rate: float, agg: psutil.Process
) -> tuple[dict[str, float], State]:
    """Receiver and bare subscriber up, then the load; the aggregator's CPU over it."""
    state = State()
    runner = web.AppRunner(receiver(state, {n.name: n for n in nodes}), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", hook_port).start()
    ready = asyncio.Event()
    bare = asyncio.create_task(bare_subscriber(port, state, ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        cpu0 = sum(agg.cpu_times()[:2])
        seconds = await load(port, nodes, state, faults, rate)
        cpu = sum(agg.cpu_times()[:2]) - cpu0
        rss = agg.memory_info().rss / 2**20
    finally:
        bare.cancel()
        await runner.cleanup()
    reports = sum(n.seq for n in nodes)
    return {"seconds": seconds, "reports": reports, "cpu_s": cpu, "rss_mib": rss}, state


# -- figures ---------------------------------------------------------------------------------


def percentile(sorted_ms: list[float], p: float) -> float:
    """Nearest rank: the smallest value with at least ``p`` of the values at or below it."""
    return sorted_ms[max(0, math.ceil(p * len(sorted_ms)) - 1)]


def describe_ms(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    if not v:
        return {"n": 0}
    return {"n": len(v), "p50": percentile(v, 0.5), "p90": percentile(v, 0.9),
            "p99": percentile(v, 0.99), "max": v[-1]}  # fmt: skip


def line(what: str, d: dict[str, float]) -> str:
    if not d["n"]:
        return f"{what}  no samples"
    return (f"{what}  n={d['n']:.0f}  p50 {d['p50']:7.2f} ms  p90 {d['p90']:7.2f} ms  "
            f"p99 {d['p99']:7.2f} ms  max {d['max']:7.2f} ms")  # fmt: skip


def log_problems(log: Path) -> list[str]:
    lines = log.read_text().splitlines()
    return [ln for ln in lines if ln.startswith(("telemetryd: WARNING", "telemetryd: ERROR"))]


def count_lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faults", type=int, default=300, help="faulty reports (>= 1)")
    parser.add_argument("--nodes", type=int, default=50, help="simulated nodes, 8 GPUs each")
    parser.add_argument("--rate", type=float, default=1.0, help="reports per node per second")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the faults")
    args = parser.parse_args()
    if args.faults < 1 or args.nodes < 1 or args.rate <= 0:
        raise SystemExit("--faults and --nodes must be at least 1, --rate above 0")
    if shutil.which("mosquitto") is None:
        raise SystemExit("needs Debian's mosquitto")
    random.seed(args.seed)
    version = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout
    version = version.splitlines()[0].removeprefix("mosquitto version ") if version else "?"
    print(f"machine: {machine()}, Mosquitto {version}", flush=True)
    nodes, size = make_nodes(args.nodes)
    print(f"workload: {args.nodes} nodes x {args.rate:g} report/s ({size}-byte reports, "
          f"8 simulated H100s each), {args.faults} faults (XID 79 + gpu_lost on one GPU) "
          f"over ~{args.faults / FAULTS_PER_S:.0f} s, QoS 1, Mosquitto on loopback",
          flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        port, hook_port = free_port(), free_port()
        broker = start_mosquitto(workdir, port)
        try:
            proc = start_aggregator(port, workdir, routing_file(workdir, hook_port))
            try:
                agg, state = asyncio.run(measure(port, hook_port, nodes, args.faults, args.rate,
                                                 psutil.Process(proc.pid)))  # fmt: skip
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
        finally:
            broker.terminate()
            broker.wait()
        problems = log_problems(workdir / "aggregator.log")
        rejected = count_lines(workdir / "aggregator" / "deadletter.jsonl")
        undelivered = count_lines(workdir / "aggregator" / "alerts" / "deadletter.jsonl")
    faults = state.faults
    limit = LOST_AFTER_S * 1e9
    alert_ms = [(f.notified_ns - f.published_ns) / 1e6 for f in faults
                if f.notified_ns and f.notified_ns - f.published_ns <= limit]  # fmt: skip
    wire_ms = [(f.received_ns - f.published_ns) / 1e6 for f in faults if f.received_ns]
    alert, wire = describe_ms(alert_ms), describe_ms(wire_ms)
    lost = len(faults) - len(alert_ms)
    print(line("transport: publish -> bare aiomqtt subscriber   ", wire) + "  (baseline)")
    print(line("alert: publish -> webhook (GpuFellOffBus firing)", alert))
    if alert["n"] and wire["n"]:
        print(f"ratio alert / transport: p50 {alert['p50'] / wire['p50']:.1f}x, "
              f"p99 {alert['p99'] / wire['p99']:.1f}x")  # fmt: skip
    verdict = "none" if lost == 0 else "LOST"
    print(f"losses: {lost} of {len(faults)} faults without a notification within "
          f"{LOST_AFTER_S:.0f} s ({verdict}); transport losses {len(faults) - len(wire_ms)}; "
          f"resolves notified {state.resolves}, repeats {state.repeats}, "
          f"strays {state.strays}")  # fmt: skip
    others = ", ".join(f"{k} {v}" for k, v in sorted(state.others.items())) or "none"
    print(f"other notifications ({state.requests} webhook requests in all): {others}")
    share = 100 * agg["cpu_s"] / agg["seconds"]
    print(f"aggregator CPU {agg['cpu_s']:.1f} s over {agg['seconds']:.0f} s ({share:.0f}% of "
          f"a core; {agg['reports']:.0f} reports, {1000 * agg['cpu_s'] / agg['reports']:.2f} "
          f"ms each), RSS {agg['rss_mib']:.0f} MiB")  # fmt: skip
    print(f"aggregator: {rejected} reports rejected, {undelivered} notifications dead-lettered, "
          f"{len(problems)} warning/error log lines")  # fmt: skip
    for problem in problems[:5]:
        print(f"  {problem}")
    print(json.dumps({"faults": len(faults), "lost": lost,
                      **{f"alert_{k}_ms": round(v, 2) for k, v in alert.items() if k != "n"},
                      **{f"transport_{k}_ms": round(v, 2) for k, v in wire.items() if k != "n"},
                      "aggregator_cpu_s": round(agg["cpu_s"], 1),
                      "rss_mib": round(agg["rss_mib"])}))  # fmt: skip
    if lost:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
