"""What systemd hears from real services: READY only once connected, STATUS, the watchdog
fed only while the sample loop makes progress, and SIGTERM within 5 s with ``offline``
published and everything accepted written.

The notify socket is a real AF_UNIX datagram socket bound in a temporary directory and
passed as NOTIFY_SOCKET, as systemd does; the broker is a real Mosquitto.
"""

from __future__ import annotations

import asyncio
import signal
import time

from telemetryd import agent as agent_mod
from telemetryd.config import AgentConfig
from telemetryd.wal import Wal
from tests.integration.mosquitto import free_port
from tests.integration.pipeline import (
    Service,
    Witness,
    _env,
    agent,
    aggregator,
    spool_files,
    wait_until,
)
from tests.unit.test_sdnotify import Socket
from tests.unit.test_sdnotify import notify_socket as notify_socket  # the fixture

WATCHDOG_USEC = "400000"  # a ping every 0.2 s


def _notified(service, sock: Socket) -> None:  # type: ignore[no-untyped-def]
    service.env.update(NOTIFY_SOCKET=sock.address, WATCHDOG_USEC=WATCHDOG_USEC)


def _rate(status: str) -> float:
    """The reports/s of an aggregator's STATUS= line (0 when it has none)."""
    words = status.split("; ")[1].split() if "; " in status else []
    return float(words[0]) if words[1:2] == ["reports/s,"] else 0.0


def _sigterm(service) -> float:  # type: ignore[no-untyped-def]
    """SIGTERM, wait for the exit; the seconds it took (the exit code must be 0)."""
    started = time.monotonic()
    service.proc.send_signal(signal.SIGTERM)
    code = service.proc.wait(timeout=15)
    took = time.monotonic() - started
    assert code == 0, service.tail()
    return took


def test_agent_ready_only_once_connected_then_stops_within_5s(
    tmp_path, mosquitto_factory, notify_socket
):
    broker = mosquitto_factory(start=False)
    node = agent(tmp_path, broker.url, "n1", interval=0.2)
    _notified(node, notify_socket)
    node.start()
    time.sleep(2.5)
    assert node.alive(), node.tail()
    assert notify_socket.lines("READY") == []  # no broker yet: not ready
    statuses = notify_socket.lines("STATUS")
    assert statuses and statuses[0].startswith(f"connecting to {broker.url}")
    assert len(notify_socket.lines("WATCHDOG")) >= 5  # alive while it waits for the broker

    broker.start()
    witness = Witness(broker.port)
    try:
        wait_until(lambda: notify_socket.lines("READY") == ["1"], 10, "READY=1")
        ready = next(m for m in notify_socket.got if m.startswith("READY=1"))
        assert f"STATUS=connected to {broker.url}; " in ready
        wait_until(lambda: len(witness.seen()) >= 5, 10, "reports")
        node.proc.send_signal(signal.SIGHUP)  # a reload: RELOADING=1, then READY=1 again
        wait_until(lambda: notify_socket.lines("READY") == ["1", "1"], 10, "READY=1 again")
        assert notify_socket.lines("RELOADING") == ["1"]
        took = _sigterm(node)
        print(f"\n[agent] exited {took:.2f} s after SIGTERM")
        assert took < 5.0
        assert notify_socket.lines("STOPPING") == ["1"]
        assert notify_socket.lines("STATUS")[-1] == "stopping"
        wait_until(lambda: any(s["state"] == "offline" for _, s in witness.statuses), 5,
                   "offline")  # fmt: skip
        offline = [s for _, s in witness.statuses if s["state"] == "offline"]
        assert offline[-1]["reason"] == "shutdown"
        assert spool_files(tmp_path, "n1") == []  # everything sampled reached the broker
    finally:
        witness.close()


def test_aggregator_ready_after_connect_and_sigterm_flushes_within_5s(
    tmp_path, mosquitto, notify_socket
):
    witness = Witness(mosquitto.port)
    agg = aggregator(tmp_path, mosquitto.url)
    _notified(agg, notify_socket)
    node = agent(tmp_path, mosquitto.url, "n1", interval=0.1)
    try:
        agg.start()
        wait_until(lambda: notify_socket.lines("READY") == ["1"], 15, "READY=1")
        assert "consuming" in agg.log.read_text()  # subscribed before READY
        node.start()
        wait_until(lambda: len(witness.seen()) >= 20, 15, "reports")
        # STATUS= every 10 s: wait for one that saw reports flowing.
        wait_until(lambda: any(_rate(s) > 0 for s in notify_socket.lines("STATUS")), 15,
                   "a STATUS with a rate")  # fmt: skip
        status = next(s for s in notify_socket.lines("STATUS") if _rate(s) > 0)
        assert status.startswith(f"consuming from {mosquitto.url}; "), status
        assert "sinks: sqlite" in status and "alert(s) firing" in status
        assert 3 < _rate(status) < 100, status  # one report every 0.1 s: about 10/s

        took = _sigterm(agg)  # while reports keep coming
        print(f"\n[aggregator] exited {took:.2f} s after SIGTERM")
        assert took < 5.0
        assert notify_socket.lines("STOPPING") == ["1"]
        # Flushed: the store holds every record the WAL accepted.
        wal = Wal(tmp_path / "aggregator" / "wal", max_bytes=1 << 30)
        wal.open()
        try:
            (cursor,) = wal.directory.glob("cursor-sqlite-*")  # the one sink's
            written = int(cursor.read_text())
            assert written == wal.next_index > wal.first_index
        finally:
            wal.close()
        assert _sigterm(node) < 5.0
    finally:
        witness.close()


def test_no_watchdog_ping_while_the_sample_loop_hangs(tmp_path, monkeypatch, notify_socket):
    """In process: a sampler whose sample never returns stops the pings, nothing else does."""
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.address)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    hang, release = asyncio.Event(), asyncio.Event()
    samples: list[int] = []
    real_open = agent_mod.open_sampler

    def open_sampler(cfg: AgentConfig):  # type: ignore[no-untyped-def]
        sampler = real_open(cfg)
        real_sample = sampler.sample

        async def sample(seq: int = 0):  # type: ignore[no-untyped-def]
            samples.append(seq)
            if hang.is_set():
                await release.wait()  # a driver call that does not come back (until released)
            return await real_sample(seq)

        sampler.sample = sample  # type: ignore[method-assign]
        return sampler

    monkeypatch.setattr(agent_mod, "open_sampler", open_sampler)
    cfg = AgentConfig(node="n1", broker="mqtt://127.0.0.1:1", gpu_backend="sim",
                      collectors=[], interval=0.1, state_dir=str(tmp_path / "state"))  # fmt: skip

    async def go() -> tuple[int, int]:
        stop = asyncio.Event()
        task = asyncio.create_task(agent_mod.serve(cfg, stop))
        counts = await notify_socket.pings_while_hung(hang, healthy_s=1.0, grace_s=0.35,
                                                      stuck_s=1.0)  # fmt: skip
        stop.set()
        release.set()
        await asyncio.wait_for(task, 10)
        return counts

    healthy, stuck = asyncio.run(go())
    assert len(samples) >= 5
    assert healthy >= 5  # sampling every 0.1 s, waiting between: pings every 0.1 s
    assert stuck == 0
    assert notify_socket.lines("READY") == []  # never connected
    assert notify_socket.lines("STOPPING") == ["1"]


def test_embedded_broker_ready_when_listening_and_stops_within_5s(tmp_path, notify_socket):
    listen = f"127.0.0.1:{free_port()}"
    env = _env({"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": WATCHDOG_USEC})
    broker = Service(["broker", "--listen", listen], env, tmp_path / "broker.log").start()
    wait_until(lambda: notify_socket.lines("READY") == ["1"], 15, "READY=1")
    assert f"listening on {listen}" in notify_socket.lines("STATUS")
    witness = Witness(int(listen.rsplit(":", 1)[1]))  # it does accept clients
    witness.close()
    wait_until(lambda: len(notify_socket.lines("WATCHDOG")) >= 3, 5, "watchdog pings")
    took = _sigterm(broker)
    print(f"\n[broker] exited {took:.2f} s after SIGTERM")
    assert took < 5.0
    assert notify_socket.lines("STOPPING") == ["1"]
