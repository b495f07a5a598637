"""What each receiver type is configured with (``[[receiver]]`` tables of the routing file).

One struct per type, told apart by ``type``, so a key that belongs to another channel is an
error naming it rather than a silently ignored setting. Secrets are never inline: each is
a ``*_file`` or, when that is empty, the systemd credential ``<receiver name>.<secret>``
(``LoadCredential=oncall.routing-key:/etc/telemetryd/pd.key``).
"""

from __future__ import annotations

from typing import Annotated

from telemetryd.codec import Meta, Struct, field

Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")]
Timeout = Annotated[float, Meta(gt=0, le=600)]


class _Receiver(Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    """Keys every receiver has."""

    name: Name
    send_resolved: bool = True
    timeout: Timeout = 10.0  # seconds one attempt may take
    retries: Annotated[int, Meta(ge=0, le=100)] = 8  # attempts after the first
    retry_max: Annotated[float, Meta(ge=0.1, le=3600)] = 60.0  # cap of the backoff, s
    max_alerts: Annotated[int, Meta(ge=0)] = 0  # alerts per notification; 0: all


class _Http(_Receiver, kw_only=True):
    ca_file: str = ""  # CA bundle for https; empty: the system store


class WebhookReceiver(_Http, tag="webhook", kw_only=True):
    """Alertmanager's webhook format (version 4) POSTed to ``url``."""

    url: str = ""
    url_file: str = ""  # when the URL itself is a secret
    bearer_token_file: str = ""
    username: str = ""  # basic auth, with password_file
    password_file: str = ""
    headers: dict[str, str] = field(default_factory=dict)


class AlertmanagerReceiver(_Http, tag="alertmanager", kw_only=True):
    """Push to an Alertmanager's ``/api/v2/alerts`` (it does the routing then)."""

    url: str = "http://127.0.0.1:9093"  # the Alertmanager base URL
    bearer_token_file: str = ""
    username: str = ""
    password_file: str = ""


class PagerDutyReceiver(_Http, tag="pagerduty", kw_only=True):
    """PagerDuty Events API v2: trigger and resolve, ``dedup_key`` = fingerprint."""

    url: str = "https://events.pagerduty.com/v2/enqueue"
    routing_key_file: str = ""  # else credential <name>.routing-key
    client: str = "telemetryd"
    client_url: str = ""


class SlackReceiver(_Http, tag="slack", kw_only=True):
    """Slack incoming webhook; the URL is the secret."""

    url: str = ""
    url_file: str = ""  # else credential <name>.url
    channel: str = ""
    username: str = ""


class TeamsReceiver(_Http, tag="teams", kw_only=True):
    """Microsoft Teams Workflows webhook ("When a Teams webhook request is received")."""

    url: str = ""
    url_file: str = ""  # else credential <name>.url


class OpsgenieReceiver(_Http, tag="opsgenie", kw_only=True):
    """Opsgenie Alerts API: create and close by alias (= fingerprint)."""

    url: str = "https://api.opsgenie.com"  # EU: https://api.eu.opsgenie.com
    api_key_file: str = ""  # else credential <name>.api-key
    responders: list[dict[str, str]] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    priorities: dict[str, str] = field(
        default_factory=lambda: {"critical": "P1", "warning": "P3", "info": "P5"}
    )


class EmailReceiver(_Receiver, tag="email", kw_only=True):
    """Mail over SMTP; STARTTLS is required unless ``starttls = false`` says otherwise."""

    smarthost: str = "127.0.0.1:25"  # HOST:PORT of the relay
    sender: str = ""  # From:
    to: list[str] = field(default_factory=list)
    username: str = ""
    password_file: str = ""  # else credential <name>.password
    starttls: bool = True
    ca_file: str = ""
    hello: str = ""  # EHLO name; empty: this host's name


class ExecReceiver(_Receiver, tag="exec", kw_only=True):
    """A command run with the notification as JSON on stdin; exit 0 is delivered."""

    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


Receiver = (
    WebhookReceiver
    | AlertmanagerReceiver
    | PagerDutyReceiver
    | SlackReceiver
    | TeamsReceiver
    | OpsgenieReceiver
    | EmailReceiver
    | ExecReceiver
)
