"""Mail over SMTP: one message per notification, through the site's relay (the smarthost).

The standard library's ``smtplib`` does it without a new dependency; it blocks, so each
attempt runs in a worker thread (``asyncio.to_thread``) and never holds up the event loop.
One attempt is bounded by the receiver's ``timeout`` as a whole, not per command: each
step gets what is left of it.

STARTTLS is required unless ``starttls = false``: alerts name hosts and the password must
not cross the network in clear, so a relay that does not offer STARTTLS is a refusal
(not retryable) rather than a silent downgrade. The relay's certificate is checked against
``ca_file`` (else the system store) and the smarthost's name. Implicit TLS (SMTPS, port
465) is not supported; use the submission port 587 with STARTTLS.

What may pass is retried, what will not is not: SMTP 4xx replies, refused connections,
resets and timeouts are retryable; 5xx replies (550 recipient refused, 535 wrong password,
554 rejected) and a relay lacking STARTTLS or AUTH are not. When the relay takes the
message for some recipients and refuses others, sending again would repeat it to the
first, so that is reported as not retryable, naming both.
"""

from __future__ import annotations

import asyncio
import datetime
import email.message
import email.utils
import smtplib
import ssl
import time
from collections.abc import Callable

from exporters.hooks.base import HookError
from exporters.hooks.common import check_ca, config_error, password, to_tell
from exporters.hooks.config import EmailReceiver
from telemetryd.alerting.model import Alert, Notification

SUBJECT_MAX = 200
KNOWN_ANNOTATIONS = ("summary", "description", "runbook_url")


def create(cfg: EmailReceiver) -> EmailHook:
    """The hook for one ``type = "email"`` receiver; checks its keys, reads its password."""
    host, port = smarthost(cfg)
    if not cfg.sender:
        raise config_error(cfg, "sender is empty; expected the From address")
    if not _is_address(cfg.sender):
        raise config_error(cfg, f"sender {cfg.sender!r}; expected an address like a@b.c")
    if not cfg.to:
        raise config_error(cfg, "to is empty; expected at least one recipient address")
    for address in cfg.to:
        if not _is_address(address):
            raise config_error(cfg, f"to: {address!r}; expected an address like a@b.c")
    check_ca(cfg)
    secret = password(cfg, "the SMTP password")
    return EmailHook(cfg, host, port, secret.reveal() if secret is not None else None)


def smarthost(cfg: EmailReceiver) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for an IPv6 address) split, or ConfigError."""
    value = cfg.smarthost
    host, sep, port_text = value.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text) if port_text.isdigit() else 0
    if not sep or not host or not 0 < port < 65536 or any(c.isspace() for c in host):
        raise config_error(
            cfg, f"smarthost {value!r} is not HOST:PORT; expected e.g. mail.example.com:587"
        )
    return host, port


def _is_address(value: str) -> bool:
    if any(ord(c) < 32 for c in value):
        return False
    _, address = email.utils.parseaddr(value)
    local, at, domain = address.rpartition("@")
    return bool(at and local and domain and "." not in (domain[0], domain[-1]))


class EmailHook:
    """Sends each notification as one plain-text mail to the receiver's recipients."""

    def __init__(self, cfg: EmailReceiver, host: str, port: int, password: str | None) -> None:
        self.name = cfg.name
        self.send_resolved = cfg.send_resolved
        self.host = host
        self.port = port
        self.cfg = cfg
        self._password = password
        self._where = f"email via {host}:{port}"
        # The envelope takes bare addresses; the headers keep "Name <address>" forms.
        self._envelope_from = email.utils.parseaddr(cfg.sender)[1]
        self._envelope_to = [email.utils.parseaddr(a)[1] for a in cfg.to]

    async def send(self, notification: Notification) -> None:
        """Compose and deliver one mail; HookError says whether another attempt may help."""
        told = to_tell(notification, self.send_resolved)
        if told is None:
            return
        message = compose(told, self.cfg.sender, self.cfg.to)
        await asyncio.to_thread(self._deliver, message)

    async def close(self) -> None:
        """Nothing is kept open between notifications."""

    def _deliver(self, message: email.message.EmailMessage) -> None:
        try:
            self._attempt(message)
        except HookError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes one HookError
            raise failure(self._where, exc) from None

    def _attempt(self, message: email.message.EmailMessage) -> None:
        deadline = time.monotonic() + self.cfg.timeout

        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            return remaining

        # Connecting in the constructor is what records the name STARTTLS checks against.
        smtp = smtplib.SMTP(self.host, self.port, self.cfg.hello or None, timeout=left())
        try:
            refused = self._converse(smtp, message, left)
        except BaseException:
            smtp.close()  # no QUIT: after a failure the connection may be in any state
            raise
        _quit(smtp, max(deadline - time.monotonic(), 0.1))
        if refused:
            taken = [a for a in self._envelope_to if a not in refused]
            raise HookError(
                f"{self._where}: delivered to {', '.join(taken)} but refused for "
                + "; ".join(f"{a}: {_reply(c, m)}" for a, (c, m) in refused.items()),
                retryable=False,
            )

    def _converse(
        self, smtp: smtplib.SMTP, message: email.message.EmailMessage, left: Callable[[], float]
    ) -> dict[str, tuple[int, bytes]]:
        """EHLO, STARTTLS, AUTH and the message; the recipients refused (of some taken)."""
        _limit(smtp, left())
        smtp.ehlo_or_helo_if_needed()
        if self.cfg.starttls:
            if not smtp.has_extn("starttls"):
                raise HookError(
                    f"{self._where}: the relay does not offer STARTTLS; expected it "
                    "(or set starttls = false to send in clear text)",
                    retryable=False,
                )
            _limit(smtp, left())
            smtp.starttls(context=ssl.create_default_context(cafile=self.cfg.ca_file or None))
            _limit(smtp, left())
            smtp.ehlo()
        if self.cfg.username and self._password is not None:
            if not smtp.has_extn("auth"):
                raise HookError(
                    f"{self._where}: the relay offers no AUTH, but username is set",
                    retryable=False,
                )
            _limit(smtp, left())
            smtp.login(self.cfg.username, self._password)
        _limit(smtp, left())
        return smtp.send_message(message, self._envelope_from, self._envelope_to)


def _limit(smtp: smtplib.SMTP, seconds: float) -> None:
    """Give the next command what is left of the attempt's time."""
    if smtp.sock is not None:
        smtp.sock.settimeout(seconds)


def _quit(smtp: smtplib.SMTP, seconds: float) -> None:
    """Say QUIT politely; the relay took the message already, so its answer changes nothing."""
    try:
        _limit(smtp, seconds)
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


def _reply(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return f"{code} {' '.join(text.split())}"


def failure(where: str, exc: Exception) -> HookError:
    """One HookError for whatever smtplib or the network raised: 4xx and no answer retry."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        detail = "; ".join(f"{a}: {_reply(c, m)}" for a, (c, m) in exc.recipients.items())
        return HookError(
            f"{where}: every recipient refused: {detail}",
            retryable=all(400 <= c < 500 for c in codes),
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        code = exc.smtp_code
        return HookError(
            f"{where}: {_reply(code, exc.smtp_error)}", retryable=not 500 <= code < 600
        )
    if isinstance(exc, smtplib.SMTPNotSupportedError) or type(exc) is smtplib.SMTPException:
        # A missing extension, or "No suitable authentication method found".
        return HookError(f"{where}: {exc}", retryable=False)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return HookError(
            f"{where}: the relay's certificate is not trusted ({exc.verify_message}); "
            "expected one signed by ca_file or the system store, for the smarthost's name",
            retryable=False,
        )
    if isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError):
        return HookError(f"{where}: timed out", retryable=True)  # smtplib rewords a timeout
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return HookError(f"{where}: connection closed: {exc}", retryable=True)
    if isinstance(exc, OSError):
        return HookError(f"{where}: {exc.strerror or exc}", retryable=True)
    return HookError(f"{where}: {type(exc).__name__}: {exc}", retryable=True)


def compose(n: Notification, sender: str, to: list[str]) -> email.message.EmailMessage:
    """The mail for one notification: subject, headers and a plain-text body."""
    message = email.message.EmailMessage()
    message["Subject"] = subject(n)
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Date"] = email.utils.format_datetime(datetime.datetime.now(datetime.UTC))
    domain = email.utils.parseaddr(sender)[1].rpartition("@")[2]
    message["Message-ID"] = email.utils.make_msgid(domain=domain or None)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to alerts
    message.set_content(body(n))
    return message


def subject(n: Notification) -> str:
    """``[FIRING:2] GpuXidCritical node17`` or ``[RESOLVED] ...`` (the group's label values)."""
    status = f"FIRING:{len(n.firing)}" if n.status == "firing" else "RESOLVED"
    labels = dict(n.group_labels)
    if not labels and "alertname" in n.common_labels:
        labels = {"alertname": n.common_labels["alertname"]}
    names = sorted(labels, key=lambda k: (k != "alertname", k))
    what = " ".join(labels[k] for k in names) or f"{len(n.alerts)} alerts"
    text = " ".join(f"[{status}] {what}".split())
    return text if len(text) <= SUBJECT_MAX else text[: SUBJECT_MAX - 3] + "..."


def body(n: Notification) -> str:
    """Every alert with its summary, description, value, runbook, times and labels."""
    firing, resolved = n.firing, n.resolved
    lines = [f"{len(firing)} firing, {len(resolved)} resolved (receiver {n.receiver})"]
    if n.group_labels:
        lines.append("Group: " + _pairs(n.group_labels))
    for alert in [*firing, *resolved]:
        lines += ["", *_alert_lines(alert)]
    if n.truncated:
        lines += ["", f"{n.truncated} more alert(s) left out (max_alerts)."]
    if n.external_url:
        lines += ["", f"More: {n.external_url}"]
    lines += ["", "-- ", "Sent by telemetryd."]
    return "\n".join(lines) + "\n"


def _alert_lines(alert: Alert) -> list[str]:
    notes = alert.annotations
    lines = [f"[{alert.status.upper()}] {alert.name} ({alert.severity})"]
    if notes.get("summary"):
        lines.append(f"Summary: {notes['summary']}")
    if notes.get("description"):
        lines.append(f"Description: {notes['description']}")
    if alert.value is not None:
        lines.append(f"Value: {_number(alert.value)}")
    if notes.get("runbook_url"):
        lines.append(f"Runbook: {notes['runbook_url']}")
    lines += [
        f"{k.capitalize()}: {v}" for k, v in sorted(notes.items()) if k not in KNOWN_ANNOTATIONS
    ]
    if alert.fired_ns or alert.starts_ns:
        lines.append(f"Started: {_when(alert.fired_ns or alert.starts_ns)}")
    if alert.status == "resolved" and alert.ends_ns:
        lines.append(f"Ended: {_when(alert.ends_ns)}")
    lines.append("Labels: " + _pairs(alert.labels))
    if alert.generator_url:
        lines.append(f"Source: {alert.generator_url}")
    return lines


def _pairs(labels: dict[str, str]) -> str:
    return ", ".join(f"{k}={labels[k]}" for k in sorted(labels))


def _number(value: float) -> str:
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _when(ns: int) -> str:
    when = datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")
