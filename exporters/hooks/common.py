"""What every hook shares: Alertmanager's webhook JSON, secrets, config errors, wording.

Alertmanager's webhook format (version 4): a site that already has a receiver for it (a
chat bridge, a ticketing relay, a home-grown pager) can point the webhook hook at it
unchanged, and the exec hook hands the same JSON to a script; ``webhook_payload`` builds
it once for both.

Configuration is checked once, at ``create()``: a missing secret or unreadable CA bundle
is a ``ConfigError`` naming the receiver and the key at startup, not a failed page at
3 am, and every hook words it the same way (``pagerduty receiver 'oncall': ...``).

This module imports no HTTP client: the exec and email hooks use it without loading one.
What only the HTTP hooks need is in ``exporters.hooks.httppost``.
"""

from __future__ import annotations

import datetime
import ssl
from typing import Any, Literal, overload

from exporters.hooks import receiver_type
from exporters.hooks.config import (
    AlertmanagerReceiver,
    EmailReceiver,
    OpsgenieReceiver,
    PagerDutyReceiver,
    Receiver,
    SlackReceiver,
    TeamsReceiver,
    WebhookReceiver,
)
from telemetryd.alerting.model import Alert, Notification
from telemetryd.errors import ConfigError
from telemetryd.secrets import Secret, read_secret, secret_path, unreadable

ZERO_TIME = "0001-01-01T00:00:00Z"
"""Go's zero time: what Alertmanager puts in ``endsAt`` while an alert fires."""

HttpReceiver = (
    WebhookReceiver | AlertmanagerReceiver | PagerDutyReceiver | SlackReceiver | TeamsReceiver
    | OpsgenieReceiver
)  # fmt: skip
"""The receiver types that speak HTTP (their common keys: name, timeout, ca_file)."""
Authenticated = WebhookReceiver | AlertmanagerReceiver | EmailReceiver
"""The receiver types that log in with ``username`` and ``password_file``."""


# -- Alertmanager's webhook JSON ------------------------------------------------------------


def rfc3339(ns: int, *, millis: bool = False) -> str:
    """Nanoseconds since the epoch as RFC 3339 in UTC (Go's zero time for 0).

    By default as Alertmanager writes times in its webhook JSON (Go's ``RFC3339Nano``):
    whole seconds without a fraction, others with trailing zeros dropped. ``millis``
    writes always three digits, truncated, as Prometheus posts alerts to Alertmanager's
    API (go-openapi's ``RFC3339Millis``).
    """
    if ns <= 0:
        return ZERO_TIME
    seconds, fraction = divmod(ns, 1_000_000_000)
    text = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if millis:
        text += f".{fraction // 1_000_000:03d}"
    elif fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    return text + "Z"


def alert_payload(alert: Alert) -> dict[str, Any]:
    """One entry of ``alerts[]``; ``startsAt`` is when it fired, as Prometheus sends it."""
    return {
        "status": alert.status,
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
        "startsAt": rfc3339(alert.fired_ns or alert.starts_ns),
        "endsAt": rfc3339(alert.ends_ns) if alert.status == "resolved" else ZERO_TIME,
        "generatorURL": alert.generator_url,
        "fingerprint": alert.fingerprint,
    }


def webhook_payload(notification: Notification) -> dict[str, Any]:
    """The body Alertmanager's webhook receiver POSTs (format version 4)."""
    n = notification
    return {
        "version": "4",
        "groupKey": n.group_key,
        "truncatedAlerts": n.truncated,
        "status": n.status,
        "receiver": n.receiver,
        "groupLabels": dict(n.group_labels),
        "commonLabels": dict(n.common_labels),
        "commonAnnotations": dict(n.common_annotations),
        "externalURL": n.external_url,
        "alerts": [alert_payload(a) for a in n.alerts],
    }


def to_tell(notification: Notification, send_resolved: bool) -> Notification | None:
    """The notification as a receiver should see it (None: nothing left to say).

    Without resolved alerts when the receiver does not want them, Alertmanager's rule.
    """
    if send_resolved or not notification.resolved:
        return notification
    firing = notification.firing
    if not firing:
        return None
    n = notification
    return Notification(
        receiver=n.receiver, status="firing", group_key=n.group_key,
        group_labels=n.group_labels, common_labels=n.common_labels,
        common_annotations=n.common_annotations, alerts=firing,
        external_url=n.external_url, truncated=n.truncated,
    )  # fmt: skip


# -- wording shared by the chat and paging hooks --------------------------------------------


def truncate(text: str, limit: int) -> str:
    """At most ``limit`` characters; a cut text ends with an ellipsis so readers see it."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def where(alert: Alert) -> str:
    """Where an alert is, in words: ``node17 GPU 3``, ``node17``, ``cluster c1`` or ""."""
    labels = alert.labels
    node, gpu, cluster = labels.get("node"), labels.get("gpu"), labels.get("cluster")
    if node:
        return f"{node} GPU {gpu}" if gpu else node
    if cluster:
        return f"cluster {cluster}"
    return ""


def summary(alert: Alert) -> str:
    """The one line a person reads first: the summary annotation, else the rule and place."""
    text = alert.annotations.get("summary") or alert.annotations.get("description")
    if text:
        return " ".join(text.split())
    place = where(alert)
    return f"{alert.name} on {place}" if place else alert.name or "alert"


def title(notification: Notification) -> str:
    """The group's name: its common ``alertname``, else how many alerts it holds."""
    name = notification.common_labels.get("alertname") or notification.group_labels.get("alertname")
    return name or f"{len(notification.alerts)} alerts"


# -- configuration checked once, at create() ------------------------------------------------


def label(cfg: Receiver) -> str:
    """How errors name a receiver: ``pagerduty receiver 'oncall'``."""
    return f"{receiver_type(cfg)} receiver {cfg.name!r}"


def config_error(cfg: Receiver, text: str) -> ConfigError:
    """A one-line configuration problem naming the receiver."""
    return ConfigError([f"{label(cfg)}: {text}"])


@overload
def load_secret(
    cfg: Receiver, key: str, configured: str, credential: str, what: str, *,
    required: Literal[True],
) -> Secret: ...  # fmt: skip
@overload
def load_secret(
    cfg: Receiver, key: str, configured: str, credential: str, what: str, *,
    required: Literal[False],
) -> Secret | None: ...  # fmt: skip
def load_secret(
    cfg: Receiver, key: str, configured: str, credential: str, what: str, *, required: bool
) -> Secret | None:
    """The secret from ``configured`` or the credential ``<name>.<credential>``, stripped.

    Read at ``create()``, so a missing or unreadable file stops the aggregator's start
    with a line naming the key, instead of every notification failing later.
    """
    name = f"{cfg.name}.{credential}"
    path = secret_path(configured, name)
    if path is None:
        if not required:
            return None
        raise config_error(
            cfg, f"{key} is empty and there is no systemd credential {name}: expected {what}"
        )
    source = key if configured else f"credential {name}"
    try:
        value = read_secret(path).reveal().strip()
    except OSError as exc:
        raise config_error(
            cfg, f"{source}: cannot read {path}: {exc.strerror or exc}; expected {what}"
        ) from None
    if not value:
        raise config_error(cfg, f"{source}: {path} is empty; expected {what}")
    return Secret(value)


def password(cfg: Authenticated, what: str) -> Secret | None:
    """The password that goes with ``username`` (None without a username)."""
    if not cfg.username:
        if cfg.password_file:
            raise config_error(cfg, "password_file is set without username: expected both")
        return None
    return load_secret(cfg, "password_file", cfg.password_file, "password", what, required=True)


def check_ca(cfg: HttpReceiver | EmailReceiver) -> None:
    """A ``ca_file`` that cannot be read or parsed is a ConfigError now.

    Parsed as the connection will load it (``ssl.create_default_context``, as
    ``exporters.http.ssl_context`` and smtplib's STARTTLS do), so a bundle that passes here
    also works there.
    """
    if not cfg.ca_file:
        return
    why = unreadable(cfg.ca_file)
    if why is None:
        try:
            ssl.create_default_context(cafile=cfg.ca_file)
        except (ssl.SSLError, ValueError) as exc:
            why = f"{cfg.ca_file} is not a PEM CA bundle ({exc})"
    if why is not None:
        raise config_error(cfg, f"ca_file: {why}; expected a PEM file of CA certificates")
