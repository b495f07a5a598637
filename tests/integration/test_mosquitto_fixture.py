"""The Mosquitto fixture itself: it starts, keeps state across restarts, and can be killed."""

from __future__ import annotations

import socket
import time

import pytest

from tests.integration.conftest import MosquittoFactory
from tests.integration.mosquitto import Certs, Mosquitto, MosquittoError, SyncClient, free_port

pytestmark = pytest.mark.integration


def _refuses(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _saves(broker: Mosquitto) -> int:
    return broker.log_text().count("Saving in-memory database")


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_qos1_round_trip(mosquitto: Mosquitto) -> None:
    assert mosquitto.running
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    with SyncClient(mosquitto.port, client_id="sub") as sub, SyncClient(mosquitto.port) as pub:
        assert sub.connect() == 0
        assert sub.subscribe("telemetry/v1/c1/+/report") == [1]
        assert pub.connect() == 0
        assert pub.publish("telemetry/v1/c1/n1/report", b"hello") == 0  # PUBACK: success
        msg = sub.wait_for("telemetry/v1/c1/n1/report")
    assert (msg.payload, msg.qos) == (b"hello", 1)
    assert mosquitto.wait_for_log("New client connected")


@pytest.mark.parametrize("v5", [False, True], ids=["mqtt311", "mqtt5"])
def test_persistent_session_keeps_queued_message_across_restart(
    mosquitto: Mosquitto, v5: bool
) -> None:
    port = mosquitto.port
    sub = SyncClient(port, client_id="aggregator-1", v5=v5, clean=False, session_expiry=3600)
    assert sub.connect() == 0
    assert sub.subscribe("telemetry/v1/#") == [1]
    sub.disconnect()  # clean disconnect: the session (and its queue) stays on the broker

    with SyncClient(port, client_id="node-01") as pub:
        pub.connect()
        assert pub.publish("telemetry/v1/c1/node-01/report", b"seq=1") == 0

    assert mosquitto.stop() == 0  # SIGTERM: mosquitto saves its DB on the way out
    assert _refuses(port)
    mosquitto.start()
    assert mosquitto.port == port  # same port, so the same URL reconnects

    sub = SyncClient(port, client_id="aggregator-1", v5=v5, clean=False, session_expiry=3600)
    with sub:
        assert sub.connect() == 0
        msg = sub.wait_for("telemetry/v1/c1/node-01/report")
    assert msg.payload == b"seq=1"


def test_kill_keeps_what_the_last_autosave_saw(mosquitto: Mosquitto) -> None:
    sub = SyncClient(mosquitto.port, client_id="agg", v5=False, clean=False)
    sub.connect()
    sub.subscribe("t/#")
    sub.disconnect()
    with SyncClient(mosquitto.port) as pub:
        pub.connect()
        assert pub.publish("t/x", b"queued") == 0
    # autosave_interval 1: wait for two more saves, so one started after the publish.
    before = _saves(mosquitto)
    deadline = time.monotonic() + 10
    while _saves(mosquitto) < before + 2:
        assert time.monotonic() < deadline, mosquitto.log_tail()
        time.sleep(0.1)

    pid = mosquitto.pid
    assert mosquitto.kill() == -9  # SIGKILL: no save on the way out
    assert not mosquitto.running
    assert pid is not None
    assert _refuses(mosquitto.port)

    mosquitto.start()
    with SyncClient(mosquitto.port, client_id="agg", v5=False, clean=False) as sub:
        sub.connect()
        assert sub.wait_for("t/x").payload == b"queued"


def test_restart_and_stop_are_idempotent(mosquitto: Mosquitto) -> None:
    first = mosquitto.pid
    mosquitto.restart()
    assert mosquitto.running and mosquitto.pid != first
    mosquitto.restart(hard=True)
    assert mosquitto.running
    assert mosquitto.stop() == 0
    assert mosquitto.stop() is None  # already stopped
    assert mosquitto.kill() is None


def test_bad_config_fails_start_with_the_log(mosquitto_factory: MosquittoFactory) -> None:
    broker = mosquitto_factory(extra_config=["no_such_option 1"], start=False)
    with pytest.raises(MosquittoError, match="no_such_option"):
        broker.start()
    assert not broker.running


def test_factory_starts_independent_brokers(mosquitto_factory: MosquittoFactory) -> None:
    a, b = mosquitto_factory(), mosquitto_factory()
    assert a.port != b.port and a.workdir != b.workdir
    with SyncClient(a.port) as ca, SyncClient(b.port) as cb:
        assert ca.connect() == 0 and cb.connect() == 0


def test_tls_listener_from_certs(mosquitto_factory: MosquittoFactory, certs: Certs) -> None:
    broker = mosquitto_factory(extra_config=certs.listener_lines())
    with SyncClient(broker.port, client_id="n", tls=certs.client("node-01")) as client:
        assert client.connect() == 0
    assert broker.wait_for_log("u'node-01'")  # the CN became the username
