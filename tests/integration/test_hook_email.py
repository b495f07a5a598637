"""The email hook against a real SMTP server (aiosmtpd) with STARTTLS and AUTH.

The server is aiosmtpd's, run in the test process on a free port with a certificate from
a throwaway CA (trustme); what the hook sent is read back from what the server received.
"""

from __future__ import annotations

import email
import email.policy
import socket
import ssl
from collections.abc import Generator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from exporters.hooks.base import HookError
from exporters.hooks.config import EmailReceiver
from tests.hookcases import group, make_alert, send
from tests.integration.mosquitto import Certs, free_port

pytestmark = pytest.mark.integration

USER, PASSWORD = "alerts", "s3cret-pw"


@dataclass
class Mailbox:
    """What the server received; ``refuse`` {recipient: reply} answers RCPT TO with it."""

    received: list[tuple[str, list[str], EmailMessage]] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = email.message_from_bytes(content, policy=email.policy.default)
        sender = envelope.mail_from or ""
        self.received.append((sender, list(envelope.rcpt_tos), cast(EmailMessage, message)))
        return "250 Message accepted"


def authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (
        auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)  # not handled: the server answers 535


@dataclass
class Relay:
    """One running SMTP server and its mailbox."""

    port: int
    mailbox: Mailbox

    @property
    def smarthost(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs(tmp_path / "certs")


@pytest.fixture
def relay_factory(certs: Certs) -> Generator[Any, None, None]:
    """Start SMTP servers: STARTTLS and AUTH by default, or plain (``tls=False``)."""
    controllers: list[Controller] = []

    def make(*, tls: bool = True, auth: bool = True) -> Relay:
        mailbox = Mailbox()
        kwargs: dict[str, Any] = {}
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(certs.server.cert), str(certs.server.key))
            kwargs.update(tls_context=context, require_starttls=True)
        if auth:
            kwargs.update(authenticator=authenticate, auth_required=True)
        port = free_port()
        controller = Controller(mailbox, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        controllers.append(controller)
        return Relay(port, mailbox)

    try:
        yield make
    finally:
        for controller in controllers:
            controller.stop()


def receiver(relay_or_host: Relay | str, tmp_path: Path, **overrides: Any) -> EmailReceiver:
    password = tmp_path / "smtp-password"
    password.write_text(PASSWORD + "\n")
    host = relay_or_host.smarthost if isinstance(relay_or_host, Relay) else relay_or_host
    keys: dict[str, Any] = {
        "name": "mail", "smarthost": host, "sender": "telemetryd <alerts@fleet.example>",
        "to": ["oncall@fleet.example", "Ops Team <ops@fleet.example>"], "username": USER,
        "password_file": str(password), "ca_file": str(tmp_path / "certs" / "ca.pem"),
        "hello": "aggregator.fleet.example", "timeout": 10,
    }  # fmt: skip
    keys.update(overrides)
    return EmailReceiver(**keys)


def test_mail_arrives_over_starttls_with_auth(relay_factory: Any, tmp_path: Path) -> None:
    relay: Relay = relay_factory()
    gpu3, gpu5 = make_alert(), make_alert(gpu="5")
    gpu3.annotations["summary"] += " at 91 °C"  # not ASCII: the body must still arrive intact
    send(receiver(relay, tmp_path), group(gpu3, gpu5))

    ((sender, recipients, message),) = relay.mailbox.received
    assert sender == "alerts@fleet.example"
    assert recipients == ["oncall@fleet.example", "ops@fleet.example"]
    assert message["Subject"] == "[FIRING:2] GpuXidCritical node17"
    assert message["From"] == "telemetryd <alerts@fleet.example>"
    assert message["To"] == "oncall@fleet.example, Ops Team <ops@fleet.example>"
    assert message["Message-ID"].endswith("@fleet.example>")
    assert message["Date"]
    assert message["Auto-Submitted"] == "auto-generated"
    body = message.get_content().replace("\r\n", "\n")
    assert "2 firing, 0 resolved" in body
    for alert in (gpu3, gpu5):
        assert alert.annotations["summary"] in body
        assert f"uuid={alert.labels['uuid']}" in body
    assert body.count(gpu3.annotations["description"]) == 2
    assert body.count("Runbook: https://runbooks.example/alerts.md#gpuxidcritical") == 2
    assert body.count("Value: 79\n") == 2
    assert "Started: " in body and "Ended: " not in body


def test_resolved_mail(relay_factory: Any, tmp_path: Path) -> None:
    relay: Relay = relay_factory()
    send(receiver(relay, tmp_path), group(make_alert(gpu="3", status="resolved")))
    ((_, _, message),) = relay.mailbox.received
    assert message["Subject"] == "[RESOLVED] GpuXidCritical node17"
    body = message.get_content().replace("\r\n", "\n")
    assert "[RESOLVED] GpuXidCritical (critical)" in body and "Ended: " in body


def test_plain_smtp_when_starttls_is_off(relay_factory: Any, tmp_path: Path) -> None:
    relay: Relay = relay_factory(tls=False, auth=False)
    cfg = receiver(relay, tmp_path, starttls=False, username="", password_file="")
    send(cfg, group(make_alert()))
    ((_, _, message),) = relay.mailbox.received
    assert message["Subject"] == "[FIRING:1] GpuXidCritical node17"


def test_starttls_required_but_not_offered(relay_factory: Any, tmp_path: Path) -> None:
    relay: Relay = relay_factory(tls=False, auth=False)
    with pytest.raises(HookError) as caught:
        send(receiver(relay, tmp_path, username="", password_file=""), group(make_alert()))
    assert not caught.value.retryable
    assert "does not offer STARTTLS" in str(caught.value)
    assert relay.mailbox.received == []


def test_untrusted_certificate_is_not_retried(relay_factory: Any, tmp_path: Path) -> None:
    relay: Relay = relay_factory()
    other = Certs(tmp_path / "other-ca")
    with pytest.raises(HookError) as caught:
        send(receiver(relay, tmp_path, ca_file=str(other.ca_file)), group(make_alert()))
    assert not caught.value.retryable
    assert "certificate is not trusted" in str(caught.value)
    assert relay.mailbox.received == []


def test_wrong_password_is_not_retried(relay_factory: Any, tmp_path: Path) -> None:
    relay: Relay = relay_factory()
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    with pytest.raises(HookError) as caught:
        send(receiver(relay, tmp_path, password_file=str(wrong)), group(make_alert()))
    assert not caught.value.retryable
    assert "535" in str(caught.value)
    assert relay.mailbox.received == []


@pytest.mark.parametrize(
    ("reply", "retryable"),
    [("550 5.1.1 no such mailbox", False), ("450 4.2.0 mailbox busy, try later", True)],
)
def test_every_recipient_refused(
    relay_factory: Any, tmp_path: Path, reply: str, retryable: bool
) -> None:
    relay: Relay = relay_factory()
    relay.mailbox.refuse = {"oncall@fleet.example": reply, "ops@fleet.example": reply}
    with pytest.raises(HookError) as caught:
        send(receiver(relay, tmp_path), group(make_alert()))
    assert caught.value.retryable is retryable
    assert reply in str(caught.value) and "oncall@fleet.example" in str(caught.value)
    assert relay.mailbox.received == []


def test_some_recipients_refused_is_not_resent(relay_factory: Any, tmp_path: Path) -> None:
    relay: Relay = relay_factory()
    relay.mailbox.refuse = {"ops@fleet.example": "450 4.2.0 mailbox busy"}
    with pytest.raises(HookError) as caught:
        send(receiver(relay, tmp_path), group(make_alert()))
    assert not caught.value.retryable  # again would repeat it to oncall@
    assert "delivered to oncall@fleet.example" in str(caught.value)
    assert "ops@fleet.example: 450 4.2.0 mailbox busy" in str(caught.value)
    ((_, recipients, _),) = relay.mailbox.received
    assert recipients == ["oncall@fleet.example"]


def test_server_down_is_retryable(certs: Certs, tmp_path: Path) -> None:
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(HookError) as caught:
        send(receiver(host, tmp_path), group(make_alert()))
    assert caught.value.retryable
    assert host in str(caught.value)


def test_a_relay_that_never_answers_times_out_retryably(certs: Certs, tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        host = f"127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(HookError) as caught:
            send(receiver(host, tmp_path, timeout=1), group(make_alert()))
    assert caught.value.retryable
    assert str(caught.value) == f"email via {host}: timed out"
