"""The notify protocol against real datagram sockets, the watchdog's progress rule."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from telemetryd.sdnotify import Notifier, Supervisor, Watchdog


class Socket:
    """A bound AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.got: list[str] = []

    def drain(self) -> list[str]:
        """Every datagram received so far (kept in ``got``)."""
        while True:
            try:
                self.got.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.got

    def lines(self, key: str) -> list[str]:
        """The values of ``key`` over every datagram, in order."""
        out = []
        for message in self.drain():
            for line in message.split("\n"):
                name, _, value = line.partition("=")
                if name == key:
                    out.append(value)
        return out

    async def pings_while_hung(
        self, hang: asyncio.Event, *, healthy_s: float, grace_s: float, stuck_s: float
    ) -> tuple[int, int]:
        """WATCHDOG=1 pings in ``healthy_s``, then in ``stuck_s`` after ``hang`` + ``grace_s``.

        The grace: the unit of work under way when it hung may still earn one ping.
        """
        await asyncio.sleep(healthy_s)
        healthy = len(self.lines("WATCHDOG"))
        hang.set()
        await asyncio.sleep(grace_s)
        stuck_from = len(self.lines("WATCHDOG"))
        await asyncio.sleep(stuck_s)
        return healthy, len(self.lines("WATCHDOG")) - stuck_from


@pytest.fixture
def notify_socket() -> Iterator[Socket]:
    # A short directory: AF_UNIX paths are limited to 107 bytes, pytest's tmp_path may not be.
    with tempfile.TemporaryDirectory(prefix="sdn") as directory:
        sock = Socket(str(Path(directory) / "notify"))
        try:
            yield sock
        finally:
            sock.sock.close()


def test_outside_systemd_nothing_is_sent():
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.ping() is False
    assert Notifier.from_env({"WATCHDOG_USEC": "1000000"}).enabled is False


def test_messages_on_a_path_socket(notify_socket):
    notifier = Notifier.from_env({"NOTIFY_SOCKET": notify_socket.address})
    assert notifier.ready("connected to mqtt://b:1883;\n 3 reports")
    assert notifier.status("spool 0")
    assert notifier.stopping()
    assert notifier.ping()
    assert notify_socket.drain() == [
        "READY=1\nSTATUS=connected to mqtt://b:1883; 3 reports",  # one line
        "STATUS=spool 0",
        "STOPPING=1",
        "WATCHDOG=1",
    ]


def test_reloading_carries_the_monotonic_clock(notify_socket):
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier(notify_socket.address).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    (message,) = notify_socket.drain()
    fields = dict(line.split("=", 1) for line in message.split("\n"))
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after


def test_abstract_namespace_socket():
    sock = Socket(f"@telemetryd-test-{uuid.uuid4().hex}")
    try:
        assert Notifier(sock.address).ready()
        assert sock.drain() == ["READY=1"]
    finally:
        sock.sock.close()


def test_a_failed_send_is_logged_once_and_never_raised(tmp_path, caplog):
    notifier = Notifier(str(tmp_path / "gone"))
    with caplog.at_level(logging.WARNING, logger="telemetryd.sdnotify"):
        assert notifier.ready() is False
        assert notifier.ping() is False
    assert len(caplog.records) == 1
    assert "gone" in caplog.records[0].getMessage()


def test_watchdog_settings_follow_watchdog_pid():
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_env(env).watchdog_usec == 30_000_000
    assert Watchdog(Notifier.from_env(env)).period_s == 15.0  # pings at half the period
    mine = {**env, "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(mine).watchdog_usec == 30_000_000
    # Inherited by a child that is not the service's main process: not ours to feed.
    other = {**env, "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_env(other).watchdog_usec is None
    assert Notifier.from_env({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "x"}).watchdog_usec is None


def test_the_watchdog_pings_only_while_work_finishes(notify_socket):
    dog = Watchdog(Notifier(notify_socket.address), period_s=1.0)
    assert dog.tick()  # nothing open: a loop waiting for its next tick is healthy
    work = dog.enter()
    assert dog.tick()  # begun since the last tick: not stuck yet
    assert not dog.tick()  # open across a whole period, nothing finished: stuck
    assert not dog.tick()
    dog.beat()  # progress inside a long unit of work (e.g. one item of a backlog)
    assert dog.tick()
    assert not dog.tick()
    dog.leave(work)
    assert dog.tick()
    assert dog.tick()
    with dog.busy():
        assert dog.tick()
    assert dog.tick()
    assert notify_socket.lines("WATCHDOG") == ["1"] * dog.pings
    assert (dog.pings, dog.skipped) == (7, 3)


def test_the_watchdog_loop_stops_pinging_while_a_loop_hangs(notify_socket):
    dog = Watchdog(Notifier(notify_socket.address, watchdog_usec=100_000))
    assert dog.period_s == 0.05

    async def go() -> tuple[int, int]:
        stop = asyncio.Event()
        hang = asyncio.Event()
        task = asyncio.create_task(dog.run(stop))

        async def loop() -> None:
            while True:
                with dog.busy():
                    await asyncio.sleep(0.01)
                    if hang.is_set():
                        await asyncio.Event().wait()  # a sample that never returns
                await asyncio.sleep(0.01)

        worker = asyncio.create_task(loop())
        counts = await notify_socket.pings_while_hung(hang, healthy_s=0.5, grace_s=0.15,
                                                      stuck_s=0.5)  # fmt: skip
        worker.cancel()
        stop.set()
        await task
        return counts

    before, while_stuck = asyncio.run(go())
    assert before >= 5
    assert while_stuck == 0


def test_supervisor_ready_once_status_and_stopping(notify_socket):
    state = {"ready": False, "n": 0}

    def status() -> str:
        state["n"] += 1
        return f"status {state['n']}"

    notify = Supervisor(
        Notifier(notify_socket.address), ready=lambda: state["ready"], status=status, every_s=0.3
    )

    async def go() -> None:
        stop = asyncio.Event()
        notify.start(stop)
        await asyncio.sleep(0.5)
        starting = notify_socket.drain()
        assert "READY" not in "".join(starting)
        # while starting, each status extends systemd's start timeout by three periods
        assert starting and all("EXTEND_TIMEOUT_USEC=900000" in m for m in starting)
        state["ready"] = True
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.sleep(0.3)
        notify.close()
        notify.close()

    asyncio.run(go())
    messages = notify_socket.drain()
    ready = [i for i, m in enumerate(messages) if m.startswith("READY=1")]
    assert len(ready) == 1
    assert messages[ready[0]].startswith("READY=1\nSTATUS=status ")
    statuses = notify_socket.lines("STATUS")
    assert statuses[-1] == "stopping"
    assert 4 <= len(statuses) <= 10  # before ready, at ready, every 0.3 s, stopping
    assert notify_socket.lines("STOPPING") == ["1"]  # once, whoever noticed first
    assert not any("EXTEND_TIMEOUT_USEC" in m for m in messages[ready[0] :])  # ready: no more


def test_supervisor_outside_systemd_does_nothing():
    calls: list[str] = []
    notify = Supervisor(Notifier(None), ready=lambda: calls.append("r") or True,
                        status=lambda: "x")  # fmt: skip

    async def go() -> None:
        stop = asyncio.Event()
        notify.start(stop)
        await asyncio.sleep(0.3)
        stop.set()
        notify.close()

    asyncio.run(go())
    assert calls == []


def test_supervisor_reload_says_reloading_then_ready(notify_socket):
    notify = Supervisor(Notifier(notify_socket.address), ready=lambda: True, status=lambda: "ok")
    notify.reloading()
    notify.reloaded()
    assert notify_socket.drain() == []  # still starting: a reload is no news to systemd
    notify.readied = True
    notify.reloading()
    notify.reloaded()
    first, second = notify_socket.drain()
    assert first.startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert second == "READY=1\nSTATUS=ok"
