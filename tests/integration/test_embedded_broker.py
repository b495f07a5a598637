"""The embedded broker (telemetryd.broker.serve) against real MQTT clients, on loopback.

Each test starts ``serve()`` in-process on a free port and talks to it with aiomqtt
(paho) as agents and the aggregator do, or with raw MQTT bytes when the test needs a
client that dies without a DISCONNECT. What amqtt cannot do is listed in the module
docstring of telemetryd/broker.py; what it can do, and what we add on top of it (the
pre-amqtt authentication, the keepalive watchdog), is checked here.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import trustme
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from telemetryd.broker import AddressInUse, BrokerFileError, hash_password, serve
from telemetryd.config import BrokerConfig

pytestmark = pytest.mark.integration

V311 = aiomqtt.ProtocolVersion.V311
REPORT = b'{"report": "' + b"x" * (8 * 1024 - 14) + b'"}'  # 8 KiB, like an agent's report


def free_port() -> int:
    """A TCP port nobody listens on right now (the broker binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout=15))


@contextlib.asynccontextmanager
async def broker(port: int | None = None, **cfg: str) -> AsyncIterator[int]:
    """Run serve() until the block ends; yield its port. Stopping must take under 3 s."""
    port = port or free_port()
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        serve(BrokerConfig(listen=f"127.0.0.1:{port}", **cfg), ready=ready, stop=stop)
    )
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiting}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if task.done():
        task.result()  # raises the start error
    assert ready.is_set(), "serve() neither became ready nor failed within 5 s"
    try:
        yield port
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=3)


def client(port: int, ident: str, **kw: Any) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, identifier=ident, protocol=V311, timeout=5, **kw)


async def collect(c: aiomqtt.Client, n: int, within: float = 3.0) -> list[aiomqtt.Message]:
    """Up to n messages, or fewer if none arrives for ``within`` seconds."""
    got: list[aiomqtt.Message] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            async for message in c.messages:
                got.append(message)
                if len(got) == n:
                    break
    return got


def _utf8(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


async def raw_connect(
    port: int, ident: str, *, keepalive: int, will: tuple[str, bytes]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An MQTT 3.1.1 client made of bytes, so a test can kill it without a DISCONNECT."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    flags = 0x02 | 0x04 | 0x08 | 0x20  # clean session, will, will QoS 1, will retain
    variable = _utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    payload = _utf8(ident) + _utf8(will[0]) + struct.pack("!H", len(will[1])) + will[1]
    body = variable + payload
    writer.write(bytes([0x10, len(body)]) + body)
    assert await reader.readexactly(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
    return reader, writer


def test_qos1_round_trip_of_an_8k_report() -> None:
    async def main() -> None:
        async with broker() as port, client(port, "aggregator") as sub:
            await sub.subscribe("telemetry/v1/+/+/report", qos=1)
            async with client(port, "agent-a") as pub:
                await pub.publish("telemetry/v1/c1/n1/report", REPORT, qos=1)
            (message,) = await collect(sub, 1)
            assert message.payload == REPORT
            assert message.qos == 1
            assert str(message.topic) == "telemetry/v1/c1/n1/report"

    run(main())


def test_4_mib_payload_goes_through() -> None:
    async def main() -> None:
        big = bytes(range(256)) * (4 * 1024 * 1024 // 256)
        async with broker() as port, client(port, "aggregator") as sub:
            await sub.subscribe("big", qos=1)
            async with client(port, "agent") as pub:
                await pub.publish("big", big, qos=1)
            (message,) = await collect(sub, 1, within=5)
            assert message.payload == big

    run(main())


def test_retained_status_reaches_a_late_subscriber() -> None:
    async def main() -> None:
        async with broker() as port:
            async with client(port, "agent") as pub:
                await pub.publish(
                    "telemetry/v1/c1/n1/status", b'{"online":true}', qos=1, retain=True
                )
            async with client(port, "late") as sub:
                await sub.subscribe("telemetry/v1/+/+/status", qos=1)
                (message,) = await collect(sub, 1)
                assert message.payload == b'{"online":true}'
                assert message.retain

    run(main())


def test_last_will_when_the_socket_dies_without_disconnect() -> None:
    async def main() -> None:
        async with broker() as port, client(port, "watcher") as sub:
            await sub.subscribe("telemetry/v1/c1/n1/status", qos=1)
            will = ("telemetry/v1/c1/n1/status", b'{"online":false}')
            _, writer = await raw_connect(port, "agent-n1", keepalive=30, will=will)
            writer.transport.abort()  # a crash: RST, no DISCONNECT
            (message,) = await collect(sub, 1)
            assert message.payload == b'{"online":false}'
            async with client(port, "late") as late:  # the will was sent with retain
                await late.subscribe("telemetry/v1/c1/n1/status", qos=1)
                assert [m.payload for m in await collect(late, 1)] == [b'{"online":false}']

    run(main())


def test_last_will_when_a_client_goes_silent_past_its_keepalive() -> None:
    """amqtt alone never drops a silent client; our watchdog does, after 1.5 x keepalive."""

    async def main() -> None:
        async with broker() as port, client(port, "watcher") as sub:
            await sub.subscribe("telemetry/v1/c1/n2/status", qos=1)
            will = ("telemetry/v1/c1/n2/status", b'{"online":false}')
            _, writer = await raw_connect(port, "agent-n2", keepalive=1, will=will)
            started = time.monotonic()  # from here on the client sends nothing (a frozen host)
            (message,) = await collect(sub, 1, within=4)
            assert message.payload == b'{"online":false}'
            assert 1.4 < time.monotonic() - started < 3.5
            writer.close()

    run(main())


def test_persistent_session_queues_qos1_while_the_aggregator_is_away() -> None:
    """clean_session=False on the open (anonymous, loopback) broker: amqtt's own anonymous
    plugin would drop the queue; ours must not."""

    async def main() -> None:
        async with broker() as port:
            async with client(port, "aggregator", clean_session=False) as agg:
                await agg.subscribe("telemetry/v1/+/+/report", qos=1)
            async with client(port, "agent") as pub:
                for seq in range(3):
                    await pub.publish("telemetry/v1/c1/n1/report", b"%d" % seq, qos=1)
            await asyncio.sleep(1.2)  # past amqtt's 1 s session sweep
            async with client(port, "aggregator", clean_session=False) as agg:
                got = await collect(agg, 3)
            assert [m.payload for m in got] == [b"0", b"1", b"2"]
            assert all(m.qos == 1 for m in got)

    run(main())


def test_mqtt5_is_refused_so_clients_fall_back_to_311() -> None:
    async def main() -> None:
        async with broker() as port:
            v5 = aiomqtt.Client(
                "127.0.0.1", port, identifier="v5", protocol=aiomqtt.ProtocolVersion.V5
            )
            with pytest.raises(aiomqtt.MqttCodeError, match="protocol version"):
                async with v5:
                    pass

    run(main())


def _password_file(tmp_path: Path) -> Path:
    # The format amqtt's FileAuthPlugin reads (amqtt/plugins/authentication.py): one
    # "user:hash" per line, the hash argon2 as pwdlib writes it; '#' starts a comment.
    path = tmp_path / "users"
    amqtt_default = PasswordHash((Argon2Hasher(),)).hash("agg-secret")
    path.write_text(f"# users\naggregator:{amqtt_default}\nagent:{hash_password('agent-pw')}\n")
    return path


def test_password_auth(tmp_path: Path) -> None:
    async def main() -> None:
        async with broker(password_file=str(_password_file(tmp_path))) as port:
            async with client(port, "a1", username="agent", password="agent-pw"):
                pass
            async with client(port, "a2", username="aggregator", password="agg-secret"):
                pass
            refused = [
                {"username": "agent", "password": "wrong"},
                {"username": "nobody", "password": "agent-pw"},
                {"username": "agent"},
                {},  # anonymous
            ]
            for creds in refused:
                with pytest.raises(aiomqtt.MqttCodeError, match=r"Not authorized|user name"):
                    async with client(port, "intruder", **creds):
                        pass
            v5 = aiomqtt.Client(
                "127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5, username="agent",
                password="agent-pw",
            )  # fmt: skip
            with pytest.raises(aiomqtt.MqttCodeError, match="protocol version"):
                async with v5:
                    pass

    run(main())


def test_a_wrong_password_after_the_mqtt5_fallback_is_one_clear_error(tmp_path: Path) -> None:
    """amqtt refuses MQTT 5, then refuses the 3.1.1 retry for the password: still one line."""
    from exporters.mqtt import MqttSession, MqttSettings, MqttUnavailable
    from telemetryd.secrets import Secret
    from telemetryd.urls import parse_broker_url

    async def main() -> None:
        async with broker(password_file=str(_password_file(tmp_path))) as port:
            settings = MqttSettings(
                broker=parse_broker_url(f"mqtt://agent@127.0.0.1:{port}"),
                client_id="wrong-pw", password=Secret("wrong"), timeout=5,
            )  # fmt: skip
            with pytest.raises(
                MqttUnavailable, match=r"^broker mqtt://agent@127\.0\.0\.1:\d+ refused us: .*"
            ):
                async with MqttSession(settings):
                    pass
            assert settings.version == "3.1.1"

    run(main())


def test_a_refused_client_cannot_wipe_or_steal_a_session(tmp_path: Path) -> None:
    """amqtt resets/takes over a client id's session before authenticating; we don't let
    an unauthenticated CONNECT get that far."""

    async def main() -> None:
        users = {"username": "aggregator", "password": "agg-secret"}
        async with broker(password_file=str(_password_file(tmp_path))) as port:
            async with client(port, "agg", clean_session=False, **users) as agg:
                await agg.subscribe("t/#", qos=1)
            async with client(port, "pub", username="agent", password="agent-pw") as pub:
                await pub.publish("t/1", b"queued", qos=1)
            with pytest.raises(aiomqtt.MqttCodeError):
                async with client(port, "agg", username="aggregator", password="guess"):
                    pass  # clean_session=True with the aggregator's id
            async with client(port, "agg", clean_session=False, **users) as agg:
                assert [m.payload for m in await collect(agg, 1)] == [b"queued"]

    run(main())


def test_tls_listener(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    server_cert.private_key_pem.write_to_path(str(key))
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    context = ssl.create_default_context()
    ca.configure_trust(context)

    async def main() -> None:
        async with (
            broker(cert_file=str(cert), key_file=str(key)) as port,
            client(port, "tls-sub", tls_context=context) as sub,
        ):
            await sub.subscribe("t", qos=1)
            async with client(port, "tls-pub", tls_context=context) as pub:
                await pub.publish("t", REPORT, qos=1)
            assert [m.payload for m in await collect(sub, 1)] == [REPORT]

    run(main())


def test_address_in_use_is_one_clear_line() -> None:
    async def main() -> None:
        async with broker() as port:
            with pytest.raises(AddressInUse) as caught:
                async with broker(port):
                    pass
            assert str(caught.value) == (
                f"127.0.0.1:{port} is already in use (another broker running?)"
            )

    run(main())


@pytest.mark.parametrize(
    ("setting", "content", "expected"),
    [
        ("password_file", None, r"broker.password_file: cannot read .*missing"),
        ("password_file", "agent:$7$101$abc$def\n", r"line 1: expected USER:HASH"),
        ("password_file", "# nobody\n", r"has no users"),
        ("cert_file", None, r"broker.cert_file: cannot read .*missing"),
        ("cert_file", "not a certificate\n", r"are not a PEM certificate"),
    ],
)
def test_bad_files_are_one_clear_line(
    tmp_path: Path, setting: str, content: str | None, expected: str
) -> None:
    path = tmp_path / "missing"
    if content is not None:
        path = tmp_path / "given"
        path.write_text(content)
    cfg: dict[str, str] = {setting: str(path)}
    if setting == "cert_file":
        (tmp_path / "key.pem").write_text("not a key\n")
        cfg["key_file"] = str(tmp_path / "key.pem")

    async def main() -> None:
        with pytest.raises(BrokerFileError, match=expected) as caught:
            async with broker(**cfg):
                pass
        assert "\n" not in str(caught.value)

    run(main())


def test_stops_within_3_s_with_clients_connected() -> None:
    async def main() -> None:
        port = free_port()
        stop = asyncio.Event()
        ready = asyncio.Event()
        task = asyncio.create_task(
            serve(BrokerConfig(listen=f"127.0.0.1:{port}"), ready=ready, stop=stop)
        )
        await asyncio.wait_for(ready.wait(), 5)
        agg = client(port, "aggregator", clean_session=False)
        await agg.__aenter__()
        await agg.subscribe("#", qos=1)
        silent = await raw_connect(port, "frozen", keepalive=0, will=("w", b"x"))
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, timeout=3)
        assert time.monotonic() - started < 3
        with contextlib.suppress(aiomqtt.MqttError):
            await agg.__aexit__(None, None, None)
        silent[1].close()
        # The port is free again: a new broker can take it at once.
        async with broker(port):
            pass

    run(main())
