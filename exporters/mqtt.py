"""The one module that imports aiomqtt (and reaches paho under it): telemetryd's MQTT seam.

One small surface for both roles: ``MqttSession`` is an async context manager over one
connection, with ``publish`` (awaits the PUBACK for QoS 1), ``subscribe``, ``messages``
and ``ack``. Everything else (spool, backoff, WAL) is ours and does not know aiomqtt.

Manual acknowledgement: aiomqtt 2.x has none (empicano/aiomqtt#345), paho 2.x does. We
switch paho's ``manual_ack`` on through aiomqtt's private ``_client`` and send each PUBACK
ourselves after the message is durably accepted. Limits of this choice: it relies on a
private attribute that aiomqtt 3 removes (3.x makes manual ack the only mode, so the move
is one file); PUBACKs are sent in the order we call ``ack``, which we keep in the order of
arrival; and the broker's in-flight window (Mosquitto's max_inflight_messages, MQTT 5
Receive Maximum) is what bounds the unacknowledged messages held in memory.

MQTT 5 by default, 3.1.1 selectable; a broker that refuses 5 (amqtt speaks 3.1.1 only)
makes the session fall back to 3.1.1 once, with a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from telemetryd.secrets import Secret
from telemetryd.urls import BrokerUrl

log = logging.getLogger(__name__)

_UNSUPPORTED_PROTOCOL = {1, 0x84}  # CONNACK: v3.1.1 code 1, v5 reason 0x84
_URGENT: contextvars.ContextVar[bool] = contextvars.ContextVar("mqtt_urgent", default=False)
HARD_FACTOR = 4  # reading pauses at HARD_FACTOR x max_pending even while a publish waits


class MqttUnavailable(Exception):
    """The broker cannot be reached, refused us, or the connection dropped."""


class MqttRefused(MqttUnavailable):
    """The broker answered a publish with a failure reason (MQTT 5), e.g. not authorised."""


@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes for us if we vanish without a DISCONNECT."""

    topic: str
    payload: bytes
    retain: bool = True


@dataclass(slots=True)
class MqttSettings:
    """How to reach the broker and what kind of session to keep there."""

    broker: BrokerUrl
    client_id: str
    version: Literal["5", "3.1.1"] = "5"
    keepalive: int = 30
    password: Secret | None = None
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    will: Will | None = None
    persistent: bool = False  # keep the session (and queued messages) across disconnects
    session_expiry: int = 0  # seconds, MQTT 5 persistent sessions
    receive_maximum: int = 0  # MQTT 5: unacked messages the broker may send us (0: default)
    timeout: float = 10.0
    reconnect_max: float = 15.0  # seconds; the cap of the caller's backoff
    max_pending: int = 0  # received, not yet taken: reading pauses at this many (0: no bound)


@dataclass(frozen=True, slots=True)
class Message:
    """A received PUBLISH; hand it back to ``ack`` once it is safe."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int


def _tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    if not settings.broker.tls:
        return None
    context = ssl.create_default_context(cafile=settings.ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.cert_file:
        context.load_cert_chain(settings.cert_file, settings.key_file or None)
    return context


class MqttSession:
    """One connection to the broker; re-create it to reconnect."""

    def __init__(self, settings: MqttSettings) -> None:
        self.settings = settings
        self._client: aiomqtt.Client | None = None
        self._acks: dict[int, asyncio.Future[int]] = {}
        self._paused = False
        self._consuming = False
        self._awaiting_acks = 0  # publishes waiting for their PUBACK: reading may not pause
        self._urgent_waits = 0  # of those, the consumer's own (see ``urgent``)

    def _build(self) -> aiomqtt.Client:
        s = self.settings
        v5 = s.version == "5"
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if s.persistent:
                properties.SessionExpiryInterval = s.session_expiry
            if s.receive_maximum:
                properties.ReceiveMaximum = s.receive_maximum
        will = None
        if s.will is not None:
            will = aiomqtt.Will(s.will.topic, s.will.payload, qos=1, retain=s.will.retain)
        client = aiomqtt.Client(
            s.broker.host,
            s.broker.port,
            username=s.broker.username,
            password=s.password.reveal() if s.password else None,
            identifier=s.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if v5 else not s.persistent,
            clean_start=(not s.persistent) if v5 else 3,  # 3: paho's "first connect only"
            keepalive=s.keepalive,
            timeout=s.timeout,
            will=will,
            properties=properties,
            tls_context=_tls_context(s),
            logger=logging.getLogger("telemetryd.mqtt.paho"),
        )
        # Manual PUBACK (see module docstring): private API, kept to this one line.
        client._client.manual_ack_set(True)
        # Our PUBACK waiter sees the reason code, which aiomqtt's publish throws away.
        chained: Any = client._client.on_publish

        def on_publish(*args: Any) -> None:
            _client, _userdata, mid, reason, *_ = args
            waiter = self._acks.pop(mid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(int(getattr(reason, "value", reason) or 0))
            chained(*args)

        client._client.on_publish = on_publish
        if s.max_pending:
            # paho's loop_read takes as many packets per wake-up as it has publishes in
            # flight (thousands while alerts go out), so removing our reader is not enough
            # to pause: once paused, its next packet read answers "would block" (private
            # API, as manual ack above; a packet half read stays in paho's buffer).
            paho: Any = client._client
            read_packet = paho._packet_read

            def packet_read() -> Any:
                return MQTTErrorCode.MQTT_ERR_AGAIN if self._paused else read_packet()

            paho._packet_read = packet_read
            received: Any = client._client.on_message

            def on_message(*args: Any) -> None:
                received(*args)
                # Only once someone takes messages: before that a pause would also hold
                # back the SUBACK we are waiting for (a resumed session's backlog comes first).
                if self._consuming and self._over_limit(client._queue.qsize()):
                    self.pause_reading()

            client._client.on_message = on_message
        return client

    async def __aenter__(self) -> MqttSession:
        try:
            await self._connect()
        except MqttConnectError as exc:
            if self.settings.version == "5" and _rc(exc) in _UNSUPPORTED_PROTOCOL:
                log.warning("broker %s refused MQTT 5; using MQTT 3.1.1", self.settings.broker)
                self.settings.version = "3.1.1"
                try:
                    await self._connect()
                except MqttConnectError as again:
                    msg = f"broker {self.settings.broker} refused us: {again}"
                    raise MqttUnavailable(msg) from None
            else:
                raise MqttUnavailable(f"broker {self.settings.broker} refused us: {exc}") from None
        return self

    async def _connect(self) -> None:
        try:
            self._client = self._build()
            await self._client.__aenter__()
        except MqttConnectError:
            raise
        except (aiomqtt.MqttError, OSError, ssl.SSLError) as exc:
            self._client = None
            raise MqttUnavailable(f"cannot connect to {self.settings.broker}: {exc}") from None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            await asyncio.wait_for(client.__aexit__(exc_type, exc, tb), timeout=5)
        except (aiomqtt.MqttError, TimeoutError, OSError):
            log.debug("disconnect from %s was not clean", self.settings.broker)

    def _live(self) -> aiomqtt.Client:
        if self._client is None:
            raise MqttUnavailable("not connected")
        return self._client

    def _over_limit(self, queued: int) -> bool:
        """Whether reading must pause with ``queued`` messages waiting to be taken.

        At ``max_pending``, unless a publish waits for its PUBACK (which is on the socket
        behind them). At HARD_FACTOR x ``max_pending`` even then, unless the waiting
        publish is the consumer's own: it alone cannot wait for the queue to drain, since
        it is what drains it. Mosquitto sends a backlog past its in-flight window, so
        without the hard bound a consumer that publishes between batches while behind
        read the whole backlog into memory (a gigabyte in a minute at 1,500 reports/s).
        """
        limit = self.settings.max_pending
        if not limit:
            return False
        if not self._awaiting_acks:
            return queued >= limit
        return not self._urgent_waits and queued >= HARD_FACTOR * limit

    @contextlib.contextmanager
    def urgent(self) -> Iterator[None]:
        """Publishes in this block (and tasks it starts) are the consumer's own.

        They keep the socket read while they wait for their PUBACK, however full the
        queue: the consumer is blocked on them, so nobody else would take messages and
        make room. Use it only in the task that takes ``messages``.
        """
        token = _URGENT.set(True)
        try:
            yield
        finally:
            _URGENT.reset(token)

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish and, for QoS 1, wait for the broker's PUBACK (or the connection's end).

        aiomqtt's publish waits for its PUBACK until its timeout even when the connection
        is already gone; racing it against the disconnect makes a broker restart cost a
        moment, not the whole timeout.
        """
        client = self._live()
        info = client._client.publish(topic, payload, qos, retain)
        if info.rc != 0:
            raise MqttUnavailable(f"publish to {topic} failed: {mqtt_error(info.rc)}")
        if qos == 0:
            return
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._acks[info.mid] = waiter
        disconnected: asyncio.Future[None] = client._disconnected  # private, like manual ack
        pending: set[asyncio.Future[Any]] = {waiter, disconnected}
        # The PUBACK comes on the socket a full queue has paused: read while waiting, or a
        # consumer that publishes between batches (alerts, fleet events) would wait out the
        # timeout with its backlog unread. Messages read meanwhile wait in the queue, up to
        # the hard bound for anyone but the consumer itself (_over_limit).
        urgent = _URGENT.get()
        self._awaiting_acks += 1
        self._urgent_waits += urgent
        if not self._over_limit(client._queue.qsize()):
            self.resume_reading()
        try:
            done, _ = await asyncio.wait(
                pending,
                timeout=self.settings.timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            self._awaiting_acks -= 1
            self._urgent_waits -= urgent
            if self._consuming and self._over_limit(client._queue.qsize()):
                self.pause_reading()
        if waiter not in done:
            self._acks.pop(info.mid, None)
            why = "connection lost" if disconnected in done else "no PUBACK in time"
            raise MqttUnavailable(f"{why} while publishing to {topic}")
        reason = waiter.result()
        if reason >= 0x80:
            raise MqttRefused(
                f"broker refused the publish to {topic}: reason {reason:#04x} "
                f"{REASONS.get(reason, '')}".rstrip()
            )

    async def subscribe(self, filters: list[str], *, qos: int = 1) -> None:
        """Subscribe to each filter (``$share/<group>/...`` filters work on MQTT 5)."""
        try:
            await self._live().subscribe([(f, qos) for f in filters])
        except aiomqtt.MqttError as exc:
            raise MqttUnavailable(f"subscribe failed: {exc}") from None

    async def unsubscribe(self, filters: list[str]) -> None:
        """Drop filters a persistent session may still hold from an earlier configuration."""
        try:
            await self._live().unsubscribe(filters)
        except aiomqtt.MqttError as exc:
            raise MqttUnavailable(f"unsubscribe failed: {exc}") from None

    async def messages(self) -> AsyncIterator[Message]:
        """Received messages, in order, until the connection drops (MqttUnavailable)."""
        client = self._live()
        low = self.settings.max_pending // 4
        self._consuming = True
        try:
            async for m in client.messages:
                payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                yield Message(str(m.topic), payload, int(m.qos), bool(m.retain), int(m.mid))
                if self._paused and client._queue.qsize() <= low:
                    self.resume_reading()
        except aiomqtt.MqttError as exc:
            raise MqttUnavailable(f"connection lost: {exc}") from None

    def pause_reading(self) -> None:
        """Stop reading the socket: TCP flow control then holds the broker back.

        The broker's in-flight window is not a reliable bound (Mosquitto 2.0.11 overruns
        it when draining a persistent session's backlog; see docs/delivery.md), so with
        ``max_pending`` set the session pauses itself when that many messages wait, and
        resumes as they are taken.
        """
        client = self._client
        if client is None or self._paused:
            return
        sock = client._client.socket()
        if sock is not None:
            client._loop.remove_reader(sock.fileno())
            self._paused = True

    def resume_reading(self) -> None:
        """Read again, with the same reader aiomqtt registers at connect."""
        client = self._client
        if client is None or not self._paused:
            return
        self._paused = False
        sock = client._client.socket()
        if sock is None:
            return
        paho = client._client

        def read() -> None:
            try:
                while True:
                    paho.loop_read()
                    pending = getattr(paho._sock, "pending", None)  # TLS may hold decoded bytes
                    if pending is None or pending() <= 0:
                        break
            except Exception as exc:  # noqa: BLE001 - as aiomqtt's own reader: ends the session
                if not client._disconnected.done():
                    client._disconnected.set_exception(exc)

        client._loop.add_reader(sock.fileno(), read)
        read()  # what arrived while paused

    def ack(self, message: Message) -> None:
        """Send the PUBACK of a QoS 1 message (call in arrival order)."""
        if message.qos > 0 and self._client is not None:
            self._client._client.ack(message.mid, message.qos)


REASONS = {
    0x80: "unspecified error",
    0x83: "implementation specific error",
    0x87: "not authorized (check the broker ACL: a node may only write under its own name)",
    0x90: "topic name invalid",
    0x91: "packet identifier in use",
    0x97: "quota exceeded",
    0x99: "payload format invalid",
}


def mqtt_error(rc: int) -> str:
    """The words paho uses for a client-side error code."""
    from paho.mqtt.client import error_string

    return str(error_string(rc))


def _rc(exc: MqttConnectError) -> int:
    rc = getattr(exc, "rc", None)
    value = getattr(rc, "value", rc)
    return int(value) if isinstance(value, int) else -1
