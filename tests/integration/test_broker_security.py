"""The production broker example (examples/mosquitto) enforces mTLS identities and the ACL.

The broker runs ``examples/mosquitto/mosquitto.conf`` itself with only paths and ports
rewritten, and ``examples/mosquitto/acl`` unchanged, so what is tested is what operators
install. Observed on Debian's Mosquitto 2.0.11:

- An unauthorised PUBLISH is dropped and the client stays connected. MQTT 5: the PUBACK
  carries 0x87 Not authorized. MQTT 3.1.1: the PUBACK looks like success (3.1.1 has no
  reason code), so the publisher cannot tell; only the subscriber's silence shows it.
- A SUBSCRIBE is granted whatever the ACL says (acl_file does not check subscriptions
  in 2.0.x); ``read`` is enforced on each delivery, so a node subscribed to
  ``telemetry/v1/#`` receives nothing.
- A CONNECT whose Last Will the client may not write is accepted; the will is checked, and
  dropped, when it fires.
- A user's own ``topic`` lines are checked before the ``pattern`` lines and a match there is
  final: a ``topic deny`` in a user block beats a pattern grant, and a user's grant beats a
  ``pattern deny``.
- No client certificate, or one from another CA: with TLS 1.2 the handshake itself fails
  (alerts "handshake failure" / "unknown ca"); with TLS 1.3 the client's handshake
  completes before the server checks the certificate, and the connection is closed before
  any MQTT byte is answered. Either way there is never a CONNACK.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from tests.integration.conftest import MosquittoFactory
from tests.integration.mosquitto import (
    Certs,
    Mosquitto,
    SyncClient,
    TLSFiles,
    free_port,
    make_password_file,
)

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mosquitto"
NOT_AUTHORIZED = 0x87
OPERATOR_PASSWORD = "operator-test-password"  # a throwaway account in a temp password file

REPORT = "telemetry/v1/c1/node-01/report"
EVENT = "telemetry/v1/c1/node-01/event"
STATUS = "telemetry/v1/c1/node-01/status"
FLEET = "telemetry/v1/c1/_fleet"
# A v3.1.1 CONNECT for client id "probe", written by hand so it is sent on a raw socket.
RAW_CONNECT = bytes.fromhex("101100044d5154540402001e000570726f6265")


@dataclass
class Site:
    """The example broker with this test's CA: mTLS on ``port``, passwords on ``operator_port``."""

    broker: Mosquitto
    certs: Certs
    port: int
    operator_port: int

    def node(self, name: str = "node-01", **kwargs: object) -> SyncClient:
        kwargs.setdefault("client_id", name)
        return self.client(self.certs.client(name), **kwargs)

    def aggregator(self, **kwargs: object) -> SyncClient:
        kwargs.setdefault("client_id", "aggregator-1")
        return self.client(self.certs.client("aggregator"), **kwargs)

    def client(self, tls: TLSFiles, **kwargs: object) -> SyncClient:
        client = SyncClient(self.port, tls=tls, **kwargs)  # type: ignore[arg-type]
        assert client.connect() == 0
        return client

    def operator(
        self, username: str | None = "operator", password: str | None = None, client_id: str = "tui"
    ) -> SyncClient:
        return SyncClient(
            self.operator_port,
            client_id=client_id,
            ca_file=self.certs.ca_file,
            username=username,
            password=OPERATOR_PASSWORD if password is None else password,
        )


def example_config(
    broker: Mosquitto, certs: Certs, password_file: Path, port: int, operator_port: int
) -> str:
    """examples/mosquitto/mosquitto.conf with this test's paths and loopback ports.

    Every directive the rewrite relies on must be in the example: if the example changes
    shape, this fails instead of silently testing something else.
    """
    paths = {
        "cafile": certs.ca_file,
        "certfile": certs.server.cert,
        "keyfile": certs.server.key,
        "password_file": password_file,
        "acl_file": EXAMPLE / "acl",
    }
    ports = {"8883": port, "8884": operator_port}
    dropped = {"persistence_location", "log_dest", "pid_file", "user"}  # the test's own below
    seen: list[str] = []
    out = []
    for line in (EXAMPLE / "mosquitto.conf").read_text().splitlines():
        words = line.split()
        key = words[0] if words and not line.startswith("#") else ""
        seen.append(key)
        if key == "listener":
            out.append(f"listener {ports[words[1]]} 127.0.0.1")
        elif key in paths:
            out.append(f"{key} {paths[key]}")
        elif key not in dropped:
            out.append(line)
    for required in ("listener", "require_certificate", "use_identity_as_username", *paths):
        assert required in seen, f"examples/mosquitto/mosquitto.conf lost {required!r}"
    assert seen.count("listener") == len(ports)
    # Persistence location, log file, `user root` when run as root: global options, so
    # appending them after the last listener is fine. The example's other settings win.
    kept = set(seen) - dropped
    out += [line for line in broker.common_lines() if line.split()[0] not in kept]
    return "\n".join(out) + "\n"


@pytest.fixture
def site(mosquitto_factory: MosquittoFactory, certs: Certs, tmp_path: Path) -> Site:
    password_file = make_password_file(
        tmp_path / "passwd", {"operator": OPERATOR_PASSWORD, "oncall": OPERATOR_PASSWORD}
    )
    port, operator_port = free_port(), free_port()
    broker = mosquitto_factory(
        port=port,
        config=lambda b: example_config(b, certs, password_file, port, operator_port),
    )
    return Site(broker, certs, port, operator_port)


def _topics(client: SyncClient, quiet: float = 0.3) -> list[str]:
    return [m.topic for m in client.drain(quiet)]


# -- identities: who may connect -----------------------------------------------------------


def _raw_tls_attempt(port: int, context: ssl.SSLContext) -> str:
    """Handshake, send CONNECT, read: return where it failed ("handshake"/"after")."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            tls = context.wrap_socket(sock, server_hostname="127.0.0.1")
        except ssl.SSLError:
            return "handshake"
        with tls:
            try:
                tls.sendall(RAW_CONNECT)
                answer = tls.recv(4)
            except (ssl.SSLError, ConnectionError):
                return "after"
            assert not answer.startswith(b"\x20"), f"got a CONNACK {answer!r}"
            return "after"


@pytest.mark.parametrize(
    ("tls_version", "fails_in"),
    [(ssl.TLSVersion.TLSv1_2, "handshake"), (ssl.TLSVersion.TLSv1_3, "after")],
    ids=["tls1.2", "tls1.3"],
)
@pytest.mark.parametrize("who", ["no-cert", "other-ca"])
def test_client_without_a_valid_certificate_is_refused_by_tls(
    site: Site, tmp_path: Path, who: str, tls_version: ssl.TLSVersion, fails_in: str
) -> None:
    context = ssl.create_default_context(cafile=str(site.certs.ca_file))
    context.minimum_version = context.maximum_version = tls_version
    if who == "other-ca":
        rogue = Certs(tmp_path / "rogue-ca").client("node-01")  # same CN, wrong CA
        context.load_cert_chain(str(rogue.cert), str(rogue.key))
    assert _raw_tls_attempt(site.port, context) == fails_in
    reason = "peer did not return a certificate" if who == "no-cert" else "verify failed"
    assert site.broker.wait_for_log(reason)


def test_paho_without_a_certificate_gets_no_connack(site: Site, tmp_path: Path) -> None:
    anonymous = SyncClient(site.port, client_id="anon", ca_file=site.certs.ca_file)
    rogue = Certs(tmp_path / "rogue-ca").client("aggregator")
    impostor = SyncClient(site.port, client_id="agg", tls=rogue, ca_file=site.certs.ca_file)
    for client in (anonymous, impostor):
        with pytest.raises((OSError, ConnectionError)):
            client.connect()
        client.close()


def test_plain_mqtt_on_the_tls_port_is_refused(site: Site) -> None:
    with socket.create_connection(("127.0.0.1", site.port), timeout=5) as sock:
        sock.sendall(RAW_CONNECT)
        try:
            answer = sock.recv(4)
        except ConnectionError:
            answer = b""
    assert not answer.startswith(b"\x20")


def test_username_is_the_certificate_cn_not_what_the_client_claims(site: Site) -> None:
    claimed = site.client(
        site.certs.client("node-01"), client_id="x", username="aggregator", password="x"
    )
    with claimed, site.aggregator() as agg:
        agg.subscribe("telemetry/v1/#")
        claimed.subscribe("telemetry/v1/#")
        assert claimed.publish(FLEET, b"forged") == NOT_AUTHORIZED
        assert claimed.publish(REPORT, b"mine") == 0
        assert agg.wait_for(REPORT).payload == b"mine"
        assert _topics(claimed) == []
    assert site.broker.wait_for_log("u'node-01'")


# -- nodes: write only their own topics, read nothing --------------------------------------


def test_node_publishes_its_own_topics_and_the_aggregator_receives_them(site: Site) -> None:
    with site.aggregator() as agg, site.node() as node:
        assert agg.subscribe("telemetry/v1/#") == [1]
        assert node.publish(REPORT, b'{"seq":1}') == 0
        assert node.publish(EVENT, b'{"xid":79}') == 0
        assert node.publish(STATUS, b"online", retain=True) == 0
        assert agg.wait_for(REPORT).payload == b'{"seq":1}'
        assert agg.wait_for(EVENT).payload == b'{"xid":79}'
        assert agg.wait_for(STATUS).payload == b"online"
    # The aggregator may also consume through a shared subscription (DESIGN §5).
    with site.aggregator() as agg, site.node() as node:
        assert agg.subscribe("$share/aggregators/telemetry/v1/+/+/report") == [1]
        node.publish(REPORT, b'{"seq":2}')
        assert agg.wait_for(REPORT).payload == b'{"seq":2}'


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
def test_node_cannot_publish_as_another_node_or_as_the_aggregator(site: Site, v5: bool) -> None:
    forged = [
        "telemetry/v1/c1/node-02/report",
        "telemetry/v1/c1/node-02/status",
        FLEET,
        "telemetry/v1/c1/_fleet/event",
        "telemetry/v1/c1/_alerts/deadbeef",
        "telemetry/v1/c1/_rollup/node-01",
        "telemetry/v1/c1/node-01/other",  # own node, but not one of the three leaves
        "elsewhere/x",
    ]
    with site.aggregator() as agg, site.node(v5=v5) as node:
        agg.subscribe("telemetry/v1/#")
        agg.subscribe("elsewhere/#")
        codes = [node.publish(topic, b"forged") for topic in forged]
        # MQTT 5 says so in the PUBACK; MQTT 3.1.1 has no reason code and looks like success.
        assert codes == [NOT_AUTHORIZED if v5 else 0] * len(forged)
        # Dropped, not disconnected: the node's next, legitimate publish goes through, and
        # as the broker keeps one publisher's order, nothing forged came before it.
        assert node.publish(REPORT, b"legit") == 0
        assert agg.wait_for(REPORT).payload == b"legit"
        assert _topics(agg) == []


def test_node_can_publish_its_name_in_another_cluster(site: Site) -> None:
    # `+` for the cluster (see the acl comments): the node level is pinned, the cluster not.
    with site.aggregator() as agg, site.node() as node:
        agg.subscribe("telemetry/v1/#")
        assert node.publish("telemetry/v1/c2/node-01/report", b"x") == 0
        assert agg.wait_for("telemetry/v1/c2/node-01/report").payload == b"x"


def test_node_cannot_read_other_nodes_the_fleet_or_sys(site: Site) -> None:
    with site.aggregator() as agg:
        agg.publish(FLEET, b"summary", retain=True)
    with site.node("node-02") as spy, site.aggregator() as agg, site.node() as node:
        agg.subscribe("telemetry/v1/#")
        # 2.0.x grants the SUBSCRIBE and enforces `read` on every delivery instead.
        for topic in ("telemetry/v1/#", REPORT, FLEET, "$SYS/#", "$share/g/telemetry/v1/#"):
            assert spy.subscribe(topic)[0] < 0x80
        node.publish(REPORT, b"private")
        assert agg.wait_for(REPORT).payload == b"private"
        assert _topics(spy, quiet=1.2) == []  # no report, no retained _fleet, no $SYS


def test_a_will_on_another_nodes_status_is_dropped_when_it_fires(site: Site) -> None:
    with site.aggregator() as agg:
        agg.subscribe("telemetry/v1/+/+/status")
        liar = site.node(will=("telemetry/v1/c1/node-02/status", b"offline"))
        honest = site.node("node-03", will=("telemetry/v1/c1/node-03/status", b"offline"))
        liar.close()  # no DISCONNECT: the broker fires the will
        honest.close()
        assert agg.wait_for("telemetry/v1/c1/node-03/status").payload == b"offline"
        assert _topics(agg, quiet=0.5) == []
    with site.aggregator(client_id="fresh") as agg:  # retained? only the honest one
        agg.subscribe("telemetry/v1/+/+/status")
        assert _topics(agg) == ["telemetry/v1/c1/node-03/status"]


# -- aggregator and operators ----------------------------------------------------------------


def test_aggregator_writes_fleet_and_alerts_but_not_node_topics(site: Site) -> None:
    with site.aggregator() as agg, site.operator() as tui:
        assert tui.connect() == 0
        tui.subscribe("telemetry/v1/#")
        assert agg.publish(FLEET, b"summary", retain=True) == 0
        assert agg.publish("telemetry/v1/c1/_fleet/event", b"gpu gone") == 0
        assert agg.publish("telemetry/v1/c1/_alerts/deadbeef", b"firing", retain=True) == 0
        assert agg.publish("telemetry/v1/c1/_pending", b"pending", retain=True) == 0
        assert agg.publish("telemetry/v1/c1/_silences", b"silences", retain=True) == 0
        assert agg.publish("telemetry/v1/c1/_rollup/node-01", b"rollup", retain=True) == 0
        assert agg.publish("telemetry/v1/c1/_rollup/n/x", b"deeper") == NOT_AUTHORIZED
        assert agg.publish("telemetry/v1/c1/_silences/request", b"mute") == NOT_AUTHORIZED
        assert agg.publish(REPORT, b"forged") == NOT_AUTHORIZED
        assert agg.publish(STATUS, b"offline") == NOT_AUTHORIZED
        assert agg.publish("telemetry/v1/c1/aggregator/report", b"as a node") == NOT_AUTHORIZED
        assert agg.subscribe("$SYS/broker/uptime") == [1]
        assert agg.wait_for("$SYS/broker/uptime").payload.endswith(b"seconds")
        assert _topics(tui, quiet=0.5) == [
            FLEET,
            "telemetry/v1/c1/_fleet/event",
            "telemetry/v1/c1/_alerts/deadbeef",
            "telemetry/v1/c1/_pending",
            "telemetry/v1/c1/_silences",
            "telemetry/v1/c1/_rollup/node-01",
        ]


def test_operator_reads_telemetry_and_writes_nothing(site: Site) -> None:
    with site.aggregator() as agg:
        agg.publish(FLEET, b"summary", retain=True)
    with site.operator() as tui, site.node() as node:
        assert tui.connect() == 0
        tui.subscribe("telemetry/v1/#")
        tui.subscribe("$SYS/#")
        assert tui.wait_for(FLEET).retain  # the retained summary, on subscribe
        node.publish(REPORT, b"r")
        assert tui.wait_for(REPORT).payload == b"r"
        own_name = "telemetry/v1/c1/operator/report"  # what the node patterns would allow
        for topic in (REPORT, FLEET, "telemetry/v1/c1/_alerts/x", "elsewhere/x", own_name):
            assert tui.publish(topic, b"no") == NOT_AUTHORIZED
        assert _topics(tui) == []  # and no $SYS


def test_only_the_oncall_account_asks_the_aggregator_for_silences(site: Site) -> None:
    request = "telemetry/v1/c1/_silences/request"
    with (
        site.aggregator() as agg,
        site.operator() as tui,
        site.operator("oncall", client_id="tui-oncall") as oncall,
    ):
        assert tui.connect() == 0 and oncall.connect() == 0
        agg.subscribe("telemetry/v1/+/_silences/request")
        oncall.subscribe("telemetry/v1/#")
        assert tui.publish(request, b"mute") == NOT_AUTHORIZED  # read-only operators
        assert oncall.publish(request, b"mute") == 0
        assert agg.wait_for(request).payload == b"mute"
        own_name = "telemetry/v1/c1/oncall/report"
        for topic in (REPORT, FLEET, "telemetry/v1/c1/_silences", "telemetry/v1/c1/_alerts/x",
                      own_name):  # fmt: skip
            assert oncall.publish(topic, b"no") == NOT_AUTHORIZED
        assert _topics(oncall) == [request]  # it reads like an operator (its own request)


@pytest.mark.parametrize(
    ("username", "password"),
    [("operator", "wrong"), (None, None), ("aggregator", "anything"), ("node-01", "")],
    ids=["wrong-password", "anonymous", "aggregator-by-password", "node-by-password"],
)
def test_operator_listener_needs_a_password_file_account(
    site: Site, username: str | None, password: str | None
) -> None:
    client = site.operator(username=username, password=password if username else "")
    if username is None:
        client = SyncClient(site.operator_port, client_id="anon", ca_file=site.certs.ca_file)
    with client:
        assert client.connect() == NOT_AUTHORIZED


@pytest.mark.parametrize("cn", ["_fleet", "_alerts"])
def test_a_certificate_named_like_a_reserved_segment_gets_nothing(site: Site, cn: str) -> None:
    # A CA mistake: the three node patterns would give it telemetry/v1/+/<cn>/...
    with site.aggregator() as agg, site.node(cn) as impostor:
        agg.subscribe("telemetry/v1/#")
        assert impostor.publish(f"telemetry/v1/c1/{cn}/report", b"x") == NOT_AUTHORIZED
        assert impostor.publish(f"telemetry/v1/c1/{cn}/status", b"x") == NOT_AUTHORIZED
        assert agg.publish(FLEET, b"still mine") == 0  # the aggregator's grant still wins
        assert agg.wait_for(FLEET).payload == b"still mine"


def test_certs_work_with_aiomqtt(site: Site) -> None:
    # The product's client library, with the fixture's files, as other tests will use them.
    async def publish_as_node() -> None:
        tls = aiomqtt.TLSParameters(**site.certs.client("node-01").as_tls_kwargs())
        async with aiomqtt.Client(
            "127.0.0.1",
            site.port,
            identifier="node-01",
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_params=tls,
        ) as client:
            await client.publish(REPORT, b"via aiomqtt", qos=1)

    with site.aggregator() as agg:
        agg.subscribe("telemetry/v1/#")
        asyncio.run(publish_as_node())
        assert agg.wait_for(REPORT).payload == b"via aiomqtt"
