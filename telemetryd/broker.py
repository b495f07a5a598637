"""The embedded MQTT broker: amqtt behind one function, ``serve``.

It is for one machine and small sites (``telemetryd broker``, ``telemetryd demo``): a
broker that comes with pip. Bigger or critical sites use Mosquitto or EMQX
(docs/broker.md). This is the one module that imports amqtt.

amqtt handles sessions, QoS flows, retained messages, wills and routing. Three parts
are ours, because amqtt 0.12.1 gets them wrong for us:

* **The listener.** We run our own asyncio server and hand each connection to amqtt as
  an "external" listener. That gives a one-line "address in use" error instead of
  amqtt's logged traceback, and a TLS context we configure (TLS 1.2 or newer).
* **Authentication happens before amqtt sees the client.** amqtt clears or takes over
  the session of a client id *before* it asks its auth plugins. So an unauthenticated
  CONNECT that reuses the aggregator's client id would wipe the aggregator's queued
  messages (with clean_session=1) or kick it off (verified against 0.12.1). We read the
  CONNECT, check it against the password file (``user:argon2-hash`` lines, amqtt's
  FileAuthPlugin format; argon2 runs in a thread, about 20 ms each) and answer a
  refused client ourselves. amqtt gets only the CONNECTs we accept. Its auth plugin
  (``_Gate``) then says yes without flagging the session anonymous. amqtt neither
  queues for anonymous sessions nor keeps them after a disconnect, and its own
  AnonymousAuthPlugin flags everyone, so a persistent aggregator on the open loopback
  broker would get nothing that was published while it was away.
* **Keepalive.** amqtt ignores its own keepalive read timeout
  (``BrokerProtocolHandler.handle_read_timeout`` does nothing). A client that vanishes
  without sending FIN or RST (power loss, cable cut, frozen VM) would never be dropped
  and its Last Will never published. We abort any connection that has been silent for
  1.5 x its keepalive (MQTT-3.1.2-24); amqtt then publishes the will.

What amqtt 0.12.1 does and does not do (tests/integration/test_embedded_broker.py checks
each point, except those marked *by hand*):

* MQTT 3.1.1 only. An MQTT 5 CONNECT is refused with CONNACK 0x01 (unacceptable
  protocol version), and our client then falls back to 3.1.1. We send that refusal
  ourselves: amqtt misreads an MQTT 5 CONNECT that carries a username and waits until
  the client times out. No shared subscriptions:
  a ``$share/...`` filter gets a SUBACK but never matches anything (*by hand*).
* QoS 1 both ways. Payloads of 4 MiB and more go through; amqtt has no limit below
  MQTT's 256 MB. A subscriber receives at its subscription's QoS even when the message
  was published at QoS 0 (*by hand*).
* Persistent sessions (``clean_session=False``) keep their subscriptions. Messages
  published while the session is offline are queued and delivered on reconnect. The
  queue has no bound, and the queued messages arrive with the RETAIN flag set (*by
  hand*).
* In-flight QoS 1 is weaker than Mosquitto's (*by hand*). amqtt waits 5 s for each
  PUBACK, then drops the message. Messages still unacknowledged when the subscriber
  disconnects are not resent when it comes back. So an aggregator that takes more than
  5 s to acknowledge, or crashes holding unacknowledged messages, loses them. There is
  no in-flight window: amqtt sends a subscriber everything at once.
* Retained messages work, and so does the Last Will (on a broken connection, or after
  the keepalive runs out, thanks to the watchdog above).
* Memory only: a restart loses sessions, queues and retained messages. amqtt[contrib]
  has a SQLite plugin for that; it needs SQLAlchemy and we do not use it. There are no
  ``$SYS`` topics: BrokerSysPlugin is left out (it raises a DeprecationWarning).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, SupportsIndex

from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.plugins.base import BaseAuthPlugin
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from telemetryd.config import BrokerConfig
from telemetryd.errors import TelemetrydError
from telemetryd.sdnotify import Supervisor
from telemetryd.secrets import unreadable
from telemetryd.urls import UrlError, parse_listen

log = logging.getLogger(__name__)

_LISTENER = "default"
_CONNECT_TIMEOUT_S = 10.0  # from accept (and TLS handshake) to a complete CONNECT
_MAX_CONNECT = 1 << 16  # bytes; read before authentication, so kept small
_WATCH_INTERVAL_S = 0.5
_SHUTDOWN_S = 2.0
# OWASP's second argon2id setting (19 MiB, 2 passes): about 20 ms per connect instead of
# 100 ms with argon2-cffi's default; it adds up when 1000 agents reconnect at once.
_HASHER = PasswordHash((Argon2Hasher(time_cost=2, memory_cost=19456, parallelism=1),))
# CONNACK return codes: 1 unacceptable protocol version, 4 bad user name or password,
# 5 not authorized.
_REFUSED = {code: bytes([0x20, 2, 0, code]) for code in (1, 4, 5)}
# amqtt warns like this on every MQTT 5 attempt, and our clients try 5 first.
_NOISE = ("Invalid connection from", "Failed to initialize client session: Invalid protocol")


class BrokerStartError(TelemetrydError):
    """The embedded broker cannot start; the message says why in one line."""


class AddressInUse(BrokerStartError):
    """Something else (often another broker) already listens on the address."""


class BrokerFileError(BrokerStartError):
    """A certificate, key or password file is missing, unreadable or malformed."""


def hash_password(password: str) -> str:
    """A ``password_file`` hash of ``password`` (argon2id, as amqtt's FileAuthPlugin reads)."""
    return _HASHER.hash(password)


@dataclass(frozen=True, slots=True)
class _Connect:
    """The fields of an MQTT 3.1.1 CONNECT that we act on before amqtt reads it."""

    keepalive: int
    username: str | None
    password: bytes | None


def _parse_connect(body: bytes) -> _Connect | None:
    """Parse a CONNECT body; None if it is not MQTT 3.1.1; ValueError if it is broken."""
    if body[:7] != b"\x00\x04MQTT\x04" or len(body) < 10:
        return None
    flags, keepalive = body[7], int.from_bytes(body[8:10], "big")
    at = 10

    def field() -> bytes:
        nonlocal at
        (size,) = struct.unpack_from("!H", body, at)
        at += 2 + size
        if at > len(body):
            raise ValueError("field runs past the packet")
        return body[at - size : at]

    field()  # client id
    if flags & 0x04:
        field(), field()  # will topic, will message
    username = field().decode("utf-8") if flags & 0x80 else None
    password = field() if flags & 0x40 else None
    return _Connect(keepalive, username, password)


async def _read_connect(reader: asyncio.StreamReader) -> tuple[bytes, _Connect | None]:
    """Read the first packet whole; return its bytes (for amqtt) and what we parsed."""
    head = await reader.readexactly(2)
    length, shift = head[1] & 0x7F, 7
    while head[-1] & 0x80:
        if shift > 21:
            raise ValueError("bad remaining length")
        head += await reader.readexactly(1)
        length, shift = length | (head[-1] & 0x7F) << shift, shift + 7
    if head[0] != 0x10 or length > _MAX_CONNECT:
        raise ValueError("first packet is not a CONNECT of sane size")
    body = await reader.readexactly(length)
    return head + body, _parse_connect(body)


class _Replay(StreamReaderAdapter):  # type: ignore[misc]
    """amqtt's stream reader, serving the bytes we already read before the stream."""

    def __init__(self, first: bytes, reader: asyncio.StreamReader) -> None:
        super().__init__(reader)
        self._first = first

    async def read(self, n: int = -1) -> bytes:
        if not self._first:
            return bytes(await super().read(n))
        take = len(self._first) if n < 0 else n
        data, self._first = self._first[:take], self._first[take:]
        if n > len(data):
            data += await super().read(n - len(data))
        return data


class _TimedReader(asyncio.StreamReader):
    """A StreamReader that notes when bytes last arrived, even in the middle of a packet."""

    last_rx = 0.0

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        self.last_rx = time.monotonic()
        super().feed_data(data)


class _Gate(BaseAuthPlugin):  # type: ignore[misc]
    """amqtt auth plugin: yes to every CONNECT we passed on, without the anonymous flag."""

    async def authenticate(self, *, session: Any) -> bool:
        """Accept: ``_Listener`` has already authenticated this client."""
        return True


class _Listener:
    """Accepts connections, authenticates the CONNECT, and watches keepalives."""

    def __init__(self, broker: Any, users: dict[str, str] | None) -> None:
        self.broker = broker
        self.users = users
        self.open: dict[asyncio.StreamWriter, tuple[_TimedReader, int]] = {}

    async def _allowed(self, connect: _Connect) -> int:
        """0 to accept, else the CONNACK return code of the refusal."""
        if self.users is None:
            return 0
        hashed = self.users.get(connect.username or "")
        if hashed is None or connect.password is None:
            return 4 if connect.username else 5
        ok = await asyncio.to_thread(_HASHER.verify, connect.password, hashed)
        return 0 if ok else 4

    async def _admit(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[bytes, _Connect | None]:
        """Read and check the CONNECT; its bytes, or b"" if the client is refused or gone."""
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                first, connect = await _read_connect(reader)
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.debug("MQTT client %s dropped before CONNECT: %r", _peer(writer), exc)
            return b"", None
        # Not MQTT 3.1.1: refused here, as amqtt would, except that amqtt misreads an
        # MQTT 5 CONNECT with a username and hangs until the client times out.
        refusal = await self._allowed(connect) if connect else 1
        if refusal:
            level = logging.DEBUG if refusal == 1 else logging.INFO  # 1: expected MQTT 5 try
            log.log(level, "MQTT client %s refused (CONNACK %d)", _peer(writer), refusal)
            writer.write(_REFUSED[refusal])
            await writer.drain()
            return b"", None
        return first, connect

    async def accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert isinstance(reader, _TimedReader)
        try:
            first, connect = await self._admit(reader, writer)
            if first:
                self.open[writer] = (reader, connect.keepalive if connect else 0)
                await self.broker.external_connected(
                    _Replay(first, reader), StreamWriterAdapter(writer), _LISTENER
                )
        except Exception as exc:  # noqa: BLE001 - one client's failure must not reach the server
            log.warning("MQTT client %s: %r", _peer(writer), exc)
        finally:
            self.open.pop(writer, None)
            if not writer.is_closing():
                writer.close()

    async def watch(self) -> None:
        """Abort connections silent for 1.5 x keepalive; amqtt then sends their will."""
        while True:
            await asyncio.sleep(_WATCH_INTERVAL_S)
            now = time.monotonic()
            for writer, (reader, keepalive) in list(self.open.items()):
                if keepalive and now - reader.last_rx > 1.5 * keepalive:
                    log.info("MQTT client %s silent for 1.5 x %d s", _peer(writer), keepalive)
                    writer.transport.abort()

    def abort_all(self) -> None:
        for writer in list(self.open):
            writer.transport.abort()


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername") or ("?", 0)
    return f"{peer[0]}:{peer[1]}"


def _tls_context(cfg: BrokerConfig) -> ssl.SSLContext:
    for key in ("cert_file", "key_file"):
        path = getattr(cfg, key)
        if not path:
            raise BrokerFileError(f"broker.{key}: empty; cert_file and key_file go together")
        if reason := unreadable(path):
            raise BrokerFileError(f"broker.{key}: {reason}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cfg.cert_file, cfg.key_file)
    except ssl.SSLError as exc:
        raise BrokerFileError(
            f"broker.cert_file/key_file: {cfg.cert_file} and {cfg.key_file} are not a PEM "
            f"certificate and its private key ({exc.reason or exc})"
        ) from None
    return context


def _load_users(path: str) -> dict[str, str]:
    """Read ``user:argon2-hash`` lines (amqtt's FileAuthPlugin format); refuse anything else."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise BrokerFileError(f"broker.password_file: cannot read {path}: {reason}") from None
    users: dict[str, str] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, _, hashed = line.partition(":")
        if not user or not Argon2Hasher.identify(hashed):
            raise BrokerFileError(
                f"broker.password_file: {path} line {number}: expected USER:HASH with an "
                "argon2 hash (mosquitto_passwd hashes are not understood; see docs/broker.md)"
            )
        users[user] = hashed
    if not users:
        raise BrokerFileError(f"broker.password_file: {path} has no users; all would be refused")
    return users


class _Quiet(logging.Filter):
    """Drop amqtt's per-connection warnings about the MQTT 5 attempts we expect."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_NOISE)


def _library_logging() -> None:
    """Keep amqtt (and transitions, its state machine) at WARNING unless we run at DEBUG."""
    debug = logging.getLogger("telemetryd").isEnabledFor(logging.DEBUG)
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.WARNING)
    amqtt_broker = logging.getLogger("amqtt.broker")
    if not debug and not any(isinstance(f, _Quiet) for f in amqtt_broker.filters):
        amqtt_broker.addFilter(_Quiet())


async def _bind(cfg: BrokerConfig, tls: ssl.SSLContext | None, listener: _Listener) -> Any:
    try:
        host, port = parse_listen(cfg.listen)
    except UrlError as exc:
        raise BrokerStartError(f"broker.listen: {exc}") from None
    loop = asyncio.get_running_loop()
    try:
        return await loop.create_server(
            lambda: asyncio.StreamReaderProtocol(_TimedReader(), listener.accepted),
            host,
            port,
            ssl=tls,
            ssl_handshake_timeout=_CONNECT_TIMEOUT_S if tls else None,
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUse(
                f"{cfg.listen} is already in use (another broker running?)"
            ) from None
        raise BrokerStartError(f"cannot listen on {cfg.listen}: {exc.strerror or exc}") from None


async def serve(
    cfg: BrokerConfig, *, ready: asyncio.Event | None = None, stop: asyncio.Event
) -> None:
    """Run the broker on ``cfg.listen`` until ``stop`` is set; set ``ready`` once it accepts.

    Raises BrokerStartError (AddressInUse, BrokerFileError) before accepting anything.
    """
    tls = _tls_context(cfg) if (cfg.cert_file or cfg.key_file) else None
    users = _load_users(cfg.password_file) if cfg.password_file else None
    _library_logging()
    broker = Broker(
        {
            "listeners": {_LISTENER: {"type": "external"}},
            "plugins": {f"{__name__}._Gate": {}},
        }
    )
    listener = _Listener(broker, users)
    await broker.start()
    try:
        server = await _bind(cfg, tls, listener)
    except BaseException:
        await broker.shutdown()
        raise
    watchdog = asyncio.create_task(listener.watch(), name="broker-keepalive")
    access = f"{len(users)} user(s)" if users else "anonymous clients allowed"
    log.info("MQTT broker (amqtt) on %s%s, %s", cfg.listen, " with TLS" if tls else "", access)
    if ready is not None:
        ready.set()
    notify = Supervisor.from_env(ready=lambda: True, status=lambda: f"listening on {cfg.listen}")
    notify.start(stop)
    try:
        await stop.wait()
    finally:
        notify.close()
        server.close()  # accept nothing new while the sessions close
        watchdog.cancel()
        try:
            await asyncio.wait_for(broker.shutdown(), timeout=_SHUTDOWN_S)
        except TimeoutError:
            log.warning("MQTT broker did not stop within %g s; closing connections", _SHUTDOWN_S)
        listener.abort_all()
        try:
            await asyncio.wait_for(server.wait_closed(), timeout=1.0)
        except TimeoutError:
            log.debug("listener still closing")
        log.info("MQTT broker stopped")
