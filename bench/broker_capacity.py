#!/usr/bin/env python3
"""Capacity of the embedded broker (amqtt through telemetryd.broker.serve), next to Mosquitto.

    .venv/bin/python bench/broker_capacity.py            # about 2 minutes, loopback only
    .venv/bin/python bench/broker_capacity.py --quick    # smaller numbers, about 1 minute

It measures three things. Each broker under test runs in its own process, so psutil can
read its CPU time and it does not share an event loop with the clients:

1. Throughput. N publisher connections (in one process) send 8 KiB QoS 1 messages, each
   with a window of unacknowledged messages, to one QoS 1 subscriber (in another
   process). The same workload runs against amqtt and against /usr/sbin/mosquitto
   (started on a free port with a minimal config in a temporary directory), and the
   ratio is printed. The clients are raw asyncio MQTT, so they cost little next to
   paho. On a small machine the clients still share the CPUs with the broker; their CPU
   use is printed so a client-bound number can be recognised.
2. Idle connections (amqtt). 100, 500, then 1000 clients connect with keepalive 30 and
   send one PINGREQ each during a 5 s hold. The run stops early if connects fail or the
   p99 ping time goes over 1 s.
3. Agent load (amqtt and Mosquitto). N agents each connect with a Last Will, publish a
   retained status, then publish one 8 KiB report every 10 s (staggered). One QoS 1
   subscriber reads everything. Printed: the broker's CPU over the window and the p99
   PUBACK latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

MOSQUITTO = "/usr/sbin/mosquitto"
PAYLOAD = b"x" * 8192
HOST = "127.0.0.1"


# --- a minimal MQTT 3.1.1 client: cheap enough that the broker, not the client, is measured


def _str(value: str) -> bytes:
    data = value.encode()
    return struct.pack("!H", len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    length, out = len(body), bytearray([first])
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out) + body


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, await reader.readexactly(length)


class Raw:
    """One MQTT 3.1.1 connection: QoS 1 publish, subscribe and ping, awaited by packet id."""

    def __init__(self, on_message: Callable[[str, bytes], None] | None = None) -> None:
        self.on_message = on_message
        self._waiting: dict[tuple[int, int], asyncio.Future[None]] = {}
        self._next_id = 0
        self._task: asyncio.Task[None] | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(
        self, port: int, client_id: str, keepalive: int = 30, will: tuple[str, bytes] | None = None
    ) -> None:
        reader, self.writer = await asyncio.open_connection(HOST, port)
        flags = 0x02 | ((0x04 | 0x08 | 0x20) if will else 0)  # clean; will QoS 1 retained
        body = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + _str(client_id)
        if will:
            body += _str(will[0]) + struct.pack("!H", len(will[1])) + will[1]
        self.writer.write(_packet(0x10, body))
        first, ack = await asyncio.wait_for(_read_packet(reader), 30)
        if first != 0x20 or ack[1] != 0:
            raise ConnectionError(f"CONNACK {ack!r}")
        self._task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                first, body = await _read_packet(reader)
                kind = first >> 4
                if kind == 3:  # PUBLISH
                    size = struct.unpack_from("!H", body)[0]
                    at = 2 + size
                    if (first >> 1) & 3:
                        assert self.writer is not None
                        self.writer.write(b"\x40\x02" + body[at : at + 2])  # PUBACK
                        at += 2
                    if self.on_message:
                        self.on_message(body[2 : 2 + size].decode(), body[at:])
                elif kind in (4, 9):  # PUBACK, SUBACK
                    self._done((kind, struct.unpack_from("!H", body)[0]))
                elif kind == 13:  # PINGRESP
                    self._done((13, 0))
        except (asyncio.IncompleteReadError, OSError) as exc:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError(f"connection lost: {exc!r}"))

    def _done(self, key: tuple[int, int]) -> None:
        future = self._waiting.pop(key, None)
        if future and not future.done():
            future.set_result(None)

    async def _request(self, key: tuple[int, int], packet: bytes) -> None:
        assert self.writer is not None
        future = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        self.writer.write(packet)
        await future

    def _id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        pid = self._id()
        body = _str(topic) + struct.pack("!H", pid) + payload
        await self._request((4, pid), _packet(0x32 | int(retain), body))

    async def subscribe(self, topic_filter: str) -> None:
        pid = self._id()
        await self._request(
            (9, pid), _packet(0x82, struct.pack("!H", pid) + _str(topic_filter) + b"\x01")
        )

    async def ping(self) -> float:
        started = time.monotonic()
        await self._request((13, 0), b"\xc0\x00")
        return time.monotonic() - started

    async def close(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(OSError):
                self.writer.write(b"\xe0\x00")
                self.writer.close()
        if self._task:
            self._task.cancel()


# --- roles run as child processes


def role_broker(port: int) -> None:
    """Run telemetryd's embedded broker until SIGTERM."""
    import logging

    from telemetryd.broker import serve
    from telemetryd.config import BrokerConfig

    logging.basicConfig(level=logging.WARNING)

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await serve(BrokerConfig(listen=f"{HOST}:{port}"), stop=stop)

    asyncio.run(main())


def role_sub(port: int, expect: int, idle_s: float) -> None:
    """Subscribe to bench/#, print READY, then a JSON line once all (or no more) arrived."""
    got = {"n": 0, "first": 0.0, "last": 0.0}

    def on_message(topic: str, payload: bytes) -> None:
        now = time.monotonic()
        got["first"] = got["first"] or now
        got["last"] = now
        got["n"] += 1

    async def main() -> None:
        sub = Raw(on_message)
        await sub.open(port, "bench-sub", keepalive=60)
        await sub.subscribe("bench/#")
        print("READY", flush=True)
        deadline = time.monotonic() + 150
        while got["n"] < expect and time.monotonic() < deadline:
            before = got["n"]
            await asyncio.sleep(idle_s)
            if got["n"] == before and before:
                break  # nothing more is coming
        await sub.close()

    asyncio.run(main())
    cpu = sum(psutil.Process().cpu_times()[:2])
    print(json.dumps({**got, "cpu": cpu}), flush=True)


def role_pub(port: int, conns: int, count: int, window: int) -> None:
    """Publish count QoS 1 messages on each of conns connections; print a JSON line."""

    async def one(index: int, client: Raw) -> None:
        slots = asyncio.Semaphore(window)
        pending: set[asyncio.Task[None]] = set()
        for _ in range(count):
            await slots.acquire()
            task = asyncio.create_task(client.publish(f"bench/{index}", PAYLOAD))
            task.add_done_callback(lambda _t: slots.release())
            pending.add(task)
        await asyncio.gather(*pending)

    async def main() -> dict[str, float]:
        clients = [Raw() for _ in range(conns)]
        await asyncio.gather(*(c.open(port, f"bench-pub-{i}") for i, c in enumerate(clients)))
        started = time.monotonic()
        await asyncio.gather(*(one(i, c) for i, c in enumerate(clients)))
        ended = time.monotonic()
        for c in clients:
            await c.close()
        return {"start": started, "end": ended}

    result = asyncio.run(main())
    cpu = sum(psutil.Process().cpu_times()[:2])
    print(json.dumps({**result, "sent": conns * count, "cpu": cpu}), flush=True)


# --- the orchestrator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[Any], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"broker not listening on {port} after {timeout} s")


@contextlib.contextmanager
def broker(kind: str) -> Iterator[tuple[int, psutil.Process]]:
    """Start amqtt (telemetryd.broker.serve) or Mosquitto on a free port, in its own process."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "amqtt":
            cmd = [sys.executable, __file__, "broker", "--port", str(port)]
        else:
            conf = Path(tmp) / "mosquitto.conf"
            conf.write_text(
                f"listener {port} {HOST}\nallow_anonymous true\npersistence false\n"
                "max_queued_messages 1000000\nlog_dest none\n"
            )
            cmd = [MOSQUITTO, "-c", str(conf)]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        try:
            _wait_port(port, proc)
            yield port, psutil.Process(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def throughput(kind: str, conns: int, count: int, window: int) -> dict[str, float]:
    expect = conns * count
    with broker(kind) as (port, proc):
        me = [sys.executable, __file__]
        sub = subprocess.Popen(
            [*me, "sub", "--port", str(port), "--expect", str(expect)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert sub.stdout is not None
        if sub.stdout.readline().strip() != "READY":
            raise RuntimeError("subscriber did not start")
        cpu0 = _cpu(proc)
        load = ["--conns", str(conns), "--count", str(count), "--window", str(window)]
        pub = subprocess.run(
            [*me, "pub", "--port", str(port), *load],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        got = json.loads(sub.communicate(timeout=120)[0].strip().splitlines()[-1])
        cpu1 = _cpu(proc)
    sent = json.loads(pub.stdout.strip().splitlines()[-1])
    span = max(got["last"], sent["end"]) - sent["start"]
    return {
        "sent": sent["sent"],
        "received": got["n"],
        "seconds": span,
        "msg_per_s": got["n"] / span if span > 0 else 0.0,
        # CPU per 1000 messages, and over the busy span (an idle broker uses ~0 CPU, so
        # the time around the run, which includes process start-up, adds almost nothing).
        "broker_cpu_s_per_1k": 1000 * (cpu1 - cpu0) / max(1, got["n"]),
        "broker_cpu_pct": 100 * (cpu1 - cpu0) / span if span > 0 else 0.0,
        "publisher_cpu_s": sent["cpu"],
        "subscriber_cpu_s": got["cpu"],
    }


async def _open_many(port: int, clients: list[Raw], start: int, prefix: str) -> int:
    """Connect clients[start:] at most 50 at a time; the number that failed."""
    gate = asyncio.Semaphore(50)

    async def one(i: int) -> bool:
        async with gate:
            try:
                await clients[i].open(port, f"{prefix}-{i}", keepalive=30)
            except (OSError, ConnectionError, TimeoutError):
                return False
            return True

    results = await asyncio.gather(*(one(i) for i in range(start, len(clients))))
    return results.count(False)


async def idle_connections(
    port: int, proc: psutil.Process, steps: list[int]
) -> list[dict[str, float]]:
    clients: list[Raw] = []
    rows: list[dict[str, float]] = []
    for target in steps:
        start = len(clients)
        clients += [Raw() for _ in range(target - start)]
        began = time.monotonic()
        failed = await _open_many(port, clients, start, "idle")
        connect_s = time.monotonic() - began
        cpu0, wall0 = _cpu(proc), time.monotonic()

        async def ping_later(c: Raw) -> float:
            await asyncio.sleep(random.uniform(0, 4.5))
            try:
                return await asyncio.wait_for(c.ping(), 5)
            except (TimeoutError, ConnectionError):
                return float("inf")

        rtts = sorted(await asyncio.gather(*(ping_later(c) for c in clients)))
        await asyncio.sleep(max(0.0, 5 - (time.monotonic() - wall0)))
        row = {
            "clients": target,
            "connect_failures": failed,
            "connect_s": connect_s,
            "ping_p50_ms": 1000 * rtts[len(rtts) // 2],
            "ping_p99_ms": 1000 * rtts[int(len(rtts) * 0.99)],
            "broker_cpu_pct": 100 * (_cpu(proc) - cpu0) / (time.monotonic() - wall0),
            "broker_rss_mib": proc.memory_info().rss / 2**20,
        }
        rows.append(row)
        print(
            f"  {target:5d} idle clients: connect {connect_s:5.1f} s ({failed} failed), "
            f"ping p50 {row['ping_p50_ms']:.1f} ms p99 {row['ping_p99_ms']:.1f} ms, "
            f"broker {row['broker_cpu_pct']:.1f}% CPU, {row['broker_rss_mib']:.0f} MiB",
            flush=True,
        )
        if failed or row["ping_p99_ms"] > 1000:
            print("  degraded: stopping here", flush=True)
            break
    await asyncio.gather(*(c.close() for c in clients))
    return rows


async def agent_load(
    port: int, proc: psutil.Process, agents: int, seconds: float, interval: float
) -> dict[str, float]:
    received = {"n": 0}
    sub = Raw(lambda topic, payload: received.__setitem__("n", received["n"] + 1))
    await sub.open(port, "aggregator", keepalive=60)
    await sub.subscribe("telemetry/v1/+/+/report")
    clients = [Raw() for _ in range(agents)]
    gate = asyncio.Semaphore(50)

    async def connect(i: int) -> None:
        async with gate:
            status = f"telemetry/v1/bench/n{i}/status"
            await clients[i].open(
                port, f"agent-{i}", keepalive=30, will=(status, b'{"online":false}')
            )
            await clients[i].publish(status, b'{"online":true}', retain=True)

    await asyncio.gather(*(connect(i) for i in range(agents)))
    latencies: list[float] = []

    async def agent(i: int, until: float) -> None:
        await asyncio.sleep(interval * i / agents)  # staggered, as real agents drift apart
        while time.monotonic() < until:
            began = time.monotonic()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(
                    clients[i].publish(f"telemetry/v1/bench/n{i}/report", PAYLOAD), 10
                )
                latencies.append(time.monotonic() - began)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - began)))

    cpu0, wall0 = _cpu(proc), time.monotonic()
    await asyncio.gather(*(agent(i, wall0 + seconds) for i in range(agents)))
    cpu1, wall1 = _cpu(proc), time.monotonic()
    await asyncio.sleep(1)
    latencies.sort()
    await asyncio.gather(*(c.close() for c in clients), sub.close())
    return {
        "agents": agents,
        "published": len(latencies),
        "received": received["n"],
        "broker_cpu_pct": 100 * (cpu1 - cpu0) / (wall1 - wall0),
        "puback_p99_ms": 1000 * latencies[int(len(latencies) * 0.99)]
        if latencies
        else float("nan"),
        "broker_rss_mib": proc.memory_info().rss / 2**20,
    }


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mosquitto = subprocess.run(
        [MOSQUITTO, "-h"], capture_output=True, text=True
    ).stdout.splitlines()
    return (
        f"{model}, {psutil.cpu_count(logical=False)} cores / {os.cpu_count()} threads, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB; Linux {platform.release()}; "
        f"Python {platform.python_version()}; amqtt {importlib.metadata.version('amqtt')}; "
        f"{mosquitto[0] if mosquitto else 'mosquitto ?'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("role", nargs="?", default="run", choices=["run", "broker", "sub", "pub"])
    parser.add_argument("--quick", action="store_true", help="smaller numbers, about 1 minute")
    parser.add_argument("--port", type=int)
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--conns", type=int, default=8)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--agents", type=int, default=1000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    if args.role == "broker":
        return role_broker(args.port)
    if args.role == "sub":
        return role_sub(args.port, args.expect, idle_s=5.0)
    if args.role == "pub":
        return role_pub(args.port, args.conns, args.count, args.window)

    count = 500 if args.quick else args.count
    agents = 300 if args.quick else args.agents
    seconds = 10.0 if args.quick else 20.0
    started = time.monotonic()
    print(f"machine: {machine()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}; command: {' '.join(sys.argv)}")
    print(
        f"\n1. throughput: {args.conns} publishers x {count} x 8 KiB QoS 1 "
        f"(window {args.window}) -> 1 QoS 1 subscriber"
    )
    result: dict[str, Any] = {"throughput": {}}
    for kind in ("amqtt", "mosquitto"):
        row = throughput(kind, args.conns, count, args.window)
        result["throughput"][kind] = row
        print(
            f"  {kind:9s}: {row['msg_per_s']:8.0f} msg/s "
            f"({row['received']}/{row['sent']} received in {row['seconds']:.2f} s); "
            f"broker {row['broker_cpu_pct']:.0f}% of a core, "
            f"{row['broker_cpu_s_per_1k']:.3f} CPU s per 1000 msg; client CPU in all: "
            f"pub {row['publisher_cpu_s']:.1f} s, sub {row['subscriber_cpu_s']:.1f} s",
            flush=True,
        )
    ratio = (
        result["throughput"]["amqtt"]["msg_per_s"] / result["throughput"]["mosquitto"]["msg_per_s"]
    )
    result["ratio_amqtt_over_mosquitto"] = ratio
    print(f"  amqtt / mosquitto = {ratio:.3f}")

    print("\n2. idle connections on amqtt (keepalive 30 s, one PINGREQ each in a 5 s hold)")
    with broker("amqtt") as (port, proc):
        result["idle"] = asyncio.run(idle_connections(port, proc, [100, 500, 1000]))

    print(
        f"\n3. agent load: {agents} agents x one 8 KiB QoS 1 report / 10 s, "
        f"1 subscriber, {seconds:g} s"
    )
    result["agents"] = {}
    for kind in ("amqtt", "mosquitto"):
        with broker(kind) as (port, proc):
            row = asyncio.run(agent_load(port, proc, agents, seconds, 10.0))
        result["agents"][kind] = row
        print(
            f"  {kind:9s}: broker {row['broker_cpu_pct']:.1f}% of a core, "
            f"{row['broker_rss_mib']:.0f} MiB; {row['published']} published, "
            f"{row['received']} received; PUBACK p99 {row['puback_p99_ms']:.1f} ms",
            flush=True,
        )
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    print("json: " + json.dumps(result))


if __name__ == "__main__":
    main()
