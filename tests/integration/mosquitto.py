"""A real Mosquitto broker for integration tests, and the certificates to talk TLS to it.

Integration tests run Debian's ``mosquitto`` (2.0.x), not a fake: the loss, persistence, ACL
and mTLS behaviour under test is the broker's own. Each broker gets a temporary directory
holding its config, its persistence DB and its log, listens on 127.0.0.1 only, and keeps its
port across restarts so clients can reconnect to the same URL.

The fixtures in ``tests/integration/conftest.py`` wrap this module; import from here when a
test needs the class itself (``from tests.integration.mosquitto import Mosquitto``).
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import trustme
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

MOSQUITTO_BIN = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD_BIN = "/usr/bin/mosquitto_passwd"
INSTALL_HINT = "install Debian's mosquitto package (scripts/test does)"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The kernel picks it (bind to port 0). Another process could take it before the broker
    binds; on loopback in a test run that race is rare enough to accept.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def in_ci() -> bool:
    """Whether we run under CI, where a missing service is a failure rather than a skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_binary(name: str, path: str, hint: str) -> str:
    """A server's binary: ``path`` or ``name`` on PATH; skip locally, fail under CI."""
    if Path(path).is_file() and os.access(path, os.X_OK):
        return path
    found = shutil.which(name)
    if found:
        return found
    if in_ci():
        pytest.fail(f"{path} not found (a missing service fails in CI): {hint}")
    pytest.skip(hint)


def mosquitto_binary() -> str:
    """The broker binary, or skip (locally) / fail (in CI) when it is not installed."""
    return require_binary("mosquitto", MOSQUITTO_BIN, INSTALL_HINT)


def mosquitto_passwd_binary() -> str:
    """``mosquitto_passwd`` (same package), with the same skip/fail rule as the broker."""
    return require_binary("mosquitto_passwd", MOSQUITTO_PASSWD_BIN, INSTALL_HINT)


class MosquittoError(RuntimeError):
    """The broker did not start or stop as asked; the message carries its log tail."""


class Mosquitto:
    """One ``mosquitto -c <conf>`` subprocess on 127.0.0.1:<port> with its own directory.

    By default the config is the test broker: anonymous plain MQTT, persistence with a 1 s
    autosave, no broker-side queue limit and ``$SYS`` every second (see ``base_config``).
    ``extra_config`` lines are appended after the ``listener`` line, so listener options
    (``cafile``, ``require_certificate``...) apply to that listener and global options
    (``acl_file``...) apply globally (``per_listener_settings`` is false by default).
    ``config`` replaces the whole file instead (a test that derives its config from
    ``examples/mosquitto``); it must then carry its own ``listener`` lines and should
    include ``common_lines()`` (persistence and log in ``workdir``, ``user root`` under
    root). The broker is up when every listener port in it accepts connections.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        extra_config: Iterable[str] = (),
        allow_anonymous: bool = True,
        config: str | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._port = port if port is not None else free_port()
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        # Errors before the log file is open (a bad config line) go to stderr.
        self.stderr_path = self.workdir / "mosquitto.stderr"
        self.db_path = self.workdir / "mosquitto.db"
        self._proc: subprocess.Popen[bytes] | None = None
        if config is None:
            config = self.base_config(allow_anonymous=allow_anonymous, extra=extra_config)
        self.config = config
        self.conf_path.write_text(config)

    def base_config(self, *, allow_anonymous: bool = True, extra: Iterable[str] = ()) -> str:
        """The test broker's config: persistence on, no broker-side drops, fast ``$SYS``."""
        lines = [
            "# Written by tests/integration/mosquitto.py for one test.",
            *self.common_lines(),
            # Tests measure OUR loss, so the broker must not drop: Mosquitto's default
            # max_queued_messages 1000 silently drops QoS 1 messages for an offline or slow
            # subscriber beyond 1000. A large bound instead of 0 (no limit) still stops a
            # runaway test from eating the machine's memory.
            "max_queued_messages 100000",
            "max_queued_bytes 0",
            "max_inflight_messages 100",
            # $SYS counters (e.g. messages dropped) every second instead of every 10 s.
            "sys_interval 1",
            f"allow_anonymous {'true' if allow_anonymous else 'false'}",
            f"listener {self._port} 127.0.0.1",
            *extra,
        ]
        return "\n".join(lines) + "\n"

    def common_lines(self) -> list[str]:
        """Lines every test broker needs, whatever the rest of its config says."""
        lines = [
            "persistence true",
            # 2.0 adds the "/" itself (its log shows "//mosquitto.db"); older versions
            # concatenated location and file name, hence the habit of a trailing slash.
            f"persistence_location {self.workdir}/",
            "persistence_file mosquitto.db",
            # The DB is a periodic snapshot (plus a save on clean exit): a kill -9 or a crash
            # loses whatever arrived since the last save. 1 s bounds that to about 1 s of
            # queued state in tests; the default is 1800 s.
            "autosave_interval 1",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            # As root, mosquitto drops to the `mosquitto` user by default, which cannot
            # write the test's private temporary directory; stay root instead.
            lines.append("user root")
        return lines

    # -- identity -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The first listener's port; the same across restarts."""
        return self._port

    @property
    def host(self) -> str:
        """Always loopback."""
        return "127.0.0.1"

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:<port>`` (plain listener; TLS tests build ``mqtts://``)."""
        return f"mqtt://127.0.0.1:{self._port}"

    @property
    def pid(self) -> int | None:
        """The running broker's pid, or None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the subprocess is alive."""
        return self._proc is not None and self._proc.poll() is None

    def listener_ports(self) -> list[int]:
        """Every ``listener <port>`` in the config (all must accept before start() returns)."""
        ports = [int(m) for m in re.findall(r"^\s*listener\s+(\d+)", self.config, re.MULTILINE)]
        return ports or [self._port]

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT_S) -> Mosquitto:
        """Start the broker and wait until every listener accepts TCP connections.

        Raises:
            MosquittoError: it exited (a bad config, a port in use) or did not listen
                within ``timeout``; the message carries the log tail.
        """
        if self.running:
            raise MosquittoError(f"mosquitto on port {self._port} is already running")
        binary = mosquitto_binary()
        with self.stderr_path.open("ab") as err:
            self._proc = subprocess.Popen(
                [binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + timeout
        pending = self.listener_ports()
        while pending:
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self._proc = None
                raise MosquittoError(
                    f"mosquitto exited with status {rc} at start\n{self.log_tail()}"
                )
            if _accepts(pending[0]):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                self.kill()
                raise MosquittoError(
                    f"mosquitto did not listen on {pending} within {timeout:g} s\n{self.log_tail()}"
                )
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and wait: a clean exit saves the persistence DB. SIGKILL after ``timeout``.

        Returns the exit status, or None when it was not running.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL: no final save, so only the last autosave survives (a crash)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        return proc.returncode

    def restart(self, *, hard: bool = False) -> Mosquitto:
        """Stop (or kill, with ``hard``) and start again on the same port and directory."""
        if hard:
            self.kill()
        else:
            self.stop()
        return self.start()

    def save(self) -> None:
        """Force a save of the persistence DB now (SIGUSR1) without stopping."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGUSR1)

    def reload(self) -> None:
        """SIGHUP: re-read the config, the ACL and the password file."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGHUP)

    # -- diagnostics ----------------------------------------------------------------------

    def log_text(self) -> str:
        """The whole log (and anything mosquitto wrote to stderr before the log opened)."""
        parts = []
        for path in (self.stderr_path, self.log_path):
            with contextlib.suppress(FileNotFoundError):
                text = path.read_text(errors="replace")
                if text:
                    parts.append(text)
        return "".join(parts)

    def wait_for_log(self, text: str, timeout: float = 5.0) -> bool:
        """Whether ``text`` shows up in the log within ``timeout``.

        Poll rather than read once: the broker may log an event after the client has
        already seen its effect (a TLS alert is sent before the error line is written).
        """
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log, headed with where the full log lies.

        Runs of autosave lines (one a second or two) are folded into their last one, so the
        tail shows connections and errors rather than a wall of "Saving in-memory database".
        """
        kept: list[str] = []
        saves = 0
        for line in self.log_text().splitlines():
            if "Saving in-memory database" in line:
                saves += 1
                if kept and "Saving in-memory database" in kept[-1]:
                    kept[-1] = f"{line} (x{saves})"
                    continue
            else:
                saves = 0
            kept.append(line)
        tail = "\n".join(kept[-lines:])
        return f"--- mosquitto {self.url} log tail ({self.log_path}) ---\n{tail}"

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<Mosquitto {self.url} {state} dir={self.workdir}>"


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of one TLS identity: the CA to trust, the certificate and its key.

    Usable as-is by mosquitto (``cafile``/``certfile``/``keyfile``), mosquitto_pub/sub
    (``--cafile/--cert/--key``), paho (``tls_set(ca_certs=, certfile=, keyfile=)``) and
    aiomqtt (``aiomqtt.TLSParameters(**files.as_tls_kwargs())``).
    """

    ca: Path
    cert: Path
    key: Path

    def as_tls_kwargs(self) -> dict[str, str]:
        """``ca_certs``/``certfile``/``keyfile`` for paho ``tls_set`` or aiomqtt."""
        return {"ca_certs": str(self.ca), "certfile": str(self.cert), "keyfile": str(self.key)}

    def mosquitto_client_args(self) -> list[str]:
        """The same files as mosquitto_pub/mosquitto_sub options."""
        return ["--cafile", str(self.ca), "--cert", str(self.cert), "--key", str(self.key)]


class Certs:
    """A throwaway CA (trustme) and the certificates a TLS test needs, written to files.

    ``server`` is valid for 127.0.0.1 and localhost. ``client(name)`` returns a client
    certificate whose subject CN is ``name``: with ``use_identity_as_username true`` that
    CN is the MQTT username Mosquitto's ACL ``%u`` sees. A second ``Certs`` in another
    directory is an unrelated CA (a certificate the broker must refuse).
    """

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA(organization_name="telemetryd tests")
        self.ca_file = self.dir / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.server = self._issue("server", "127.0.0.1", "localhost", common_name="localhost")
        self._clients: dict[str, TLSFiles] = {}

    def client(self, name: str) -> TLSFiles:
        """A client certificate with CN ``name`` (made once per name, then reused)."""
        if name not in self._clients:
            # The SAN is an e-mail address so that any CN works (trustme would read a bare
            # name as a DNS name, and "_fleet" is not one); Mosquitto only looks at the CN.
            san = f"{name}@clients.telemetryd.test"
            self._clients[name] = self._issue(f"client-{name}", san, common_name=name)
        return self._clients[name]

    def listener_lines(self, *, require_certificate: bool = True) -> list[str]:
        """Config lines that make the preceding ``listener`` use this CA (mTLS by default).

        ``mosquitto_factory(extra_config=certs.listener_lines())`` turns the test broker's
        listener into TLS where the client certificate's CN is the MQTT username.
        """
        lines = [
            f"cafile {self.ca_file}",
            f"certfile {self.server.cert}",
            f"keyfile {self.server.key}",
            "tls_version tlsv1.2",
        ]
        if require_certificate:
            lines += ["require_certificate true", "use_identity_as_username true"]
        return lines

    def _issue(self, stem: str, *identities: str, common_name: str) -> TLSFiles:
        leaf = self.ca.issue_cert(*identities, common_name=common_name)
        cert = self.dir / f"{stem}.crt"
        key = self.dir / f"{stem}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
        return TLSFiles(ca=self.ca_file, cert=cert, key=key)


def make_password_file(path: Path, users: dict[str, str]) -> Path:
    """Write a mosquitto password file (hashed, with ``mosquitto_passwd -b``)."""
    binary = mosquitto_passwd_binary()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    for user, password in users.items():
        subprocess.run(
            [binary, "-b", str(path), user, password],
            check=True,
            capture_output=True,
            timeout=10,
        )
    return path


@dataclass(frozen=True)
class Received:
    """One message a ``SyncClient`` received."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


class SyncClient:
    """A small blocking paho client for broker tests: every call returns what the broker said.

    ``connect()`` returns the CONNACK reason code (0 = accepted) or raises ``OSError`` (TLS
    refusals included) when the connection fails before any CONNACK. ``publish()``
    returns the PUBACK reason code (MQTT 5 carries one; MQTT 3.1.1 PUBACKs are always 0),
    ``subscribe()`` the SUBACK codes, and messages land in ``received`` / ``wait_for()``.
    Tests may use paho directly: the one-module rule is for product code only.
    """

    def __init__(
        self,
        port: int,
        *,
        client_id: str = "",
        tls: TLSFiles | None = None,
        ca_file: Path | None = None,
        username: str | None = None,
        password: str | None = None,
        v5: bool = True,
        clean: bool = True,
        session_expiry: int = 0,
        will: tuple[str, bytes] | None = None,
        tls_max_version: ssl.TLSVersion | None = None,
    ) -> None:
        self.port = port
        self.v5 = v5
        self.clean = clean
        self.session_expiry = session_expiry
        protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if v5 else clean,
            protocol=protocol,
            reconnect_on_failure=False,
        )
        if tls is not None or ca_file is not None:
            # ca_file (to verify the broker) wins over tls.ca: a client holding a
            # certificate from another CA still has to trust the broker to try.
            trusted = ca_file if ca_file is not None else tls.ca  # type: ignore[union-attr]
            context = ssl.create_default_context(cafile=str(trusted))
            if tls is not None:
                context.load_cert_chain(str(tls.cert), str(tls.key))
            if tls_max_version is not None:
                context.maximum_version = tls_max_version
            self._client.tls_set_context(context)
        if username is not None:
            self._client.username_pw_set(username, password)
        if will is not None:
            self._client.will_set(will[0], will[1], qos=1, retain=True)
        self._lock = threading.Lock()
        self._connack: int | None = None
        self._connected = threading.Event()
        self._disconnected = threading.Event()
        self.disconnect_reason: int | None = None
        self._acks: dict[int, int] = {}
        self._acked = threading.Condition(self._lock)
        self._subacks: dict[int, list[int]] = {}
        self.received: queue.Queue[Received] = queue.Queue()
        c = self._client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self._looping = False

    # paho callbacks (run in paho's network thread) ------------------------------------

    def _on_connect(self, _c: object, _u: object, _f: object, rc: Any, _p: object) -> None:
        self._connack = int(rc.value)
        self._connected.set()

    def _on_disconnect(self, _c: object, _u: object, _f: object, rc: Any, _p: object) -> None:
        self.disconnect_reason = int(rc.value)
        self._disconnected.set()
        self._connected.set()  # wake a connect() that will never get its CONNACK

    def _on_publish(self, _c: object, _u: object, mid: int, rc: Any, _p: object) -> None:
        with self._acked:
            self._acks[mid] = int(rc.value)
            self._acked.notify_all()

    def _on_subscribe(self, _c: object, _u: object, mid: int, rcs: Any, _p: object) -> None:
        with self._acked:
            self._subacks[mid] = [int(rc.value) for rc in rcs]
            self._acked.notify_all()

    def _on_message(self, _c: object, _u: object, msg: Any) -> None:
        self.received.put(Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))

    # calls ------------------------------------------------------------------------------

    def connect(self, timeout: float = 5.0) -> int:
        """Connect and return the CONNACK reason code; raise OSError if there is none."""
        kwargs: dict[str, Any] = {"keepalive": 30}
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            if self.session_expiry:
                props.SessionExpiryInterval = self.session_expiry
            kwargs["clean_start"] = self.clean
            kwargs["properties"] = props
        self._connected.clear()
        self._disconnected.clear()
        self._connack = None
        self._client.connect("127.0.0.1", self.port, **kwargs)
        if not self._looping:
            self._client.loop_start()
            self._looping = True
        if not self._connected.wait(timeout):
            raise TimeoutError(f"no CONNACK from 127.0.0.1:{self.port} within {timeout} s")
        if self._connack is None:
            raise ConnectionError(
                f"connection closed before CONNACK (reason {self.disconnect_reason})"
            )
        return self._connack

    def publish(
        self, topic: str, payload: bytes = b"x", *, qos: int = 1, retain: bool = False
    ) -> int:
        """Publish and return the PUBACK reason code (QoS 1), or 0 for QoS 0."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if qos == 0:
            return 0
        return self._wait_ack(self._acks, info.mid, f"PUBACK for {topic}")

    def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        """Subscribe and return the SUBACK codes (granted QoS, or >= 0x80 refused)."""
        _rc, mid = self._client.subscribe(topic, qos)
        assert mid is not None
        return self._wait_ack(self._subacks, mid, f"SUBACK for {topic}")

    def _wait_ack(self, table: dict[int, Any], mid: int, what: str, timeout: float = 5.0) -> Any:
        with self._acked:
            if not self._acked.wait_for(lambda: mid in table, timeout):
                raise TimeoutError(f"no {what} within {timeout} s")
            return table.pop(mid)

    def wait_for(self, topic: str, timeout: float = 5.0) -> Received:
        """The next message on ``topic`` (others received meanwhile are discarded)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"nothing on {topic} within {timeout} s")
            try:
                msg = self.received.get(timeout=remaining)
            except queue.Empty:
                continue
            if msg.topic == topic:
                return msg

    def drain(self, quiet: float = 0.5) -> list[Received]:
        """Everything received until nothing arrives for ``quiet`` seconds."""
        out = []
        while True:
            try:
                out.append(self.received.get(timeout=quiet))
            except queue.Empty:
                return out

    def wait_disconnected(self, timeout: float = 5.0) -> bool:
        """Whether the broker closed the connection within ``timeout``."""
        return self._disconnected.wait(timeout)

    def disconnect(self) -> None:
        """Send DISCONNECT (no will) and stop the network thread."""
        if self._client.is_connected():
            self._client.disconnect()
            self._disconnected.wait(5)
        self.close()

    def close(self) -> None:
        """Stop the network thread and drop the socket without DISCONNECT."""
        if self._looping:
            self._client.loop_stop()
            self._looping = False
        sock = self._client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.disconnect()
