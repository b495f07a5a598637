"""Helpers for end-to-end tests: real agent and aggregator processes, a witness, the store.

Loss is counted exactly, by sequence number: each report has (node, boot, seq). A witness
subscriber (its own persistent QoS 1 session, started before any agent) records what the
broker delivered; the aggregator's store must hold every report the witness saw, each
boot's numbers must be contiguous, and the agents' spools must be empty at the end (every
report sampled was acknowledged by the broker).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt

from exporters.sqlite_reader import SqliteReader

Key = tuple[str, str, int]  # node, boot_id, seq


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail the test naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRYD_")}
    env.pop("CREDENTIALS_DIRECTORY", None)
    env.update(extra)
    return env


RUNNING: list[Service] = []  # killed at test teardown, whatever happened


class Service:
    """A telemetryd service as a real process, with its log kept for failures."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args = args
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        handle = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "telemetryd", "--log-level", "info", *self.args],
            env=self.env, stdout=handle, stderr=subprocess.STDOUT,
        )  # fmt: skip
        handle.close()
        RUNNING.append(self)
        return self

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: no goodbye, no flush."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def wait_log(self, text: str, timeout: float = 15.0) -> Service:
        """Wait until the service's log contains ``text`` (e.g. it has subscribed)."""
        wait_until(lambda: self.log.exists() and text in self.log.read_text(errors="replace"),
                   timeout, f"{text!r} in {self.log.name}")  # fmt: skip
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def agent(
    tmp: Path, broker: str, node: str, *, interval: float = 0.2, gpus: int = 2,
    cluster: str = "c1", **settings: str,
) -> Service:  # fmt: skip
    """An agent on the simulator; ``settings`` become TELEMETRYD_AGENT_<KEY> variables."""
    state = tmp / f"agent-{node}"
    env = _env({
        "TELEMETRYD_AGENT_SIM_GPUS": str(gpus),
        "TELEMETRYD_AGENT_COLLECTORS": "host",
        "TELEMETRYD_AGENT_BACKLOG_RATE": "200",
        "TELEMETRYD_AGENT_RECONNECT_MAX": "1",
        **{f"TELEMETRYD_AGENT_{k.upper()}": v for k, v in settings.items()},
    })  # fmt: skip
    args = ["agent", "--broker", broker, "--node", node, "--cluster", cluster,
            "--interval", str(interval), "--gpu-backend", "sim",
            "--state-dir", str(state)]  # fmt: skip
    return Service(args, env, tmp / f"agent-{node}.log")


def aggregator(tmp: Path, broker: str, **settings: str) -> Service:
    """An aggregator with its default SQLite store in its state directory."""
    extra = {f"TELEMETRYD_AGGREGATOR_{k.upper()}": v for k, v in settings.items()}
    env = _env({"TELEMETRYD_AGGREGATOR_RECONNECT_MAX": "1", **extra})
    args = ["aggregator", "--broker", broker, "--state-dir", str(tmp / "aggregator")]
    return Service(args, env, tmp / "aggregator.log")


def spool_files(tmp: Path, node: str) -> list[Path]:
    """Reports still waiting in an agent's spool."""
    spool = tmp / f"agent-{node}" / "spool"
    return sorted(spool.glob("*.json")) if spool.exists() else []


def stored(tmp: Path, name: str = "aggregator") -> set[Key]:
    """(node, boot, seq) of every report in the SQLite store of aggregator ``name``."""
    db = tmp / name / "telemetry.db"
    if not db.exists():
        return set()
    reader = SqliteReader(str(db))
    try:
        return set(reader.report_keys())
    finally:
        reader.close()


def by_boot(keys: set[Key]) -> dict[tuple[str, str], list[int]]:
    """Sequence numbers per (node, boot), sorted."""
    out: dict[tuple[str, str], list[int]] = defaultdict(list)
    for node, boot, seq in keys:
        out[(node, boot)].append(seq)
    return {k: sorted(v) for k, v in out.items()}


def holes(seqs: list[int]) -> int:
    """Numbers missing between the first and the last."""
    return (seqs[-1] - seqs[0] + 1) - len(seqs) if seqs else 0


class Witness:
    """An independent persistent QoS 1 subscriber recording every report the broker delivers."""

    def __init__(self, port: int, topic: str = "telemetry/v1/+/+/report") -> None:
        self.keys: set[Key] = set()
        self.statuses: list[tuple[float, dict[str, object]]] = []
        self._lock = threading.Lock()
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"witness-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        client.on_message = self._on_message
        client.on_connect = lambda c, *_: c.subscribe([(topic, 1), ("telemetry/v1/+/+/status", 1)])
        client.reconnect_delay_set(0.2, 1)
        client.connect("127.0.0.1", port, keepalive=5)
        client.loop_start()
        self.client = client

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        try:
            data = json.loads(message.payload)
            key = (data["node"], data["boot_id"], data["seq"]) if "seq" in data else None
        except (ValueError, KeyError, TypeError):
            return  # the vandal's messages: the aggregator must refuse them, we ignore them
        with self._lock:
            if message.topic.endswith("/status"):
                self.statuses.append((time.monotonic(), data))
            elif (
                key is not None
                and isinstance(key[2], int)
                and message.topic.split("/")[3] == key[0]
            ):
                self.keys.add(key)

    def seen(self) -> set[Key]:
        with self._lock:
            return set(self.keys)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def retained(port: int, topic: str, wait: float = 1.0) -> dict[str, bytes]:
    """What a client connecting now is handed as retained on ``topic`` (a filter)."""
    got: dict[str, bytes] = {}
    lock = threading.Lock()

    def on_message(_c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        if message.retain:
            with lock:
                got[message.topic] = bytes(message.payload)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"look-{uuid.uuid4().hex[:8]}")
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(topic, 1)
    client.connect("127.0.0.1", port, keepalive=5)
    client.loop_start()
    time.sleep(wait)
    client.loop_stop()
    client.disconnect()
    with lock:
        return dict(got)
